"""Every Triton kernel nnspec generates runs under TRITON_INTERPRET=1 and matches its torch fallback.

No GPU is needed: Triton's interpreter runs the kernels on CPU tensors, and the generated modules' switch
(TRITON_MODE = "1", what NNSPEC_TRITON=1 sets) sends CPU tensors to the kernels instead of the fallback.

1. one table over the op registry: every op with a Triton scalar expression (compiler/ops/scalar.py), as a
   group of its own, broadcasting operands included: the forward kernel against the op's torch lowering, and
   the backward kernel derived from the op's gradient rule against torch.autograd through the lowering; fp32,
   and fp16/bf16 for a subset;
2. every spec in specs/ (found at collection time, every model): every group of the forward graph's fusion
   plan and of the backward graph's (compiler/autodiff.py), forward outputs and, where the group has a
   backward kernel, the gradients of its inputs. Identical groups share one kernel, and each distinct kernel
   is checked once per session (the first spec that has it); a kernel is counted as checked only if the test
   saw it launched;
3. whole modules: a small GPT-2 (attention's scale/mask/softmax as a row kernel) and a residual block (add ->
   relu), kernels forced on against kernels off: outputs, loss and every parameter's gradient.

Inputs: each dimension of a group (symbols and sizes) becomes a small ragged size (3, 5, 7, ...), equal
dimensions staying equal, so that broadcasts keep their structure and tensors stay tiny; the row length of a
row-reduction group keeps a static size (a mean's backward bakes 1/n in) unless it is symbolic. Elementwise
kernels run with a BLOCK of 64 here, so they take several programs and a ragged last one; row lengths are
not powers of two, so every row is masked. Tolerances: fp32 1e-5; fp16 and bf16 compare a kernel that
computes in fp32 and rounds once with torch ops that round after each op: 2e-2 and 6e-2.
"""
from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

os.environ["TRITON_INTERPRET"] = "1"   # before any generated kernel is decorated: kernels run on CPU tensors
torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import nnspec  # noqa: E402
from nnspec.compiler.autodiff import build_backward  # noqa: E402
from nnspec.compiler.codegen.loader import materialize  # noqa: E402
from nnspec.compiler.codegen.triton import generate_kernels  # noqa: E402
from nnspec.compiler.ir import Graph, Node  # noqa: E402
from nnspec.compiler.ops import REGISTRY  # noqa: E402
from nnspec.compiler.ops.gradients import RULES, _none  # noqa: E402
from nnspec.compiler.ops.registry import OpContext  # noqa: E402
from nnspec.compiler.ops.scalar import SCALAR  # noqa: E402
from nnspec.compiler.passes.fuse import ROW_REDUCTIONS, FusionPlan, Group, fuse  # noqa: E402
from nnspec.compiler.pipeline import build  # noqa: E402
from nnspec.compiler.shapes import Sym, TensorType  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(list((ROOT / "specs").glob("*.nn")) + list((ROOT / "specs").glob("*.yaml")))
RAGGED = (3, 5, 7, 6, 9, 10, 11, 13)
ROW_LEADING = (2, 3)
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-2, rtol=2e-2),
             torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}
TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16, "f64": torch.float64}
CHECKED: dict = {}   # kernel text -> where it was checked (the session's cache: identical kernels run once)
# the interpreter computes masked-off lanes too (log of a padding zero, 0/0): numpy warns, nothing is stored
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"), pytest.mark.usefixtures("one_thread")]


# ------------------------------------------------------------------------------------------ helpers
def load_section(source: str, name: str):
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)  # noqa: S102 - our generated code
    module._BLOCK = 64
    return module


def small_sizes(graph: Graph, group: Group) -> dict:
    """Each distinct dimension of the group -> a small size (see the module docstring)."""
    sizes: dict = {}
    space = tuple(group.shape)
    row = group.kind == "row_reduction"
    if row and space:
        last = space[-1]
        sizes[str(last)] = last if isinstance(last, int) else RAGGED[2]
    shapes = [space] + [tuple(graph.type_of(r).shape) for r in group.inputs]
    for shape in shapes:
        for d in shape:
            if d != 1 and str(d) not in sizes:
                pool = ROW_LEADING if row else RAGGED
                sizes[str(d)] = pool[len(sizes) % len(pool)]
    return sizes


def make_input(t: TensorType, sizes: dict, gen, dtype, domain: str = "normal"):
    shape = tuple(1 if d == 1 else sizes[str(d)] for d in t.shape)
    if t.dtype == "bool":
        return torch.randint(0, 2, shape, generator=gen).bool()
    if t.dtype in ("i32", "i64"):
        return torch.randint(0, 3, shape, generator=gen)
    if domain == "unit":           # (0.1, 0.9): logs, square roots, atanh, a positive base
        x = torch.rand(shape, generator=gen) * 0.8 + 0.1
    elif domain == "away":         # |x| in (0.5, 1.5): a denominator
        x = (torch.rand(shape, generator=gen) + 0.5) * (torch.randint(0, 2, shape, generator=gen) * 2 - 1)
    else:
        x = torch.randn(shape, generator=gen)
    return x.to(dtype)


class Owner:
    """Stands in for the model in a fused function whose group holds layers: `self.h[0].ln_2` reaches each one."""

    def __init__(self):
        self.children: dict = {}

    def __getattr__(self, name):
        try:
            return self.__dict__["children"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        return self.children[str(key)]


def owner_of(graph: Graph, group: Group, gen, dtype, training: bool = False) -> tuple[Owner | None, list]:
    """The layers a group's parameters belong to (built from their constructors, random weights), and the model's
    `training` flag for a group with a dropout. Kernels and fallback draw different random numbers, so groups are
    compared in eval mode (dropout is the identity there); test_dropout_* check training mode."""
    random = any(graph.nodes[n].op == "dropout" for n in group.nodes)
    if not group.params and not random:
        return None, []
    owner, params = Owner(), []
    owner.__dict__["training"] = training
    for module in dict.fromkeys(m for m, _ in group.params):
        node = owner
        parts = module.split(".")
        for part in parts[:-1]:
            node = node.children.setdefault(part, Owner())
        layer = eval(graph.modules[module].ctor, {"nn": torch.nn})  # noqa: S307 - the generated constructor text
        node.children[parts[-1]] = layer.to(dtype)
        for _, p in layer.named_parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen))
            params.append(p)
    return owner, params


def run_group(module, graph: Graph, gk, dtype=torch.float32, domains=None, seed: int = 0) -> dict:
    """The group's fused function with the kernels off, then on: outputs and gradients of inputs and layers."""
    group = gk.group
    gen = torch.Generator().manual_seed(seed)
    sizes = small_sizes(graph, group)
    inputs = [make_input(graph.type_of(r), sizes, gen, dtype, (domains or {}).get(i, "normal"))
              for i, r in enumerate(group.inputs)]
    owner, weights = owner_of(graph, group, gen, dtype)
    fn = getattr(module, group.name)
    results = {}
    for mode in ("0", "1"):
        module.TRITON_MODE = mode
        launches = []
        launch = module._launch
        module._launch = lambda kernel, *a, _l=launch: (launches.append(kernel), _l(kernel, *a))[1]
        try:
            xs = [x.clone().requires_grad_(x.is_floating_point()) for x in inputs]
            out = fn(owner, *xs) if owner is not None else fn(*xs)
            outs = list(out) if isinstance(out, tuple) else [out]
            grads = None
            diff = [o for o in outs if o.is_floating_point() and o.requires_grad]
            wrt = [x for x in xs if x.requires_grad] + weights
            if gk.backward and diff and wrt:
                gen2 = torch.Generator().manual_seed(seed + 1)
                seeds = [torch.randn(o.shape, generator=gen2).to(o.dtype) for o in diff]
                grads = torch.autograd.grad(diff, wrt, seeds, allow_unused=True)
        finally:
            module._launch = launch
        results[mode] = (outs, grads, launches)
    return results


def assert_match(results: dict, dtype, what: str) -> None:
    (ref_outs, ref_grads, off), (outs, grads, on) = results["0"], results["1"]
    assert not off, f"{what}: a kernel ran with TRITON_MODE=0"
    assert on, f"{what}: no kernel ran with TRITON_MODE=1"
    tol = TOLERANCE[dtype]
    for k, (a, b) in enumerate(zip(ref_outs, outs)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: output {k} is {b.dtype}{list(b.shape)}, " \
                                                          f"the fallback's {a.dtype}{list(a.shape)}"
        torch.testing.assert_close(b.detach(), a.detach(), equal_nan=True, **tol,
                                   msg=lambda m: f"{what}, output {k}: {m}")
    if ref_grads is None:
        return
    assert grads is not None and len(on) >= 2, f"{what}: the backward kernel did not run"
    for k, (a, b) in enumerate(zip(ref_grads, grads)):
        if a is None or b is None:   # an input the outputs do not depend on: no gradient on either side
            assert (a is None or not a.abs().sum()) and (b is None or not b.abs().sum()), f"{what}: input {k}"
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: gradient {k} is {b.dtype}{list(b.shape)}"
        torch.testing.assert_close(b, a, equal_nan=True, **tol, msg=lambda m: f"{what}, gradient {k}: {m}")


# ------------------------------------------------------------------------------------------ 1. the op table
B = 3
UNIT = {"log", "sqrt", "rsqrt", "log1p", "atanh", "reciprocal"}
# op -> list of (attributes, operand types); default: one f32[B, 37] operand, or two for binary ops
OP_CASES: dict = {
    "add": [({}, [("f32", (B, 37)), ("f32", (37,))]), ({}, [("f32", (B, 1)), ("f32", (B, 37))])],
    "sub": [({}, [("f32", (B, 37)), ("f32", (B, 37))])],
    "mul": [({}, [("f32", (B, 37)), ("f32", ())])],
    "div": [({}, [("f32", (B, 37)), ("f32", (37,))])],
    "pow": [({}, [("f32", (B, 37)), ("f32", (B, 37))])],
    "maximum": [({}, [("f32", (B, 37)), ("f32", (37,))])],
    "minimum": [({}, [("f32", (B, 37)), ("f32", (B, 37))])],
    "where": [({}, [("bool", (B, 37)), ("f32", (B, 37)), ("f32", (37,))])],
    "masked_fill": [({"value": -1.5}, [("f32", (B, 37)), ("bool", (37,))]),
                    ({"value": float("-inf")}, [("f32", (B, 37)), ("bool", (B, 37))])],
    "logical_and": [({}, [("bool", (B, 37)), ("bool", (B, 37))])],
    "logical_or": [({}, [("bool", (B, 37)), ("bool", (37,))])],
    "straight_through": [({}, [("f32", (B, 37)), ("f32", (B, 37))])],
    "accumulate": [({}, [("f32", (B, 37)), ("f32", (B, 37)), ("f32", (37,))])],
    "clamp": [({"min": -0.5, "max": 0.5}, [("f32", (B, 37))]), ({"min": 0.0}, [("f32", (B, 37))])],
    "threshold": [({"threshold": 0.1, "value": -2.0}, [("f32", (B, 37))])],
    "cast": [({"dtype": "f16"}, [("f32", (B, 37))]), ({"dtype": "bool"}, [("f32", (B, 37))]),
             ({"dtype": "f32"}, [("f32", (B, 37))])],
    "gelu": [({}, [("f32", (B, 37))]), ({"approximate": "tanh"}, [("f32", (B, 37))])],
    "leaky_relu": [({"negative_slope": 0.2}, [("f32", (B, 37))])],
    "softplus": [({}, [("f32", (B, 37))]), ({"beta": 2.0, "threshold": 1.0}, [("f32", (B, 37))])],
}
for _op in ("eq", "ne", "lt", "le", "gt", "ge"):
    OP_CASES[_op] = [({}, [("f32", (B, 37)), ("f32", (37,))])]
for _op in ROW_REDUCTIONS:
    if _op in ("softmax", "log_softmax", "softmin"):
        OP_CASES[_op] = [({"dim": -1}, [("f32", (B, 37))])]
    else:
        OP_CASES[_op] = [({"dim": -1, "keepdim": False}, [("f32", (B, 37))]),
                         ({"dim": -1, "keepdim": True}, [("f32", (2, B, 37))])]
HALF_OPS = ("add", "mul", "gelu", "sigmoid", "tanh", "softmax", "log_softmax", "mean", "silu", "where")


def _op_cases():
    out = []
    for name in sorted(SCALAR):
        op = REGISTRY.get(name)
        if op is None or name == "constant":   # constants are written inline in the kernels
            continue
        cases = OP_CASES.get(name) or [({}, [("f32", (B, 37))] * max(len(op.inputs), 1))]
        for k, (attrs, operands) in enumerate(cases):
            out.append(pytest.param(name, attrs, operands, torch.float32, id=f"{name}-{k}"))
            if name in HALF_OPS and k == 0:
                for dt in (torch.float16, torch.bfloat16):
                    out.append(pytest.param(name, attrs, operands, dt, id=f"{name}-{k}-{str(dt)[6:]}"))
    return out


def one_op_graph(name: str, attrs: dict, operands: list) -> tuple[Graph, FusionPlan]:
    """A graph holding one op on fresh inputs, and a plan with that op as a group of its own."""
    g = Graph(f"op_{name}")
    refs = []
    for i, (dtype, shape) in enumerate(operands):
        g.add_node(Node(f"a{i}", "input", [], {"name": f"a{i}"}, [TensorType(dtype, shape)], label=f"a{i}"))
        g.inputs.append(f"a{i}")
        refs.append((f"a{i}", 0))
    op = REGISTRY[name]
    full = {a.name: a.default for a in op.attrs}
    full.update(attrs)
    out = op.shape(OpContext(op, None), [g.type_of(r) for r in refs], full)
    g.add_node(Node("y", name, refs, full, [out], label="y"))
    g.outputs["y"] = ("y", 0)
    row = name in ROW_REDUCTIONS
    group = Group(0, "row_reduction" if row else "elementwise", ["y"],
                  shape=tuple(operands[0][1]) if row else tuple(out.shape), inputs=list(refs), outputs=[("y", 0)])
    return g, FusionPlan([group], [], {"y": 0})


@pytest.mark.parametrize("name,attrs,operands,dtype", _op_cases())
def test_op_kernel_matches_torch(name, attrs, operands, dtype):
    """One op as a kernel: forward and derived backward against its torch lowering and torch.autograd."""
    graph, plan = one_op_graph(name, attrs, operands)
    section = generate_kernels(graph, plan, imports=True)
    module = load_section(section.source, f"op_{name}")
    domains = {0: "unit"} if name in UNIT or name == "pow" else {}
    if name == "div":
        domains = {1: "away"}
    gk = section.groups[0]
    if graph.nodes["y"].outputs[0].is_float and RULES.get(name) not in (None, _none):
        assert gk.backward, f"{name}: no backward kernel ({gk.why_no_backward})"
    assert_match(run_group(module, graph, gk, dtype, domains), dtype, f"{name} {attrs} {dtype}")


# ------------------------------------------------------------------------------------------ 2. every spec
def _spec_cases():
    from nnspec.dsl.loader import load
    cases = []
    for path in SPECS:
        try:
            models = [m.name for m in load(str(path)).root.models]
        except Exception:  # noqa: BLE001 - a spec that does not load fails in tests/test_specs.py
            models = []
        for model in models:
            cases.append(pytest.param(path, model, id=f"{path.name}::{model}"))
    return cases


def _plans(path: Path, model: str):
    graph = nnspec.build(str(path), model=model)
    out = [("forward", graph, fuse(graph))]
    try:
        backward, _ = build_backward(graph)
    except Exception:  # noqa: BLE001 - a spec without a backward graph is reported by test_backward_specs
        return out
    return out + [("backward", backward, fuse(backward))]


@pytest.mark.parametrize("path,model", _spec_cases())
def test_spec_kernels_match_fallback(path, model):
    """Every kernel of the spec's forward and backward fusion plans, forward and backward, on ragged sizes."""
    for kind, graph, plan in _plans(path, model):
        if not plan.groups:
            continue
        section = generate_kernels(graph, plan, imports=True)
        module = None
        for gk in section.groups:
            key = gk.key
            if key in CHECKED:
                continue
            module = module or load_section(section.source, f"{path.stem}_{model}_{kind}")
            where = f"{path.name}::{model} {kind} {gk.group.name} ({' -> '.join(gk.forward_ops)})"
            assert_match(run_group(module, graph, gk), torch.float32, where)
            CHECKED[key] = where


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_spec_kernels_half_precision(dtype):
    """A subset in fp16 and bf16: the attention softmax and the GELU backward of a GPT-2, a residual add -> relu."""
    seen = 0
    for path, model in ((ROOT / "specs" / "gpt2_small.nn", "GPT2Small"), (ROOT / "specs" / "resnet_block.nn", None)):
        if not path.exists():
            continue
        for kind, graph, plan in _plans(path, model or nnspec.build(str(path)).name):
            if not plan.groups:
                continue
            section = generate_kernels(graph, plan, imports=True)
            module = load_section(section.source, f"{path.stem}_{kind}_{str(dtype)[6:]}")
            done = set()
            for gk in section.groups:
                if gk.key in done or not any(graph.type_of(r).is_float for r in gk.group.inputs):
                    continue
                done.add(gk.key)
                assert_match(run_group(module, graph, gk, dtype), dtype, f"{path.name} {kind} {gk.group.name} {dtype}")
                seen += 1
    assert seen >= 2


ZOO = """model Zoo {
    input x: f32[B, 6, 12]
    input m: bool[T, T]
    input s: f32[B, T, T]
    target y: f32[B]
    param b: f32[12] = normal(std=1.0)
    param g: f32[12] = normal(std=1.0)
    param c: f32[1, 6, 1] = normal(std=1.0)

    h = gelu(x + b)                                        # bias + activation: the backward reads x + b
    mu = mean(h, dim=-1, keepdim=true)                     # a layer norm by hand: one row kernel
    v = mean((h - mu) ** 2, dim=-1, keepdim=true)
    n = (h - mu) * rsqrt(v + 0.00001) * g + b
    att = softmax(masked_fill(s / 3.0, m, -inf), dim=-1)   # attention's scale, mask and softmax
    z = amax(x, dim=-1, keepdim=true)                      # a softmax by hand, times a [1, 6, 1] broadcast
    e = exp(x - z) * c
    p = e / sum(e, dim=-1, keepdim=true)
    ls = log_softmax(n, dim=-1)
    r = sqrt(sum(x * x, dim=-1)) + logsumexp(n, dim=-1)    # one number per row, combined per row
    q = x ** 3 - abs(x) ** 0.5 + clamp(x, min=-0.5) * sigmoid(x)
    loss mse = mean((mean(r, dim=-1) - y) ** 2)            # a loss epilogue
    output n
    output att
    output p
    output ls
    output r
    output q
}
"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_hand_written_patterns_match_fallback(dtype):
    """Several reductions in one row kernel, several outputs, a saved intermediate, row and strided inputs."""
    from nnspec.compiler.pipeline import build
    graph = build("zoo.nn", text=ZOO)
    backward, _ = build_backward(graph)
    ran = 0
    for kind, g in (("forward", graph), ("backward", backward)):
        plan = fuse(g)
        section = generate_kernels(g, plan, imports=True)
        module = load_section(section.source, f"zoo_{kind}")
        for gk in section.groups:
            assert_match(run_group(module, g, gk, dtype), dtype, f"zoo {kind} {gk.group.name} {gk.forward_ops}")
            ran += 1
    ops = [n.op for grp in fuse(graph).groups for n in (graph.nodes[i] for i in grp.nodes)]
    assert ops.count("mean") >= 2 and "log_softmax" in ops and "softmax" in ops and ran >= 8


def random_graph(seed: int) -> Graph:
    """A random dataflow of elementwise ops and last-dimension reductions over [B, T, N] and its broadcasts
    ([N], [T, 1], [B, T, 1] inputs; keepdim and plain row values): the fuser's and the kernel writer's layout
    rules under combinations no spec has."""
    import random
    rng = random.Random(seed)
    g = Graph(f"random{seed}")
    b, t = Sym.var("B"), Sym.var("T")
    space, keep, row = (b, t, 11), (b, t, 1), (b, t)
    values: list = []   # (ref, shape)

    def add_input(shape):
        nid = f"in{len(g.inputs)}"
        g.add_node(Node(nid, "input", [], {"name": nid}, [TensorType("f32", shape)], label=nid))
        g.inputs.append(nid)
        values.append(((nid, 0), shape))
        return (nid, 0)

    def add_op(op, refs, **attrs):
        opdef = REGISTRY[op]
        full = {a.name: a.default for a in opdef.attrs}
        full.update(attrs)
        out = opdef.shape(OpContext(opdef, None), [g.type_of(r) for r in refs], full)
        nid = g.fresh_id(op)
        g.add_node(Node(nid, op, list(refs), full, [out], label=nid))
        values.append(((nid, 0), tuple(out.shape)))

    add_input(space)
    for shape in ((11,), (t, 1), keep):
        add_input(shape)
    for _ in range(rng.randint(6, 14)):
        full = [v for v in values if v[1] == space]
        rows = {shape: [v for v in values if v[1] == shape] for shape in (keep, row)}
        kind = rng.random()
        if kind < 0.3:
            add_op(rng.choice(["exp", "tanh", "relu", "sigmoid", "neg", "abs", "erf"]), [rng.choice(values)[0]])
        elif kind < 0.65:
            a = rng.choice(full)
            other = rng.choice(values if rng.random() < 0.5 else full)
            if other[1] == row:   # a plain row value meets only row values
                a = rng.choice(rows[row])
            add_op(rng.choice(["add", "mul", "sub", "maximum"]), [a[0], other[0]])
        elif kind < 0.9:
            op = rng.choice(["sum", "amax", "mean", "softmax", "log_softmax", "logsumexp"])
            x = rng.choice(full)[0]
            if op in ("softmax", "log_softmax"):
                add_op(op, [x], dim=-1)
            else:
                add_op(op, [x], dim=-1, keepdim=rng.random() < 0.6)
        else:
            shape = rng.choice([s for s, v in rows.items() if v] or [keep])
            pool = rows.get(shape) or [v for v in values if v[1] == keep]
            add_op(rng.choice(["exp", "sigmoid", "neg"]), [rng.choice(pool)[0]])
    used = {src for n in g.nodes.values() for src, _ in n.inputs}
    for nid, node in g.nodes.items():
        if node.op != "input" and nid not in used:
            g.outputs[nid] = (nid, 0)
    return g


@pytest.mark.parametrize("seed", range(12))
def test_random_graphs_fuse_and_match_fallback(seed):
    graph = random_graph(seed)
    plan = fuse(graph)
    section = generate_kernels(graph, plan, imports=True)
    module = load_section(section.source, f"random{seed}")
    for gk in section.groups:
        assert_match(run_group(module, graph, gk), torch.float32, f"random graph {seed} {gk.group.name} "
                                                                   f"{gk.forward_ops}")


# ------------------------------------------------------------------------------------------ dropout in a kernel
def _dropout_group(p: float = 0.3):
    graph = build("dropout_test.nn", text=f"""
model M {{
    input x: f32[B, D]
    output y = dropout(relu(x * 2.0), {p})
}}
""")
    plan = fuse(graph)
    assert [graph.nodes[n].op for n in plan.groups[0].nodes] == ["mul", "relu", "dropout"]
    section = generate_kernels(graph, plan, imports=True)
    module = load_section(section.source, "dropout_group")
    module.TRITON_MODE = "1"
    return module, getattr(module, plan.groups[0].name)


def test_dropout_kernel_mask_is_reproducible_and_its_backward_draws_the_same_one():
    p = 0.3
    module, fn = _dropout_group(p)
    owner = Owner()
    owner.__dict__["training"] = True
    x = torch.randn(64, 101, generator=torch.Generator().manual_seed(0)).abs() + 0.1   # relu keeps every element
    torch.manual_seed(5)
    xg = x.clone().requires_grad_()
    y = fn(owner, xg)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.03, "a fraction p of the elements is dropped"
    torch.testing.assert_close(y[kept], (2 * x / (1 - p))[kept])     # kept ones scaled by 1/(1-p)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (dx,) = torch.autograd.grad(y, xg, g)
    # the backward kernel saved no mask: it drew the forward's mask again from the call's seed
    torch.testing.assert_close(dx, torch.where(kept, 2 * g / (1 - p), torch.zeros_like(g)))
    torch.manual_seed(5)
    assert torch.equal(fn(owner, x), y.detach()), "torch.manual_seed reproduces the mask"
    assert not torch.equal(fn(owner, x), y.detach()), "each call draws a new mask"
    owner.__dict__["training"] = False
    assert torch.equal(fn(owner, x), 2 * x), "eval mode: the identity"


def test_dropout_kernel_saves_no_mask_and_no_dropout_input():
    graph = build("dropout_test.nn", text="""
model M {
    input x: f32[B, D]
    output y = dropout(x * 2.0 + 1.0, 0.5)
}
""")
    plan = fuse(graph)
    section = generate_kernels(graph, plan, imports=True)
    (gk,) = section.groups
    assert gk.random and gk.backward and gk.saved == [], "mul -> add -> dropout: the backward needs nothing saved"
    assert "tl.rand(seed0, offs) >= p0" in gk.kernels and "dropout_grad" in gk.kernels


def test_mlp_dropout_trains_on_its_kernels():
    """mlp_dropout's relu -> dropout groups as kernels: eval outputs equal the fallback's; in training the loss is
    finite and every parameter gets a gradient."""
    graph = nnspec.build(str(ROOT / "specs" / "mlp_dropout.nn"), params={"d_in": 20, "h1": 30, "h2": 30})
    cls = materialize(graph)
    module = __import__("sys").modules[cls.__module__]
    torch.manual_seed(0)
    net = cls(d_in=20, h1=30, h2=30)
    x, y = torch.randn(9, 20), torch.randint(0, 10, (9,))
    outs = {}
    for mode in ("0", "1"):
        module.TRITON_MODE = mode
        outs[mode] = net.eval()(x)
    torch.testing.assert_close(outs["1"], outs["0"])
    net.train()
    module.TRITON_MODE = "1"
    net(x, y)["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    module.TRITON_MODE = "auto"


# ------------------------------------------------------------------------------------------ 3. whole modules
def _objective(result, graph):
    if isinstance(result, dict):
        return result["loss"] + sum(result[k].float().sum() for k in graph.outputs if result[k].is_floating_point())
    outs = result if isinstance(result, tuple) else (result,)
    return sum(o.sum() for o in outs if o.is_floating_point())


@pytest.mark.parametrize("spec,params,model,make", [
    ("gpt2_small.nn", dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16), "GPT2",
     lambda gen: [torch.randint(0, 50, (2, 7), generator=gen), torch.randint(0, 50, (2, 7), generator=gen)]),
    ("resnet_block.nn", {}, None, lambda gen: [torch.randn(2, 64, 9, 9, generator=gen)]),
], ids=["gpt2", "resnet_block"])
def test_module_with_kernels_matches_module_without(spec, params, model, make):
    """The generated module with its kernels forced on (TRITON_MODE = "1") trains like the module without."""
    path = ROOT / "specs" / spec
    if not path.exists():
        pytest.skip(f"{spec} is not in specs/")
    graph = nnspec.build(str(path), params=params, model=model)
    cls = materialize(graph)
    module = __import__("sys").modules[cls.__module__]
    assert "triton" in cls.source_code and module.TRITON_MODE in ("auto", "0", "1")
    torch.manual_seed(0)
    net = cls()
    inputs = make(torch.Generator().manual_seed(1))
    results = {}
    for mode in ("0", "1"):
        module.TRITON_MODE = mode
        net.zero_grad(set_to_none=True)
        launches = []
        launch = module._launch
        module._launch = lambda kernel, *a, _l=launch: (launches.append(kernel.__name__ if hasattr(kernel, "__name__")
                                                                         else str(kernel)), _l(kernel, *a))[1]
        try:
            result = net(*inputs, return_losses=True) if graph.losses else net(*inputs)
            _objective(result, graph).backward()
        finally:
            module._launch = launch
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results[mode] = (result, grads, launches)
    (ref, ref_grads, off), (got, got_grads, on) = results["0"], results["1"]
    assert not off, off
    assert len(on) >= len(graph.fusion.groups) and any("backward" in name for name in on), on
    pairs = [(ref[k], got[k]) for k in ref] if isinstance(ref, dict) else [(ref, got)]
    for a, b in pairs:
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert ref_grads.keys() == got_grads.keys() and ref_grads
    for k in ref_grads:
        torch.testing.assert_close(got_grads[k], ref_grads[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{k}: {m}")
