"""autodiff: the backward graph of a model, built from per-op gradient rules.

Reverse topological walk from the loss nodes (or from the outputs, with a seed gradient, when a model
declares no loss): each forward op contributes one backward node or a small subgraph, written with
ordinary IR ops (`mul`, `where`, `sum_to`, ...) or, for heavy ops, dedicated backward ops
(`conv_grad_input`, `max_pool_grad`, `batch_norm_grad`, ...). Where a forward value fans out, its
gradients meet in an explicit `accumulate` node (the notes' "copy gate: gradient adder"). Forward
values a rule needs enter the backward graph as `saved` nodes (saved-tensor edges); parameters enter
as `param_value` nodes. `stop_gradient` cuts the flow. The result has one output `d:<param>` per
trainable parameter the losses reach; a shared parameter gets one accumulated gradient.

The rules live in compiler/ops/gradients.py: one entry per op, and a clear "no gradient rule for X"
failure for an op without one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import networkx as nx

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.registry import OpContext
from nnspec.compiler.shapes import TensorType


class NoGradientRule(Exception):
    pass


@dataclass
class BackwardInfo:
    """What autodiff produced besides the graph: which forward values are saved, which grads are outputs."""

    saved: dict = field(default_factory=dict)        # forward ref -> backward node id of its `saved` node
    params: dict = field(default_factory=dict)       # "module.param" -> backward node id of `param_value`
    seeds: dict = field(default_factory=dict)        # loss/output name -> backward seed input node id
    param_grads: dict = field(default_factory=dict)  # "module.param" -> backward ref of dL/dparam
    input_grads: dict = field(default_factory=dict)  # input name -> backward ref
    cut: list = field(default_factory=list)          # forward node ids where stop_gradient cut the flow
    scan_saved: dict = field(default_factory=dict)   # scan node id -> body refs kept at every step
    unreached: list = field(default_factory=list)    # trainable parameters no loss reaches


class GradBuilder:
    """Builds the backward graph; gradient rules call its methods to add IR ops."""

    def __init__(self, fwd: Graph):
        self.fwd = fwd
        self.bwd = Graph(f"{fwd.name}.backward")
        self.bwd.modules = fwd.modules
        self.bwd.source = fwd.source
        self.info = BackwardInfo()
        self.node: Node | None = None  # the forward node whose rule is running

    # ------------------------------------------------------------- values from the forward pass
    def saved(self, ref) -> tuple:
        """A forward value the backward pass reads (a saved-tensor edge)."""
        ref = tuple(ref)
        if ref in self.info.saved:
            return (self.info.saved[ref], 0)
        fnode = self.fwd.nodes[ref[0]]
        if ref[1] == "steps":  # a scan's per-step values (backpropagation through time)
            node = Node(self.bwd.fresh_id(f"saved_{fnode.id}_steps"), "saved", [], {"ref": ref},
                        [TensorType("f32", ())], span=fnode.span, path=fnode.path, label=f"{fnode.id} steps")
            self.bwd.add_node(node)
            self.info.saved[ref] = node.id
            return (node.id, 0)
        if fnode.op == "constant":
            return self.const(fnode.attrs["value"])
        t = self.fwd.type_of(ref)
        label = fnode.out_labels[ref[1]] if fnode.out_labels else (fnode.label or fnode.id)
        node = Node(self.bwd.fresh_id(f"saved_{fnode.id}"), "saved", [], {"ref": ref}, [t], span=fnode.span,
                    path=fnode.path, label=label)
        self.bwd.add_node(node)
        self.info.saved[ref] = node.id
        return (node.id, 0)

    @property
    def _rule_node(self) -> Node:
        """`node`, where a gradient rule is running (the methods below are called from rules only)."""
        assert self.node is not None, "no gradient rule is running"
        return self.node

    def input_value(self, i: int) -> tuple:
        return self.saved(self._rule_node.inputs[i])

    def output_value(self, k: int = 0) -> tuple:
        return self.saved((self._rule_node.id, k))

    def param(self, name: str) -> tuple:
        """The current layer's parameter `name` (e.g. weight)."""
        fnode = self._rule_node
        module = fnode.module
        assert module is not None, f"{fnode.op} node {fnode.id} has no module"
        key = f"{module}.{name}" if name else module
        if key in self.info.params:
            return (self.info.params[key], 0)
        spec = next(p for p in self.fwd.modules[module].params if p.name == name)
        node = Node(self.bwd.fresh_id(f"param_{key.replace('.', '_')}"), "param_value", [],
                    {"module": module, "param": name}, [TensorType("f32", tuple(spec.shape))],
                    module=module, path=fnode.path, label=key)
        self.bwd.add_node(node)
        self.info.params[key] = node.id
        return (node.id, 0)

    # ------------------------------------------------------------- building
    def op(self, name: str, inputs, **attrs):
        """Add one IR op; returns its ref (or refs, for several outputs)."""
        opdef = REGISTRY[name]
        full = {a.name: a.default for a in opdef.attrs}
        full.update(attrs)
        in_types = [self.bwd.type_of(r) for r in inputs]
        assert opdef.shape is not None, name
        outs = opdef.shape(OpContext(opdef, self.node.span if self.node else None), in_types, full)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        base = f"d_{self.node.label or self.node.id}" if self.node is not None else name
        # a dedicated backward op of a layer reads the layer itself (its eps, mode, running statistics)
        module = self.node.module if (self.node is not None and opdef.category == "backward"
                                      and name.endswith(("_grad", "_backward"))) else None
        node = Node(self.bwd.fresh_id(f"{name}"), name, [tuple(r) for r in inputs], full, outs, module=module,
                    span=self.node.span if self.node else None, path=self.node.path if self.node else (),
                    label=base)
        self.bwd.add_node(node)
        return (node.id, 0) if len(outs) == 1 else [(node.id, k) for k in range(len(outs))]

    def const(self, value) -> tuple:
        node = Node(self.bwd.fresh_id("constant"), "constant", [], {"value": value},
                    [TensorType("f32" if isinstance(value, float) else "i64", ())])
        self.bwd.add_node(node)
        return (node.id, 0)

    def type(self, ref) -> TensorType:
        return self.bwd.type_of(ref)

    # shorthand for the rules
    def mul(self, a, b):
        return self.op("mul", [a, b])

    def add(self, a, b):
        return self.op("add", [a, b])

    def sub(self, a, b):
        return self.op("sub", [a, b])

    def div(self, a, b):
        return self.op("div", [a, b])

    def neg(self, a):
        return self.op("neg", [a])

    def scale(self, a, c: float):
        return self.op("mul", [a, self.const(float(c))])

    def sum_to(self, g, shape):
        """Reduce a broadcast gradient back to an operand's shape."""
        if tuple(self.type(g).shape) == tuple(shape):
            return g
        return self.op("sum_to", [g], shape=tuple(shape))

    def reshape(self, g, shape):
        if tuple(self.type(g).shape) == tuple(shape):
            return g
        return self.op("reshape", [g], shape=tuple(shape))


def differentiable(t: TensorType) -> bool:
    return t.is_float


def build_backward(fwd: Graph, wrt_inputs: bool = False) -> tuple[Graph, BackwardInfo]:
    """The backward graph of `fwd` (see the module docstring)."""
    from nnspec.compiler.ops.gradients import RULES

    b = GradBuilder(fwd)
    grads: dict[tuple, list] = {}
    # seeds: dL/dL = 1 for each loss (the total loss is their sum); otherwise dOut/dOut given
    if fwd.losses:
        seed_t = TensorType("f32", ())
        node = Node(b.bwd.fresh_id("grad_loss"), "input", [], {"name": "grad_loss"}, [seed_t], label="grad_loss")
        b.bwd.add_node(node)
        b.bwd.inputs.append(node.id)
        for name, ref in fwd.losses.items():
            grads.setdefault(tuple(ref), []).append((node.id, 0))
            b.info.seeds[name] = node.id
        roots = [tuple(r)[0] for r in fwd.losses.values()]
    else:
        roots = []
        for name, ref in fwd.outputs.items():
            t = fwd.type_of(ref)
            if not differentiable(t):
                continue
            node = Node(b.bwd.fresh_id(f"grad_{name}"), "input", [], {"name": f"grad_{name}"}, [t], label=f"grad_{name}")
            b.bwd.add_node(node)
            b.bwd.inputs.append(node.id)
            grads.setdefault(tuple(ref), []).append((node.id, 0))
            b.info.seeds[name] = node.id
            roots.append(tuple(ref)[0])
    reach: set[str] = set(roots)
    for r in roots:
        reach |= nx.ancestors(fwd.nx, r)
    param_parts: dict[str, list] = {}
    for nid in reversed(fwd.topo_order()):
        if nid not in reach:
            continue
        node = fwd.nodes[nid]
        gouts = []
        for k in range(len(node.outputs)):
            parts = grads.pop((nid, k), [])
            gouts.append(_accumulate(b, node, parts))
        if all(g is None for g in gouts):
            continue
        if node.op in ("target", "constant"):
            continue
        if node.op == "input":
            if gouts[0] is not None:
                b.info.input_grads[node.attrs["name"]] = gouts[0]
            continue
        if node.op == "parameter":  # a `param` statement: its gradient is an output
            param_parts.setdefault(cast(str, node.module), []).append(gouts[0])  # a parameter node names its module
            continue
        rule = RULES.get(node.op)
        if rule is None:
            raise NoGradientRule(f"no gradient rule for {node.op} (node {nid}): add one to compiler/ops/gradients.py")
        b.node = node
        if node.op == "stop_gradient":
            b.info.cut.append(nid)
        result = rule(b, node, gouts)
        in_grads = result.get("inputs", []) if isinstance(result, dict) else result
        pgrads = result.get("params", {}) if isinstance(result, dict) else {}
        for i, g in enumerate(in_grads):
            if g is None or i >= len(node.inputs):
                continue
            if i in REGISTRY[node.op].nondiff_inputs:
                continue
            src = tuple(node.inputs[i])
            if not differentiable(fwd.type_of(src)):
                continue
            grads.setdefault(src, []).append(g)
        for pname, g in pgrads.items():
            key = f"{node.module}.{pname}" if pname else cast(str, node.module)  # rules return params of layers only
            param_parts.setdefault(key, []).append(g)
        for key, g in (result.get("param_grads", {}) if isinstance(result, dict) else {}).items():
            param_parts.setdefault(key, []).append(g)
        b.node = None
    for key, parts in param_parts.items():
        g = parts[0] if len(parts) == 1 else _accumulate_refs(b, parts, label=f"d_{key}")
        b.info.param_grads[key] = g
        b.bwd.outputs[f"d:{key}"] = g
    for name, g in b.info.input_grads.items():
        if wrt_inputs:
            b.bwd.outputs[f"d:{name}"] = g
    _prune(b)
    trainable = [f"{m.path}.{p.name}" if p.name else m.path for m in fwd.modules.values() for p in m.params
                 if p.trainable and p.init != "buffer"]
    b.info.unreached = [k for k in trainable if k not in b.info.param_grads]
    return b.bwd, b.info


def _accumulate(b: GradBuilder, node: Node, parts: list):
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    label = f"d_{node.label or node.id}"
    return _accumulate_refs(b, parts, label)


def _accumulate_refs(b: GradBuilder, parts: list, label: str):
    opdef = REGISTRY["accumulate"]
    types = [b.bwd.type_of(p) for p in parts]
    assert opdef.shape is not None
    out = opdef.shape(OpContext(opdef, None), types, {})
    node = Node(b.bwd.fresh_id("accumulate"), "accumulate", [tuple(p) for p in parts], {}, [out],
                span=b.node.span if b.node else None, path=b.node.path if b.node else (), label=label)
    b.bwd.add_node(node)
    return (node.id, 0)


def _prune(b: GradBuilder) -> None:
    """Drop backward nodes no output needs (e.g. the gradient of an input when it is not asked for)."""
    live: set[str] = set(b.bwd.inputs)
    for src, _ in b.bwd.outputs.values():
        live.add(src)
        live |= nx.ancestors(b.bwd.nx, src)
    for nid in [n for n in b.bwd.nodes if n not in live]:
        b.bwd.remove_node(nid)
    b.info.saved = {ref: nid for ref, nid in b.info.saved.items() if nid in b.bwd.nodes}
    kept_scans = {b.bwd.nodes[nid].attrs["ref"][0] for nid in b.info.saved.values()}
    b.info.scan_saved = {k: v for k, v in b.info.scan_saved.items() if k in kept_scans}
    b.info.params = {k: nid for k, nid in b.info.params.items() if nid in b.bwd.nodes}
