"""The fusion pass (compiler/passes/fuse.py): which ops it groups, the boundaries it records and why, its
explanation, its post-conditions on every spec, and how the generated module and the renderer use the plan.

No torch here except where a generated module runs (the last tests); the kernels themselves are checked in
tests/compiler/test_triton.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import nnspec
from nnspec.compiler import pipeline
from nnspec.compiler.autodiff import build_backward
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.scalar import NO_SCALAR, SCALAR
from nnspec.compiler.passes.fuse import MAX_GROUP, ROW_REDUCTIONS, explain, fuse, layout

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(list((ROOT / "specs").glob("*.nn")) + list((ROOT / "specs").glob("*.yaml")))


def build(body: str, header: str = "model M"):
    return pipeline.build("fusion_test.nn", text=f"{header} {{\n{body}\n}}\n")


def groups_of(graph, plan=None):
    """Each group as (kind, ops in order): the structural picture a test compares."""
    plan = plan or fuse(graph)
    return [(g.kind, [graph.nodes[n].op for n in g.nodes]) for g in plan.groups]


def reasons(graph, plan, producer_op: str, consumer_op: str) -> list[str]:
    return [b.reason for b in plan.boundaries
            if graph.nodes[b.producer].op == producer_op and graph.nodes[b.consumer].op == consumer_op]


# ------------------------------------------------------------------------------------------ the registry
def test_every_elementwise_and_broadcast_op_has_a_scalar_expression_or_a_reason():
    missing = [name for name, op in REGISTRY.items()
               if op.kind in ("elementwise", "broadcast") and op.scalar is None and name not in NO_SCALAR]
    assert not missing, f"add a Triton scalar expression to compiler/ops/scalar.py (or a NO_SCALAR reason): {missing}"
    both = [name for name in NO_SCALAR if REGISTRY.get(name) is not None and REGISTRY[name].scalar is not None]
    assert not both, f"ops with a scalar expression and a reason not to fuse: {both}"


def test_every_row_reduction_has_a_scalar_expression():
    assert all(REGISTRY[name].scalar is SCALAR[name] for name in ROW_REDUCTIONS)


# ------------------------------------------------------------------------------------------ what fuses
def test_bias_and_activation():
    graph = build("""
    input x: f32[B, 8]
    param W: f32[8, 16] = normal(std=1.0)
    param b: f32[16] = normal(std=1.0)
    output y = gelu(x @ W + b)""")
    plan = fuse(graph)
    assert groups_of(graph, plan) == [("elementwise", ["add", "gelu"])]
    g = plan.groups[0]
    assert [graph.nodes[r[0]].op for r in g.inputs] == ["matmul", "parameter"] and len(g.outputs) == 1
    assert reasons(graph, plan, "matmul", "add") == [
        "matmul is opaque (a library call: cuBLAS/cuDNN/oneDNN, or a dedicated backward op)"]


def test_attention_scale_mask_softmax_is_one_row_kernel():
    graph = build("""
    input s: f32[B, H, T, T]
    input m: bool[T, T]
    output p = softmax(masked_fill(s / 8.0, m, -inf), dim=-1)""")
    plan = fuse(graph)
    assert groups_of(graph, plan) == [("row_reduction", ["div", "masked_fill", "softmax"])]
    assert plan.groups[0].shape == graph.type_of(graph.outputs["p"]).shape


def test_softmax_and_layer_norm_written_by_hand():
    graph = build("""
    input x: f32[N, 10]
    z = exp(x - amax(x, dim=-1, keepdim=true))
    output p = z / sum(z, dim=-1, keepdim=true)
    mu = mean(x, dim=-1, keepdim=true)
    v = mean((x - mu) ** 2, dim=-1, keepdim=true)
    output n = (x - mu) * rsqrt(v + 0.00001)""")
    assert groups_of(graph) == [
        ("row_reduction", ["amax", "sub", "exp", "sum", "div"]),
        ("row_reduction", ["mean", "sub", "pow", "mean", "add", "rsqrt", "mul"]),
    ]


def test_log_softmax_after_a_scale_and_row_values_combined_per_row():
    graph = build("""
    input x: f32[N, 10]
    output ls = log_softmax(x * 2.0, dim=-1)
    output r = sqrt(sum(x * x, dim=-1)) + logsumexp(x, dim=-1)""")
    assert groups_of(graph) == [("row_reduction", ["mul", "log_softmax"]),
                                ("row_reduction", ["mul", "sum", "sqrt", "logsumexp", "add"])]


def test_loss_epilogue_over_a_vector():
    graph = build("""
    input x: f32[B, 4]
    target y: f32[B]
    param w: f32[4] = normal(std=1.0)
    yhat = x @ w
    loss mse = mean((yhat - y) ** 2)
    output yhat""")
    plan = fuse(graph)
    assert groups_of(graph, plan) == [("row_reduction", ["sub", "pow", "mean"])]
    assert plan.groups[0].shape == graph.type_of(graph.outputs["yhat"]).shape   # one row: the batch


def test_residual_add_and_layer_norm_take_the_norms_parameters():
    graph = build("""
    input x: f32[B, T, 16]
    h = x |> linear(16)
    x = x + h
    output y = layer_norm(x, name="ln")
    output x""")
    plan = fuse(graph)
    assert groups_of(graph, plan) == [("row_reduction", ["add", "layer_norm"])]
    g = plan.groups[0]
    assert g.params == [("ln", "weight"), ("ln", "bias")] and len(g.outputs) == 2   # the sum is used outside


def test_dropout_fuses_other_random_ops_and_library_layers_are_boundaries_with_reasons():
    graph = build("""
    input x: f32[B, 4, 16]
    h = x |> linear(16)
    h = dropout(relu(h * 2.0), 0.1)
    h = dropout2d(h + 1.0, 0.2)
    output y = layer_norm(x + h, dims=2)""")
    plan = fuse(graph)
    assert groups_of(graph, plan) == [("elementwise", ["mul", "relu", "dropout", "add"])]
    assert "one draw per channel" in reasons(graph, plan, "add", "dropout2d")[0]
    assert reasons(graph, plan, "linear", "mul") == ["linear owns parameters (a library layer)"]
    assert reasons(graph, plan, "add", "layer_norm") == [
        "layer_norm normalises over more than the last dimension (a library layer)"]


def test_backward_graph_fuses_the_gradient_rules():
    """softmax's gradient y * (g - sum(g * y)) and the scale's are one row kernel of the backward graph."""
    graph = build("""
    input s: f32[B, T, T]
    target t: f32[B, T, T]
    p = softmax(s / 8.0, dim=-1)
    loss l = mse_loss(p, t)
    output p""")
    backward, _ = build_backward(graph, wrt_inputs=True)
    assert ("row_reduction", ["mul", "sum", "sub", "mul", "div"]) in groups_of(backward)


# ------------------------------------------------------------------------------------------ what does not
def test_size_cap_splits_a_chain():
    graph = build("""
    input x: f32[B, 8]
    output y = exp(sin(cos(tanh(x))))""")
    assert groups_of(graph) == [("elementwise", ["tanh", "cos", "sin", "exp"])]
    plan = fuse(graph, max_group=2)
    assert groups_of(graph, plan) == [("elementwise", ["tanh", "cos"]), ("elementwise", ["sin", "exp"])]
    assert reasons(graph, plan, "cos", "sin") == ["size cap: the group already has 2 ops"]
    assert MAX_GROUP >= 16


def test_a_group_never_waits_on_work_outside_it():
    graph = build("""
    input x: f32[B, 8]
    param W: f32[8, 8] = normal(std=1.0)
    a = exp(x)
    output y = a * (a @ W)""")
    plan = fuse(graph)
    assert plan.groups == []
    assert reasons(graph, plan, "exp", "mul") == [
        "fusing would make the group wait on work outside it (a path leaves the group and comes back)"]


def test_values_only_the_losses_need_are_not_fused_with_the_outputs():
    graph = build("""
    input x: f32[B, 8]
    target t: f32[B, 8]
    h = relu(x * 2.0)
    loss l = mean(exp(h) * t)
    output h""")
    plan = fuse(graph)
    assert groups_of(graph, plan) == [("elementwise", ["mul", "relu"]), ("elementwise", ["exp", "mul"])]
    assert reasons(graph, plan, "relu", "exp") == [
        "only the losses need one side: forward() computes it after returning the outputs"]


def test_a_row_value_without_keepdim_does_not_meet_a_full_row():
    """torch broadcasts x [N, N] - s [N] along the last dimension (columns), not per row: not a row kernel."""
    graph = build("""
    input x: f32[N, N]
    output y = exp(x - sum(x, dim=-1))""")
    plan = fuse(graph)
    assert all(graph.nodes[n].op != "sub" or g.kind == "elementwise" for g in plan.groups for n in g.nodes)
    assert any("would broadcast along the last dimension" in b.reason for b in plan.boundaries)
    assert layout(("N",), ("N", "N")) == "row" and layout(("N", 1), ("N", "N")) == "keep"


def test_column_reductions_and_views_stay_in_torch():
    graph = build("""
    input x: f32[B, 8]
    output s = sum(relu(x * 2.0), dim=0)
    output r = relu(x * 3.0) |> reshape([B, 2, 4]) |> exp""")
    plan = fuse(graph)
    assert groups_of(graph, plan) == [("elementwise", ["mul", "relu"]), ("elementwise", ["mul", "relu"])]
    assert "reduces other than along the last dimension" in reasons(graph, plan, "relu", "sum")[0]
    assert "moves data" in reasons(graph, plan, "relu", "reshape")[0]


# ------------------------------------------------------------------------------------------ every spec
def _plans():
    from nnspec.dsl.loader import load
    for path in SPECS:
        for model in [m.name for m in load(str(path)).root.models]:
            graph = nnspec.build(str(path), model=model)
            yield f"{path.name}::{model}", graph
            try:
                backward, _ = build_backward(graph)
            except Exception:  # noqa: BLE001 - specs without a backward graph are tests/compiler/test_backward_specs's
                continue
            yield f"{path.name}::{model} backward", backward


def test_plans_keep_their_post_conditions_on_every_spec():
    """Groups are disjoint, in topological order, convex, under the cap; inputs come from outside, outputs are
    used outside; every boundary has a reason and crosses groups."""
    import networkx as nx
    checked = 0
    for where, graph in _plans():
        plan = fuse(graph)
        pos = {nid: i for i, nid in enumerate(graph.topo_order())}
        seen: set = set()
        for g in plan.groups:
            members = set(g.nodes)
            assert len(g.nodes) >= 2 and len(g.nodes) <= MAX_GROUP, where
            assert not members & seen, f"{where}: {g.name} overlaps another group"
            seen |= members
            assert g.nodes == sorted(g.nodes, key=pos.__getitem__), where
            assert all(plan.group_of[n] == g.id for n in g.nodes), where
            assert all(r[0] not in members and graph.nodes[r[0]].op != "constant" for r in g.inputs), where
            results = {tuple(r)[0] for r in graph.result_refs()}
            for ref in g.outputs:
                assert ref[0] in members and (ref[0] in results or set(graph.users(ref[0])) - members), where
            for nid in members:
                for src, _ in graph.nodes[nid].inputs:   # convex: no input from outside depends on a member
                    if src not in members:
                        assert not (nx.ancestors(graph.nx, src) & members), f"{where}: {g.name} is not convex"
        for b in plan.boundaries:
            assert b.reason and plan.group_of.get(b.producer) != plan.group_of.get(b.consumer, -1), where
        checked += 1
    assert checked >= len(SPECS)


def test_explain_lists_groups_ops_bytes_and_reasons():
    graph = nnspec.build(str(ROOT / "specs" / "resnet_block.nn"))
    text = explain(graph, fuse(graph))
    assert text.startswith("fusion plan for ResidualBlock: 2 group(s), 4 of")
    assert "fused_0 [elementwise, 2 ops over [B, 128, 16, 16]]" in text and "add -> relu" in text
    assert "saves 262144*B bytes of memory traffic (256.0 KiB at B=1)" in text
    assert "total traffic saved: 524288*B bytes" in text
    assert "boundaries (edges not fused, and why):" in text
    assert "batch_norm(batch_norm_1) -> add(add): batch_norm owns parameters (a library layer)" in text
    at_64 = explain(graph, fuse(graph), {"B": 64})
    assert "(16.0 MiB at B=64)" in at_64


def test_cli_compile_explain_prints_the_forward_and_the_backward_plan(tmp_path):
    from click.testing import CliRunner

    from nnspec.cli import main
    result = CliRunner().invoke(main, ["compile", str(ROOT / "specs" / "resnet_block.nn"), "-o", str(tmp_path),
                                       "--explain", "--dim", "B=8"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("wrote ") and (tmp_path / "resnet_block.py").exists()
    assert "fusion plan for ResidualBlock:" in out and "fusion plan for ResidualBlock.backward:" in out
    assert "add -> relu" in out and "gt -> where" in out and "at B=8" in out
    cnn = CliRunner().invoke(main, ["compile", "mnist_cnn", "-o", str(tmp_path), "--explain"])
    assert cnn.exit_code == 0, cnn.output
    assert "rewrites of MnistCNN (compiler/passes/rewrite.py):" in cnn.output
    assert "layouts: 2 of 2 2-d convolution(s) channels-last (output maps of at least 64 pixels): cnn.0, cnn.3" \
        in cnn.output
    assert "channels_last(x) before cnn.0" in cnn.output and "standard_layout(h) before flatten at" in cnn.output
    assert "max pooling that keeps its input, not indices: max_pool2d at specs/mnist_cnn.nn:15" in cnn.output
    raw = CliRunner().invoke(main, ["compile", "mnist_cnn", "-o", str(tmp_path), "--explain", "--no-optimize"])
    assert "rewrites of MnistCNN (compiler/passes/rewrite.py):\n  none applies" in raw.output
    bad = CliRunner().invoke(main, ["compile", str(ROOT / "specs" / "resnet_block.nn"), "-o", str(tmp_path),
                                    "--explain", "--dim", "B=0"])
    assert bad.exit_code != 0 and "B must be a positive integer" in bad.output


# ------------------------------------------------------------------------------------------ users of the plan
def test_renderer_outlines_fusion_groups():
    from nnspec.compiler.render import to_dot
    graph = nnspec.build(str(ROOT / "specs" / "resnet_block.nn"))
    forward = to_dot(graph, "forward", depth="all")
    assert forward.count("subgraph cluster_fused_") == 2
    assert 'label=fused_0' in forward and "style=dashed" in forward
    # the backward graph's groups, except one whose ops sit in two blocks (the skip's gradient accumulates)
    assert to_dot(graph, "backward", depth="all").count("subgraph cluster_fused_") == 3
    folded = to_dot(graph, "forward", depth=0)     # the blocks fold: their groups are not drawn
    assert "cluster_fused" not in folded


def test_generated_forward_calls_one_function_per_group():
    from nnspec.compiler.codegen.pytorch import generate
    graph = pipeline.build("fusion_test.nn", text="""model M {
    input x: f32[B, 8]
    param W: f32[8, 8] = normal(std=1.0)
    param b: f32[8] = normal(std=1.0)
    a = exp(x * 0.5)
    w = x @ W
    output y = relu(a * w + b)
}
""")
    fused = generate(graph)
    plain = generate(graph, kernels=False)
    forward = fused[fused.index("    def forward(self"):]
    assert "y = fused_0(x, w, self.b)" in forward and "torch.exp" not in forward
    assert forward.index("w = x @ self.W") < forward.index("fused_0(")   # emitted after all its inputs
    function = fused[fused.index("def fused_0("):fused.index("class M(")]
    for line in plain[plain.index("    def forward(self"):].splitlines():   # the fallback is the unfused code
        if any(op in line for op in ("torch.exp", "F.relu", " * ", " + self.b")):
            assert line.split("#")[0].strip().split(" = ")[1].replace("self.", "") in function, line
    assert "import triton" in fused and "import nnspec" not in fused and "from nnspec" not in fused
    assert "import triton" not in plain


def test_generated_module_runs_the_fallback_on_cpu():
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    from nnspec.compiler.codegen.loader import materialize
    from nnspec.compiler.codegen.pytorch import generate
    graph = nnspec.build(str(ROOT / "specs" / "resnet_block.nn"))
    fused = materialize(graph)
    plain = materialize(graph, generate(graph, kernels=False))
    module = __import__("sys").modules[fused.__module__]
    assert module.TRITON_MODE == "auto" and not module._use_triton(torch.zeros(1))
    calls = []
    module._launch = lambda *a: calls.append(a)
    torch.manual_seed(0)
    a = fused()
    torch.manual_seed(0)
    b = plain()
    x = torch.randn(2, 64, 8, 8)
    assert torch.equal(a(x), b(x)) and not calls


def test_a_group_without_a_backward_kernel_stays_unfused_in_the_module(monkeypatch):
    """If a group's gradient could not be written as a kernel, forward() keeps its ops (training must work)."""
    from nnspec.compiler.codegen import triton as codegen
    from nnspec.compiler.codegen.pytorch import generate
    from nnspec.compiler.ops import gradients
    graph = build("""
    input x: f32[B, 8]
    output y = gelu(x * 2.0)""")
    assert "y = fused_0(x)" in generate(graph)
    monkeypatch.setattr(codegen, "_TEMPLATES", {})
    monkeypatch.delitem(gradients.RULES, "gelu")
    source = generate(graph)
    assert "fused_0" not in source and "F.gelu(" in source
    assert any(b.reason.startswith("no backward kernel: no gradient rule for gelu") for b in graph.fusion.boundaries)
