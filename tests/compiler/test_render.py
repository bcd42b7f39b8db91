"""compiler/render.py and `nnspec render`: golden DOT files, the chain rule's numbers, folding, scans, escaping,
the fallback without graphviz, and every spec in specs/ drawn forward and backward.

Golden files live in tests/golden/render/ and are rebuilt only on purpose: NNSPEC_UPDATE_GOLDEN=1 pytest ...
They are drawn from frozen copies of the specs (tests/golden/render/specs/), so editing specs/ leaves them alone.
"""
from __future__ import annotations

import difflib
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from nnspec.cli import main
from nnspec.compiler import render
from nnspec.compiler.pipeline import build
from nnspec.compiler.render import BackwardUnavailable, draw, html_escape, plain, to_dot
from nnspec.dsl.loader import SPECS_DIR

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "render"
UPDATE = bool(os.environ.get("NNSPEC_UPDATE_GOLDEN"))
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot program is not installed")


def golden_spec(name: str):
    return build(str(GOLDEN / "specs" / f"{name}.nn"))


def check_golden(text: str, name: str) -> None:
    path = GOLDEN / f"{name}.dot"
    if UPDATE:
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: create it with NNSPEC_UPDATE_GOLDEN=1 pytest {__file__}"
    want = path.read_text(encoding="utf-8")
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), str(path), "now", n=1))
        pytest.fail(f"the DOT differs from {path.name} (if the change is intended, regenerate with "
                    f"NNSPEC_UPDATE_GOLDEN=1):\n{diff[:4000]}")


def nodes_of(dot: str) -> dict:
    """node id -> its attribute text, from DOT written by graphviz.Digraph (one statement per line)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\t+(\w+) \[(label=.*)\]$", dot, re.MULTILINE)}


def edges_of(dot: str) -> list:
    edge = re.compile(r"^\t+(\w+) -> (\w+)(?: \[(.*)\])?$", re.MULTILINE)
    return [(m.group(1), m.group(2), m.group(3) or "") for m in edge.finditer(dot)]


# ---------------------------------------------------------------------------------------- golden DOT files
GOLDEN_CASES = [
    ("chain_rule_demo", "forward", {}),
    ("chain_rule_demo", "backward", {}),
    ("sigmoid_neuron", "forward", {}),
    ("sigmoid_neuron", "backward", {}),
    ("mlp", "forward", {}),
    ("mlp", "backward", {}),
    ("resnet_block", "forward", {}),
    ("resnet_block", "backward", {}),
    ("resnet_block", "forward", {"depth": 0}),
    ("rnn_vanilla", "forward", {}),
    ("rnn_vanilla", "forward", {"unroll": 3}),
]


def _case_name(spec, kind, options):
    return ".".join([spec, kind] + [f"{k}{v}" for k, v in options.items()])


@pytest.mark.parametrize("spec,kind,options", GOLDEN_CASES, ids=[_case_name(*c) for c in GOLDEN_CASES])
def test_golden_dot(spec, kind, options):
    check_golden(to_dot(golden_spec(spec), kind, **options), _case_name(spec, kind, options))


def test_golden_rnn_unrolled_backward():
    """Backpropagation through time for T=3: three copies of the cell's backward graph, the state gradient
    passed from step to step, the shared weights' gradients summed."""
    graph = golden_spec("rnn_vanilla")
    try:
        dot = to_dot(graph, "backward", unroll=3)
    except BackwardUnavailable as e:  # autodiff without scan gradients: the forward picture still works
        pytest.xfail(str(e))
    check_golden(dot, "rnn_vanilla.backward.unroll3")
    assert dot.count('label="t = ') == 3
    carries = [e for e in edges_of(dot) if "#7b3294" in e[2] and "penwidth=2" in e[2]]
    assert len(carries) == 2, "the state gradient goes from t=2 to t=1 and from t=1 to t=0"
    sums = [n for n, attrs in nodes_of(dot).items() if "summed over the steps" in attrs]
    assert len(sums) == 2  # rnn.ih.weight and rnn.hh.weight, shared by every step
    for node in sums:
        assert sum(1 for e in edges_of(dot) if e[1] == node) == 3


@needs_dot
def test_golden_files_are_valid_dot():
    for path in sorted(GOLDEN.glob("*.dot")):
        assert render.pipe(path.read_text(encoding="utf-8"), "svg").startswith(b"<?xml"), path.name


# ---------------------------------------------------------------------------------------- the chain rule's numbers
def test_chain_rule_values_match_the_notes():
    """seed 002:563-579: f(-2, 5, -4) = -12 with q = 3; df/dx = df/dy = -4, df/dz = 3."""
    graph = golden_spec("chain_rule_demo")
    trace = render.run_values(graph, {"x": -2, "y": 5, "z": -4})
    fwd = to_dot(graph, "forward", values=trace)
    bwd = to_dot(graph, "backward", values=trace)
    check_golden(fwd, "chain_rule_demo.forward.values")
    check_golden(bwd, "chain_rule_demo.backward.values")
    fnodes, bnodes = nodes_of(fwd), nodes_of(bwd)
    assert "= -12" in fnodes["mul"] and "loss f" in fnodes["mul"]
    assert ("add", "mul", 'label=3 color="#444444" fontcolor="#2e7d32"') in edges_of(fwd)  # q = 3 on its edge
    assert "dL/dx = -4" in fnodes["x"] and "dL/dy = -4" in fnodes["y"] and "dL/dz = 3" in fnodes["z"]
    assert "= -4" in bnodes["grad_x"] and "= -4" in bnodes["grad_y"] and "= 3" in bnodes["grad_z"]
    grad_edges = {(s, d): a for s, d, a in edges_of(bwd)}
    assert "label=-4" in grad_edges[("mul", "grad_x")] and "label=3" in grad_edges[("mul_1", "grad_z")]


def test_value_labels():
    import torch
    assert render.format_value(torch.tensor(0.731058)) == "0.7311"
    assert render.format_value(torch.tensor([1.0, -2.5])) == "[1, -2.5]"
    assert render.format_value(torch.ones(2, 300)) == "[2, 300] mean 1"
    assert render.format_value(torch.tensor(3)) == "3"


def test_values_with_random_inputs_are_reproducible():
    graph = golden_spec("sigmoid_neuron")
    one = to_dot(graph, "backward", values=render.run_values(graph, seed=1))
    two = to_dot(graph, "backward", values=render.run_values(graph, seed=1))
    assert one == two and "mean" not in one  # B = 2 by default: short lists
    with pytest.raises(render.RenderError, match="unknown input `w`"):
        render.run_values(graph, {"w": 1})


# ---------------------------------------------------------------------------------------- what the pictures show
def test_backward_styles_saved_gradient_accumulate_and_param_outputs():
    dot = to_dot(golden_spec("resnet_block"), "backward")
    nodes = nodes_of(dot)
    kinds = {n: a for n, a in nodes.items()}
    saved = {n for n, a in kinds.items() if "forward value saved" in a}
    assert saved and all("style=dashed" in a for s, d, a in edges_of(dot) if s in saved)
    assert any("shape=circle" in a and "<B>+</B>" in a for a in kinds.values()), "the residual fan-out accumulates"
    # 15 parameter gradients: one output node per layer, naming its tensors
    grads = [a for a in kinds.values() if "<B>dL/dblock1.bn1</B>" in a]
    assert len(grads) == 1 and "shape=house" in grads[0] and "weight · bias" in grads[0]
    flow = [a for s, d, a in edges_of(dot) if s not in saved and "#c0392b" in a]
    assert len(flow) > 20


def test_unreached_parameters_cuts_and_shared_weights():
    text = """
model Cut {
    input x: f32[B, 4]
    target y: f32[B, 2]
    let fc = linear(2, name="shared")
    a = fc(x) + fc(x * 2)
    b = stop_gradient(x |> linear(2, name="frozen"))
    loss l = mse_loss(a + b, y)
    output c = x |> linear(2, name="unused")
}
"""
    graph = build("cut.nn", text=text)
    fwd, bwd = to_dot(graph, "forward"), to_dot(graph, "backward")
    weight = [n for n, a in nodes_of(fwd).items() if "shared.weight" in a]
    assert len(weight) == 1 and sum(1 for s, d, a in edges_of(fwd) if s == weight[0]) == 2
    unreached = {n: a for n, a in nodes_of(bwd).items() if "no loss reaches it" in a}
    assert {"unreached_frozen_weight", "unreached_unused_weight"} <= set(unreached)
    assert all("dashed" in a and "tooltip=" in a for a in unreached.values())
    assert "the gradient stops here" in nodes_of(bwd)["cut_stop_gradient"]
    accumulate = [a for a in nodes_of(bwd).values() if "d_shared.weight" in a]
    assert accumulate and "shape=circle" in accumulate[0]


def test_folding_a_block_to_one_node():
    picture = draw(golden_spec("resnet_block"), "forward", depth=0)
    nodes = nodes_of(picture.dot)
    assert picture.depth == 0 and not any(re.match(r"conv2d|batch_norm", n) for n in nodes)
    block1 = nodes["f_block1"]
    assert "BasicBlock" in block1 and "14,528 params" in block1 and "[B, 32, 8, 8]" in block1
    edges = edges_of(picture.dot)
    assert len(edges) == len(set(edges)) and ("f_block1", "f_block2", 'color="#444444"') in edges


def test_repeats_fold_into_one_node():
    text = """
block Layer(c: int) (x: [N, C]) {
    return x |> linear(c, name="fc") |> relu
}
block Stack(c: int, n: int) (x: [N, C]) {
    h = x
    for i in 0..n {
        h = h |> Layer(c, name=i)
    }
    return h
}
model Deep {
    input x: f32[B, 8]
    output y = x |> Stack(16, 5, name="stack")   # stack.0 maps 8 -> 16, the others 16 -> 16
}
"""
    graph = build("deep.nn", text=text)
    dot = to_dot(graph, "forward", depth=1)
    labels = " ".join(nodes_of(dot).values())
    assert "stack.0" in labels and "stack.1 \u2026 stack.4" in labels and "Layer \u00d74" in labels
    assert "4 \u00d7 2 ops" in labels and "1,088 params" in labels and "144 params" in labels  # 4 x (16*16 + 16)
    expanded = to_dot(graph, "forward", depth=1, fold_repeats=False)
    assert sum(1 for a in nodes_of(expanded).values() if "box3d" in a) == 5


def test_scan_folded_has_a_carry_back_edge():
    dot = to_dot(golden_spec("rnn_vanilla"), "forward")
    assert 'label="scan rnn: T steps"' in dot
    back = [a for s, d, a in edges_of(dot) if "constraint=false" in a]
    assert len(back) == 1 and 'label="next h"' in back[0] and "dashed" in back[0]


def test_big_graphs_fold_automatically_and_render_fast():
    graph = build("resnet50")
    start = time.perf_counter()
    pictures = [draw(graph, kind) for kind in ("forward", "backward")]
    if shutil.which("dot"):
        for p in pictures:
            render.pipe(p.dot, "svg")
    seconds = time.perf_counter() - start
    assert seconds < 10, f"resnet50 forward + backward took {seconds:.1f} s"
    assert all(p.depth == 1 and p.nodes <= render.MAX_BACKWARD_NODES for p in pictures)
    labels = " ".join(nodes_of(pictures[0].dot).values())
    assert "layer3.1 \u2026 layer3.5" in labels and "Bottleneck \u00d75" in labels
    assert "weight [64, 3, 7, 7]" in labels  # big graphs write the weights into the op's label
    full = draw(graph, "forward", depth="all")
    assert full.depth is None and full.nodes > 170


def test_nothing_from_a_spec_breaks_the_dot():
    graph = golden_spec("chain_rule_demo")
    graph.name = 'Evil"Name'
    graph.nodes["add"].label = 'q<B>"&\\" ]; x -> y; <script>'
    dot = to_dot(graph, "forward")
    assert "<script>" not in dot and "&lt;script&gt;" in dot and "&quot;" in dot
    assert "x -> y;" not in dot.replace("\t", "")  # the injected statement stays inside a label
    if shutil.which("dot"):
        svg = render.pipe(dot, "svg").decode()
        assert "<script>" not in svg and "q&lt;B&gt;" in svg
    assert html_escape("<a href='x'>") == "&lt;a href=&#39;x&#39;&gt;"
    assert '"' not in plain('say "hi" \\N') and "\\" not in plain('say "hi" \\N')


def test_bad_requests():
    graph = golden_spec("chain_rule_demo")
    for kwargs in ({"kind": "sideways"}, {"depth": -1}, {"depth": "deep"}, {"rankdir": "XY"}, {"weights": "many"}):
        with pytest.raises(render.RenderError):
            to_dot(graph, **kwargs)


# ---------------------------------------------------------------------------------------- every spec, both graphs
SPECS = sorted(p.stem for p in SPECS_DIR.glob("*.nn"))


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_renders_forward_and_backward(name):
    graph = build(name)
    forward = draw(graph, "forward")
    try:
        backward = draw(graph, "backward")
    except BackwardUnavailable as e:
        pytest.xfail(str(e))
    for picture, budget in ((forward, render.MAX_NODES), (backward, render.MAX_BACKWARD_NODES)):
        # readable by default: within the budget, or folded as far as the blocks allow
        assert picture.nodes <= budget or picture.depth == 0
        assert len(nodes_of(picture.dot)) == picture.nodes
        if shutil.which("dot"):
            assert render.pipe(picture.dot, "svg").startswith(b"<?xml")


# ---------------------------------------------------------------------------------------- the command line
def test_cli_render_writes_both_graphs(tmp_path):
    spec = str(GOLDEN / "specs" / "chain_rule_demo.nn")
    result = CliRunner().invoke(main, ["render", spec, "-o", str(tmp_path), "-f", "dot", "--values",
                                       "--input", "x=-2", "--input", "y=5", "--input", "z=-4"])
    assert result.exit_code == 0, result.output
    fwd = (tmp_path / "chain_rule_demo.forward.dot").read_text()
    bwd = (tmp_path / "chain_rule_demo.backward.dot").read_text()
    assert "= -12" in fwd and "dL/dz = 3" in fwd and "label=-4" in bwd
    assert "wrote" in result.output and "5 nodes" in result.output


@needs_dot
def test_cli_render_svg_png_pdf(tmp_path):
    spec = str(GOLDEN / "specs" / "mlp.nn")
    for fmt, magic in (("svg", b"<?xml"), ("png", b"\x89PNG"), ("pdf", b"%PDF")):
        result = CliRunner().invoke(main, ["render", spec, "-o", str(tmp_path), "-f", fmt, "--graph", "forward"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"mlp.forward.{fmt}").read_bytes().startswith(magic)
    assert not list(tmp_path.glob(".*")), "no temporary file is left behind"


def test_cli_without_graphviz_writes_dot_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    result = CliRunner().invoke(main, ["render", str(GOLDEN / "specs" / "sigmoid_neuron.nn"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sigmoid_neuron.backward.dot", "sigmoid_neuron.forward.dot"]
    assert "apt-get install graphviz" in result.output and "brew install graphviz" in result.output
    assert result.output.count("apt-get install graphviz") == 1


def test_cli_backward_failure_keeps_forward_and_names_what_is_missing(tmp_path, monkeypatch):
    from nnspec.compiler.ops import gradients
    monkeypatch.delitem(gradients.RULES, "mul")
    result = CliRunner().invoke(main, ["render", str(GOLDEN / "specs" / "chain_rule_demo.nn"), "-o", str(tmp_path),
                                       "-f", "dot"])
    assert result.exit_code == 1
    assert "no gradient rule for mul" in result.output and "Traceback" not in result.output
    assert "the forward graph is in" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["chain_rule_demo.forward.dot"]


def test_cli_bad_input(tmp_path):
    spec = str(GOLDEN / "specs" / "chain_rule_demo.nn")
    result = CliRunner().invoke(main, ["render", spec, "-o", str(tmp_path), "--input", "w=1"])
    assert result.exit_code != 0 and "unknown input `w`" in result.output
    result = CliRunner().invoke(main, ["render", spec, "-o", str(tmp_path), "--depth", "deep"])
    assert result.exit_code != 0 and "--depth" in result.output
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------- Jupyter
def test_repr_svg(monkeypatch):
    import nnspec
    graph = golden_spec("chain_rule_demo")
    if shutil.which("dot"):
        assert graph._repr_svg_().lstrip().startswith("<?xml")
        net = nnspec.compile(str(GOLDEN / "specs" / "sigmoid_neuron.nn"))()
        assert "SigmoidNeuron" in net._repr_svg_()
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    assert graph._repr_svg_() is None  # IPython then falls back to the text form
