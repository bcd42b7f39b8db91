"""Codegen: IR graph -> a standalone, readable PyTorch module (jinja2 template + per-op lowerings).

The generated file imports torch and nothing of nnspec. `__init__` builds the layers under the spec's
names (standard state_dict names: `layer1.0.conv1.weight`); `forward` is one assignment per op with
a shape comment and the spec line it came from. A variable name is reused once its previous value is
dead, so chains read like hand-written code (`h = F.relu(h)`) and memory is freed early.
Names from a spec are validated identifiers; every string is emitted with repr().
"""
from __future__ import annotations

import builtins
import keyword
import re
from functools import lru_cache
from pathlib import Path
from typing import cast

import jinja2

from nnspec.compiler.ir import Graph, is_identifier
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.registry import LowerCtx
from nnspec.compiler.shapes import Sym

VERSION = "0.1.0"
TEMPLATES = Path(__file__).resolve().parent / "templates"
RESERVED = set(dir(builtins)) | set(keyword.kwlist) | {"self", "torch", "nn", "F", "math", "inf", "nan", "return_losses", "loss",
                                                        "result"}


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                             trim_blocks=False, lstrip_blocks=False, undefined=jinja2.StrictUndefined,
                             autoescape=False)
    env.filters["pyrepr"] = py_literal
    return env


def class_name_for(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not name or name[0].isdigit():
        name = "Model_" + name
    if keyword.iskeyword(name) or name in RESERVED:
        name += "_"
    return name


def module_accessor(path: str, kinds: dict | None = None) -> str:
    """`layer1.0.conv1` -> `self.layer1[0].conv1` (by the kind of each container: see container_kinds)."""
    out = "self"
    prefix = ""
    for part in path.split("."):
        kind = (kinds or {}).get(prefix, "list" if part.isdigit() else "module")
        if kind == "list":
            out += f"[{int(part)}]"
        elif kind == "dict":
            out += f"[{part!r}]"
        else:
            assert is_identifier(part), part  # the elaborator validates every name
            out += f".{part}"
        prefix = f"{prefix}.{part}" if prefix else part
    return out


def _tree(graph: Graph) -> dict:
    tree: dict = {}
    for path, info in graph.modules.items():
        node = tree
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise AssertionError(f"{path}: a layer is also used as a container")
        node[parts[-1]] = info
    return tree


def container_kinds(graph: Graph) -> dict:
    """How each container holds its children: 'list' (nn.ModuleList: children 0, 1, 2 ... with a few gaps),
    'dict' (nn.ModuleDict: numbers far apart, or numbers mixed with names), or 'module' (names only)."""
    cached = getattr(graph, "_container_kinds", None)
    if cached is not None:
        return cached
    kinds: dict = {}

    def walk(children: dict, prefix: str) -> None:
        keys = list(children)
        digits = [k for k in keys if k.isdigit()]
        if digits and len(digits) == len(keys) and max(map(int, digits)) < 2 * len(keys) + 16:
            kinds[prefix] = "list"
        elif digits:
            kinds[prefix] = "dict"
        else:
            kinds[prefix] = "module"
        for k, c in children.items():
            if isinstance(c, dict):
                walk(c, f"{prefix}.{k}" if prefix else k)

    walk(_tree(graph), "")
    graph._container_kinds = kinds
    return kinds


# ------------------------------------------------------------------------------ __init__
def init_lines(graph: Graph) -> list[str]:
    """Build the module tree: containers (nn.Module / nn.ModuleList / nn.ModuleDict), layers, parameters."""
    lines: list[str] = []
    _emit_container(_tree(graph), "", container_kinds(graph), lines)
    return lines


def _list_items(children: dict, path: str, kinds: dict) -> list[str]:
    """Children named 0, 1, 2, ...; gaps (torchvision's `features.0`, `features.2`: the ReLU at index 1
    has no parameters) are filled with nn.Identity() so that `self.features[2]` is the right layer."""
    by_index = {int(k): c for k, c in children.items()}

    def item(i, c):
        if c is None:
            return "nn.Identity()"
        if isinstance(c, dict):
            return "nn.ModuleDict()" if kinds.get(f"{path}.{i}") == "dict" else "nn.Module()"
        return c.ctor
    return [item(i, by_index.get(i)) for i in range(max(by_index) + 1)]


def _emit_container(children: dict, prefix: str, kinds: dict, lines: list) -> None:
    """Layers and containers in the order the spec created them."""
    own = kinds.get(prefix, "module")
    for key, child in children.items():
        path = f"{prefix}.{key}" if prefix else key
        ref = module_accessor(path, kinds)
        if not isinstance(child, dict):
            if own != "list":
                lines.append(f"{ref} = {child.ctor}")
            continue
        kind = kinds[path]
        if kind == "list":
            items = _list_items(child, path, kinds)
            if all(not isinstance(c, dict) for c in child.values()) and sum(map(len, items)) <= 80:
                lines.append(f"{ref} = nn.ModuleList([{', '.join(items)}])")
            else:
                lines.append(f"{ref} = nn.ModuleList([")
                lines.extend(f"    {it}," for it in items)
                lines.append("])")
        elif own != "list":
            lines.append(f"{ref} = {'nn.ModuleDict()' if kind == 'dict' else 'nn.Module()'}")
        _emit_container(child, path, kinds, lines)


# ------------------------------------------------------------------------------ forward
class _Names:
    """Variable names for values: reuse a name once its value is dead; never shadow builtins."""

    def __init__(self, reserved=()):
        self.live: dict[str, tuple] = {}       # name -> ref it holds
        self.used: set[str] = set(reserved)

    def fresh(self, base: str, remaining: dict, blocked=frozenset()) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", base or "v")
        if not base or base[0].isdigit():
            base = "v_" + base
        if base in RESERVED:
            base = base + "_"
        for i in range(100_000):
            name = base if i == 0 else f"{base}_{i}"
            if name in blocked:
                continue
            holder = self.live.get(name)
            if holder is None and name not in self.used:
                return name
            if holder is not None and remaining.get(holder, 0) <= 0:
                return name
        raise AssertionError("ran out of names")


class _Emitter:
    def __init__(self, graph: Graph, names: _Names, device: str, dtype: str, indent: str = "", blocked=frozenset()):
        self.blocked = set(blocked)   # names holding values of an enclosing scope that are still needed
        self.graph = graph
        self.names = names
        self.device = device
        self.dtype = dtype
        self.indent = indent
        self.expr: dict[tuple, str] = {}
        self.lines: list[str] = []
        self.save: dict[tuple, str] = {}   # ref -> key: values kept for the backward pass
        self.save_to = "saved"
        self.scan_saves: dict = {}          # scan node id -> body refs its backward reads, per step
        self.fusion = None                  # a FusionPlan: its groups are written as calls (codegen/triton.py)
        self.folds: dict = {}               # batch norm id -> its convolution, one call (passes/rewrite.py: _conv_bn)
        self.inplace: set = set()           # activations that overwrite their input (passes/rewrite.py)
        self.pool_from_input: set = set()   # max poolings that keep their input, not indices (passes/rewrite.py)
        self.remaining: dict[tuple, int] = {}
        for node in graph.nodes.values():
            for ref in node.inputs:
                self.remaining[ref] = self.remaining.get(ref, 0) + 1
        for ref in graph.result_refs():
            self.remaining[ref] = self.remaining.get(ref, 0) + 1_000_000  # results stay alive

    def bind(self, ref, expr: str) -> None:
        self.expr[ref] = expr
        self.names.live[expr] = ref
        self._keep(ref, expr)

    def _keep(self, ref, expr: str) -> None:
        if ref in self.save:
            self.lines.append(f"{self.indent}{self.save_to}[{self.save[ref]!r}] = {expr}")

    def comment(self, node) -> str:
        types = ", ".join(_shape_comment(t) for t in node.outputs)
        where = f"  {self.graph.source or ''}:{node.span.line}" if node.span else ""
        src = node.span.file if node.span else ""
        if node.span:
            where = f"  {src}:{node.span.line}"
        return f"  # {types}{where}"

    def emit_node(self, nid: str) -> None:
        node = self.graph.nodes[nid]
        op = REGISTRY[node.op]
        if node.op in ("input", "target"):
            return
        if node.op == "saved" and (nid, 0) in self.expr:
            return  # bound by the enclosing loop (a per-step value of a scan)
        if node.op == "constant":
            self.expr[(nid, 0)] = _literal(node.attrs["value"])
            return
        if node.op == "parameter":
            self.expr[(nid, 0)] = module_accessor(cast(str, node.module), container_kinds(self.graph))  # names its module
            self._keep((nid, 0), self.expr[(nid, 0)])
            return
        if self.folds and (nid in self.folds or nid in self.folds.values()):
            self.emit_conv_bn(node)
            return
        if self.fusion is not None and nid in self.fusion.group_of:
            from nnspec.compiler.codegen.triton import emit_group_call
            emit_group_call(self, self.fusion.group(nid), nid, self.fusion.group(nid).name)
            return
        args = [self.expr[ref] for ref in node.inputs]
        for ref in node.inputs:
            self.remaining[ref] -= 1
        if node.op == "scan":
            self.emit_scan(node, args)
            return
        if node.op == "scan_backward":
            self.emit_scan_backward(node, args)
            return
        ctx = LowerCtx(module=module_accessor(node.module, container_kinds(self.graph)) if node.module else None,
                       in_types=[self.graph.type_of(r) for r in node.inputs], out_types=node.outputs,
                       device=self.device, dtype=self.dtype)
        args = [_paren(a) if _needs_paren(node.op, a) else a for a in args]
        assert op.lower is not None, node.op
        text = op.lower(args, node.attrs, ctx)
        if nid in self.inplace:
            from nnspec.compiler.passes.rewrite import INPLACE_ACTIVATIONS
            text = INPLACE_ACTIVATIONS[node.op](args[0], node.attrs)
        if nid in self.pool_from_input:
            text = text.replace("F.max_pool2d(", "_max_pool2d_from_input(", 1)
        base = node.label or node.op
        if len(node.outputs) == 1:
            name = self.names.fresh(base, self.remaining, self.blocked)
            self.lines.append(f"{self.indent}{name} = {text}{self.comment(node)}")
            self.bind((nid, 0), name)
        else:
            outs = []
            for k in range(len(node.outputs)):
                want = node.out_labels[k] if node.out_labels else f"{base}_{k}"
                name = self.names.fresh(want, self.remaining, self.blocked)
                self.names.live[name] = (nid, k)
                outs.append(name)
                self.expr[(nid, k)] = name
            self.lines.append(f"{self.indent}{', '.join(outs)} = {text}{self.comment(node)}")
            for k, name in enumerate(outs):
                self._keep((nid, k), name)

    def emit_conv_bn(self, node) -> None:
        """conv -> batch_norm as one `_conv_bn(conv, bn, x)` call, which folds the norm into the convolution in
        inference (compiler/passes/rewrite.py). The convolution itself writes nothing: the norm writes both."""
        if node.id not in self.folds:
            return
        conv = self.graph.nodes[self.folds[node.id]]
        for ref in conv.inputs:
            self.remaining[ref] -= 1
        kinds = container_kinds(self.graph)
        name = self.names.fresh(node.label or node.op, self.remaining, self.blocked)
        self.lines.append(f"{self.indent}{name} = _conv_bn({module_accessor(cast(str, conv.module), kinds)}, "
                          f"{module_accessor(node.module, kinds)}, {self.expr[conv.inputs[0]]}){self.comment(node)}")
        self.bind((node.id, 0), name)

    def emit_scan(self, node, args) -> None:
        a = node.attrs
        body: Graph = a["body"]
        n = a["n_carries"]
        has_xs = a["has_xs"]
        xs = args[0] if has_xs else None
        inits = args[1:] if has_xs else args
        ind = self.indent
        cell = node.path[-1] if node.path else "cell"
        carry_names = []
        body_inputs = body.inputs
        in_x = body_inputs[0] if has_xs else None
        carry_inputs = body_inputs[1:] if has_xs else body_inputs
        for k, (init, cin) in enumerate(zip(inits, carry_inputs)):
            label = cast(str, body.nodes[cin].label)  # elaboration labels a scan body's carries
            name = self.names.fresh(label if label != f"carry{k}" else f"state{k}", self.remaining)
            self.names.used.add(name)
            carry_names.append(name)
            self.lines.append(f"{ind}{name} = {init}")
        outs_name = self.names.fresh(f"{cell}_outputs", self.remaining)
        self.names.used.add(outs_name)
        if has_xs:
            length = f"{xs}.shape[{a['axis']}]"
        else:
            length = str(a["steps"])
        order = f"reversed(range({length}))" if a["reverse"] else f"range({length})"
        self.lines.append(f"{ind}{outs_name} = []")
        step = self.names.fresh("t", {}) if "t" not in self.names.used else self.names.fresh("step", {})
        self.names.used.add(step)
        self.lines.append(f"{ind}for {step} in {order}:  # scan {cell} over {'dim ' + str(a['axis']) if has_xs else str(a['steps']) + ' steps'}"
                          + (f"  {node.span.file}:{node.span.line}" if node.span else ""))
        still_needed = {n for n, ref in self.names.live.items() if self.remaining.get(ref, 0) > 0}
        inner = _Emitter(body, self.names, self.device, self.dtype, ind + "    ",
                         blocked=still_needed | self.blocked | set(carry_names))
        step_save = self.scan_saves.get(node.id)
        if step_save is not None:  # keep each step's values for backpropagation through time
            steps_name = self.names.fresh(f"{cell}_steps", {})
            self.names.used.add(steps_name)
            self.lines.insert(len(self.lines) - 1, f"{ind}{steps_name} = []")
            inner.lines.append(f"{ind}    step_values = {{}}")
            inner.save = {tuple(r): (f"{r[0]}" if r[1] == 0 else f"{r[0]}:{r[1]}") for r in step_save}
            inner.save_to = "step_values"
        if has_xs:
            assert in_x is not None
            x_t = self.names.fresh("x_t", {})
            self.names.used.add(x_t)
            key = ", ".join([":"] * a["axis"] + [step])
            inner.lines.append(f"{ind}    {x_t} = {xs}[{key}]  # {_shape_comment(body.nodes[in_x].outputs[0])}")
            inner.bind((in_x, 0), x_t)
        for cin, cname in zip(carry_inputs, carry_names):
            inner.bind((cin, 0), cname)
        for nid in body.topo_order():
            inner.emit_node(nid)
        new_vals = [inner.expr[body.outputs[f"carry{k}"]] for k in range(n)]
        y = inner.expr[body.outputs["y"]]
        self.lines.extend(inner.lines)
        self.lines.append(f"{ind}    {outs_name}.append({y})")
        if step_save is not None:
            self.lines.append(f"{ind}    {steps_name}.append(step_values)")
        changed = [(c, v) for c, v in zip(carry_names, new_vals) if c != v]
        if changed:
            self.lines.append(f"{ind}    {', '.join(c for c, _ in changed)} = {', '.join(v for _, v in changed)}")
        if a["reverse"]:
            self.lines.append(f"{ind}{outs_name}.reverse()")
        if step_save is not None:
            self.lines.append(f"{ind}{self.save_to}[{node.id + ':steps'!r}] = {steps_name}")
        ys = self.names.fresh(node.label or (node.out_labels[0] if node.out_labels else f"{cell}_ys"), self.remaining)
        where = f"  {node.span.file}:{node.span.line}" if node.span else ""
        self.lines.append(f"{ind}{ys} = torch.stack({outs_name}, dim={a['axis']})  # {_shape_comment(node.outputs[0])}{where}")
        self.bind((node.id, 0), ys)
        for k, cname in enumerate(carry_names):
            self.expr[(node.id, k + 1)] = cname
            self.names.live[cname] = (node.id, k + 1)
            self._keep((node.id, k + 1), cname)


    def emit_scan_backward(self, node, args) -> None:
        """Backpropagation through time: the cell's backward graph in a loop over the steps, reversed."""
        a = node.attrs
        body = a["body_backward"]
        n, has_xs, axis = a["n_carries"], a["has_xs"], a["axis"]
        ind = self.indent
        g_ys, g_carries, steps = args[0], args[1:1 + n], args[1 + n]
        cell = a["cell"]
        carry_vars = []
        for k, gc in enumerate(g_carries):
            name = self.names.fresh(f"d_{a['carry_names'][k]}", self.remaining, self.blocked)
            self.names.used.add(name)
            carry_vars.append(name)
            self.lines.append(f"{ind}{name} = {gc}")
        acc = {}
        for key in a["param_keys"]:
            name = self.names.fresh("d_" + key.replace(".", "_"), self.remaining, self.blocked)
            self.names.used.add(name)
            acc[key] = name
            self.lines.append(f"{ind}{name} = 0")
        dxs_list = None
        if has_xs:
            dxs_list = self.names.fresh(f"d_{cell}_inputs", {}, self.blocked)
            self.names.used.add(dxs_list)
            self.lines.append(f"{ind}{dxs_list} = []")
        t = self.names.fresh("t", {}, self.blocked)
        self.names.used.add(t)
        order = f"range(len({steps}))" if a["reverse"] else f"reversed(range(len({steps})))"
        where = f"  {node.span.file}:{node.span.line}" if node.span else ""
        self.lines.append(f"{ind}for {t} in {order}:  # backpropagation through time over {cell}{where}")
        still_needed = {nm for nm, ref in self.names.live.items() if self.remaining.get(ref, 0) > 0}
        inner = _Emitter(body, self.names, self.device, self.dtype, ind + "    ",
                         blocked=still_needed | self.blocked | set(carry_vars) | set(acc.values()) | {steps, g_ys})
        step_var = self.names.fresh("step_values", {}, inner.blocked)
        self.names.used.add(step_var)
        inner.lines.append(f"{ind}    {step_var} = {steps}[{t}]")
        key = ", ".join([":"] * axis + [t])
        for nid in body.inputs:
            name = body.nodes[nid].attrs["name"]
            if name == "grad_y":
                gy = self.names.fresh("d_y_t", {}, inner.blocked)
                self.names.used.add(gy)
                inner.lines.append(f"{ind}    {gy} = {g_ys}[{key}]")
                inner.bind((nid, 0), gy)
            else:
                k = int(name[len("grad_carry"):])
                inner.bind((nid, 0), carry_vars[k])
        for nid, bn in body.nodes.items():
            if bn.op == "saved":
                r = bn.attrs["ref"]
                inner.expr[(nid, 0)] = f"{step_var}[{(r[0] if r[1] == 0 else f'{r[0]}:{r[1]}')!r}]"
        for nid in body.topo_order():
            inner.emit_node(nid)
        self.lines.extend(inner.lines)
        for pkey, var in acc.items():
            self.lines.append(f"{ind}    {var} = {var} + {inner.expr[body.outputs['d:' + pkey]]}")
        if has_xs:
            dx = body.outputs.get("d:" + a["x_name"])
            self.lines.append(f"{ind}    {dxs_list}.append({inner.expr[dx] if dx else 'torch.zeros_like(' + g_ys + '[' + key + '])'})")
        new = []
        for k, cname in enumerate(a["carry_names"]):
            ref = body.outputs.get("d:" + cname)
            new.append(inner.expr[ref] if ref is not None else f"torch.zeros_like({carry_vars[k]})")
        self.lines.append(f"{ind}    {', '.join(carry_vars)} = {', '.join(new)}")
        outs = []
        if has_xs:
            if not a["reverse"]:
                self.lines.append(f"{ind}{dxs_list}.reverse()")
            dxs = self.names.fresh(f"d_{cell}_xs", self.remaining, self.blocked)
            self.lines.append(f"{ind}{dxs} = torch.stack({dxs_list}, dim={axis})  # {_shape_comment(node.outputs[0])}")
            outs.append(dxs)
        outs += carry_vars + [acc[k] for k in a["param_keys"]]
        for k, name in enumerate(outs):
            self.expr[(node.id, k)] = name
            self.names.live[name] = (node.id, k)
            self._keep((node.id, k), name)


def params_dtype(graph: Graph) -> str:
    """The model's float dtype when no input is a float tensor (token ids): its parameters' dtype."""
    return "next(self.parameters()).dtype" if graph.modules else "torch.get_default_dtype()"


def _shape_comment(t) -> str:
    inner = ", ".join(str(d) for d in t.shape)
    if len(t.shape) == 1:
        inner += ","
    return f"({inner})" + ("" if t.dtype == "f32" else f" {t.dtype}")


def _literal(v) -> str:
    if isinstance(v, float):
        if v == float("inf"):
            return "math.inf"
        if v == float("-inf"):
            return "-math.inf"
        if v != v:
            return "math.nan"
    return repr(v)


_SIMPLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\[\]]*$|^-?[0-9.e+-]+$")


def _needs_paren(op: str, arg: str) -> bool:
    if op not in ("add", "sub", "mul", "div", "pow", "matmul", "neg", "eq", "ne", "lt", "le", "gt", "ge",
                  "logical_and", "logical_or", "getitem", "reshape", "permute", "transpose", "squeeze", "unsqueeze",
                  "expand", "repeat", "select", "stop_gradient", "masked_fill"):
        return False
    return not _SIMPLE.match(arg) or arg.startswith("-")


def _paren(a: str) -> str:
    return f"({a})"


def _used_symbols(graph: Graph) -> set[str]:
    syms: set[str] = set()

    def walk(v):
        if isinstance(v, Sym):
            syms.update(s for s in v.symbols() if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", s))
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    for node in graph.nodes.values():
        for k, v in node.attrs.items():
            if k == "length":
                continue  # a scan's length is read off its sequence at run time
            if isinstance(v, Graph):
                syms |= _used_symbols(v)
            else:
                walk(v)
    return syms


def generate(graph: Graph, class_name: str | None = None, kernels: bool = True) -> str:
    """Python source of a standalone nn.Module for the graph (with `kernels`, fusion groups become calls of
    fused functions: Triton kernels on CUDA, the same torch ops elsewhere; see codegen/triton.py)."""
    class_name = class_name or class_name_for(graph.name)
    arg_names = [graph.nodes[i].attrs["name"] for i in graph.inputs]
    target_names = [graph.nodes[i].attrs["name"] for i in graph.targets]
    names = _Names(reserved=set(arg_names) | set(target_names))
    first_float = next((graph.nodes[i] for i in graph.inputs if graph.nodes[i].outputs[0].is_float), None)
    ref_input = first_float or (graph.nodes[graph.inputs[0]] if graph.inputs else None)
    device = f"{ref_input.attrs['name']}.device" if ref_input is not None else "None"
    dtype = f"{first_float.attrs['name']}.dtype" if first_float is not None else params_dtype(graph)
    em = _Emitter(graph, names, device, dtype, indent="")
    em.folds = dict(getattr(graph, "conv_bn_folds", None) or {})
    em.inplace = set(getattr(graph, "inplace", None) or ())
    em.pool_from_input = set(getattr(graph, "pool_from_input", None) or ())
    section = None
    if kernels:
        from nnspec.compiler.codegen.triton import fused_section
        section = fused_section(graph, em)
    for nid in graph.inputs + graph.targets:
        name = graph.nodes[nid].attrs["name"]
        em.bind((nid, 0), name)
    lines: list[str] = []
    for sym in sorted(_used_symbols(graph)):
        if sym in graph.symbols:
            src, axis = graph.symbols[sym]
            lines.append(f"{sym} = {graph.nodes[src].attrs['name']}.shape[{axis}]")
            names.used.add(sym)
    from nnspec.compiler.passes.rewrite import forward_helpers
    # nodes the outputs need come first; the rest (losses, metrics) run only when asked for
    import networkx as nx
    needed: set[str] = set()
    for ref in graph.outputs.values():
        needed.add(ref[0])
        needed |= nx.ancestors(graph.nx, ref[0])
    order = section.order if section is not None else graph.topo_order()
    for nid in order:
        if nid in needed:
            em.emit_node(nid)
    lines += em.lines
    em.lines = []
    out_exprs = [em.expr[ref] for ref in graph.outputs.values()]
    has_losses = bool(graph.losses or graph.metrics)
    if graph.outputs:
        ret = out_exprs[0] if len(out_exprs) == 1 else "(" + ", ".join(out_exprs) + ")"
        if has_losses:
            cond = " and ".join(["not return_losses"] + [f"{t} is None" for t in target_names])
            lines.append(f"if {cond}:")
            lines.append(f"    return {ret}")
        else:
            lines.append(f"return {ret}")
    if has_losses:
        for t in target_names:
            lines.append(f"if {t} is None:")
            lines.append(f"    raise ValueError({('the losses need the target ' + t)!r})")
        for nid in order:
            if nid not in needed:
                em.emit_node(nid)
        lines += em.lines
        loss_exprs = [em.expr[ref] for ref in graph.losses.values()]
        items = [f"{k!r}: {em.expr[r]}" for k, r in graph.outputs.items()]
        items += [f"{k!r}: {em.expr[r]}" for k, r in list(graph.losses.items()) + list(graph.metrics.items())]
        if loss_exprs:
            items.append(f"'loss': {' + '.join(loss_exprs)}")
        lines.append("return {" + ", ".join(items) + "}")
    params = []
    for name, typ in getattr(graph, "param_decls", []):
        params.append({"name": name, "default": graph.params[name]})
    rows = lambda ids: [f"{graph.nodes[i].attrs['name']}: {graph.nodes[i].outputs[0]}" for i in ids]  # noqa: E731
    doc = (graph.doc or "").strip().splitlines()
    return _env().get_template("module.py.jinja").render(
        version=VERSION, source=graph.source or "<spec>", model=graph.name, class_name=class_name,
        doc_title=_doc_safe(doc[0] if doc else f"{graph.name}, compiled by nnspec."),
        doc_body=_doc_safe("\n".join(doc[1:]).strip()),
        input_rows=rows(graph.inputs), target_rows=rows(graph.targets),
        output_rows=[f"{k}: {graph.type_of(r)}" for k, r in graph.outputs.items()],
        loss_rows=[f"{k}: {graph.type_of(r)}" for k, r in graph.losses.items()],
        param_count=graph.param_count(), spec_params=dict(graph.params), params=params,
        init_lines=init_lines(graph), arg_names=arg_names, target_names=target_names,
        forward_lines=lines, scan_functions=[], kernel_source=section.source if section is not None else "",
        helper_source=forward_helpers(lines),
    )


def _doc_safe(text: str) -> str:
    """Text placed inside a generated docstring: no way to close it or escape from it (every backslash and
    every quote is escaped, so no run of quotes can end the docstring)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def py_literal(v) -> str:
    """repr() for the values of spec parameters; infinities and NaN become math.inf / math.nan."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return "math.nan" if v != v else ("math.inf" if v > 0 else "-math.inf")
    if isinstance(v, (list, tuple)):
        inner = ", ".join(py_literal(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else (f"({inner},)" if len(v) == 1 else f"({inner})")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(x)}" for k, x in v.items()) + "}"
    return repr(v)
