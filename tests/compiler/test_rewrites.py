"""The graph rewrites (compiler/passes/rewrite.py) and cse (compiler/passes/cse.py).

For each rewrite: the pattern is found (and left alone where the rewrite would not be exact), the rewritten
graph keeps the invariants (`Graph.lint`), and the compiled module computes the same outputs and the same
gradients as the module compiled from the spec as written (float64, tight tolerance), with the same
parameter names. The backward graph nnspec derives for a rewritten graph is checked against torch.autograd.
"""
from __future__ import annotations

import copy

import pytest
import torch

import nnspec
from nnspec.compiler.codegen.loader import materialize
from nnspec.compiler.execute import backward_module
from nnspec.compiler.passes.cse import eliminate
from nnspec.compiler.pipeline import OPTIMIZATIONS, PASSES, build, run_passes

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def ops(graph) -> list:
    return [n.op for n in graph.nodes.values()]


def compile_text(text: str, optimize: bool = True, params=None, model=None):
    graph = build("rewrite_test.nn", params=params, model=model, text=text, optimize=optimize)
    assert graph.lint() == []
    return graph, materialize(graph)


def pair(text=None, spec=None, params=None, model=None, dtype=torch.float64):
    """(optimised module, module as written), same weights, in `dtype`."""
    if text is not None:
        g_opt, opt_cls = compile_text(text, True, params, model)
        g_raw, raw_cls = compile_text(text, False, params, model)
    else:
        opt_cls = nnspec.compile(spec, params, model)
        raw_cls = nnspec.compile(spec, params, model, optimize=False)
        g_opt, g_raw = opt_cls.graph, raw_cls.graph
    torch.manual_seed(0)
    opt, raw = opt_cls(), raw_cls()
    raw.load_state_dict(opt.state_dict())
    return g_opt, g_raw, opt.to(dtype), raw.to(dtype)


def run(module, args, objective):
    """Outputs and parameter gradients of objective(module(*args))."""
    module.zero_grad(set_to_none=True)
    out = module(*args)
    objective(out).backward()
    return out, {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def assert_same(a, b, tol=1e-10):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_same(a[k], b[k], tol)
        return
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y, tol)
        return
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def assert_equal_training(opt, raw, args, objective, tol=1e-10):
    out_a, grads_a = run(opt, args, objective)
    out_b, grads_b = run(raw, args, objective)
    assert_same(out_a, out_b, tol)
    assert grads_a and set(grads_a) == set(grads_b)
    assert_same(grads_a, grads_b, tol)


def assert_backward_graph_matches_autograd(graph, module, args):
    """nnspec's own backward graph of the (rewritten) graph gives torch.autograd's gradients."""
    mod, bwd, info = backward_module(graph)
    result, saved = mod.forward_saved(module, *args)
    seeds = {}
    objective = 0
    for nid in bwd.inputs:
        name = bwd.nodes[nid].attrs["name"]
        if name == "grad_loss":
            seeds[name] = 1.0
            objective = objective + result["loss"]
        else:
            out = result[name[len("grad_"):]]
            seeds[name] = torch.ones_like(out)
            objective = objective + out.sum()
    ours = mod.backward(module, saved, **seeds)
    module.zero_grad(set_to_none=True)
    objective.backward()
    assert ours
    for name, p in module.named_parameters():
        if name in ours:
            torch.testing.assert_close(ours[name], p.grad, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------ attention
ATTENTION = """
model Attn(C: int = 8, H: int = 2) {{
    input x: f32[B, T, C]
    target y: f32[B, T, C]
    hs = C // H
    q, k, v = chunk(x |> linear(3 * C, name="qkv"), 3, dim=2)
    q = q |> reshape([B, T, H, hs]) |> transpose(1, 2)
    k = k |> reshape([B, T, H, hs]) |> transpose(1, 2)
    v = v |> reshape([B, T, H, hs]) |> transpose(1, 2)
    future = unsqueeze(arange(T), 0) > unsqueeze(arange(T), 1)
    keep = unsqueeze(arange(T), 1) >= unsqueeze(arange(T), 0)
    {scores}
    att = softmax(s, dim=-1) |> dropout({p})
    o = (att @ v) |> transpose(1, 2) |> reshape([B, T, C]) |> linear(C, name="proj")
    loss l = mse_loss(o, y)
    output o{extra}
}}
"""
CAUSAL_FORMS = {
    "masked_fill": "s = masked_fill(q @ k.T / sqrt(hs), future, -inf)",
    "where_keep": "s = where(keep, q @ k.T * 0.5, full([T, T], -inf))",
    "additive": "s = q @ k.T / sqrt(hs) + masked_fill(zeros([T, T]), future, -inf)",
    "mask_then_scale": "s = masked_fill(q @ k.T, future, -inf) * 0.25",
    "permute_no_scale": "s = masked_fill(q @ permute(k, [0, 1, 3, 2]), future, -inf)",
}


def _attention_args(dtype=torch.float64, T=5):
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, T, 8, generator=g, dtype=dtype), torch.randn(2, T, 8, generator=g, dtype=dtype)


@pytest.mark.parametrize("form", sorted(CAUSAL_FORMS))
def test_causal_attention_becomes_sdpa_with_equal_outputs_and_gradients(form):
    text = ATTENTION.format(scores=CAUSAL_FORMS[form], p="0.0", extra="")
    g_opt, g_raw, opt, raw = pair(text)
    assert "softmax" in ops(g_raw) and "softmax" not in ops(g_opt)
    sdpa = [n for n in g_opt.nodes.values() if n.op == "scaled_dot_product_attention"]
    assert len(sdpa) == 1 and sdpa[0].attrs["is_causal"] is True
    assert not {"masked_fill", "where", "arange", "gt", "ge"} & set(ops(g_opt)), "the mask is dead code now"
    want_scale = {"masked_fill": 0.5, "where_keep": 0.5, "additive": 0.5, "mask_then_scale": 0.25,
                  "permute_no_scale": 1.0}[form]
    assert sdpa[0].attrs["scale"] == pytest.approx(want_scale)
    x, y = _attention_args()
    assert_equal_training(opt, raw, (x, y), lambda out: out["loss"] + out["o"].square().sum())
    opt.eval(), raw.eval()
    with torch.no_grad():
        assert_same(opt(x), raw(x))
    assert_backward_graph_matches_autograd(g_opt, opt.train(), (x, y))


def test_unmasked_attention_becomes_sdpa():
    text = ATTENTION.format(scores="s = q @ k.T / sqrt(hs)", p="0.0", extra="")
    g_opt, _, opt, raw = pair(text)
    (node,) = [n for n in g_opt.nodes.values() if n.op == "scaled_dot_product_attention"]
    assert node.attrs["is_causal"] is False
    assert_equal_training(opt, raw, _attention_args(), lambda out: out["loss"])


@pytest.mark.parametrize("scores,p,extra,why", [
    ("s = masked_fill(q @ k.T / sqrt(hs), keep, -inf)", "0.0", "", "the mask hides the past: not causal"),
    ("s = masked_fill(q @ k.T / sqrt(hs), future, -1000000000.0)", "0.0", "", "a finite fill is not -inf"),
    ("s = masked_fill(q @ k.T / sqrt(hs), future, -inf)", "0.1", "", "dropout p > 0 draws other numbers in SDPA"),
    ("s = masked_fill(q @ k.T / sqrt(hs), future, -inf)", "0.0", ", w = softmax(s, dim=-1)",
     "the scores are also used elsewhere"),
    ("s = masked_fill(q @ k.T / sqrt(hs), v @ v.T > 0.0, -inf)", "0.0", "", "a mask that depends on the data"),
])
def test_attention_that_is_not_exactly_sdpa_stays_spelled_out(scores, p, extra, why):
    graph = build("rewrite_test.nn", text=ATTENTION.format(scores=scores, p=p, extra=extra), optimize=True)
    assert "scaled_dot_product_attention" not in ops(graph), why
    assert "softmax" in ops(graph)


def test_gpt2_small_attention_is_sdpa_and_training_is_unchanged():
    params = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8, "vocab_size": 40}
    g_opt, g_raw, opt, raw = pair(spec="gpt2_small", params=params, model="GPT2Small")
    assert ops(g_opt).count("scaled_dot_product_attention") == 2 and "softmax" not in ops(g_opt)
    assert "linear_cross_entropy" in ops(g_opt) and "cross_entropy" not in ops(g_opt)
    assert "dropout" not in ops(g_opt), "dropout(p=0) is read through"
    assert set(opt.state_dict()) == set(raw.state_dict())
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 40, (3, 6), generator=gen)
    targets = torch.randint(0, 40, (3, 6), generator=gen)
    targets[0, :2] = -1                                   # ignore_index=-1 positions (nanoGPT's convention)
    assert_equal_training(opt, raw, (idx, targets), lambda out: out["loss"])
    assert_equal_training(opt, raw, (idx, targets), lambda out: out["loss"] + out["logits"].square().mean())
    assert_backward_graph_matches_autograd(g_opt, opt, (idx, targets))
    opt.eval(), raw.eval()
    with torch.no_grad():
        assert_same(opt(idx), raw(idx))
        assert_same(opt(idx, targets), raw(idx, targets))


def test_gpt2_small_has_the_canonical_parameter_count():
    assert build("gpt2_small").param_count() == 124_439_808
    assert build("gpt2_small", optimize=True).param_count() == 124_439_808


# ------------------------------------------------------------------------------------------ linear + cross-entropy
def test_linear_cross_entropy_in_float32_matches_and_stores_less():
    params = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": 20000}
    _, _, opt, raw = pair(spec="gpt2_small", params=params, model="GPT2Small", dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, 20000, (4, 16), generator=gen), torch.randint(0, 20000, (4, 16), generator=gen)
    assert_equal_training(opt, raw, (idx, targets), lambda out: out["loss"], tol=2e-5)
    from nnspec.bench import peak_memory

    def step(m):
        return lambda: m(idx, targets)["loss"].backward()
    for m in (opt, raw):
        m.zero_grad(set_to_none=True)
    assert peak_memory(torch, step(opt)) < 0.7 * peak_memory(torch, step(raw))


def test_linear_cross_entropy_gradient_scales_and_survives_a_second_backward_pass():
    """backward hands the gradient it took in the forward pass over in place: a scaled loss, a loss and the logits
    both reaching the objective, and a second backward pass through the same graph still give autograd's values."""
    text = """
model M(V: int = 7) {
    input x: f32[B, 4]
    target y: i64[B]
    param w: f32[V, 4] = normal(std=0.5)
    loss a = cross_entropy(x @ w.T, y, ignore_index=-1)
    output logits = x @ w.T
}
"""
    _, _, opt, raw = pair(text)
    assert "_LinearCrossEntropy" in type(opt).source_code
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 6, -1, 3, 1, 3])
    for objective in (lambda out: 3.0 * out["loss"], lambda out: out["loss"] + out["logits"].square().mean()):
        assert_equal_training(opt, raw, (x, y), objective)
    grads = []
    for m in (opt, raw):
        m.zero_grad(set_to_none=True)
        loss = m(x, y)["loss"]
        loss.backward(retain_graph=True)
        (2.0 * loss).backward()
        grads.append(m.w.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_a_biased_or_smoothed_cross_entropy_is_left_alone():
    text = """
model M(V: int = 7) {
    input x: f32[B, 4]
    target y: i64[B]
    param w: f32[V, 4] = normal(std=0.1)
    logits = x @ w.T
    loss a = cross_entropy(logits, y, label_smoothing=0.1)
    output logits
}
"""
    graph = build("rewrite_test.nn", text=text, optimize=True)
    assert "linear_cross_entropy" not in ops(graph)
    graph = build("rewrite_test.nn", text=text.replace(", label_smoothing=0.1", ""), optimize=True)
    assert "linear_cross_entropy" in ops(graph)
    g_opt, _, opt, raw = pair(text.replace(", label_smoothing=0.1", ""))
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 6, 3, 3, 1])
    assert_equal_training(opt, raw, (x, y), lambda out: out["loss"])
    assert_backward_graph_matches_autograd(g_opt, opt, (x, y))


# ------------------------------------------------------------------------------------------ LSTM
def test_lstm_scan_becomes_torch_lstm():
    g_opt, g_raw, opt, raw = pair(spec="lstm", params={"input_size": 3, "hidden_size": 5}, model="LSTM")
    assert "scan" in ops(g_raw) and "scan" not in ops(g_opt) and ops(g_opt).count("lstm") == 1
    assert list(opt.state_dict()) == list(raw.state_dict())
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    assert_equal_training(opt, raw, (x,), lambda out: out[0].square().sum() + out[1].sum() + 2 * out[2].sum())
    assert_equal_training(opt, raw, (x,), lambda out: out[0].sum())        # no gradient reaches h_n and c_n
    assert_backward_graph_matches_autograd(g_opt, opt, (x,))


def test_stacked_lstm_and_a_reordered_cell_are_recognised():
    g_opt, _, opt, raw = pair(spec="lstm", params={"input_size": 3, "hidden_size": 4, "num_layers": 3},
                              model="LSTMStacked")
    assert ops(g_opt).count("lstm") == 3 and "scan" not in ops(g_opt)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    assert_equal_training(opt, raw, (x,), lambda out: sum(o.square().sum() for o in out))
    reordered = """
block Cell(H: int) (x_t: [B, _], h: [B, H], c: [B, H]) {
    z = h |> linear(4 * H, bias=false, name="hh") + x_t |> linear(4 * H, bias=false, name="ih")
    i, f, g, o = chunk(z, 4, dim=-1)
    c2 = sigmoid(i) * tanh(g) + c * sigmoid(f)
    return tanh(c2) * sigmoid(o), c2
}
model M {
    input x: f32[T, B, 3]
    hs, h, c = scan(Cell(4, name="cell"), x, zeros([B, 4]), zeros([B, 4]), axis=0)
    output hs, c
}
"""
    g_opt, _, opt, raw = pair(reordered)
    (node,) = [n for n in g_opt.nodes.values() if n.op == "lstm"]
    assert node.attrs["batch_first"] is False and len(node.inputs) == 5       # time first, no biases
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    assert_equal_training(opt, raw, (x,), lambda out: out[0].sum() + out[1].square().sum())


@pytest.mark.parametrize("change,why", [
    ("c2 = sigmoid(i) * tanh(g) + c * sigmoid(f)", None),
    ("c2 = sigmoid(f) * tanh(g) + c * sigmoid(i)", "gates i and f swapped: not torch's order"),
    ("c2 = sigmoid(i) * tanh(g) + c * tanh(f)", "another activation"),
])
def test_a_cell_that_is_not_torch_lstm_stays_a_scan(change, why):
    text = """
block Cell(H: int) (x_t: [B, _], h: [B, H], c: [B, H]) {
    i, f, g, o = chunk(x_t |> linear(4 * H, name="ih") + h |> linear(4 * H, name="hh"), 4, dim=1)
    CHANGE
    return sigmoid(o) * tanh(c2), c2
}
model M {
    input x: f32[B, T, 3]
    hs, h, c = scan(Cell(4, name="cell"), x, zeros([B, 4]), zeros([B, 4]))
    output hs
}
""".replace("CHANGE", change)
    graph = build("rewrite_test.nn", text=text, optimize=True)
    assert ("lstm" in ops(graph)) == (why is None), why
    reverse = build("rewrite_test.nn", text=text.replace("zeros([B, 4]))", "zeros([B, 4]), reverse=true)"),
                    optimize=True)
    assert "lstm" not in ops(reverse), "a reversed scan is not torch.lstm"


def test_gru_and_vanilla_rnn_scans_are_left_alone():
    for spec in ("rnn_vanilla",):
        graph = build(spec, optimize=True)
        assert "scan" in ops(graph) and "lstm" not in ops(graph)


# ------------------------------------------------------------------------------------------ layout, folding
def _conv_output_layouts(module, x, *rest) -> dict:
    """{conv module name: "channels_last" | "standard"}: the layout each convolution's output really has."""
    seen, hooks = {}, []
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            def hook(mod, args, out, name=name):
                seen[name] = "channels_last" if not out.is_contiguous() and \
                    out.is_contiguous(memory_format=torch.channels_last) else "standard"
            hooks.append(m.register_forward_hook(hook))
    module(x, *rest)
    for h in hooks:
        h.remove()
    return seen


def test_convolutional_models_run_channels_last_with_equal_results():
    g_opt, g_raw, opt, raw = pair(spec="mnist_cnn", dtype=torch.float32)
    convs = [n.id for n in g_opt.nodes.values() if n.op == "conv2d"]
    assert g_opt.channels_last == convs and len(convs) == 2, "26x26 and 11x11 maps: both NHWC"
    assert not getattr(g_raw, "channels_last", None)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    # the one-channel input is ambiguous: only `to(memory_format=...)` makes oneDNN run the first conv NHWC
    assert _conv_output_layouts(opt, x) == {"cnn.0": "channels_last", "cnn.3": "channels_last"}
    assert _conv_output_layouts(raw, x) == {"cnn.0": "standard", "cnn.3": "standard"}
    assert_equal_training(opt, raw, (x, y), lambda out: out["loss"], tol=1e-5)
    # weights keep the standard layout: state_dicts move between the two unchanged
    assert all(p.is_contiguous() for p in opt.parameters())
    raw.load_state_dict(opt.state_dict())
    assert not getattr(build("mlp", optimize=True), "channels_last", None)
    # the region ends before the flatten: the gradient comes back channels-last, nothing is copied in backward
    (exit_,) = [n for n in g_opt.nodes.values() if n.op == "standard_layout"]
    assert [n.op for n in g_opt.nodes.values() if (exit_.id, 0) in [tuple(r) for r in n.inputs]] == ["flatten"]
    (entry,) = [n for n in g_opt.nodes.values() if n.op == "channels_last"]
    assert entry.inputs[0][0] == g_opt.inputs[0]
    from nnspec.bench import peak_memory
    opt, raw = opt.float(), raw.float()

    def step(m):
        return lambda: m(x, y)["loss"].backward()
    for m in (opt, raw):
        m.zero_grad(set_to_none=True)
    assert peak_memory(torch, step(opt)) <= peak_memory(torch, step(raw))


def test_small_feature_maps_stay_in_the_standard_layout():
    from nnspec.compiler.passes.rewrite import CL_MIN_PIXELS
    g_opt, _, opt, raw = pair(spec="resnet18", params=RESNET_64, dtype=torch.float32)
    by_id = {n.id: n for n in g_opt.nodes.values()}
    for n in by_id.values():
        if n.op == "conv2d":
            pixels = n.outputs[0].shape[2] * n.outputs[0].shape[3]
            assert (n.id in g_opt.channels_last) == (pixels >= CL_MIN_PIXELS), (n.label, n.outputs[0].shape)
    # one region: NHWC from the input (stem 32x32 .. layer2 8x8), NCHW from layer3 (4x4) on; one conversion each way
    assert ops(g_opt).count("channels_last") == 1 and ops(g_opt).count("standard_layout") == 1
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 10, (2,))
    seen = _conv_output_layouts(opt, x)
    assert seen["conv1"] == seen["layer2.1.conv2"] == seen["layer2.0.downsample.0"] == "channels_last"
    assert seen["layer3.0.conv1"] == seen["layer4.1.conv2"] == "standard"
    assert_equal_training(opt, raw, (x, y), lambda out: out["loss"], tol=1e-4)
    # the gradient that leaves a conversion has the layout of the value that entered it
    xg = x.clone().requires_grad_()
    opt(xg, y)["loss"].backward()
    assert xg.grad.is_contiguous()
    symbolic = build("rewrite_test.nn", text="""
model M {
    input x: f32[B, 3, H, W]
    output y = x |> conv2d(4, 3) |> relu
}
""", optimize=True)
    assert symbolic.channels_last == [] and "channels_last" not in ops(symbolic), "unknown image sizes: no guess"


def test_max_pooling_of_a_relu_output_keeps_no_indices():
    g_opt, _, opt, raw = pair(spec="mnist_cnn", dtype=torch.float64)
    pools = [n.id for n in g_opt.nodes.values() if n.op == "max_pool2d"]
    assert sorted(g_opt.pool_from_input) == sorted(pools) and len(pools) == 2  # after in-place leaky ReLUs
    assert "_max_pool2d_from_input(" in type(opt).source_code
    x, y = torch.randn(3, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (3,))
    assert_equal_training(opt, raw, (x, y), lambda out: out["loss"])

    def saved_dtypes(module):
        dtypes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: dtypes.append(t.dtype) or t, lambda t: t):
            module(x, y)["loss"].backward()
        return dtypes
    # as written, each pooling keeps int64 indices (and the loss keeps the int64 targets); rewritten, only the targets
    assert saved_dtypes(opt).count(torch.int64) == saved_dtypes(raw).count(torch.int64) - 2
    # a pooling whose input the backward pass does not keep (a convolution's output) keeps its indices
    g = build("rewrite_test.nn", text="""
model M {
    input x: f32[B, 2, 8, 8]
    output y = x |> conv2d(3, 3) |> max_pool2d(2)
    output z = x |> conv2d(3, 3, name="c2") |> relu |> max_pool2d(2)
}
""", optimize=True)
    chosen = {g.nodes[n].label or n for n in g.pool_from_input}
    assert len(g.pool_from_input) == 1 and all(
        g.nodes[tuple(g.nodes[n].inputs[0])[0]].op == "relu" for n in g.pool_from_input), chosen


def test_a_4d_output_is_given_back_in_the_standard_layout():
    text = """
model M {
    input x: f32[B, 2, 6, 6]
    output y = x |> conv2d(3, 3, padding=1) |> relu
}
"""
    _, _, opt, raw = pair(text, dtype=torch.float32)
    x = torch.randn(2, 2, 6, 6)
    out = opt(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, raw(x))


RESNET = {"classes": 5, "size": 32}
RESNET_64 = {"classes": 10, "size": 64}


def test_conv_batch_norm_folds_in_inference_only():
    g_opt, _, opt, raw = pair(spec="resnet18", params=RESNET)
    assert len(g_opt.conv_bn_folds) == 20                # every conv of ResNet-18 feeds only its batch norm
    x, y = torch.randn(3, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 4, 2])
    assert_equal_training(opt, raw, (x, y), lambda out: out["loss"], tol=1e-9)
    assert_same(opt.state_dict(), raw.state_dict(), 1e-9)          # running statistics updated alike
    opt.eval(), raw.eval()
    with torch.no_grad():
        assert_same(opt(x), raw(x), 1e-9)                             # folded
        cache = opt.layer1[0].conv1.__dict__.get("_nnspec_folded")
        assert cache, "inference ran the folded convolution"
        for m in (opt, raw):                                          # statistics change: the fold follows
            m.layer1[0].bn1.running_var.mul_(3.0)
            m.layer1[0].bn1.weight.add_(0.5)
        assert_same(opt(x), raw(x), 1e-9)
    out_a, grads_a = run(opt, (x,), lambda out: out.sum())            # eval with autograd on: not folded
    out_b, grads_b = run(raw, (x,), lambda out: out.sum())
    assert_same(out_a, out_b, 1e-9)
    assert_same(grads_a, grads_b, 1e-9)
    with torch.inference_mode():
        assert_same(opt(x), raw(x), 1e-9)


def test_activations_overwrite_inputs_that_nothing_else_needs():
    g_opt, _, opt, raw = pair(spec="mnist_cnn", dtype=torch.float32)
    assert {g_opt.nodes[n].op for n in g_opt.inplace} == {"leaky_relu"} and len(g_opt.inplace) == 3
    assert "F.leaky_relu(h, 0.01, inplace=True)" in type(opt).source_code
    from nnspec.bench import peak_memory
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for m in (opt, raw):
        m.zero_grad(set_to_none=True)
    assert peak_memory(torch, lambda: opt(x, y)["loss"].backward()) < 0.9 * peak_memory(
        torch, lambda: raw(x, y)["loss"].backward())
    text = """
model M {
    input x: f32[B, 4]
    h = x |> linear(4, name="a")
    r = relu(h) + h                                   # h is read again: not in place
    s = sigmoid(x |> linear(4, name="b")) |> tanh     # tanh's input is sigmoid's output, which sigmoid keeps
    l = leaky_relu(x |> linear(4, name="c"), -0.5)    # negative slope: torch cannot invert it in place
    t = relu(x |> linear(4, name="d"))                # a fresh value nobody else reads: in place
    output y = r + s + l + t
}
"""
    g_opt, _, opt, raw = pair(text)
    chosen = {g_opt.nodes[n].op for n in g_opt.inplace}
    assert chosen == {"relu", "sigmoid"} and len(g_opt.inplace) == 2
    assert_equal_training(opt, raw, (torch.randn(3, 4, dtype=torch.float64),), lambda out: out.square().sum())


def test_folding_needs_the_convolution_output_to_feed_only_the_norm():
    text = """
model M {
    input x: f32[B, 2, 6, 6]
    h = x |> conv2d(3, 3, padding=1, name="conv")
    output y = h |> batch_norm(name="bn")
    output z = h
}
"""
    graph = build("rewrite_test.nn", text=text, optimize=True)
    assert graph.conv_bn_folds == {}


# ------------------------------------------------------------------------------------------ cse, dce, lint
CSE = """
model M {
    input x: f32[B, 4]
    let fc = linear(4)
    a = x |> fc
    b = x |> fc
    c = sigmoid(a) + sigmoid(b)
    d = dropout(c, 0.5) + dropout(c, 0.5)
    e = x |> batch_norm(name="bn")
    output y = d + cast(arange(B), "f32") |> unsqueeze(1) + cast(arange(B), "f32") |> unsqueeze(1) + e
}
"""


def test_cse_merges_equal_computations_and_nothing_else():
    before = build("cse.nn", text=CSE, optimize=False)
    counts = {op: ops(before).count(op) for op in ("linear", "sigmoid", "dropout", "arange", "cast", "unsqueeze")}
    assert counts == {"linear": 1, "sigmoid": 1, "dropout": 2, "arange": 1, "cast": 1, "unsqueeze": 1}
    assert before.lint() == []
    g_raw = run_passes(__import__("nnspec.dsl.elaborate", fromlist=["elaborate"]).elaborate(
        __import__("nnspec.dsl.loader", fromlist=["load"]).load("cse.nn", text=CSE)), PASSES[:3])
    assert ops(g_raw).count("linear") == 2 and ops(g_raw).count("sigmoid") == 2 and ops(g_raw).count("arange") == 2
    assert eliminate(g_raw) == 5                       # linear, sigmoid, arange, cast, unsqueeze
    assert eliminate(g_raw) == 0
    assert ops(g_raw).count("dropout") == 2, "random draws are never merged"


def test_cse_keeps_values_that_differ_in_type_or_attributes():
    text = """
model M {
    input x: f32[B, 4]
    a = x * 1.0 + x * 2.0 + cast(x, "f64") |> cast("f32") + cast(x, "i64") |> cast("f32")
    output y = a + sum(x, dim=0) + sum(x, dim=1) |> unsqueeze(1)
}
"""
    graph = build("cse.nn", text=text)
    assert ops(graph).count("mul") == 2 and ops(graph).count("sum") == 2 and ops(graph).count("cast") == 4


def test_every_optimisation_pass_leaves_a_valid_graph():
    for spec, params, model in (("gpt2_small", {"n_layer": 2}, "GPT2Small"), ("lstm", None, "LSTMStacked"),
                                ("resnet18", RESNET, None), ("mnist_cnn", None, None), ("mlp", None, None)):
        graph = build(spec, params, model)
        for p in OPTIMIZATIONS:
            graph = p.run(graph)
            assert graph.lint() == [], f"{spec}: after {p.name}: {graph.lint()}"


def test_no_optimize_compiles_the_spec_as_written():
    g = build("gpt2_small", {"n_layer": 1}, "GPT2Small")
    assert "scaled_dot_product_attention" not in ops(g) and "softmax" in ops(g)
    cls = nnspec.compile("gpt2_small", {"n_layer": 1}, "GPT2Small", optimize=False)
    assert "scaled_dot_product_attention" not in ops(cls.graph)
    assert nnspec.compile("gpt2_small", {"n_layer": 1}, "GPT2Small") is not cls


def test_references_load_the_compiled_state_dicts():
    """benchmarks/references.py: every reference takes the optimised module's weights and agrees with it."""
    from nnspec.bench import load_references
    refs = load_references().REFERENCES
    cases = [("mlp", None, {}, (torch.randn(2, 1, 28, 28),)),
             ("resnet18", None, RESNET, (torch.randn(2, 3, 32, 32),)),
             ("lstm", "LSTM", {"input_size": 3, "hidden_size": 4}, (torch.randn(2, 5, 3),)),
             ("gpt2_small", "GPT2Small", {"n_layer": 1, "vocab_size": 50, "n_embd": 16, "n_head": 2},
              (torch.randint(0, 50, (2, 7)),))]
    for name, model, params, args in cases:
        cls = nnspec.compile(name, params, model)
        torch.manual_seed(0)
        net = cls().eval()
        ref = refs[name](**cls.spec_params).eval()
        ref.load_state_dict(copy.deepcopy(net.state_dict()))
        with torch.no_grad():
            assert_same(net(*args), ref(*args), 1e-5)
