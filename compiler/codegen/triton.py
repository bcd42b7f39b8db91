"""Triton codegen: each fusion group of a FusionPlan (compiler/passes/fuse.py) as Triton kernels, a
torch.autograd.Function, and a torch fallback, written into the generated module.

For a group, the generated file holds (names from the group's ops, e.g. add -> relu):

    add_relu_kernel            @triton.jit, the group's forward: loads its inputs once, computes every op
                               in fp32 registers, stores the values used outside the group
    add_relu_backward_kernel   @triton.jit, the group's backward, written from the group's symbolic
                               derivative: a small Graph of the group's ops (inputs as graph inputs,
                               outputs as outputs) through compiler/autodiff.py's build_backward, seeded
                               at the outputs; its where/mul/sub ops and softmax's row sum become kernel
                               lines with the same machinery as the forward
    AddRelu                    torch.autograd.Function: forward launches the kernel and saves only what the
                               backward graph's `saved` nodes read (a group input, an output, or an
                               intermediate the forward kernel also stores); backward launches the
                               backward kernel and sums broadcast inputs' gradients with sum_to_size
    fused_3(h, skip)           per group, what forward() calls: on CUDA tensors AddRelu.apply(...), else
                               the group's ops as the plain torch lines the unfused module has (the same
                               lowerings, so CPU training costs nothing extra: no custom Function there)

Structurally identical groups (the 8 residual add -> relu of a ResNet-18) share one kernel pair and one
Function; each kernel's docstring lists the spec lines it fuses. A group holding a layer (a transformer's
add -> layer_norm) computes it from its decomposition (compiler/ops/scalar.py: LAYERS) with the layer's
parameters as more kernel inputs, and its fused function takes the model: `x, h = fused_3(self, x, h)`.
Dropout joins a group: its kernel draws the mask with tl.rand from a seed drawn per call from torch's generator
and the element's offset, and the backward kernel draws the same mask again from that seed (the tutorials'
low-memory dropout: no mask is saved). The kernels' random numbers are not those of the fallback's F.dropout
(another generator): same distribution, other draws; in eval mode both are the identity.
A group whose backward cannot be written as a kernel (an op without a gradient rule) is left unfused in
forward() (fused_section), so a module always trains on its kernels or on plain torch, never half-way.

Kernels follow the Triton tutorials: documented arguments, program id -> offsets -> mask -> load -> fp32 math
-> store. An elementwise group runs one program per BLOCK elements; a row-reduction group one program per
row (BLOCK = next power of two >= the row length, masked), like the fused-softmax tutorial. Inputs that
broadcast (a bias [C] into [B, C, H, W]) are read through their strides in the iteration space (zero on
broadcast dimensions), so nothing is expanded in memory; inputs of the group's exact shape are read
contiguously. Matmul and convolution never enter a group: they stay on cuBLAS/cuDNN.

Switch (in the generated file): NNSPEC_TRITON=1 runs the kernels for CPU tensors too (with TRITON_INTERPRET=1,
the Triton interpreter: how the tests check every kernel against its fallback without a GPU);
NNSPEC_TRITON=0 never runs them; unset, they run for CUDA tensors of dtype fp32, fp16 or bf16. The module
variable TRITON_MODE can be changed at run time as well.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.scalar import HELPERS, KERNEL_ONLY, helpers_used, num
from nnspec.compiler.passes.fuse import (FUSED_RANDOM, ROW_REDUCTIONS, Boundary, FusionPlan, Group, constant_value,
                                         fuse, layout)
from nnspec.compiler.shapes import TensorType

FLOAT = ("f16", "bf16", "f32", "f64")
NO_GRADIENT = "no input takes a gradient"
NO_FLOAT_OUTPUT = "no output is a float value"


class KernelUnsupported(Exception):
    """A group's (derived) graph holds something the kernel writer cannot express."""


# ------------------------------------------------------------------------------ a group as a small graph
@dataclass
class GroupGraph:
    """The group's ops as a Graph of their own: the group's inputs are graph inputs `x0, x1, ...`.

    `sub` holds the ops as they are (the fallback's torch lines come from it); `kernel` is the graph the kernels
    are written from: the same, except that a layer (layer_norm) is decomposed into ops with scalar expressions
    and its parameters are more inputs, after the group's."""

    group: Group
    sub: Graph
    inputs: list           # sub input node ids, aligned with group.inputs
    outputs: list          # sub refs of the group's outputs, aligned with group.outputs
    kernel: Graph | None = None
    kernel_inputs: list = field(default_factory=list)     # group.inputs, then group.params
    kernel_outputs: list = field(default_factory=list)


def group_graph(graph: Graph, group: Group) -> GroupGraph:
    from nnspec.compiler.codegen.pytorch import container_kinds
    sub = Graph(f"{graph.name}.{group.name}")
    sub.source = graph.source
    sub.modules = graph.modules
    sub._container_kinds = container_kinds(graph)
    taken = set(group.nodes) | {src for nid in group.nodes for src, _ in graph.nodes[nid].inputs}
    mapping: dict = {}
    for i, ref in enumerate(group.inputs):
        nid = _free(f"x{i}", taken)
        sub.add_node(Node(nid, "input", [], {"name": nid}, [graph.type_of(ref)], label=nid))
        sub.inputs.append(nid)
        mapping[tuple(ref)] = (nid, 0)
    for nid in group.nodes:
        node = graph.nodes[nid]
        ins = []
        for ref in node.inputs:
            ref = tuple(ref)
            if ref in mapping:
                ins.append(mapping[ref])
                continue
            if constant_value(graph, ref[0]) is not None:
                _copy_number(graph, sub, ref[0])
            ins.append(ref)
        sub.add_node(Node(nid, node.op, ins, dict(node.attrs), list(node.outputs), span=node.span, path=node.path,
                          label=node.label, module=node.module))
    for k, ref in enumerate(group.outputs):
        sub.outputs[f"out{k}"] = tuple(ref)
    gg = GroupGraph(group, sub, list(sub.inputs), [tuple(r) for r in group.outputs])
    if not group.params:
        gg.kernel, gg.kernel_inputs, gg.kernel_outputs = sub, list(sub.inputs), list(gg.outputs)
    else:
        _decompose_layers(graph, gg, taken)
    return gg


def _free(name: str, taken: set) -> str:
    while name in taken:
        name = "_" + name
    taken.add(name)
    return name


def _decompose_layers(graph: Graph, gg: GroupGraph, taken: set) -> None:
    """gg.kernel: the group's graph with each layer written as ops with scalar expressions (scalar.LAYERS)."""
    from nnspec.compiler.ops.registry import OpContext
    from nnspec.compiler.ops.scalar import LAYERS
    sub, group = gg.sub, gg.group
    k = Graph(sub.name + ".kernel")
    mapping: dict = {}
    for nid in sub.inputs:
        k.add_node(Node(nid, "input", [], dict(sub.nodes[nid].attrs), list(sub.nodes[nid].outputs), label=nid))
        k.inputs.append(nid)
    params: dict = {}
    for j, (module, name) in enumerate(group.params):
        spec = next(p for p in graph.modules[module].params if p.name == name)
        pid = _free(f"x{len(sub.inputs) + j}", taken)
        k.add_node(Node(pid, "input", [], {"name": pid}, [TensorType("f32", tuple(spec.shape))],
                        label=f"{module}.{name}"))
        k.inputs.append(pid)
        params[(module, name)] = (pid, 0)
    for nid in sub.topo_order():
        node = sub.nodes[nid]
        if node.op == "input":
            continue
        ins = [mapping.get(tuple(r), tuple(r)) for r in node.inputs]
        if node.module is None:
            if nid not in k.nodes:
                k.add_node(Node(nid, node.op, ins, dict(node.attrs), list(node.outputs), span=node.span,
                                label=node.label))
            continue

        def add(op: str, inputs: list, _node=node, **attrs) -> tuple:
            refs = []
            for r in inputs:
                if r[0] == "const":
                    cid = _free(f"c{len(k.nodes)}", taken)
                    k.add_node(Node(cid, "constant", [], {"value": r[1]}, [TensorType("f32", ())]))
                    r = (cid, 0)
                refs.append(r)
            opdef = REGISTRY[op]
            full = {a.name: a.default for a in opdef.attrs}
            full.update(attrs)
            assert opdef.shape is not None  # the decompositions use ops with shape rules
            out = opdef.shape(OpContext(opdef, _node.span), [k.type_of(r) for r in refs], full)
            new = _free(f"{_node.id}_{op}", taken)
            k.add_node(Node(new, op, refs, full, [out], span=_node.span, label=_node.label))
            return (new, 0)

        mine = {name: ref for (module, name), ref in params.items() if module == node.module}
        mapping[(nid, 0)] = LAYERS[node.op][1](add, ins[0], mine, node.attrs)
    gg.kernel = k
    gg.kernel_inputs = list(k.inputs)
    gg.kernel_outputs = [mapping.get(r, r) for r in gg.outputs]
    for i, ref in enumerate(gg.kernel_outputs):
        k.outputs[f"out{i}"] = ref


def _copy_number(graph: Graph, sub: Graph, nid: str) -> None:
    """Copy a constant, or arithmetic on constants, into a group's graph (the kernel writes it as a literal)."""
    if nid in sub.nodes:
        return
    node = graph.nodes[nid]
    for src, _ in node.inputs:
        _copy_number(graph, sub, src)
    sub.add_node(Node(nid, node.op, [tuple(r) for r in node.inputs], dict(node.attrs), list(node.outputs),
                      span=node.span, label=node.label))


# ------------------------------------------------------------------------------ one kernel's body
@dataclass
class Load:
    ref: tuple             # the value in the kernel's graph
    arg: str               # pointer argument name: "<var>_ptr"
    type: TensorType

    @property
    def var(self) -> str:
        return self.arg[:-4]


@dataclass
class Store:
    ref: tuple
    arg: str

    @property
    def var(self) -> str:
        return self.arg[:-4]


@dataclass
class KernelText:
    params: list           # argument names, without n_elements / n_cols and BLOCK
    lines: list            # body lines, not indented
    row: bool
    modes: dict            # (load arg, space) -> "full" | "row" | "scalar" | "strided"; space: "full", "keep", "row"
    stores: dict           # store arg -> layout of the stored value: "full", "keep" or "row"
    dims: str | None       # runtime sizes the kernel takes: None, "flat" (shape[1:]) or "row" (shape[1:-1])
    randoms: list = field(default_factory=list)   # j of each dropout the kernel draws: arguments seed<j>, p<j>


class KernelWriter:
    """Writes the body of one kernel over the iteration space S: loads, one line per op, stores.

    Every value has a layout: "full" (a vector over the BLOCK lanes: a row of a row kernel, a stretch of the
    flattened space in an elementwise kernel), "keep" or "row" (one number per row, after a reduction; keep
    has the keepdim shape), or "scalar" (a constant, or a tensor of one element).
    """

    n_cols = "n_cols"      # (the scalar expressions' protocol: see compiler/ops/scalar.py)

    def __init__(self, graph: Graph, space: tuple, row: bool, loads: list[Load], dropouts: tuple = ()):
        self.graph = graph
        self.dropouts = list(dropouts)  # the group's dropout nodes (forward ids): dropout j draws from seed<j>
        self.randoms: set = set()
        self.node_id: str | None = None  # the node being written (a scalar entry may need it)
        self.space = tuple(space)
        self.rank = len(self.space)
        self.row = row
        self.loads = {tuple(ld.ref): ld for ld in loads}
        self.lines: list[str] = []
        self.load_lines: list[str] = []
        self.expr: dict = {}          # computed ref -> variable
        self.lay: dict = {}           # computed ref -> layout
        self.read: dict = {}          # (load ref, space) -> (variable, layout)
        self.modes: dict = {}         # (load arg, space) -> mode
        self.strides: dict = {}       # (load arg, space) -> stride argument names
        self.count = 0

    # ---- the protocol the scalar expressions use
    def let(self, text: str) -> str:
        name = f"t{self.count}"
        self.count += 1
        self.lines.append(f"{name} = {text}")
        return name

    def row_sum(self, v: str) -> str:
        return self.let(f"tl.sum(tl.where(mask, {v}, 0.0), axis=0)")

    def row_max(self, v: str) -> str:
        return self.let(f'tl.max(tl.where(mask, {v}, -float("inf")), axis=0)')

    def row_min(self, v: str) -> str:
        return self.let(f'tl.min(tl.where(mask, {v}, float("inf")), axis=0)')

    def dropout(self, v: str, dropout: str) -> str:
        """v with the mask of the group's dropout node `dropout`: kept (and scaled by 1/(1 - p)) where the
        Philox draw for the element's offset in the iteration space is >= p. The forward and the backward kernel
        draw the same numbers: same seed, same offsets (both kernels run over the group's space)."""
        j = self.dropouts.index(dropout)
        self.randoms.add(j)
        offsets = "row * n_cols + cols" if self.row else "offs"
        keep = self.let(f"tl.rand(seed{j}, {offsets}) >= p{j}")
        return f"tl.where({keep}, {v} / (1.0 - p{j}), 0.0)"

    # ---- layouts
    def ir_layout(self, shape) -> str:
        """Where a value of this IR shape sits in the iteration space."""
        shape = tuple(shape)
        if self.row:
            return layout(shape, self.space) or "full"
        return "full"

    def space_shape(self, space: str) -> tuple:
        if space == "keep":
            return self.space[:-1] + (1,)
        if space == "row":
            return self.space[:-1]
        return self.space

    def operand_layout(self, ref) -> str:
        """The layout an operand has (computed values and constants) or gets when read as it is (loads)."""
        ref = tuple(ref)
        if ref in self.lay:
            return self.lay[ref]
        if constant_value(self.graph, ref[0]) is not None:
            return "scalar"
        t = self.graph.type_of(ref)
        if all(d == 1 for d in t.shape) and tuple(t.shape) != self.space:
            return "scalar"
        return self.ir_layout(t.shape)

    # ---- operands
    def operand(self, ref, space: str) -> tuple[str, str]:
        """(expression, layout) of a value; a load is read the way `space` needs it (once per space)."""
        ref = tuple(ref)
        if ref in self.expr:
            return self.expr[ref], self.lay[ref]
        node = self.graph.nodes[ref[0]]
        value = constant_value(self.graph, ref[0])
        if value is not None:
            return num(value), "scalar"
        if ref not in self.loads:
            raise KernelUnsupported(f"{node.op} ({ref[0]}) is read before it is computed")
        if not self.row:
            space = "full"
        if (ref, space) not in self.read:
            self.read[(ref, space)] = self._load(self.loads[ref], space)
        return self.read[(ref, space)]

    def _load(self, ld: Load, space: str) -> tuple[str, str]:
        shape = tuple(ld.type.shape)
        var = ld.var if space == "full" else f"{ld.var}_{space}"
        if shape == self.space_shape(space):
            mode = "full" if space == "full" else "row"
        elif all(d == 1 for d in shape):
            mode = "scalar"
        else:
            mode = "strided"
        self.modes[(ld.arg, space)] = mode
        if mode == "full":
            offset = "row * n_cols + cols" if self.row else "offs"
        elif mode == "row":
            offset = "row"
        elif mode == "scalar":
            offset = "0"
        else:  # broadcast: the input's strides in the space (0 along broadcast dimensions)
            lead = self.rank - 1 if self.row else self.rank
            names = [f"{var}_s{d}" for d in range(lead)]
            terms = [f"i{d} * {s}" for d, s in enumerate(names)]
            if self.row and space == "full":
                names.append(f"{var}_s{self.rank - 1}")
                terms.append(f"cols * {names[-1]}")
            self.strides[(ld.arg, space)] = names
            offset = " + ".join(terms) or "0"
        masked = mode == "full" and space == "full" or (mode == "strided" and space == "full")
        other = "0.0" if ld.type.dtype in FLOAT else "0"
        text = f"tl.load({ld.arg} + {offset}" + (f", mask=mask, other={other})" if masked else ")")
        if ld.type.dtype in FLOAT:
            text += ".to(tl.float32)"
        self.load_lines.append(f"{var} = {text}")
        lay = "full" if masked else ("scalar" if mode == "scalar" else space)
        return var, lay

    # ---- computation
    def compute(self, nid: str) -> None:
        node = self.graph.nodes[nid]
        op = node.op
        ref = (nid, 0)
        if constant_value(self.graph, nid) is not None:
            return  # a literal where it is read
        out_ir = self.ir_layout(node.outputs[0].shape)
        if op in ROW_REDUCTIONS and REGISTRY[op].kind == "reduction":
            if not self.row:
                raise KernelUnsupported(f"{op} in an elementwise kernel")
            args = [self.operand(node.inputs[0], "full")[0]]
            out = "full" if op in ("softmax", "log_softmax", "softmin") else out_ir
        elif op == "sum_to":
            src = tuple(node.inputs[0])
            v, lay = self.operand(src, self.operand_layout(src))
            if self.row and lay == "full" and tuple(node.attrs["shape"]) == self.space[:-1] + (1,):
                self._bind(ref, self.row_sum(v), "keep")
            else:  # the wrapper sums it (sum_to_size): the kernel keeps the value as it is
                self.expr[ref], self.lay[ref] = v, lay
            return
        elif op == "expand_to":
            dim = node.attrs.get("dim")
            dims = (dim,) if isinstance(dim, int) else tuple(dim or ())
            rank = len(node.outputs[0].shape)
            along_row = (len(dims) == 1 and dims[0] % rank == rank - 1) or (not dims and rank == 1)
            if not self.row or not along_row:
                raise KernelUnsupported("expand_to other than along the row")
            src = tuple(node.inputs[0])
            args = [self.operand(src, self.ir_layout(self.graph.type_of(src).shape))[0]]
            out = "full"
        elif op == "reduce_grad":
            g, x, o = (tuple(r) for r in node.inputs)
            args = [self.operand(g, self.ir_layout(self.graph.type_of(g).shape))[0], self.operand(x, "full")[0],
                    self.operand(o, self.ir_layout(self.graph.type_of(o).shape))[0]]
            out = "full"
        else:
            if REGISTRY[op].scalar is None and op not in KERNEL_ONLY:
                raise KernelUnsupported(f"{op} has no scalar expression")
            lays = [self.operand_layout(r) for r in node.inputs]
            space = "full" if out_ir == "full" or "full" in lays else out_ir
            read = [self.operand(r, space) for r in node.inputs]
            args = [a for a, _ in read]
            lays = [lay for _, lay in read]
            out = "scalar" if all(lay == "scalar" for lay in lays) else space
        rule = KERNEL_ONLY.get(op) or REGISTRY[op].scalar
        self.node_id = nid
        try:
            text = rule(args, node.attrs, self)
        except KeyError as e:
            raise KernelUnsupported(str(e).strip("'\"")) from None
        if text.isidentifier() and self.lines and self.lines[-1].startswith(f"{text} = "):
            self.lines[-1] += f"  # {op}"    # the rule's last step is the value (a row sum)
            self._bind(ref, text, out)
            return
        name = f"v{self.count}"
        self.count += 1
        self.lines.append(f"{name} = {text}  # {op}")
        self._bind(ref, name, out)

    def _bind(self, ref, name: str, lay: str) -> None:
        self.expr[ref], self.lay[ref] = name, lay

    # ---- stores
    def store(self, st: Store) -> str:
        v, lay = self.operand(st.ref, "full")
        if self.row and lay in ("keep", "row"):
            self.lines.append(f"tl.store({st.arg} + row, {v}.to({st.arg}.dtype.element_ty))")
            return lay
        if lay != "full":
            v = f"tl.broadcast_to({v}, [BLOCK])"
        offset = "row * n_cols + cols" if self.row else "offs"
        self.lines.append(f"tl.store({st.arg} + {offset}, {v}.to({st.arg}.dtype.element_ty), mask=mask)")
        return "full"


def write_kernel(graph: Graph, space: tuple, row: bool, loads: list[Load], compute: list[str],
                 stores: list[Store], dropouts: tuple = ()) -> KernelText:
    w = KernelWriter(graph, space, row, loads, dropouts)
    for nid in compute:
        w.compute(nid)
    store_layouts = {st.arg: w.store(st) for st in stores}
    params: list[str] = []
    for ld in loads:
        params.append(ld.arg)
        for space_name in ("full", "keep", "row"):
            params += w.strides.get((ld.arg, space_name), [])
    params += [st.arg for st in stores]
    randoms = sorted(w.randoms)
    params += [name for j in randoms for name in (f"seed{j}", f"p{j}")]
    if row:
        head = ["row = tl.program_id(0)", "cols = tl.arange(0, BLOCK)", "mask = cols < n_cols"]
    else:
        head = ["pid = tl.program_id(0)", "offs = pid * BLOCK + tl.arange(0, BLOCK)", "mask = offs < n_elements"]
    dims = None
    if w.strides:  # the multi-index of each lane, for the inputs read through strides
        lead = len(space) - 1 if row else len(space)
        index = "row" if row else "offs"
        dims = "row" if row else "flat"
        params += [f"D{d}" for d in range(1, lead)]
        inner: list[str] = []
        for d in range(lead - 1, -1, -1):
            base = (f"{index} // {inner[0]}" if len(inner) == 1 else f"{index} // ({' * '.join(inner)})") if inner \
                else index
            base = f"({base})" if inner and d > 0 else base
            head.append(f"i{d} = {base} % D{d}" if d > 0 else f"i{d} = {base}")
            inner.insert(0, f"D{d}")
    return KernelText(params, head + w.load_lines + w.lines, row, dict(w.modes), store_layouts, dims, randoms)


# ------------------------------------------------------------------------------ a group's kernels
@dataclass
class GroupKernels:
    """Everything generated for one group; {name}, {Class} and {doc} are filled in by generate_kernels
    (structurally identical groups share one kernel pair: `key`)."""

    group: Group
    gg: GroupGraph
    kernels: str                  # the @triton.jit functions
    function: str                 # the torch.autograd.Function
    forward_ops: list
    backward: bool                # a backward kernel exists
    why_no_backward: str | None
    saved: list = field(default_factory=list)   # what ctx.save_for_backward keeps: "x<i>", "out<k>", "keep<k>"
    random: bool = False          # the group holds a dropout: its function takes the model (self.training)

    @property
    def key(self) -> str:
        return self.kernels + self.function


def _out_dtype(node: Node) -> str:
    t = node.outputs[0]
    if node.op == "cast" and t.dtype in ("f16", "bf16", "f64"):
        return {"f16": "torch.float16", "bf16": "torch.bfloat16", "f64": "torch.float64"}[t.dtype]
    if t.dtype in FLOAT:
        return "dtype"
    return {"bool": "torch.bool", "i64": "torch.int64", "i32": "torch.int32"}[t.dtype]


_ALLOC = {"full": "shape", "keep": "shape[:-1] + (1,)", "row": "shape[:-1]"}   # a layout's runtime shape


def _call_args(kt: KernelText, loads: list[Load], stores: list[Store]) -> list[str]:
    """What the wrapper passes: each tensor (contiguous where read flat), its strides, outputs, sizes."""
    out = []
    for ld in loads:
        modes = {space: m for (arg, space), m in kt.modes.items() if arg == ld.arg}
        flat = any(m in ("full", "row") for m in modes.values())
        out.append(f"{ld.var}.contiguous()" if flat else ld.var)
        for space in ("full", "keep", "row"):
            if modes.get(space) == "strided":
                strides = f"_strides({ld.var}, {_ALLOC[space]})"
                out.append(f"*{strides}[:-1]" if space == "keep" else f"*{strides}")
    out += [st.var for st in stores]
    out += [name for j in kt.randoms for name in (f"seed{j}", f"p{j}")]
    if kt.dims == "flat":
        out.append("*shape[1:]")
    elif kt.dims == "row":
        out.append("*shape[1:-1]")
    return out


def build_group_kernels(graph: Graph, group: Group, with_backward: bool = True) -> GroupKernels:
    """The kernels and the autograd.Function of one group (see the module docstring)."""
    from nnspec.compiler.autodiff import NoGradientRule, build_backward

    gg = group_graph(graph, group)
    ops = [gg.sub.nodes[n].op for n in group.nodes]
    sub = gg.kernel
    assert sub is not None  # group_graph always sets it
    row = group.kind == "row_reduction"
    space = tuple(group.shape)
    members = [nid for nid in sub.topo_order() if sub.nodes[nid].op != "input" and constant_value(sub, nid) is None]
    dropouts = tuple(nid for nid in members if sub.nodes[nid].op == "dropout")
    # ---- the group's backward graph, and what it reads from the forward pass
    bwd = info = None
    why_not = None
    if not with_backward:
        why_not = "not asked for"
    elif not any(sub.type_of(r).is_float for r in gg.kernel_outputs):
        why_not = NO_FLOAT_OUTPUT
    else:
        try:
            bwd, info = build_backward(sub, wrt_inputs=True)
            for ref, nid in list(info.saved.items()):   # a saved `p - 1` is a number: written as a literal
                value = constant_value(sub, ref[0])
                if value is not None:
                    bwd.nodes[nid].op, bwd.nodes[nid].attrs = "constant", {"value": value}
                    del info.saved[ref]
            if dropouts:
                _dropout_masks_from_seeds(bwd, info)
            if not any(k.startswith("d:") for k in bwd.outputs):
                bwd, why_not = None, NO_GRADIENT
        except (NoGradientRule, NotImplementedError) as e:
            why_not = str(e)
    backward = None
    if bwd is not None:
        try:
            backward = _backward_kernel(bwd, info, space, row, gg, dropouts)
        except KernelUnsupported as e:
            why_not = str(e)
    saved_refs = [tuple(r) for r in info.saved] if backward is not None and info is not None else []
    # saved values: an input as given, an output as computed, an intermediate as an extra kernel output
    out_refs = list(gg.kernel_outputs)
    extra = [r for r in saved_refs if r[0] in members and r not in out_refs]
    loads = [Load((nid, 0), f"x{i}_ptr", sub.nodes[nid].outputs[0]) for i, nid in enumerate(gg.kernel_inputs)]
    stores = [Store(r, f"out{k}_ptr") for k, r in enumerate(out_refs)]
    stores += [Store(r, f"keep{k}_ptr") for k, r in enumerate(extra)]
    fk = write_kernel(sub, space, row, loads, members, stores, dropouts)
    what = " -> ".join(ops)
    kernels = _kernel_source("{name}_kernel", fk, loads, stores, f"forward of {what}")
    # ---- the autograd.Function
    args = [ld.var for ld in loads]
    full_input = next((ld.var for ld in loads if tuple(ld.type.shape) == space), None)
    floats = [ld.var for ld in loads if ld.type.is_float]
    first = ["training"] if dropouts else []   # dropout's p applies in training only
    lines = ["class {Class}(torch.autograd.Function):", '    """{class_doc}"""', "",
             "    @staticmethod", f"    def forward(ctx, {', '.join(first + args)}):",
             f"        shape = {full_input}.shape" if full_input else
             f"        shape = torch.broadcast_shapes({', '.join(a + '.shape' for a in args)})",
             f"        dtype = _float_dtype({', '.join(floats)})"]
    for j, nid in enumerate(dropouts):   # a fresh seed per call, from torch's generator (torch.manual_seed)
        lines.append(f"        seed{j}, p{j} = _seed(), {sub.nodes[nid].attrs['p']!r} if training else 0.0")
    for st in stores:
        dtype = _out_dtype(sub.nodes[st.ref[0]])
        lines.append(f"        {st.var} = torch.empty({_ALLOC[fk.stores[st.arg]]}, dtype={dtype}, "
                     f"device={args[0]}.device)")
    lines.append(f"        _launch({{name}}_kernel, shape, {row}, {', '.join(_call_args(fk, loads, stores))})")
    results = [st.var for st in stores[:len(out_refs)]]
    not_diff = [st.var for st in stores[:len(out_refs)] if not sub.type_of(st.ref).is_float]
    if not_diff:
        lines.append(f"        ctx.mark_non_differentiable({', '.join(not_diff)})")
    saved = []
    for r in saved_refs:
        if r[0] in gg.kernel_inputs:
            saved.append(f"x{gg.kernel_inputs.index(r[0])}")
        elif r in out_refs:
            saved.append(f"out{out_refs.index(r)}")
        else:
            saved.append(f"keep{extra.index(r)}")
    if backward is not None:
        lines.append(f"        ctx.save_for_backward({', '.join(saved)})")
        if dropouts:
            randoms = ", ".join(f"seed{j}, p{j}" for j in range(len(dropouts)))
            lines.append(f"        ctx.randoms = ({randoms},)")
        lines.append(f"        ctx.shape, ctx.inputs = shape, [{', '.join(f'({a}.shape, {a}.dtype)' for a in args)}]")
    lines.append(f"        return {', '.join(results)}")
    lines += ["", "    @staticmethod", f"    def backward(ctx, {', '.join(f'g{k}' for k in range(len(out_refs)))}):"]
    if backward is None and why_not == NO_GRADIENT:
        n_args = len(first + args)
        lines.append(f"        return {', '.join(['None'] * n_args)}{',' if n_args == 1 else ''}  # {why_not}")
    elif backward is None:
        lines.append(f"        raise RuntimeError({('no backward kernel for this group: ' + str(why_not)).strip()!r})")
    else:
        bk, b_loads, b_stores, grad_of = backward
        lines.append("        shape = ctx.shape")
        if saved:
            lines.append(f"        {', '.join(f's{j}' for j in range(len(saved)))}{',' if len(saved) == 1 else ''} "
                         "= ctx.saved_tensors")
        if dropouts:
            lines.append(f"        {', '.join(f'seed{j}, p{j}' for j in range(len(dropouts)))} = ctx.randoms")
        for st in b_stores:
            i = grad_of[st.arg]
            lines.append(f"        {st.var} = torch.empty({_ALLOC[bk.stores[st.arg]]}, dtype=ctx.inputs[{i}][1], "
                         f"device={b_loads[0].var}.device)")
        call = ", ".join(_call_args(bk, b_loads, b_stores))
        lines.append(f"        _launch({{name}}_backward_kernel, shape, {row}, {call})")
        by_input = {grad_of[st.arg]: st.var for st in b_stores}
        ret = [f"_sum_to({by_input[i]}, ctx.inputs[{i}][0])" if i in by_input else "None" for i in range(len(args))]
        ret = ["None"] * len(first) + ret
        lines.append(f"        return {', '.join(ret)}{',' if len(ret) == 1 else ''}")
        kernels += "\n\n\n" + _kernel_source("{name}_backward_kernel", bk, b_loads, b_stores,
                                           f"backward of {what}, from the group's gradient graph")
    return GroupKernels(group, gg, kernels, "\n".join(lines), ops, backward is not None, why_not, saved,
                        bool(dropouts))


def _dropout_masks_from_seeds(bwd: Graph, info) -> None:
    """In a group's backward graph, dropout's gradient reads the mask back from the saved input and output
    (compiler/ops/gradients.py); inside a kernel it draws the mask again from the forward call's seed instead
    (KERNEL_ONLY["dropout_grad"]): the node keeps only its gradient input, and values saved for nothing else
    are no longer saved."""
    fwd_of = {nid: tuple(ref) for ref, nid in info.saved.items()}
    for node in list(bwd.nodes.values()):
        if node.op == "dropout_grad" and node.attrs.get("op") == "dropout":
            out_node = tuple(node.inputs[2])[0]
            node.attrs = {**node.attrs, "dropout": fwd_of[out_node][0]}
            bwd.set_inputs(node.id, [tuple(node.inputs[0])])
    for ref, nid in list(info.saved.items()):
        if not bwd.users(nid):
            bwd.remove_node(nid)
            del info.saved[ref]


def _backward_kernel(bwd: Graph, info, space: tuple, row: bool, gg: GroupGraph, dropouts: tuple = ()):
    """The backward kernel of a group: reads the seeds g<k> and the saved values s<j> (in the order
    ctx.saved_tensors holds them), writes d<i>, the gradient of input x<i> (full-shape where x<i> broadcasts)."""
    loads = []
    for nid in bwd.inputs:
        k = int(bwd.nodes[nid].attrs["name"][len("grad_out"):])
        loads.append(Load((nid, 0), f"g{k}_ptr", bwd.nodes[nid].outputs[0]))
    for j, (_, nid) in enumerate(info.saved.items()):
        loads.append(Load((nid, 0), f"s{j}_ptr", bwd.nodes[nid].outputs[0]))
    if any(n.op == "param_value" for n in bwd.nodes.values()):
        raise KernelUnsupported("a gradient rule reads a parameter")
    compute = [nid for nid in bwd.topo_order() if bwd.nodes[nid].op not in ("input", "saved", "constant")]
    stores, grad_of = [], {}
    for key, ref in sorted(bwd.outputs.items(), key=lambda item: gg.kernel_inputs.index(item[0][2:])):
        i = gg.kernel_inputs.index(key[2:])
        stores.append(Store(tuple(ref), f"d{i}_ptr"))
        grad_of[f"d{i}_ptr"] = i
    return write_kernel(bwd, space, row, loads, compute, stores, dropouts), loads, stores, grad_of


def _kernel_source(name: str, kt: KernelText, loads: list[Load], stores: list[Store], what: str) -> str:
    tail = "n_cols" if kt.row else "n_elements"
    params = kt.params + [tail, "BLOCK: tl.constexpr"]
    out = ["@triton.jit", f"def {name}(" + ", ".join(params) + "):"]
    if len(out[1]) > 110:   # one argument per line, like the tutorials
        out[1:] = [f"def {name}(", *[f"    {p}," for p in params], "):"]
    doc = [f'    """{what}; {{doc}}.', ""]
    if kt.row:
        doc += ["    One program per row (the iteration space's last dimension): `cols` are the row's lanes, masked",
                "    beyond n_cols; a reduction gives one number per row, which broadcasts like keepdim."]
    else:
        doc += ["    One program per BLOCK elements of the flattened iteration space, masked at the end."]
    doc.append("")
    for ld in loads:
        modes = sorted({_MODE_TEXT[m] for (arg, _), m in kt.modes.items() if arg == ld.arg}) or ["not read"]
        doc.append(f"    {ld.arg}: {_DTYPE_TEXT.get(ld.type.dtype, ld.type.dtype)}, read {' and '.join(modes)}")
    for st in stores:
        doc.append(f"    {st.arg}: written {'one value per row' if kt.stores[st.arg] != 'full' else 'in full'}")
    if kt.dims:
        doc.append("    <x>_s<d>: strides of an input in the iteration space (0 where it broadcasts); D<d>: its sizes")
    doc.append(f"    {tail}: " + ("the row length" if kt.row else "the number of elements"))
    doc.append("    BLOCK: lanes per program" + (" (a power of two >= n_cols)" if kt.row else ""))
    doc.append('    """')
    return "\n".join(out + doc + [f"    {line}" for line in kt.lines])


_MODE_TEXT = {"full": "contiguously", "row": "one value per row", "scalar": "as one value",
              "strided": "through strides (broadcast)"}


_DTYPE_TEXT = {"f32": "float (the model's dtype)", "f16": "fp16", "bf16": "bf16", "f64": "fp64", "bool": "bool",
               "i64": "int64", "i32": "int32"}


# ------------------------------------------------------------------------------ naming
def _base_name(ops: list) -> str:
    parts = list(ops)
    if len(parts) > 4:
        parts = parts[:3] + [f"{len(ops)}ops"]
    return "_".join(parts)


def _class_name(base: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in base.split("_"))


# ------------------------------------------------------------------------------ the generated section
RUNTIME = '''
# Fused kernels (compiler/passes/fuse.py groups, compiler/codegen/triton.py). NNSPEC_TRITON=1 runs them for
# tensors on any device (CPU tensors need TRITON_INTERPRET=1: Triton's interpreter), NNSPEC_TRITON=0 never;
# by default they run for CUDA tensors of dtype fp32, fp16 or bf16, and everything else takes each fused
# function's torch fallback: the same torch ops as the unfused module.
TRITON_MODE = os.environ.get("NNSPEC_TRITON", "auto")
_BLOCK = 1024   # elements per program of an elementwise kernel
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _use_triton(x):
    """Run the kernels for tensors like x (the group's first floating-point input, else its first input)?"""
    if triton is None or TRITON_MODE == "0" or (x.is_floating_point() and x.dtype not in _KERNEL_DTYPES):
        return False
    return x.is_cuda or TRITON_MODE == "1"


def _float_dtype(*tensors):
    """The dtype torch's type promotion gives the group's floating-point inputs."""
    dtype = None
    for t in tensors:
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype if dtype is not None else torch.get_default_dtype()


def _seed():
    """A seed for one dropout in one kernel call, drawn from torch's default generator (so torch.manual_seed
    makes the masks reproducible); the backward kernel draws the same mask again from it."""
    return int(torch.randint(0, 2 ** 31 - 1, ()).item())


def _strides(t, shape):
    """t's strides in the iteration space `shape`: 0 along broadcast dimensions."""
    return t.expand(shape).stride()


def _sum_to(g, shape):
    """A full-shape gradient summed back to a broadcast input's shape."""
    if tuple(g.shape) == tuple(shape):
        return g
    return g.sum_to_size(shape) if len(shape) else g.sum()


def _launch(kernel, shape, row, *args):
    """One program per BLOCK elements, or (row) one per row of the last dimension with BLOCK >= its length."""
    n = math.prod(shape)
    if n == 0:
        return
    if row:
        n_cols = shape[-1] if len(shape) else 1
        block = triton.next_power_of_2(n_cols)
        warps = 4 if block < 2048 else (8 if block < 4096 else 16)
        kernel[(n // n_cols,)](*args, n_cols, BLOCK=block, num_warps=warps)
    else:
        kernel[(triton.cdiv(n, _BLOCK),)](*args, n, BLOCK=_BLOCK)
'''


@dataclass
class KernelSection:
    source: str                       # runtime helpers + kernels + Functions + fused functions
    functions: dict                   # group id -> fused function name
    kernels: dict                     # kernel base name -> GroupKernels of its first group
    groups: list                      # GroupKernels per group
    order: list = field(default_factory=list)   # forward()'s emission order (fused_section)


def generate_kernels(graph: Graph, plan: FusionPlan | None = None, *, imports: bool = False,
                     with_backward: bool = True) -> KernelSection:
    """The generated module's fused section for a plan (a fresh plan if none is given).

    `imports=True` writes a standalone file (imports included): the tests load a backward graph's kernels so.
    """
    from nnspec.compiler.codegen.pytorch import _Emitter, _Names

    plan = plan if plan is not None else fuse(graph)
    built = [cached_group_kernels(graph, g, with_backward) for g in plan.groups]
    names: dict = {}         # key -> kernel base name
    users: dict = {}         # kernel base name -> groups
    for gk in built:
        if gk.key not in names:
            base = _base_name(gk.forward_ops)
            name, n = base, 1
            while name in users:
                n += 1
                name = f"{base}_{n}"
            names[gk.key] = name
            users[name] = []
        users[names[gk.key]].append(gk)
    parts: list[str] = []
    if imports:
        parts.append("import math\nimport os\n\nimport torch\nimport torch.nn.functional as F\n\n" + _TRITON_IMPORT)
    parts.append(RUNTIME.strip("\n"))
    jit: list[str] = []
    classes: list[str] = []
    kernels: dict = {}
    for name, uses in users.items():
        gk = uses[0]
        kernels[name] = gk
        where = _spans(graph, [u.group for u in uses])
        doc = (f"fuses {', '.join(u.group.name for u in uses)} of {graph.name}" + (f" ({where})" if where else ""))
        class_doc = (f"{' -> '.join(gk.forward_ops)} as "
                     + ("a Triton kernel and its backward kernel" if gk.backward else
                        f"a Triton kernel (no backward: {gk.why_no_backward})") + f"; {doc}.")
        fill = {"{name}": name, "{Class}": _class_name(name), "{doc}": doc, "{class_doc}": class_doc}
        kernel_text, class_text = gk.kernels, gk.function
        for k, v in fill.items():
            kernel_text, class_text = kernel_text.replace(k, v), class_text.replace(k, v)
        jit.append(kernel_text)
        classes.append(class_text)
    helpers = [HELPERS[h].strip("\n") for h in helpers_used("\n".join(jit))]
    if jit:
        parts.append("if triton is not None:\n\n" + _indent("\n\n\n".join(helpers + jit)))
    parts += classes
    functions = {}
    for gk in built:
        functions[gk.group.id] = gk.group.name
        parts.append(_fused_function(graph, gk, gk.group.name, _class_name(names[gk.key]), _Emitter, _Names))
    source = "\n\n\n".join(p.strip("\n") for p in parts)
    return KernelSection(source + ("\n" if imports else ""), functions, kernels, built)


_TEMPLATES: dict = {}


def cached_group_kernels(graph: Graph, group: Group, with_backward: bool = True) -> GroupKernels:
    """build_group_kernels, once per group structure (the kernels depend on the ops, their attributes and how
    each value sits in the iteration space, not on the sizes): compile time stays linear in distinct groups."""
    key = (_structure_key(graph, group), with_backward)
    got = _TEMPLATES.get(key)
    if got is None:
        got = build_group_kernels(graph, group, with_backward)
        _TEMPLATES[key] = got
        return got
    return GroupKernels(group, group_graph(graph, group), got.kernels, got.function, got.forward_ops, got.backward,
                        got.why_no_backward, got.saved, got.random)


def _structure_key(graph: Graph, group: Group) -> str:
    space = tuple(group.shape)
    row = group.kind == "row_reduction"

    def where(shape) -> str:
        shape = tuple(shape)
        lay = layout(shape, space) if row else ("full" if shape == space else None)
        if lay:
            return lay
        return f"one{len(shape)}" if all(d == 1 for d in shape) else f"strided{len(shape)}"

    index = {tuple(ref): f"x{i}" for i, ref in enumerate(group.inputs)}
    parts = [group.kind, str(len(space)), str(space[-1]) if row and space and isinstance(space[-1], int) else "-",
             f"params:{[p for _, p in group.params]}"]
    for ref in group.inputs:
        t = graph.type_of(ref)
        parts.append(f"{index[tuple(ref)]}:{t.dtype}:{where(t.shape)}")
    for i, nid in enumerate(group.nodes):
        node = graph.nodes[nid]
        ins = []
        for ref in node.inputs:
            ref = tuple(ref)
            if ref in index:
                ins.append(index[ref])
            elif constant_value(graph, ref[0]) is not None:
                ins.append(f"c{constant_value(graph, ref[0])!r}")
            else:
                ins.append(f"m{group.nodes.index(ref[0])}")
        out = node.outputs[0]
        parts.append(f"{node.op}({','.join(ins)}){sorted(node.attrs.items())!r}:{out.dtype}:{where(out.shape)}")
    parts.append("out:" + ",".join(str(group.nodes.index(r[0])) for r in group.outputs))
    return "|".join(parts)


_TRITON_IMPORT = '''try:
    import triton
    import triton.language as tl
except ImportError:  # without Triton every fused function runs its torch fallback
    triton = None'''


def _indent(text: str) -> str:
    return "\n".join(("    " + line) if line.strip() else "" for line in text.split("\n"))


def _spans(graph: Graph, groups: list) -> str:
    lines: list[str] = []
    for g in groups:
        for nid in g.nodes:
            span = graph.nodes[nid].span
            if span is not None:
                text = f"{span.file}:{span.line}"
                if text not in lines:
                    lines.append(text)
    return ", ".join(lines)


def _fused_function(graph: Graph, gk: GroupKernels, fn: str, cls: str, Emitter, Names) -> str:
    """The function forward() calls for a group: the Function on CUDA, else the group's torch lines."""
    from nnspec.compiler.codegen.pytorch import container_kinds, module_accessor
    gg, group = gk.gg, gk.group
    sub = gg.sub
    names = Names(reserved={"self"} if group.params or gk.random else ())
    params = []
    for ref in group.inputs:
        src = graph.nodes[ref[0]]
        base = src.attrs["name"] if src.op in ("input", "target") else (src.label or src.op)
        if src.op == "parameter" and src.module:
            base = src.module.split(".")[-1]
        name = names.fresh(base, {})
        names.used.add(name)
        params.append(name)
    first_float = next((p for p, nid in zip(params, gg.inputs) if sub.nodes[nid].outputs[0].is_float), None)
    em = Emitter(sub, names, f"{params[0]}.device", f"{first_float}.dtype" if first_float else
                 "torch.get_default_dtype()", indent="    ")
    for p, nid in zip(params, gg.inputs):
        em.bind((nid, 0), p)
    for nid in sub.topo_order():
        em.emit_node(nid)
    results = [em.expr[tuple(r)] for r in gg.outputs]
    where = _spans(graph, [group])
    ops = " -> ".join(gk.forward_ops)
    owner = ["self"] if group.params or gk.random else []  # the model: its layers, and self.training for dropout
    weights = [f"{module_accessor(m, container_kinds(graph))}.{p}" for m, p in group.params]
    lines = [f"def {fn}({', '.join(owner + params)}):",
             f'    """{ops}{" (" + where + ")" if where else ""}: one Triton kernel ({cls}) on CUDA, else these '
             'torch ops."""',
             f"    if _use_triton({first_float or params[0]}):",
             f"        return {cls}.apply({', '.join((['self.training'] if gk.random else []) + params + weights)})"]
    lines += em.lines
    lines.append(f"    return {', '.join(results)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ forward() integration
def emission_order(graph: Graph, plan: FusionPlan) -> list[str]:
    """A topological order in which each group's members are contiguous (the group is one call)."""
    import networkx as nx
    order = graph.topo_order()
    pos = {nid: i for i, nid in enumerate(order)}
    unit = {nid: (f"g{plan.group_of[nid]}" if nid in plan.group_of else nid) for nid in order}
    dag = nx.DiGraph()
    first: dict = {}
    for nid in order:
        u = unit[nid]
        dag.add_node(u)
        first[u] = min(first.get(u, pos[nid]), pos[nid])
    for src, dst in graph.nx.edges():
        if unit[src] != unit[dst]:
            dag.add_edge(unit[src], unit[dst])
    out = []
    for u in nx.lexicographical_topological_sort(dag, key=lambda u: first[u]):
        if u.startswith("g") and u not in graph.nodes:
            out += plan.groups[int(u[1:])].nodes
        else:
            out.append(u)
    return out


def emit_group_call(em, group: Group, nid: str, function: str) -> None:
    """Called by the forward emitter for each member: the first one writes `h = fused_3(x, b)`."""
    graph = em.graph
    if nid != group.nodes[0]:
        return
    takes_model = bool(group.params) or any(graph.nodes[n].op in FUSED_RANDOM for n in group.nodes)
    args = (["self"] if takes_model else []) + [em.expr[tuple(ref)] for ref in group.inputs]
    for m in group.nodes:
        for ref in graph.nodes[m].inputs:
            ref = tuple(ref)
            if ref in em.remaining:
                em.remaining[ref] -= 1
    outs = []
    for ref in group.outputs:
        node = graph.nodes[ref[0]]
        name = em.names.fresh(node.label or node.op, em.remaining, em.blocked)
        em.names.live[name] = tuple(ref)
        outs.append(name)
    last = graph.nodes[group.outputs[-1][0]]
    em.lines.append(f"{em.indent}{', '.join(outs)} = {function}({', '.join(args)}){em.comment(last)}")
    for ref, name in zip(group.outputs, outs):
        em.bind(tuple(ref), name)


def fused_section(graph: Graph, em) -> KernelSection | None:
    """Fuse a forward graph for codegen/pytorch.py's generate(): the fused section of the module (None when
    nothing fuses), with `order` set to the emission order and the emitter told which nodes are calls."""
    plan = fuse(graph)
    trainable = _trainable_groups(graph, plan)
    if len(trainable) < len(plan.groups):
        _keep_groups(plan, trainable)
    if not plan.groups:
        return None
    section = generate_kernels(graph, plan)
    section.order = emission_order(graph, plan)
    em.fusion = plan
    em.names.used |= {g.name for g in plan.groups}
    return section


def _trainable_groups(graph: Graph, plan: FusionPlan) -> list:
    """The groups a module can run as kernels while it trains: a kernel, and a backward kernel wherever a
    gradient flows. (Every op with a scalar expression has both, see tests/compiler/test_triton.py; this
    keeps a combination the kernel writer cannot express out of forward() instead of failing there.)"""
    keep = []
    for g in plan.groups:
        try:
            gk = cached_group_kernels(graph, g)
        except KernelUnsupported as e:
            plan.boundaries.append(Boundary(g.nodes[0], g.nodes[-1], f"no kernel for this group: {e}"))
            continue
        if gk.backward or gk.why_no_backward in (NO_GRADIENT, NO_FLOAT_OUTPUT):
            keep.append(g)
        else:
            plan.boundaries.append(Boundary(g.nodes[0], g.nodes[-1], f"no backward kernel: {gk.why_no_backward}"))
    return keep


def _keep_groups(plan: FusionPlan, groups: list) -> None:
    dropped = [n for g in plan.groups if g not in groups for n in g.nodes]
    plan.alone += dropped
    for nid in dropped:
        del plan.group_of[nid]
    for i, g in enumerate(groups):
        g.id = i
        for nid in g.nodes:
            plan.group_of[nid] = i
    plan.groups = groups


__all__ = ["generate_kernels", "build_group_kernels", "group_graph", "emission_order", "emit_group_call",
           "fused_section", "KernelUnsupported"]
