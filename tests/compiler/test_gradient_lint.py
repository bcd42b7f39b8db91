"""The gradient-flow lint of `nnspec check` (compiler/passes/gradient_lint.py)."""
from nnspec.compiler.passes.gradient_lint import gradient_warnings
from nnspec.compiler.pipeline import build

LINT_SPEC = """
model L {
    input x: f32[B, 4]
    target y: f32[B, 2]
    let enc = linear(4)
    a = x |> enc
    b = stop_gradient(a) |> linear(2)
    d = round(x |> linear(2, name="rounded"))
    e = x |> linear(2, name="used")
    loss l = mse_loss(b + d + e, y)
    output b
}
"""


def _codes(text):
    return [(w.code, w.message, w.span.line if w.span else None) for w in gradient_warnings(build("lint.nn", text=text))]


def test_stop_gradient_cut_is_reported_at_the_layer_with_the_line_of_the_cut():
    found = _codes(LINT_SPEC)
    cut = [w for w in found if w[0] == "W0202"]
    assert len(cut) == 1
    assert "`enc` (weight, bias)" in cut[0][1] and "stop_gradient (line 7)" in cut[0][1]
    assert cut[0][2] == 6


def test_non_differentiable_path_is_reported():
    found = _codes(LINT_SPEC)
    rounded = [w for w in found if w[0] == "W0203"]
    assert len(rounded) == 1 and "`rounded`" in rounded[0][1] and "`round` at line 8" in rounded[0][1]


def test_trained_layers_are_not_reported():
    found = _codes(LINT_SPEC)
    assert not any("`used`" in w[1] for w in found)
    assert not any("linear`" in w[1] for w in found)  # the layer after the cut is trained


def test_layer_no_loss_depends_on():
    spec = """
    model M {
        input x: f32[B, 3]
        target y: f32[B, 1]
        h = x |> linear(1)
        side = x |> linear(5, name="side")
        loss l = mse_loss(h, y)
        output h, side
    }
    """
    found = _codes(spec)
    assert [w[0] for w in found] == ["W0201"]
    assert "`side`" in found[0][1]


def test_clean_model_has_no_warnings():
    spec = """
    model M {
        input x: f32[B, 3]
        target y: i64[B]
        logits = x |> linear(8) |> relu |> linear(4)
        loss ce = cross_entropy(logits, y)
        output logits
    }
    """
    assert _codes(spec) == []
