"""The graph IR: operations as nodes, tensors as edges, on a networkx MultiDiGraph.

A `Node` is one operation with its attributes, output types, source span, block path and (for
layers with weights) the module that owns its parameters. Edges run from producer to consumer and
carry `(out_index, in_index)`. Several nodes may name the same module: that is a shared instance,
its parameters exist once. A `scan` node holds its per-step body as a nested `Graph`.

`Graph.lint()` checks the invariants every pass must keep and says how to fix a violation.
"""
from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import networkx as nx

from nnspec.compiler.shapes import TensorType, numel, shape_str
from nnspec.errors import Span

if TYPE_CHECKING:
    from nnspec.compiler.passes.fuse import FusionPlan
    from nnspec.compiler.passes.validate import Warning_
    from nnspec.dsl.loader import Program

ValueRef = tuple  # (node_id, output_index)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_identifier(name: str) -> bool:
    return bool(_IDENT.match(name)) and not keyword.iskeyword(name)


@dataclass
class ParamSpec:
    """A learned tensor (or buffer) owned by a module: `weight`, `bias`, `running_mean`."""

    name: str
    shape: tuple
    init: Any = "default"
    trainable: bool = True

    @property
    def numel(self):
        return numel(self.shape)


@dataclass
class ModuleInfo:
    """An owner of parameters: one per layer instance, shared by every node that calls it.

    It holds data only: the op, its attributes and the types of its first call's inputs (what the weights depend
    on); `ctor` is the torch constructor codegen writes for it (compiler/codegen/constructors.py)."""

    path: str                     # dotted, e.g. "layer1.0.conv1"
    op: str                       # the layer's op ("linear"), or "parameter" for a spec's `param`
    params: list[ParamSpec]
    attrs: dict = field(default_factory=dict)
    in_types: list = field(default_factory=list)
    span: Span | None = None
    calls: int = 0                # how many nodes use it (> 1 means shared)
    owner: Any = field(default=None, compare=False, repr=False)  # the instance that may call it again

    @property
    def ctor(self) -> str:
        """The constructor expression, e.g. "nn.Linear(784, 128)"."""
        from nnspec.compiler.codegen.constructors import constructor
        return constructor(self)


@dataclass
class BlockCall:
    """One call of a block while elaborating: a node of the model's block tree (call 0 is the model itself).

    Every node records the call it was created in (`Node.scope`); codegen writes one class per call (calls that
    differ only in sizes and compile-time values share a class) and render draws one cluster per call. A shared
    instance (`let enc = Encoder(...)`, called twice) has one call per use, all with the same `path`."""

    id: int
    parent: int | None
    path: str                     # the instance's module path ("" for the model)
    block: str                    # the block's name in the spec (the model's name for call 0)
    args: dict = field(default_factory=dict)     # the block's parameters, as the call bound them
    dims: dict = field(default_factory=dict)     # names its input patterns bound (C, H, W, ...)
    values: dict = field(default_factory=dict)   # compile-time values its body assigned once (hs = C // n_head)
    inputs: list = field(default_factory=list)   # the tensors it was called with
    outputs: list = field(default_factory=list)  # the tensors it returned
    span: Span | None = None
    shared: bool = False          # a `let` instance

@dataclass
class Node:
    id: str
    op: str
    inputs: list[ValueRef] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)
    outputs: list[TensorType] = field(default_factory=list)
    module: str | None = None
    span: Span | None = None
    path: tuple = ()
    label: str | None = None      # the spec's own name for the value, if any
    out_labels: list | None = None  # names of each output of a multi-output op (`a, b = split(...)`)
    scope: int = 0                # the BlockCall it belongs to (0: the model); rewrites keep it

    @property
    def type(self) -> TensorType:
        return self.outputs[0]


class Graph:
    """A model (or a scan body) as a dataflow graph."""

    # Set later by elaboration, passes and the pipeline (not by __init__); until then the class defaults below.
    param_decls: Sequence[tuple[str, Any]] = ()     # elaborate: the model's declared (name, type) parameters
    warnings: Sequence[Warning_] = ()                # validate
    channels_last: list[str] | None = None          # rewrite.ChooseLayouts: the convolutions that run channels-last
    conv_bn_folds: dict[str, str] | None = None     # rewrite.FoldConvBatchNorm: batch_norm id -> conv id
    inplace: set[str] | None = None                 # rewrite.InplaceActivations: activations that run in place
    pool_from_input: set[str] | None = None         # rewrite.PoolIndicesFromInput
    fusion: FusionPlan | None = None                # fuse.fuse
    program: Program | None = None                  # pipeline.build: the program the graph was elaborated from
    _container_kinds: dict | None = None            # codegen.pytorch.container_kinds's cache

    def __init__(self, name: str):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.nodes: dict[str, Node] = {}
        self.inputs: list[str] = []           # input node ids, in declaration order
        self.targets: list[str] = []
        self.outputs: dict[str, ValueRef] = {}
        self.losses: dict[str, ValueRef] = {}
        self.metrics: dict[str, ValueRef] = {}
        self.modules: dict[str, ModuleInfo] = {}
        self.blocks: dict[int, BlockCall] = {0: BlockCall(0, None, "", name)}  # block calls; shared with scan bodies
        self.symbols: dict[str, tuple] = {}   # symbol -> (input node id, axis) that defines it
        self.params: dict[str, Any] = {}      # the model's compile-time parameters, resolved
        self.source: str | None = None
        self.doc: str | None = None
        self._names: dict[str, int] = {}

    # ---------------------------------------------------------------- building
    def fresh_id(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", base) or "v"
        if base[0].isdigit():
            base = "v" + base
        if keyword.iskeyword(base) or base in _RESERVED:
            base = base + "_"
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        name = base if n == 0 else f"{base}_{n}"
        while name in self.nodes:
            n += 1
            self._names[base] = n + 1
            name = f"{base}_{n}"
        return name

    def add_node(self, node: Node) -> Node:
        assert node.id not in self.nodes, node.id
        self.nodes[node.id] = node
        self.nx.add_node(node.id)
        for i, (src, k) in enumerate(node.inputs):
            self.nx.add_edge(src, node.id, out_index=k, in_index=i)
        return node

    def remove_node(self, node_id: str) -> None:
        del self.nodes[node_id]
        self.nx.remove_node(node_id)

    def set_inputs(self, node_id: str, inputs: list[ValueRef]) -> None:
        node = self.nodes[node_id]
        for src in list(self.nx.predecessors(node_id)):
            while self.nx.has_edge(src, node_id):
                self.nx.remove_edge(src, node_id)
        node.inputs = list(inputs)
        for i, (src, k) in enumerate(node.inputs):
            self.nx.add_edge(src, node_id, out_index=k, in_index=i)

    # ---------------------------------------------------------------- queries
    def type_of(self, ref: ValueRef) -> TensorType:
        return self.nodes[ref[0]].outputs[ref[1]]

    def topo_order(self) -> list[str]:
        # stable: ties broken by insertion order, so generated code follows the spec
        order = {nid: i for i, nid in enumerate(self.nodes)}
        return list(nx.lexicographical_topological_sort(self.nx, key=lambda n: order[n]))

    def users(self, node_id: str) -> list[str]:
        return list(dict.fromkeys(self.nx.successors(node_id)))

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def result_refs(self) -> list[ValueRef]:
        return list(self.outputs.values()) + list(self.losses.values()) + list(self.metrics.values())

    def param_count(self, trainable_only: bool = False) -> int:
        total = 0
        for mod in self.modules.values():
            for p in mod.params:
                if trainable_only and not p.trainable:
                    continue
                if p.init == "buffer":
                    continue
                n = p.numel
                total += n if isinstance(n, int) else 0
        return total  # scan bodies share this graph's module table, so their parameters are counted here

    # ---------------------------------------------------------------- checking
    def lint(self) -> list[str]:
        """Problems with the graph's invariants, each with how to fix it. Empty when valid."""
        problems = []
        if not nx.is_directed_acyclic_graph(self.nx):
            cycle = nx.find_cycle(self.nx)
            problems.append(f"graph has a cycle through {[e[0] for e in cycle]}: values must be defined before use")
        for node in self.nodes.values():
            if not is_identifier(node.id):
                problems.append(f"node id {node.id!r} is not a Python identifier: build ids with Graph.fresh_id")
            for i, (src, k) in enumerate(node.inputs):
                if src not in self.nodes:
                    problems.append(f"{node.id}: input {i} reads missing node {src!r}: "
                                    "re-point the input before removing its producer")
                elif k >= len(self.nodes[src].outputs):
                    problems.append(f"{node.id}: input {i} reads output {k} of {src}, which has "
                                    f"{len(self.nodes[src].outputs)}")
            if not node.outputs:
                problems.append(f"{node.id}: no output types: run infer_shapes after creating nodes")
            if node.module is not None and node.module not in self.modules:
                problems.append(f"{node.id}: module {node.module!r} is not registered in graph.modules")
            preds = sorted((s, d["in_index"]) for s, _, d in self.nx.in_edges(node.id, data=True))
            if preds != sorted((s, i) for i, (s, _) in enumerate(node.inputs)):
                problems.append(f"{node.id}: networkx edges disagree with node.inputs: use Graph.set_inputs")
        for kind, table in (("output", self.outputs), ("loss", self.losses), ("metric", self.metrics)):
            for name, (src, k) in table.items():
                if src not in self.nodes:
                    problems.append(f"{kind} {name!r} reads missing node {src!r}")
        return problems

    def __str__(self) -> str:
        """The graph printed as readable pseudo-code, one node per line (like torch.fx)."""
        rows = [f"graph {self.name}:"]
        for nid in self.topo_order():
            n = self.nodes[nid]
            args = ", ".join(f"{s}" if k == 0 else f"{s}[{k}]" for s, k in n.inputs)
            attrs = ", ".join(f"{k}={v!r}" for k, v in n.attrs.items() if k != "body")
            sig = ", ".join(x for x in (args, attrs) if x)
            types = ", ".join(str(t) for t in n.outputs)
            mod = f" @{n.module}" if n.module else ""
            rows.append(f"  {nid} = {n.op}({sig}){mod}  # {types}")
        for kind, table in (("output", self.outputs), ("loss", self.losses), ("metric", self.metrics)):
            for name, (src, k) in table.items():
                rows.append(f"  {kind} {name} = {src}" + (f"[{k}]" if k else ""))
        return "\n".join(rows)

    def _repr_svg_(self) -> str | None:
        """Jupyter shows a graph as its forward picture (None without graphviz's `dot`: text instead)."""
        from nnspec.compiler.render import svg
        return svg(self)


_RESERVED = {"self", "torch", "nn", "F", "math", "triton", "tl", "x_shape"}


def describe_type(t: TensorType) -> str:
    return f"{t.dtype}{shape_str(t.shape)}"
