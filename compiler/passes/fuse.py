"""fuse: group chains of elementwise/broadcast ops and the row reductions they feed into fusion groups.

TVM's lattice drives the decisions (op kinds in the registry: elementwise, broadcast, injective,
reduction, opaque), and an op is fusable when it has a Triton scalar expression
(compiler/ops/scalar.py): the table that lets codegen write it into a kernel is the table of what fuses.
A group becomes one kernel: its intermediate values never go to memory.

Two kinds of group, after the Triton tutorials:
  - elementwise: every member has the group's shape S (the iteration space); inputs from outside may
    be smaller and broadcast into S (a bias [C] into [B, C], a mask [T, T] into [B, H, T, T]);
  - row_reduction: S's last dimension is a row; one program per row. Members are full rows (shape S) or
    one number per row (S[:-1] + (1,) after a keepdim reduction, or S[:-1]); a reduction over the last
    dimension (softmax, log_softmax, sum, mean, amax, logsumexp ...) may appear anywhere in the chain, so a
    hand-written softmax (amax, sub, exp, sum, div), a layer norm written with mean and rsqrt, attention's
    scale -> mask -> softmax and a loss epilogue (sub -> square -> mean over a vector) are each one group.
    A [..] row value never meets a full row in one op: torch would broadcast it along the last dimension.
    A layer_norm over the last dimension is a row reduction too, its weight and bias passed to the kernel
    (`Group.params`): a transformer's residual add + layer norm is one group.

The pass walks the graph in topological order; a fusable node joins the group of one of its producers when
  - the iteration space agrees (see the two kinds above),
  - the group stays convex (no path leaves the group and comes back: the kernel could not wait for it),
  - the group stays under the size cap (MAX_GROUP ops: beyond it registers spill and compile time grows),
  - both run in the same phase of forward() (a value only the losses need is computed after the outputs),
and a node fed by two groups may merge them. A value used outside its group is a group output (written
once, as it would be unfused). A group of one op saves nothing and is dropped.

Every producer -> consumer edge that was not fused, where at least one side is a fusable op, is recorded
with its reason (`Boundary`); each group carries an estimate of the memory traffic it saves: each read of a
member's value by another member, and the write of each value used only inside the group (symbolic in the
batch size).

The pass annotates; it does not change the computation. `graph.fusion` holds the plan. Codegen turns each
group into a Triton kernel, a backward kernel, an autograd.Function and a torch fallback
(compiler/codegen/triton.py). It runs on backward graphs too (compiler/autodiff.py), where the gradient
rules' where/mul/sub chains and softmax's row sum fuse the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nnspec.compiler.ir import Graph
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.scalar import LAYERS, NO_SCALAR
from nnspec.compiler.shapes import numel

MAX_GROUP = 32
FUSED_RANDOM = {"dropout"}   # random ops a kernel draws itself (Philox, from a seed per call; see codegen/triton.py)
ROW_REDUCTIONS = {"softmax", "log_softmax", "softmin", "sum", "mean", "amax", "amin", "max", "min", "logsumexp"}
VALUES = {"input", "target", "parameter", "constant", "saved", "param_value"}   # values, not computations
COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or"}
DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i32": 4, "i64": 8, "bool": 1}


@dataclass
class Group:
    id: int
    kind: str                                   # "elementwise" or "row_reduction"
    nodes: list = field(default_factory=list)   # node ids, topological order
    shape: tuple = ()                           # the iteration space S
    inputs: list = field(default_factory=list)  # refs read from outside (constants are written inline)
    outputs: list = field(default_factory=list)  # refs used outside (or results)
    saved_bytes: object = 0                     # symbolic: per evaluation
    params: list = field(default_factory=list)  # (module, parameter name) of member layers: more kernel inputs

    @property
    def name(self) -> str:
        return f"fused_{self.id}"


@dataclass
class Boundary:
    producer: str
    consumer: str
    reason: str


@dataclass
class FusionPlan:
    groups: list
    boundaries: list
    group_of: dict          # node id -> group id
    alone: list = field(default_factory=list)   # fusable ops left in a group of their own (dropped)

    def group(self, nid):
        gid = self.group_of.get(nid)
        return None if gid is None else self.groups[gid]


# ------------------------------------------------------------------------------ what can fuse
_ARITHMETIC: dict[str, Callable] = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
                                    "div": lambda a, b: a / b, "neg": lambda a: -a}


def constant_value(graph: Graph, nid: str):
    """The number a node computes from constants alone (a gradient rule's `p - 1`), or None."""
    node = graph.nodes[nid]
    if node.op == "constant":
        return node.attrs["value"]
    if node.op not in _ARITHMETIC or not node.inputs:
        return None
    args = [constant_value(graph, src) for src, _ in node.inputs]
    if any(a is None for a in args):
        return None
    try:
        return _ARITHMETIC[node.op](*args)
    except ZeroDivisionError:
        return None


def fusable(graph: Graph, nid: str) -> str | None:
    """None if the node can join a group, else the reason it cannot."""
    node = graph.nodes[nid]
    op = REGISTRY.get(node.op)
    if op is None or node.op in VALUES:
        return f"{node.op} is a value, not a computation"
    if constant_value(graph, nid) is not None:
        return f"{node.op} computes a number from constants (written as a literal into the kernels that read it)"
    if node.op in ("scan", "scan_backward"):
        return f"{node.op} is a loop over time steps"
    layer = kernel_layer(node)
    if node.module is not None and not layer:
        if node.op in LAYERS:
            return f"{node.op} normalises over more than the last dimension (a library layer)"
        return f"{node.op} owns parameters (a library layer)"
    if op.random and node.op not in FUSED_RANDOM:
        return f"{node.op} {NO_SCALAR.get(node.op, 'draws random numbers')}"
    if op.kind == "opaque":
        return f"{node.op} is opaque (a library call: cuBLAS/cuDNN/oneDNN, or a dedicated backward op)"
    if op.kind == "injective":
        return f"{node.op} moves data (a view or a copy: the consumer reads it through its strides)"
    if op.kind == "reduction" and not row_reduction(graph, node):
        if node.op in ROW_REDUCTIONS:
            return f"{node.op} reduces other than along the last dimension (rows are the last dimension)"
        if node.op == "sum_to":
            return "sum_to sums a broadcast gradient over leading dimensions (a column sum: torch's reduction)"
        return f"{node.op} is a reduction with no row kernel (losses, norms and similarities stay in torch)"
    if op.scalar is None and not layer:
        return f"{node.op} {NO_SCALAR.get(node.op, 'has no Triton scalar expression (compiler/ops/scalar.py)')}"
    if len(node.outputs) != 1:
        return f"{node.op} has several outputs"
    if not node.inputs:
        return f"{node.op} reads no tensor"
    out = node.outputs[0]
    if not out.is_float and node.op not in COMPARISONS:
        return f"{node.op} produces an integer value (kernels compute in floating point)"
    if node.op == "cast" and out.dtype == "f32" and not graph.type_of(node.inputs[0]).is_float:
        return "cast turns an integer into the model's float dtype, which only the model knows"
    return None


def kernel_layer(node) -> bool:
    """A layer with parameters that a kernel computes (compiler/ops/scalar.py's LAYERS: layer_norm)."""
    return node.op in LAYERS and node.module is not None and LAYERS[node.op][0](node)


def row_reduction(graph: Graph, node) -> bool:
    """A reduction along the last dimension (or over the whole of a vector): one program per row."""
    if kernel_layer(node):
        return True
    if node.op not in ROW_REDUCTIONS:
        return False
    t = graph.type_of(node.inputs[0])
    if t.rank == 0:
        return False
    dim = node.attrs.get("dim")
    if dim is None:
        return t.rank == 1 and node.op not in ("softmax", "log_softmax", "softmin")
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return len(dims) == 1 and dims[0] % t.rank == t.rank - 1


def layout(shape, space) -> str | None:
    """How a value of `shape` sits in the iteration space: a full row, one number per row, or neither."""
    shape, space = tuple(shape), tuple(space)
    if shape == space:
        return "full"
    if space and shape == space[:-1] + (1,):
        return "keep"     # keepdim: broadcasts along the row
    if space and shape == space[:-1]:
        return "row"      # no keepdim: only combines with other row values
    return None


# ------------------------------------------------------------------------------ the pass
class _Fuser:
    def __init__(self, graph: Graph, max_group: int):
        self.graph = graph
        self.max_group = max_group
        self.order = graph.topo_order()
        self.pos = {nid: i for i, nid in enumerate(self.order)}
        self.groups: list[Group] = []
        self.group_of: dict[str, int] = {}
        self.boundaries: list[Boundary] = []
        self.reasons: dict[str, str | None] = {nid: fusable(graph, nid) for nid in graph.nodes}
        self.numbers = {nid for nid in graph.nodes if graph.nodes[nid].op != "constant"
                        and constant_value(graph, nid) is not None}
        self.phase = self._phases()

    def _phases(self) -> dict:
        """0 for nodes forward() needs for its outputs, 1 for those only the losses and metrics need."""
        g = self.graph
        if not (g.losses or g.metrics) or not g.outputs:
            return {}
        needed: set = set()
        stack = [ref[0] for ref in g.outputs.values()]
        while stack:
            nid = stack.pop()
            if nid not in needed:
                needed.add(nid)
                stack.extend(src for src, _ in g.nodes[nid].inputs)
        return {nid: 0 if nid in needed else 1 for nid in g.nodes}

    def run(self) -> None:
        for nid in self.order:
            node = self.graph.nodes[nid]
            reason = self.reasons[nid]
            if reason is not None:
                for src, _ in node.inputs:
                    if self.reasons[src] is None:
                        self.boundaries.append(Boundary(src, nid, reason))
                continue
            for src, _ in node.inputs:
                why = self.reasons[src]
                if why is not None and self.graph.nodes[src].op not in VALUES and src not in self.numbers:
                    self.boundaries.append(Boundary(src, nid, why))
            self.place(nid)

    def place(self, nid: str) -> None:
        node = self.graph.nodes[nid]
        is_row = REGISTRY[node.op].kind == "reduction"
        space = tuple(self.graph.type_of(node.inputs[0]).shape) if is_row else tuple(node.outputs[0].shape)
        joined = None
        for src, _ in node.inputs:
            if src not in self.group_of or (joined is not None and self.group_of[src] == joined.id):
                continue
            g = self.groups[self.group_of[src]]
            if joined is None:
                why = self.why_not_join(g, nid, is_row, space)
                if why is None:
                    joined = g
                    g.nodes.append(nid)
                    self.group_of[nid] = g.id
                    if is_row:
                        g.kind = "row_reduction"
                    continue
            else:
                why = self.why_not_merge(joined, g) or self.layout_problem(g, nid, is_row, space)
                if why is None:
                    for m in g.nodes:
                        self.group_of[m] = joined.id
                    joined.nodes = sorted(joined.nodes + g.nodes, key=self.pos.__getitem__)
                    if g.kind == "row_reduction":
                        joined.kind = "row_reduction"
                    g.nodes = []
                    continue
            self.boundaries.append(Boundary(src, nid, why))
        if joined is None:
            g = Group(len(self.groups), "row_reduction" if is_row else "elementwise", [nid], space)
            self.groups.append(g)
            self.group_of[nid] = g.id

    def why_not_join(self, g: Group, nid: str, is_row: bool, space: tuple) -> str | None:
        if len(g.nodes) >= self.max_group:
            return f"size cap: the group already has {self.max_group} ops"
        if self.phase and self.phase[nid] != self.phase[g.nodes[0]]:
            return "only the losses need one side: forward() computes it after returning the outputs"
        why = self.layout_problem(g, nid, is_row, space)
        if why is None and self._leaves_and_returns(set(g.nodes), [nid]):
            why = "fusing would make the group wait on work outside it (a path leaves the group and comes back)"
        return why

    def layout_problem(self, g: Group, nid: str, is_row: bool, space: tuple) -> str | None:
        """Why the node's values and g's cannot meet in one kernel over g's iteration space (None if they can)."""
        graph = self.graph
        node = graph.nodes[nid]
        if is_row:
            if space != tuple(g.shape):
                return f"the reduction's rows {_fmt(space)} differ from the group's iteration space {_fmt(g.shape)}"
            if any(self.group_of.get(src) == g.id and layout(graph.type_of((src, k)).shape, g.shape) != "full"
                   for src, k in node.inputs):
                return "the reduction reads one number per row, not a row"
            return None
        where = layout(space, g.shape)
        if where is None or (where != "full" and g.kind == "elementwise"):
            return f"iteration space changes ({_fmt(g.shape)} -> {_fmt(space)})"
        allowed = {"full": ("full", "keep"), "keep": ("keep",), "row": ("row",)}[where]
        for src, k in node.inputs:
            if self.group_of.get(src) == g.id and layout(graph.type_of((src, k)).shape, g.shape) not in allowed:
                value = _fmt(graph.type_of((src, k)).shape)
                return (f"{graph.nodes[src].op}'s value {value} would broadcast along the last dimension, "
                        "not per row")
        return None

    def why_not_merge(self, g: Group, h: Group) -> str | None:
        if tuple(g.shape) != tuple(h.shape):
            return f"the two groups iterate over different spaces ({_fmt(g.shape)}, {_fmt(h.shape)})"
        if len(g.nodes) + len(h.nodes) > self.max_group:
            return f"size cap: together the groups would have more than {self.max_group} ops"
        if self.phase and self.phase[g.nodes[0]] != self.phase[h.nodes[0]]:
            return "only the losses need one side: forward() computes it after returning the outputs"
        members = set(g.nodes) | set(h.nodes)
        if self._leaves_and_returns(members, list(members)):
            return "merging would make the group wait on work outside it (a path leaves the group and comes back)"
        return None

    def _leaves_and_returns(self, members: set, nodes: list) -> bool:
        """Does an input from outside of any of `nodes` depend on a member? (then the group is not convex)"""
        lowest = min(self.pos[m] for m in members)
        for nid in nodes:
            for src, _ in self.graph.nodes[nid].inputs:
                if src not in members and src not in (nid,) and self._depends_on(src, members, lowest):
                    return True
        return False

    def _depends_on(self, start: str, members: set, lowest: int) -> bool:
        # walk up from `start`; nodes before the group's first member cannot depend on it
        seen = {start}
        stack = [start]
        while stack:
            nid = stack.pop()
            for src, _ in self.graph.nodes[nid].inputs:
                if src in members:
                    return True
                if src not in seen and self.pos[src] > lowest:
                    seen.add(src)
                    stack.append(src)
        return False

    def plan(self) -> FusionPlan:
        kept, alone = [], []
        for g in self.groups:
            if len(g.nodes) == 1:
                alone.append(g.nodes[0])
                del self.group_of[g.nodes[0]]
            elif g.nodes:
                kept.append(g)
        for i, g in enumerate(kept):
            g.id = i
            for nid in g.nodes:
                self.group_of[nid] = i
            _finish(self.graph, g)
        boundaries, seen = [], set()
        for b in self.boundaries:
            key = (b.producer, b.consumer)
            if key not in seen and self.group_of.get(b.producer) != self.group_of.get(b.consumer, -1):
                seen.add(key)
                boundaries.append(b)
        return FusionPlan(kept, boundaries, self.group_of, alone)


def fuse(graph: Graph, max_group: int = MAX_GROUP) -> FusionPlan:
    """The fusion plan of a graph (forward or backward); also stored as `graph.fusion`."""
    fuser = _Fuser(graph, max_group)
    fuser.run()
    plan = fuser.plan()
    graph.fusion = plan  # type: ignore[attr-defined]
    return plan


def _finish(graph: Graph, g: Group) -> None:
    members = set(g.nodes)
    results = {tuple(r)[0] for r in graph.result_refs()}
    ins: list = []
    outs: list = []
    saved = 0
    for nid in g.nodes:
        node = graph.nodes[nid]
        for ref in node.inputs:
            ref = tuple(ref)
            if ref[0] not in members and constant_value(graph, ref[0]) is None and ref not in ins:
                ins.append(ref)
        users = graph.users(nid)
        written = nid in results or any(c not in members for c in users)
        if written:
            outs.append((nid, 0))
        # unfused, each consumer in the group would read the value back, and it would be written once
        t = node.outputs[0]
        trips = sum(1 for c in users if c in members) + (0 if written else 1)
        if trips:
            saved = saved + trips * numel(t.shape) * DTYPE_BYTES.get(t.dtype, 4)
    g.inputs, g.outputs, g.saved_bytes = ins, outs, saved
    g.params = [(module, p.name) for nid in g.nodes if (module := graph.nodes[nid].module) is not None
                for p in graph.modules[module].params if p.trainable and p.init != "buffer"]


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ------------------------------------------------------------------------------ explain
def explain(graph: Graph, plan: FusionPlan, env: dict | None = None) -> str:
    """`nnspec compile --explain`: the groups, their ops, the traffic they save, and every boundary.

    Byte counts are symbolic in the graph's dimensions (per forward or backward pass); `env` gives sizes
    (default: 1 for every symbol, i.e. per sample for a batch dimension).
    """
    from nnspec.compiler.shapes import Sym
    from nnspec.compiler.summary import evaluate_dim, human_bytes
    symbols: set = set()
    for g in plan.groups:
        if isinstance(g.saved_bytes, Sym):
            symbols |= g.saved_bytes.symbols()
    at = {s: 1 for s in sorted(symbols)}
    at.update(env or {})
    where = ", ".join(f"{k}={v}" for k, v in at.items())
    lines = [f"fusion plan for {graph.name}: {len(plan.groups)} group(s), "
             f"{sum(len(g.nodes) for g in plan.groups)} of {len(graph)} ops fused"]
    total = 0
    for g in plan.groups:
        saved = evaluate_dim(g.saved_bytes, at)
        total = total + g.saved_bytes
        spans = []
        for nid in g.nodes:
            span = graph.nodes[nid].span
            text = f"{span.file}:{span.line}" if span else None
            if text and text not in spans:
                spans.append(text)
        lines.append(f"  {g.name} [{g.kind}, {len(g.nodes)} ops over {_fmt(g.shape)}]"
                     + (f"  {', '.join(spans[:4])}{' ...' if len(spans) > 4 else ''}" if spans else ""))
        lines.append("      " + " -> ".join(f"{graph.nodes[n].op}" for n in g.nodes))
        lines.append(f"      reads {len(g.inputs) + len(g.params)} tensor(s), writes {len(g.outputs)}; "
                     f"saves {g.saved_bytes} bytes of memory traffic "
                     f"({human_bytes(saved)}{' at ' + where if where else ''})")
    value = evaluate_dim(total, at)
    lines.append(f"  total traffic saved: {total} bytes ({human_bytes(value)}{' at ' + where if where else ''})")
    if plan.alone:
        ops = sorted({graph.nodes[n].op for n in plan.alone})
        lines.append(f"  {len(plan.alone)} fusable op(s) left alone, with no fusable neighbour: {', '.join(ops)}")
    if plan.boundaries:
        lines.append("boundaries (edges not fused, and why):")
        counted: dict = {}
        for b in plan.boundaries:
            key = (graph.nodes[b.producer].op, graph.nodes[b.consumer].op, b.reason)
            counted.setdefault(key, []).append(b)
        for (p, c, reason), items in counted.items():
            first = items[0]
            more = f"  (x{len(items)})" if len(items) > 1 else ""
            lines.append(f"  {p}({first.producer}) -> {c}({first.consumer}): {reason}{more}")
    return "\n".join(lines)
