"""fuse: group chains of elementwise/broadcast ops and the reductions they feed into fusion groups.

TVM's lattice drives the decisions (op kinds in the registry: elementwise, broadcast, injective,
reduction, opaque). A group is one kernel: its intermediate values never go to memory. The pass
walks the graph in topological order and lets each fusable node join the group of one of its
producers when
  - the producer's group has the same iteration space (the node's output shape equals the group's),
  - every other consumer of the producer's value is in the group too, or the value is a group output
    anyway (then it is written once, as it would be unfused),
  - the group stays under the size cap,
and a row reduction along the last dimension (softmax, log_softmax, sum/mean/amax/logsumexp over
dim=-1) may close a group whose rows it reduces. Every producer->consumer edge that was not fused is
recorded with its reason (`Boundary`), and each group carries an estimate of the memory traffic it
saves (each fused intermediate is neither written nor read back: 2 x its bytes).

The pass annotates; it does not change the computation. `graph.fusion` holds the plan. Codegen
turns each group into a Triton kernel plus a torch fallback (compiler/codegen/triton.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.compiler.ir import Graph
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.shapes import numel

MAX_GROUP = 16            # ops per group: beyond it registers spill and compile time grows
ROW_REDUCTIONS = {"softmax", "log_softmax", "softmin", "sum", "mean", "amax", "amin", "logsumexp"}
NOT_FUSED = {"input", "target", "parameter", "constant", "scan", "saved", "param_value"}
DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i32": 4, "i64": 8, "bool": 1}


@dataclass
class Group:
    id: int
    kind: str                                   # "elementwise" or "row_reduction"
    nodes: list = field(default_factory=list)   # node ids, topological order
    shape: tuple = ()                           # the iteration space
    inputs: list = field(default_factory=list)  # refs read from outside
    outputs: list = field(default_factory=list) # refs used outside (or results)
    saved_bytes: object = 0                     # symbolic: per evaluation

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

    def group(self, nid):
        gid = self.group_of.get(nid)
        return None if gid is None else self.groups[gid]


def fusable(graph: Graph, nid: str) -> str | None:
    """None if the node can join a group, else the reason it cannot."""
    node = graph.nodes[nid]
    op = REGISTRY.get(node.op)
    if node.op in NOT_FUSED or op is None:
        return f"{node.op} is not computed by a kernel"
    if node.module is not None:
        return f"{node.op} owns parameters (a library layer)"
    if op.random:
        return f"{node.op} draws random numbers (kept in torch so its random stream matches)"
    if op.kind == "opaque":
        return f"{node.op} is opaque (vendor library: cuBLAS/cuDNN/oneDNN)"
    if op.kind == "injective":
        return f"{node.op} moves data (a view or copy: fused by the consumer's indexing, not here)"
    if op.kind == "reduction" and not _row_reduction(graph, node):
        return f"{node.op} reduces other than along the last dimension"
    if any(not t.is_float for t in node.outputs) and node.op not in ("eq", "ne", "lt", "le", "gt", "ge"):
        return f"{node.op} produces a non-float value"
    if len(node.outputs) != 1:
        return f"{node.op} has several outputs"
    return None


def _row_reduction(graph: Graph, node) -> bool:
    if node.op not in ROW_REDUCTIONS:
        return False
    t = graph.type_of(node.inputs[0])
    dim = node.attrs.get("dim")
    if dim is None or t.rank == 0:
        return False
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return len(dims) == 1 and dims[0] % t.rank == t.rank - 1


def fuse(graph: Graph, max_group: int = MAX_GROUP) -> FusionPlan:
    groups: list[Group] = []
    group_of: dict[str, int] = {}
    boundaries: list[Boundary] = []
    order = graph.topo_order()
    results = {r[0] for r in graph.result_refs()}
    consumers: dict[str, list[str]] = {nid: graph.users(nid) for nid in graph.nodes}
    ancestors = _Ancestors(graph)
    for nid in order:
        node = graph.nodes[nid]
        reason = fusable(graph, nid)
        if reason is not None:
            for src, _ in node.inputs:
                if graph.nodes[src].op not in ("constant",) and src in group_of:
                    boundaries.append(Boundary(src, nid, reason))
            continue
        is_row = REGISTRY[node.op].kind == "reduction"
        shape = tuple(graph.type_of(node.inputs[0]).shape) if is_row else tuple(node.outputs[0].shape)
        joined = None
        for src, _ in node.inputs:
            if src not in group_of:
                continue
            g = groups[group_of[src]]
            why = _why_not_join(graph, g, nid, src, shape, is_row, consumers, group_of, max_group)
            if why is None and not _convex_with(graph, g, nid, group_of, ancestors):
                why = "fusing would make the group wait on work outside it (a path leaves the group and comes back)"
            if why is None:
                joined = g
                break
            boundaries.append(Boundary(src, nid, why))
        if joined is None:
            joined = Group(len(groups), "row_reduction" if is_row else "elementwise", shape=shape)
            groups.append(joined)
        elif is_row:
            joined.kind = "row_reduction"
        joined.nodes.append(nid)
        group_of[nid] = joined.id
        # the node may also bring two groups together (a + b where a and b come from separate chains)
        for src, _ in node.inputs:
            other = group_of.get(src)
            if other is None or other == joined.id:
                continue
            h = groups[other]
            if (h.kind == "elementwise" and joined.kind == "elementwise" and tuple(h.shape) == tuple(joined.shape)
                    and len(h.nodes) + len(joined.nodes) <= max_group and _merge_convex(graph, joined, h, ancestors)):
                for m in h.nodes:
                    group_of[m] = joined.id
                joined.nodes = sorted(joined.nodes + h.nodes, key=order.index)
                h.nodes = []
    # a group of a single cheap op gains nothing: drop groups without an intermediate to save
    kept = []
    for g in groups:
        if not g.nodes:
            continue
        if len(g.nodes) < 2:
            for nid in g.nodes:
                del group_of[nid]
            continue
        g.id = len(kept)
        for nid in g.nodes:
            group_of[nid] = g.id
        kept.append(g)
    for g in kept:
        _finish(graph, g, group_of, consumers, results)
    boundaries = [b for b in boundaries if b.producer in group_of or b.consumer in group_of]
    plan = FusionPlan(kept, boundaries, group_of)
    graph.fusion = plan  # type: ignore[attr-defined]
    return plan


def _why_not_join(graph, g: Group, nid, src, shape, is_row, consumers, group_of, max_group) -> str | None:
    if len(g.nodes) >= max_group:
        return f"size cap: the group already has {max_group} ops"
    if g.kind == "row_reduction":
        # after a row reduction, only elementwise epilogues over the same rows join
        last = graph.nodes[g.nodes[-1]]
        if is_row or tuple(graph.nodes[nid].outputs[0].shape) != tuple(last.outputs[0].shape):
            return "a row reduction already closes the group"
    if is_row:
        if tuple(shape) != tuple(g.shape):
            return "the reduction's rows differ from the group's iteration space"
    elif tuple(shape) != tuple(g.shape) and g.kind != "row_reduction":
        return (f"iteration space changes ({_fmt(g.shape)} -> {_fmt(shape)})")
    others = [c for c in consumers[src] if c != nid and group_of.get(c) != g.id]
    later = [c for c in others if c not in group_of]
    if later and len(later) > 2:
        return f"{graph.nodes[src].op}'s value has {len(later) + 1} consumers: it must be materialised"
    return None


class _Ancestors:
    """Memoised ancestor sets (the convexity checks ask for the same ones repeatedly)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.memo: dict[str, frozenset] = {}

    def __call__(self, nid: str) -> frozenset:
        got = self.memo.get(nid)
        if got is None:
            import networkx as nx
            got = frozenset(nx.ancestors(self.graph.nx, nid))
            self.memo[nid] = got
        return got


def _convex_with(graph: Graph, g: Group, nid: str, group_of, ancestors) -> bool:
    """Adding nid keeps the group convex: no input of nid from outside depends on a member."""
    members = set(g.nodes)
    for src, _ in graph.nodes[nid].inputs:
        if src in members:
            continue
        if members & ancestors(src):
            return False
    return True


def _merge_convex(graph: Graph, g: Group, h: Group, ancestors) -> bool:
    members = set(g.nodes) | set(h.nodes)
    for nid in members:
        for src, _ in graph.nodes[nid].inputs:
            if src not in members and members & ancestors(src):
                return False
    return True


def _finish(graph: Graph, g: Group, group_of, consumers, results) -> None:
    members = set(g.nodes)
    ins: list = []
    outs: list = []
    saved = 0
    for nid in g.nodes:
        node = graph.nodes[nid]
        for ref in node.inputs:
            if ref[0] not in members and tuple(ref) not in ins:
                ins.append(tuple(ref))
        used_outside = any(c not in members for c in consumers[nid]) or nid in results
        if used_outside:
            outs.append((nid, 0))
        else:
            t = node.outputs[0]
            saved = saved + 2 * numel(t.shape) * DTYPE_BYTES.get(t.dtype, 4)
    g.inputs, g.outputs, g.saved_bytes = ins, outs, saved


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def explain(graph: Graph, plan: FusionPlan, env: dict | None = None) -> str:
    """`nnspec compile --explain`: the groups, their ops, the traffic they save, and every boundary."""
    from nnspec.compiler.summary import evaluate_dim, human_bytes
    env = env or {}
    lines = [f"fusion plan for {graph.name}: {len(plan.groups)} group(s)"]
    total = 0
    for g in plan.groups:
        ops = " -> ".join(graph.nodes[n].op for n in g.nodes)
        saved = evaluate_dim(g.saved_bytes, env)
        total += saved or 0
        where = graph.nodes[g.nodes[0]].span
        lines.append(f"  {g.name} [{g.kind}, {len(g.nodes)} ops over {_fmt(g.shape)}]"
                     + (f"  ({where.file}:{where.line})" if where else ""))
        lines.append(f"      {ops}")
        lines.append(f"      reads {len(g.inputs)} tensor(s), writes {len(g.outputs)}; saves "
                     f"{human_bytes(saved) if saved is not None else str(g.saved_bytes) + ' bytes'} of memory traffic")
    lines.append(f"  total traffic saved: {human_bytes(total)}" + (f" at {env}" if env else ""))
    if plan.boundaries:
        lines.append("boundaries (edges not fused, and why):")
        for b in plan.boundaries:
            lines.append(f"  {graph.nodes[b.producer].op}({b.producer}) -> {graph.nodes[b.consumer].op}({b.consumer}): "
                         f"{b.reason}")
    return "\n".join(lines)
