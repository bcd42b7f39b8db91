"""render: a model's forward and backward graphs as graphviz DOT, and DOT -> svg, png or pdf.

`to_dot(graph, kind="forward" | "backward", ...)` returns deterministic DOT text (stable ids, stable
order), so golden files stay put. What the picture shows:

- forward: one node per op with the op (bold), the spec's name for it and its symbolic output shape.
  Inputs and targets, parameters, constants, losses and outputs each have their own shape and colour.
  A small graph draws each layer's weights as separate small nodes feeding the op (one node for a shared
  instance); a large graph writes them into the op's label, and constants too.
- backward: compiler/autodiff.py's graph, the computation that really produces the gradients. Seed
  gradients, saved forward values (dashed "saved-tensor" edges), gradient edges (red), `accumulate`
  nodes (a circle with +) where a value fanned out, one dL/d<param> output per trained parameter;
  parameters that no loss reaches are greyed out and stop_gradient cuts are marked.
- blocks are clusters nested by block path. `depth=N` folds every cluster nested deeper than N into one
  node (block name, output shapes, parameter count; edges re-routed and deduplicated), and a run of
  identical repeats (layer3.1 ... layer3.5) into one node. By default the depth is chosen so that the
  picture keeps at most MAX_NODES nodes: resnet50 shows its stages and blocks, an MLP every op.
- a `scan` is a cluster holding its cell, with a dashed back-edge for each carried state. `unroll=T`
  draws T copies of the cell with the state passed from step to step: the picture of backpropagation
  through time.
- `values=` a compiler/execute.py Trace (see `run_values`): forward edges carry the values and backward
  edges the gradients (scalars with 4 significant digits, small tensors as short lists, larger ones as
  shape and mean); inputs and parameters show their gradient.

`write_rendered` calls graphviz's `dot`; when the program is missing it writes the .dot file and says how
to install graphviz. Nothing a spec contains can break the DOT or inject markup: ids are rebuilt from
[A-Za-z0-9_], labels are HTML-escaped, tooltips are stripped of quotes and backslashes.

If autodiff cannot build the backward graph (an op without a gradient rule), `to_dot(kind="backward")`
raises BackwardUnavailable; `nnspec render` then keeps the forward file it wrote and exits with status 1,
naming what is missing.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.shapes import TensorType, is_concrete, shape_str

MAX_NODES = 60            # automatic depth: the deepest folding that draws at most this many nodes,
MAX_BACKWARD_NODES = 120  # and for a backward graph (about three times as many ops as its forward graph)
MAX_DETAILED_OPS = 40     # up to this many ops, weights and constants are drawn as nodes of their own
MAX_GRAD_OUTPUTS = 12     # beyond this many parameter gradients, they are drawn one node per layer
FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = ("install graphviz for svg/png/pdf: `apt-get install graphviz` (Debian, Ubuntu), "
                "`brew install graphviz` (macOS), or https://graphviz.org/download/")


class BackwardUnavailable(Exception):
    """autodiff cannot build the backward graph (an op without a gradient rule)."""


class RenderError(ValueError):
    """A bad rendering request (unknown input name, a size that is needed and not given)."""


# ---------------------------------------------------------------------------------------- look
FONT = "Helvetica"
NODE_STYLE = {  # node kind -> graphviz attributes
    "op":          {"shape": "box", "style": "rounded,filled", "fillcolor": "#eef3fb", "color": "#6c8ebf"},
    "layer":       {"shape": "box", "style": "rounded,filled", "fillcolor": "#dae8fc", "color": "#6c8ebf"},
    "loss":        {"shape": "box", "style": "rounded,filled,bold", "fillcolor": "#f8cecc", "color": "#b85450",
                    "peripheries": "2"},
    "metric":      {"shape": "box", "style": "rounded,filled", "fillcolor": "#e1d5e7", "color": "#9673a6"},
    "cut":         {"shape": "octagon", "style": "filled", "fillcolor": "#eeeeee", "color": "#555555"},
    "input":       {"shape": "ellipse", "style": "filled", "fillcolor": "#d5e8d4", "color": "#82b366"},
    "target":      {"shape": "ellipse", "style": "filled,dashed", "fillcolor": "#e9f5e8", "color": "#82b366"},
    "step_in":     {"shape": "ellipse", "style": "filled", "fillcolor": "#f3e5f5", "color": "#7b3294"},
    "param":       {"shape": "cylinder", "style": "filled", "fillcolor": "#fff2cc", "color": "#d6b656",
                    "fontsize": "9"},
    "const":       {"shape": "plaintext", "fontsize": "9", "fontcolor": "#555555", "height": "0.2"},
    "output":      {"shape": "house", "style": "filled", "fillcolor": "#d5e8d4", "color": "#82b366"},
    "fold":        {"shape": "box3d", "style": "filled", "fillcolor": "#dae8fc", "color": "#6c8ebf"},
    "fold_grad":   {"shape": "box3d", "style": "filled", "fillcolor": "#fdf0ef", "color": "#b85450"},
    "seed":        {"shape": "ellipse", "style": "filled", "fillcolor": "#f8cecc", "color": "#b85450"},
    "saved":       {"shape": "box", "style": "rounded,filled,dashed", "fillcolor": "#f5f5f5", "color": "#888888"},
    "grad":        {"shape": "box", "style": "rounded,filled", "fillcolor": "#fdf0ef", "color": "#b85450"},
    "accumulate":  {"shape": "circle", "style": "filled", "fillcolor": "#ffe6cc", "color": "#d79b00",
                    "fixedsize": "true", "width": "0.4"},
    "param_grad":  {"shape": "house", "style": "filled", "fillcolor": "#ffe6cc", "color": "#d79b00"},
    "input_grad":  {"shape": "house", "style": "filled", "fillcolor": "#f8cecc", "color": "#b85450"},
    "unreached":   {"shape": "house", "style": "filled,dashed", "fillcolor": "#eeeeee", "color": "#999999",
                    "fontcolor": "#777777"},
}
EDGE_STYLE = {  # edge kind -> graphviz attributes
    "data":       {"color": "#444444"},
    "weight":     {"color": "#b59d3b", "arrowsize": "0.6"},
    "const":      {"color": "#999999", "arrowsize": "0.5"},
    "saved":      {"color": "#777777", "style": "dashed"},
    "grad":       {"color": "#c0392b", "penwidth": "1.5"},
    "mask":       {"color": "#999999"},
    "carry":      {"color": "#7b3294", "penwidth": "2"},
    "carry_back": {"color": "#7b3294", "style": "dashed", "constraint": "false"},
}
CLUSTER_STYLE = {
    "block": {"style": "rounded", "color": "#9e9e9e", "fontcolor": "#555555"},
    "scan":  {"style": "rounded,filled", "color": "#7b3294", "fillcolor": "#faf5fc", "fontcolor": "#7b3294"},
    "step":  {"style": "rounded,dashed", "color": "#b39ddb", "fontcolor": "#7b3294"},
    "fused": {"style": "dashed", "color": "#e08a00", "fontcolor": "#b36b00", "penwidth": "1.2"},
}
ROW_FONT = {  # row style -> (point size, colour) of the label line
    "shape": ("9", "#444444"), "note": ("8", "#666666"), "value": ("9", "#2e7d32"), "grad": ("9", "#c62828"),
}
OP_KINDS = ("op", "layer", "loss", "metric", "cut", "grad", "accumulate")
FLOW_EDGES = ("data", "grad", "carry")


# ---------------------------------------------------------------------------------------- text
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def html_escape(text) -> str:
    """Text for an HTML-like graphviz label (and for HTML pages): no markup survives."""
    text = _CONTROL.sub(" ", str(text))
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


def plain(text) -> str:
    """Text for a quoted DOT attribute (tooltips, edge labels): nothing that DOT or HTML would interpret."""
    text = _CONTROL.sub(" ", str(text))
    return text.replace("\\", "/").replace('"', "'").replace("<", "\u2039").replace(">", "\u203a")


def type_text(t: TensorType) -> str:
    """`[B, 64, 56, 56]` for f32 (the usual case), `i64[B]` otherwise."""
    return shape_str(t.shape) if t.dtype == "f32" else f"{t.dtype}{shape_str(t.shape)}"


def number(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_value(v) -> str:
    """A forward value or a gradient as an edge label: scalars with 4 significant digits, small tensors
    as short lists, bigger ones as their shape and mean."""
    try:
        import torch
    except ImportError:  # pragma: no cover - values come from torch
        return number(v)
    if not torch.is_tensor(v):
        return number(v)
    t = v.detach().cpu()
    if t.numel() == 1:
        return number(t.item())
    if t.numel() <= 4:
        items = ", ".join(number(x) for x in t.flatten().tolist())
        return f"[{items}]" if t.dim() == 1 else f"{list(t.shape)}: [{items}]"
    if t.numel() == 0:
        return f"{list(t.shape)} empty"
    return f"{list(t.shape)} mean {number(t.double().mean().item())}"


def value_key(nid: str, k: int) -> str:
    """How compiler/execute.trace names a value: "node" or "node:k"."""
    return nid if k == 0 else f"{nid}:{k}"


def _short_source(graph: Graph) -> str:
    src = graph.source or ""
    return Path(src).name if src and not src.startswith("<") else src


# ---------------------------------------------------------------------------------------- drawing model
@dataclass
class DNode:
    id: str
    kind: str
    path: tuple
    rows: list                    # (style, text): style is "bold", "name", "shape", "note", "value" or "grad"
    tooltip: str = ""
    op: str | None = None
    modules: tuple = ()           # modules whose parameters it holds (counted once when folded)
    grads: int = 0                # parameter gradients it outputs (backward terminals)
    sig: tuple | None = None      # folded blocks: what must be equal for repeats to merge
    fold_path: tuple | None = None
    block: str | None = None
    param: str | None = None      # parameter nodes: "module.param" (where its gradient is found)


@dataclass
class DEdge:
    src: str
    dst: str
    kind: str
    label: str | None = None
    shape: str | None = None


@dataclass(frozen=True)
class Src:
    """Where a value is drawn: the node its edges start from, and how to label them."""

    node: str
    key: str | None               # the value's name in a Trace, if it has one
    shape: str
    is_float: bool = True
    kind: str | None = None       # edge kind override (a carried state)
    label: str | None = None      # edge label when there is no value to show


class Drawing:
    """Nodes, edges and clusters of one picture, built from IR graphs, then folded and written as DOT."""

    def __init__(self, graph: Graph, values=None, compact: bool = False, unroll: int | None = None):
        self.graph = graph
        self.values = values
        self.compact = compact
        self.unroll = unroll
        self.nodes: dict[str, DNode] = {}
        self.edges: list[DEdge] = []
        self.clusters: dict[tuple, tuple] = {}   # path -> (label, style) for scans and their steps
        self.inline: dict[str, str] = {}         # drawn-inline values (constants, weights) -> label row
        self.weights: dict[str, str] = {}        # "module.param" -> weight node id
        self._used: set[str] = set()
        self.block_types = block_types(graph)
        self.drawn: dict[str, str] = {}          # top-level IR node id -> drawn node id
        self.fused: list[tuple] = []             # (fusion group name, drawn node ids): outlined with dashes

    # ------------------------------------------------------------------ ids and adding
    def uid(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_]", "_", base) or "n"
        name, n = base, 1
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._used.add(name)
        return name

    def add(self, node: DNode) -> DNode:
        self.nodes[node.id] = node
        return node

    def edge(self, src: Src, dst: str, kind: str, values: dict | None = None) -> None:
        if src.node in self.inline:  # a constant or a weight written into the consumer's label
            row = ("note", self.inline[src.node])
            if row not in self.nodes[dst].rows:
                self.nodes[dst].rows.append(row)
            return
        kind = src.kind or kind
        label = None
        if values is not None and src.key is not None and src.key in values:
            label = format_value(values[src.key])
        elif src.label:
            label = src.label
        self.edges.append(DEdge(src.node, dst, kind, label, src.shape))

    # ------------------------------------------------------------------ the forward graph
    def forward(self) -> None:
        g = self.graph
        values = self.values.forward if self.values is not None else None
        src = self.dataflow(g, "", {}, lambda p: p, backward=False, values=values)
        self.outline_fusion(g)
        for name, ref in g.outputs.items():
            t = g.type_of(ref)
            node = self.add(DNode(self.uid(f"out_{name}"), "output", (),
                                  [("bold", "output"), ("name", name), ("shape", type_text(t))],
                                  tooltip=f"output {name}: {t}"))
            self.edge(src[tuple(ref)], node.id, "data", values)
        if self.values is not None:  # the gradients of the leaves, next to them (the notes' red numbers)
            grads = self.values.grads
            for nid in g.inputs:
                name = g.nodes[nid].attrs["name"]
                if name in grads and nid in self.nodes:
                    self.nodes[nid].rows.append(("grad", f"dL/d{name} = {format_value(grads[name])}"))
            for n in self.nodes.values():
                if n.kind == "param" and n.param in grads:
                    n.rows.append(("grad", f"grad {format_value(grads[n.param])}"))

    def dataflow(self, g: Graph, ns: str, given: dict, pathfn, backward: bool, values) -> dict:
        """Draw the nodes of `g` (a model, a backward graph or a scan body); returns value ref -> Src."""
        src: dict[tuple, Src] = {}
        top = ns == ""
        roles: dict[str, list] = {}
        for role, table in (("loss", g.losses), ("metric", g.metrics)):
            for name, (nid, _) in table.items():
                roles.setdefault(nid, []).append((role, name))
        for nid in g.topo_order():
            node = g.nodes[nid]
            if nid in given:
                src[(nid, 0)] = given[nid]
                continue
            if node.op == "scan":
                self.scan(g, node, ns, src, values)
                continue
            if node.op == "scan_backward":
                self.scan_backward(node, ns, src, values)
                continue
            did = self.uid(ns + nid)
            path = pathfn(node.path)
            kind = self.kind_of(node, roles, backward)
            if top:
                self.drawn[nid] = did
            dnode = self.add(DNode(did, kind, path, self.rows_of(node, kind, roles, backward),
                                   tooltip=self.tooltip_of(node), op=node.op,
                                   modules=(node.module,) if node.module and kind != "accumulate" else (),
                                   param=node.module if node.op == "parameter" else None))
            if (kind == "const" and (self.compact or backward)) or (kind == "param" and backward and self.compact):
                # written into the label of each consumer instead of drawn (the backward pass's constants
                # are details of the gradient rules: 0 in relu's mask, -1 in a negation)
                self.inline[did] = (f"with {number(node.attrs.get('value'))}" if kind == "const"
                                    else f"uses {node.label} {type_text(node.outputs[0])}")
                del self.nodes[did]
                src[(nid, 0)] = Src(did, None, type_text(node.outputs[0]))
                continue
            # values of the nodes that have no edge to carry them: leaves and results
            if top and values is not None and nid in values and kind in ("input", "target", "loss", "metric"):
                dnode.rows.append(("value", f"= {format_value(values[nid])}"))
            for ref in node.inputs:
                s = src[tuple(ref)]
                self.edge(s, did, self.edge_kind(s, backward), values if top else None)
            if not backward and node.module and node.op != "parameter":
                self.layer_weights(dnode, node)
            for k, t in enumerate(node.outputs):
                src[(nid, k)] = Src(did, value_key(nid, k) if top else None, type_text(t), t.is_float)
        return src

    def kind_of(self, node: Node, roles: dict, backward: bool) -> str:
        op = node.op
        if backward:
            return {"input": "seed", "saved": "saved", "param_value": "param", "constant": "const",
                    "accumulate": "accumulate"}.get(op, "grad")
        if op in ("input", "target", "constant"):
            return {"input": "input", "target": "target", "constant": "const"}[op]
        if op == "parameter":
            return "param"
        if op == "stop_gradient":
            return "cut"
        if node.id in roles:
            return roles[node.id][0][0]
        return "layer" if node.module else "op"

    def rows_of(self, node: Node, kind: str, roles: dict, backward: bool) -> list:
        types = " · ".join(type_text(t) for t in node.outputs)
        if kind in ("input", "target"):
            return [("bold", kind), ("name", node.attrs.get("name", node.id)), ("shape", types)]
        if kind == "seed":
            name = node.attrs.get("name", node.id)
            what = "dL/dL = 1" if name == "grad_loss" else f"dL/d{name[5:]} (upstream)"
            return [("bold", "seed"), ("name", what), ("shape", types)]
        if kind == "const":
            return [("name", number(node.attrs.get("value")))]
        if kind == "saved":
            return [("bold", "saved"), ("name", node.label or node.id), ("shape", types)]
        if kind == "param":
            rows = [("bold", "param"), ("name", node.label or node.module or node.id), ("shape", types)]
            init = node.attrs.get("init")
            if isinstance(init, tuple) and len(init) == 2 and init[0] == "constant":
                rows.append(("note", f"init {number(init[1])}"))
            return rows
        if kind == "accumulate":
            return [("bold", "+")]
        if backward:
            name = node.module or node.label
        elif node.id in roles:
            name = ", ".join(f"{role} {n}" for role, n in roles[node.id])
        else:
            name = node.module or node.label
        rows = [("bold", node.op)]
        if name:
            rows.append(("name", name))
        rows.append(("shape", types))
        return rows

    def tooltip_of(self, node: Node) -> str:
        where = f" ({Path(node.span.file).name}:{node.span.line})" if node.span else ""
        if node.op == "param_value":
            return f"{node.label}: parameter read by the backward pass"
        if node.op == "parameter":
            return f"{node.module}: learned parameter {type_text(node.outputs[0])}{where}"
        if node.op == "accumulate":
            return f"{node.label}: sum of the gradients of a value used several times; {type_text(node.outputs[0])}"
        if node.op == "saved":
            return f"{node.label}: forward value saved for the backward pass"
        types = ", ".join(str(t) for t in node.outputs)
        return f"{node.id}: {node.op} \u2192 {types}{where}"

    def edge_kind(self, s: Src, backward: bool) -> str:
        kind = self.nodes[s.node].kind if s.node in self.nodes else "op"
        if kind == "const":
            return "const"
        if kind == "param":
            return "weight"
        if not backward:
            return "data"
        if kind == "saved":
            return "saved"
        return "grad" if s.is_float else "mask"

    def layer_weights(self, dnode: DNode, node: Node) -> None:
        """A layer's learned tensors: small nodes feeding the op, or a line of its label."""
        module = node.module
        info = self.graph.modules.get(module) if module is not None else None
        if module is None or info is None:
            return
        params = [p for p in info.params if p.trainable and p.init != "buffer"]
        if not params:
            return
        if self.compact:
            dnode.rows.append(("note", " · ".join(f"{p.name or 'value'} {shape_str(p.shape)}" for p in params)))
            return
        for p in params:
            key = f"{module}.{p.name}" if p.name else module
            if key not in self.weights:
                shown = key if info.calls > 1 or not p.name else p.name  # a shared weight says whose it is
                w = self.add(DNode(self.uid(f"w_{key}"), "param", dnode.path,
                                   [("name", shown), ("shape", shape_str(p.shape))],
                                   tooltip=f"{key}: a learned weight of {node.module}",
                                   modules=(node.module,), param=key))
                self.weights[key] = w.id
            self.edges.append(DEdge(self.weights[key], dnode.id, "weight", None, shape_str(p.shape)))

    # ------------------------------------------------------------------ scan: folded or unrolled
    def scan(self, g: Graph, node: Node, ns: str, src: dict, values) -> None:
        body: Graph = node.attrs["body"]
        P = node.path or (node.id,)
        name = P[-1]
        length = node.attrs.get("length")
        has_xs = bool(node.attrs.get("has_xs"))
        n = int(node.attrs.get("n_carries", len(node.inputs) - has_xs))
        top = ns == ""
        outer = [src[tuple(r)] for r in node.inputs]
        carry_ins = body.inputs[int(has_xs):]
        rev = ", reverse" if node.attrs.get("reverse") else ""

        def inside(p: tuple, step: tuple = ()) -> tuple:
            rest = p[len(P):] if p[:len(P)] == P else p
            return P + step + rest

        def out_src(k: int, base: Src, label: str | None) -> Src:
            return replace(base, key=value_key(node.id, k) if top else None, kind=None, label=label)

        if not self.unroll:
            self.clusters[P] = (f"scan {name}: {length} steps{rev}", "scan")
            given = {}
            for j, bid in enumerate(body.inputs):
                bn = body.nodes[bid]
                is_x = has_xs and j == 0
                did = self.uid(f"{ns}{node.id}__{bid}")
                t = bn.outputs[0]
                self.add(DNode(did, "step_in", P, [("bold", "step input" if is_x else "state"),
                                                   ("name", bn.attrs.get("name", bid)), ("shape", type_text(t))],
                               tooltip=f"{bid}: {'one step of the sequence' if is_x else 'carried state'} {t}"))
                self.edge(replace(outer[j], label=outer[j].label or ("step t" if is_x else "initial")), did,
                          "data", values if top else None)
                given[bid] = Src(did, None, type_text(t), t.is_float)
            inner = self.dataflow(body, f"{ns}{node.id}__", given, inside, False, None)
            for k in range(n):
                s = inner[tuple(body.outputs[f"carry{k}"])]
                cname = body.nodes[carry_ins[k]].attrs.get("name", f"carry{k}")
                self.edges.append(DEdge(s.node, given[carry_ins[k]].node, "carry_back", f"next {cname}", s.shape))
            src[(node.id, 0)] = out_src(0, inner[tuple(body.outputs["y"])], "all steps")
            for k in range(n):
                src[(node.id, 1 + k)] = out_src(1 + k, inner[tuple(body.outputs[f"carry{k}"])], "last step")
            return

        steps = min(self.unroll, length) if is_concrete(length) else self.unroll
        self.clusters[P] = (f"scan {name}: unrolled, {steps} of {length} steps{rev}", "scan")
        prev = [replace(outer[int(has_xs) + k], label="initial") for k in range(n)]
        ys = []
        for t in range(steps):
            step = (f"t{t}",)
            self.clusters[P + step] = (f"t = {t}", "step")
            given = {}
            if has_xs:
                given[body.inputs[0]] = replace(outer[0], label=f"x[t={t}]", key=None)
            for k in range(n):
                given[carry_ins[k]] = prev[k]
            inner = self.dataflow(body, f"{ns}{node.id}__t{t}__", given,
                                  lambda p, step=step: inside(p, step), False, None)
            prev = []
            for k in range(n):
                cname = body.nodes[carry_ins[k]].attrs.get("name", f"carry{k}")
                prev.append(replace(inner[tuple(body.outputs[f"carry{k}"])], kind="carry", label=f"{cname} t={t + 1}"))
            ys.append(inner[tuple(body.outputs["y"])])
        out_t = node.outputs[0]
        stack = self.add(DNode(self.uid(f"{ns}{node.id}__ys"), "op", P,
                               [("bold", "stack"), ("name", "outputs of every step"), ("shape", type_text(out_t))],
                               tooltip=f"{node.id}: the step outputs stacked on axis {node.attrs.get('axis')}",
                               op="stack"))
        for t, y in enumerate(ys):
            self.edges.append(DEdge(y.node, stack.id, "data", f"t={t}", y.shape))
        src[(node.id, 0)] = Src(stack.id, value_key(node.id, 0) if top else None, type_text(out_t), out_t.is_float)
        for k in range(n):
            src[(node.id, 1 + k)] = out_src(1 + k, prev[k], f"t={steps}" if steps else None)

    def scan_backward(self, node: Node, ns: str, src: dict, values) -> None:
        """Backpropagation through time: the cell's backward graph, run from the last step to the first.
        Folded: one copy with the state gradient's back-edge; unrolled: a copy per step, the state
        gradient passed from step t to step t-1, the shared weights' gradients summed over the steps."""
        body: Graph = node.attrs["body_backward"]
        a = node.attrs
        P = node.path or (node.id,)
        n, has_xs = int(a["n_carries"]), bool(a["has_xs"])
        carry_names = list(a.get("carry_names") or [f"carry{k}" for k in range(n)])
        keys = list(a.get("param_keys") or [])
        top = ns == ""
        outer = [src[tuple(r)] for r in node.inputs]   # dL/dys, dL/d(final states)..., the step count
        g_ys, g_carries = outer[0], outer[1:1 + n]
        seeds = {body.nodes[b].attrs["name"]: b for b in body.inputs}
        length = _scan_length(self.graph, node.path)
        cell = a.get("cell", P[-1])

        def inside(p: tuple, step: tuple = ()) -> tuple:
            rest = p[len(P):] if p[:len(P)] == P else p
            return P + step + rest

        def result(inner: dict, name: str) -> Src:
            ref = body.outputs.get(f"d:{name}")
            if ref is not None:
                return inner[tuple(ref)]
            zero = self.add(DNode(self.uid(f"{ns}{node.id}__zero_{name}"), "const", P, [("name", "0")],
                                  tooltip=f"{name}: no gradient flows to it in the cell"))
            return Src(zero.id, None, "")

        def out(k: int, s: Src, label: str) -> None:
            src[(node.id, k)] = replace(s, key=value_key(node.id, k) if top else None, kind=None, label=label)

        x_name = cast(str, a.get("x_name"))  # set where has_xs
        if not self.unroll:
            self.clusters[P] = (f"backward of scan {cell}: {length} steps, last to first", "scan")
            given = {}
            for name, bid in seeds.items():
                t = body.nodes[bid].outputs[0]
                is_y = name == "grad_y"
                k = None if is_y else int(name[len("grad_carry"):])
                what = "y" if k is None else carry_names[k]
                did = self.uid(f"{ns}{node.id}__{bid}")
                self.add(DNode(did, "step_in", P, [("bold", "step gradient" if is_y else "state gradient"),
                                                   ("name", f"dL/d{what}"), ("shape", type_text(t))],
                               tooltip=f"{bid}: gradient of the loss with respect to {what} at step t"))
                self.edge(replace(g_ys, label="step t") if k is None else replace(g_carries[k], label="after the last step"),
                          did, "grad", values if top else None)
                given[bid] = Src(did, None, type_text(t), t.is_float)
            inner = self.dataflow(body, f"{ns}{node.id}__", given, inside, True, None)
            for k, cname in enumerate(carry_names):
                seed = seeds.get(f"grad_carry{k}")
                s = result(inner, cname)
                if seed is not None:
                    back = DEdge(s.node, given[seed].node, "carry_back", f"dL/d{cname} to step t-1", s.shape)
                    self.edges.append(back)
            if has_xs:
                out(0, result(inner, x_name), "all steps")
            for k, cname in enumerate(carry_names):
                out(int(has_xs) + k, result(inner, cname), "first step")
            for i, key in enumerate(keys):
                out(int(has_xs) + n + i, result(inner, key), "summed over the steps")
            return

        steps = min(self.unroll, length) if is_concrete(length) else self.unroll
        self.clusters[P] = (f"backward of scan {cell}: unrolled, {steps} of {length} steps, last to first", "scan")
        prev = [replace(g_carries[k], label="after the last step") for k in range(n)]
        dxs: list = []
        pgrads: dict[str, list] = {key: [] for key in keys}
        shared: dict = {}   # the weights each step reads: drawn once
        for t in reversed(range(steps)):
            step = (f"t{t}",)
            self.clusters[P + step] = (f"t = {t}", "step")
            given = dict(shared)
            for name, bid in seeds.items():
                if name == "grad_y":
                    given[bid] = replace(g_ys, label=f"dy[t={t}]", key=None)
                else:
                    given[bid] = prev[int(name[len("grad_carry"):])]
            inner = self.dataflow(body, f"{ns}{node.id}__t{t}__", given,
                                  lambda p, step=step: inside(p, step), True, None)
            shared = {bid: inner[(bid, 0)] for bid, bn in body.nodes.items() if bn.op == "param_value"}
            prev = [replace(result(inner, c), kind="carry", label=f"dL/d{c} t={t}") for c in carry_names]
            if has_xs:
                dxs.append((t, result(inner, x_name)))
            for key in keys:
                pgrads[key].append((t, result(inner, key)))
        if has_xs:
            t0 = node.outputs[0]
            stack = self.add(DNode(self.uid(f"{ns}{node.id}__dxs"), "grad", P,
                                   [("bold", "stack"), ("name", "dL/dx of every step"), ("shape", type_text(t0))],
                                   tooltip=f"{node.id}: the input gradients of the steps, stacked", op="stack"))
            for t, s in dxs:
                self.edges.append(DEdge(s.node, stack.id, "grad", f"t={t}", s.shape))
            out(0, Src(stack.id, None, type_text(t0), True), "")
        for k in range(n):
            out(int(has_xs) + k, prev[k], "t=0")
        for i, key in enumerate(keys):
            acc = self.add(DNode(self.uid(f"{ns}{node.id}__sum_{key}"), "accumulate", P, [("bold", "+")],
                                 tooltip=f"{key}: the shared weight's gradient, summed over the steps",
                                 op="accumulate"))
            for t, s in pgrads[key]:
                self.edges.append(DEdge(s.node, acc.id, "grad", f"t={t}", s.shape))
            out(int(has_xs) + n + i, Src(acc.id, None, type_text(node.outputs[int(has_xs) + n + i])), "")

    # ------------------------------------------------------------------ the backward graph
    def backward(self, bwd: Graph, info) -> None:
        fwd = self.graph
        values = self.values.backward if self.values is not None else None
        src = self.dataflow(bwd, "", {}, lambda p: p, backward=True, values=values)
        self.outline_fusion(bwd)
        by_module: dict[str, DNode] = {}
        group = self.compact or len(info.param_grads) > MAX_GRAD_OUTPUTS  # one dL/d<module> per layer
        for name, ref in bwd.outputs.items():
            key = name.removeprefix("d:")
            s = src[tuple(ref)]
            producer = self.nodes.get(s.node)
            path = producer.path if producer is not None else ()
            if key in info.param_grads:
                module = _module_of(fwd, key)
                if group and module is not None:
                    node = by_module.get(module)
                    if node is None:
                        node = self.add(DNode(self.uid(f"grad_{module}"), "param_grad", path,
                                              [("bold", f"dL/d{module}"), ("note", "")],
                                              tooltip=f"gradients of {module}'s parameters", modules=(module,)))
                        by_module[module] = node
                    pname = key[len(module) + 1:] or "value"
                    node.rows[1] = ("note", " · ".join(x for x in (node.rows[1][1], pname) if x))
                    node.grads += 1
                else:
                    node = self.add(DNode(self.uid(f"grad_{key}"), "param_grad", path,
                                          [("bold", f"dL/d{key}"), ("shape", s.shape)],
                                          tooltip=f"{key}: gradient of the loss with respect to this parameter",
                                          modules=(module,) if module else (), grads=1))
            else:
                node = self.add(DNode(self.uid(f"grad_{key}"), "input_grad", (),
                                      [("bold", f"dL/d{key}"), ("shape", s.shape)],
                                      tooltip=f"{key}: gradient of the loss with respect to the input"))
            self.edge(s, node.id, self.edge_kind(s, True), values)
            if values is not None and s.key in values and node.kind == "input_grad":
                node.rows.append(("grad", f"= {format_value(values[s.key])}"))
        for key in info.unreached:
            module = _module_of(fwd, key)
            self.add(DNode(self.uid(f"unreached_{key}"), "unreached", _module_path(fwd, module),
                           [("bold", f"dL/d{key}"), ("note", "no loss reaches it")],
                           tooltip=f"{key}: no loss depends on this parameter, so it gets no gradient "
                                   "and is not trained"))
        for nid in info.cut:
            fnode = fwd.nodes.get(nid)
            self.add(DNode(self.uid(f"cut_{nid}"), "cut", fnode.path if fnode else (),
                           [("bold", "stop_gradient"), ("name", (fnode.label if fnode else None) or nid),
                            ("note", "the gradient stops here")],
                           tooltip=f"{nid}: stop_gradient cuts the backward flow here", op="stop_gradient"))

    def outline_fusion(self, g: Graph) -> None:
        """Remember compiler/passes/fuse.py's groups of `g`: emit() outlines each one whose ops are all drawn."""
        from nnspec.compiler.passes.fuse import fuse
        for group in fuse(g).groups:
            ids = [self.drawn.get(nid) for nid in group.nodes]
            if all(ids):
                self.fused.append((group.name, ids))

    # ------------------------------------------------------------------ placing, folding
    def settle_paths(self) -> None:
        """Constants sit with their consumer; an accumulate node without a block goes to the innermost
        block its summands share, so that it folds with them."""
        preds: dict[str, list] = {}
        users: dict[str, list] = {}
        for e in self.edges:
            preds.setdefault(e.dst, []).append(e.src)
            users.setdefault(e.src, []).append(e.dst)
        first_user = {k: v[0] for k, v in users.items()}
        for n in self.nodes.values():
            # a weight used in several places (a shared instance, every step of an unrolled scan) sits in
            # the innermost cluster holding all its users, and says whose it is
            if n.kind == "param" and len(set(users.get(n.id, ()))) > 1:
                n.path = _common_prefix([self.nodes[u].path for u in users[n.id]])
                if n.param and n.rows and n.rows[0][0] == "name":
                    n.rows[0] = ("name", n.param)
        for n in self.nodes.values():
            if n.kind == "const" and n.id in first_user:
                n.path = self.nodes[first_user[n.id]].path
        for n in self.nodes.values():
            if n.kind == "accumulate" and not n.path and preds.get(n.id):
                paths = [self.nodes[p].path for p in preds[n.id]]
                n.path = _common_prefix(paths)
        # a saved value nothing draws an edge from (the step count a scan's backward loop reads)
        for nid in [n.id for n in self.nodes.values() if n.kind == "saved" and n.id not in first_user]:
            del self.nodes[nid]

    def count_at(self, depth: int | None) -> int:
        if depth is None:
            return len(self.nodes)
        shallow = sum(1 for n in self.nodes.values() if len(n.path) <= depth)
        return shallow + len({n.path[:depth + 1] for n in self.nodes.values() if len(n.path) > depth})

    def choose_depth(self, depth, budget: int = MAX_NODES) -> int | None:
        if depth == "all":
            return None
        if isinstance(depth, int) and not isinstance(depth, bool):
            if depth < 0:
                raise RenderError(f"depth must be >= 0, got {depth}")
            return depth
        if depth not in (None, "auto"):
            raise RenderError(f"depth must be an integer, 'auto' or 'all', got {depth!r}")
        deepest = max((len(n.path) for n in self.nodes.values()), default=0)
        if self.count_at(None) <= budget:
            return None
        for d in range(deepest - 1, -1, -1):
            if self.count_at(d) <= budget:
                return d
        return 0

    def fold(self, depth: int | None, backward: bool) -> None:
        if depth is None:
            return
        groups: dict[tuple, list[DNode]] = {}
        for n in self.nodes.values():
            if len(n.path) > depth:
                groups.setdefault(n.path[:depth + 1], []).append(n)
        if not groups:
            return
        mapping: dict[str, str] = {}
        folded: dict[tuple, DNode] = {}
        for fpath, members in groups.items():
            fid = self.uid("f_" + "_".join(fpath))
            for m in members:
                mapping[m.id] = fid
            modules = sorted({mod for m in members for mod in m.modules if mod})
            ops = sorted(Counter(m.op for m in members if m.kind in OP_KINDS and m.op).items())
            cluster = self.clusters.get(fpath)
            block = self.block_types.get(fpath) or (cluster[0].split(":")[0] if cluster else None)
            folded[fpath] = DNode(fid, "fold_grad" if backward else "fold", fpath[:depth], [], op="fold",
                                  modules=tuple(modules), grads=sum(m.grads for m in members), fold_path=fpath,
                                  block=block, sig=(block, tuple(ops)))
        # where a folded block's values go: the shapes on the edges that leave it
        out_shapes: dict[str, list] = {}
        edges, seen = [], set()
        for e in self.edges:
            s, t = mapping.get(e.src, e.src), mapping.get(e.dst, e.dst)
            if s == t:
                continue
            if s != e.src and e.kind in FLOW_EDGES and e.shape:
                lst = out_shapes.setdefault(s, [])
                if e.shape not in lst:
                    lst.append(e.shape)
            key = (s, t, e.kind)
            if key in seen:
                continue
            seen.add(key)
            edges.append(DEdge(s, t, e.kind, e.label, e.shape))
        self.edges = edges
        nodes: dict[str, DNode] = {}
        for n in self.nodes.values():
            fid = mapping.get(n.id)
            if fid is None:
                nodes[n.id] = n
            elif fid not in nodes:
                f = folded[n.path[:depth + 1]]
                assert f.sig is not None and f.fold_path is not None  # a folded block has both
                shapes = out_shapes.get(fid, [])
                f.sig = (*f.sig, tuple(shapes), self._params(f.modules))
                f.rows = self._fold_rows(f, shapes, backward)
                f.tooltip = (f"{'.'.join(f.fold_path)}: a folded block"
                             + (f" ({f.block})" if f.block else "") + "; draw it with a larger --depth")
                nodes[fid] = f
        self.nodes = nodes
        self.clusters = {p: c for p, c in self.clusters.items() if len(p) <= depth}

    def _params(self, modules) -> int:
        total = 0
        for m in modules:
            info = self.graph.modules.get(m)
            if info is None:
                continue
            for p in info.params:
                if p.trainable and p.init != "buffer" and isinstance(p.numel, int):
                    total += p.numel
        return total

    def _fold_rows(self, f: DNode, shapes: list, backward: bool, title: str | None = None, count: int = 1) -> list:
        assert f.sig is not None and f.fold_path is not None  # a folded block has both
        n_ops = sum(c for _, c in f.sig[1])
        rows = [("bold", title or ".".join(f.fold_path))]
        block = f.block or "block"
        rows.append(("name", (f"{block} \u00d7{count}" if count > 1 else block) + (" backward" if backward else "")))
        facts = [f"{count} \u00d7 {n_ops} ops" if count > 1 else f"{n_ops} ops"]
        params = self._params(f.modules)
        if backward and f.grads:
            facts.append(f"{f.grads} parameter gradients")
        elif params:
            facts.append(f"{params:,} params")
        rows.append(("note", " · ".join(facts)))
        if shapes:
            rows.append(("shape", " · ".join(shapes[:3]) + (" …" if len(shapes) > 3 else "")))
        return rows

    def merge_repeats(self, backward: bool) -> None:
        """Fold a chain of identical numbered blocks (layer3.1, layer3.2, ...) into one node."""
        flow_in: dict[str, set] = {}
        flow_out: dict[str, set] = {}
        for e in self.edges:
            if e.kind in FLOW_EDGES:
                flow_out.setdefault(e.src, set()).add(e.dst)
                flow_in.setdefault(e.dst, set()).add(e.src)
        siblings: dict[tuple, list[DNode]] = {}
        for n in self.nodes.values():
            if n.kind in ("fold", "fold_grad") and n.fold_path and n.fold_path[-1].isdigit():
                siblings.setdefault(n.fold_path[:-1], []).append(n)

        def fold_path(n: DNode) -> tuple:
            assert n.fold_path is not None  # siblings are folded blocks
            return n.fold_path

        def linked(a: DNode, b: DNode) -> bool:
            fwd = flow_in.get(b.id) == {a.id} and flow_out.get(a.id) == {b.id}
            bwd = flow_in.get(a.id) == {b.id} and flow_out.get(b.id) == {a.id}
            return a.sig == b.sig and (fwd or bwd)

        merged: dict[str, str] = {}
        for group in siblings.values():
            group.sort(key=lambda n: int(fold_path(n)[-1]))
            run = [group[0]]
            for n in [*group[1:], None]:
                if n is not None and int(fold_path(n)[-1]) == int(fold_path(run[-1])[-1]) + 1 and linked(run[-1], n):
                    run.append(n)
                    continue
                if len(run) > 1:
                    first, last = run[0], run[-1]
                    shapes = [r[1] for r in last.rows if r[0] == "shape"]
                    first.modules = tuple(sorted({m for r in run for m in r.modules}))
                    first.grads = sum(r.grads for r in run)
                    title = f"{'.'.join(fold_path(first))} \u2026 {'.'.join(fold_path(last))}"
                    first.rows = self._fold_rows(first, shapes, backward, title, len(run))
                    first.tooltip = f"{title}: {len(run)} identical repeats of {first.block or 'a block'}, folded"
                    for r in run[1:]:
                        merged[r.id] = first.id
                if n is not None:
                    run = [n]
        if not merged:
            return
        self.nodes = {k: v for k, v in self.nodes.items() if k not in merged}
        edges, seen = [], set()
        for e in self.edges:
            s, t = merged.get(e.src, e.src), merged.get(e.dst, e.dst)
            if s == t or (s, t, e.kind) in seen:
                continue
            seen.add((s, t, e.kind))
            edges.append(replace(e, src=s, dst=t))
        self.edges = edges

    # ------------------------------------------------------------------ DOT
    def emit(self, title_rows: list, rankdir: str) -> str:
        import graphviz

        dot = graphviz.Digraph(
            name=re.sub(r"[^A-Za-z0-9_]", "_", self.graph.name) or "model",
            graph_attr={"rankdir": rankdir, "fontname": FONT, "fontsize": "12", "labelloc": "t",
                        "label": _html(title_rows), "nodesep": "0.25", "ranksep": "0.35", "newrank": "true"},
            node_attr={"fontname": FONT, "fontsize": "10", "margin": "0.08,0.04"},
            edge_attr={"fontname": FONT, "fontsize": "9", "arrowsize": "0.7"},
        )
        children: dict[tuple, list] = {}
        at: dict[tuple, list] = {}
        for n in self.nodes.values():
            at.setdefault(n.path, []).append(n)
            for i in range(len(n.path)):
                parent, child = n.path[:i], n.path[:i + 1]
                lst = children.setdefault(parent, [])
                if child not in lst:
                    lst.append(child)
        cluster_ids: dict[tuple, str] = {}
        # a fusion group whose ops are all drawn, in one block, gets a dashed cluster inside that block
        fused_at: dict[tuple, list] = {}
        for name, ids in self.fused:
            paths = {self.nodes[i].path for i in ids if i in self.nodes}
            if len(paths) == 1 and all(i in self.nodes for i in ids):
                fused_at.setdefault(paths.pop(), []).append((name, ids))

        def node(g, n) -> None:
            attrs = dict(NODE_STYLE[n.kind])
            if n.tooltip:
                attrs["tooltip"] = plain(n.tooltip)
            g.node(n.id, _html(n.rows), **attrs)

        def fill(g, path: tuple) -> None:
            inside = set()
            for name, ids in fused_at.get(path, []):
                with g.subgraph(name=self.uid(f"cluster_{name}")) as c:
                    c.attr(label=name, fontname=FONT, fontsize="9", labeljust="r", tooltip=f"{name}: one fused kernel",
                           **CLUSTER_STYLE["fused"])
                    for i in ids:
                        node(c, self.nodes[i])
                inside |= set(ids)
            for n in at.get(path, []):
                if n.id not in inside:
                    node(g, n)
            for child in children.get(path, []):
                if child not in cluster_ids:
                    cluster_ids[child] = self.uid("cluster_" + "_".join(child))
                label, style = self.clusters.get(child, (None, "block"))
                if label is None:
                    block = self.block_types.get(child)
                    label = ".".join(child) + (f" : {block}" if block else "")
                with g.subgraph(name=cluster_ids[child]) as c:
                    c.attr(label=plain(label), fontname=FONT, fontsize="10", labeljust="l",
                           tooltip=plain(label), **CLUSTER_STYLE[style])
                    fill(c, child)

        fill(dot, ())
        for e in self.edges:
            attrs = dict(EDGE_STYLE[e.kind])
            if e.label:
                attrs["label"] = plain(e.label)
                attrs["fontcolor"] = ("#c62828" if e.kind == "grad" else
                                      "#2e7d32" if e.kind in ("data", "carry") else "#666666")
            dot.edge(e.src, e.dst, **attrs)
        return dot.source


def _html(rows: list) -> str:
    parts = []
    for style, text in rows:
        t = html_escape(text)
        if style == "bold":
            parts.append(f"<B>{t}</B>")
        elif style in ROW_FONT:
            size, colour = ROW_FONT[style]
            parts.append(f'<FONT POINT-SIZE="{size}" COLOR="{colour}">{t}</FONT>')
        else:
            parts.append(t)
    return "<" + ("<BR/>".join(parts) or " ") + ">"


def _common_prefix(paths: list) -> tuple:
    if not paths:
        return ()
    out = paths[0]
    for p in paths[1:]:
        i = 0
        while i < min(len(out), len(p)) and out[i] == p[i]:
            i += 1
        out = out[:i]
    return tuple(out)


def _module_of(graph: Graph, key: str) -> str | None:
    """The module owning parameter `key` ("layer1.0.conv1.weight" -> "layer1.0.conv1")."""
    if key in graph.modules:
        return key
    head = key.rsplit(".", 1)[0] if "." in key else key
    return head if head in graph.modules else None


def _all_nodes(graph: Graph):
    for n in graph.nodes.values():
        yield n
        if n.op == "scan":
            yield from _all_nodes(n.attrs["body"])


def _scan_length(graph: Graph, path: tuple):
    for n in _all_nodes(graph):
        if n.op == "scan" and n.path == path:
            return n.attrs.get("length")
    return "T"


def _module_path(graph: Graph, module: str | None) -> tuple:
    for n in _all_nodes(graph):
        if module is not None and n.module == module:
            return n.path
    return ()


def block_types(graph: Graph) -> dict:
    """Block path -> the name of the block it instantiates (`("layer1", "0")` -> "Bottleneck"), found from
    the source lines of the nodes directly inside it."""
    program = getattr(graph, "program", None)
    blocks = getattr(program, "blocks", None) or {}
    spans = [(name, b.span) for name, b in blocks.items()
             if getattr(b, "span", None) is not None and b.span.end_line is not None]
    votes: dict[tuple, Counter] = {}
    for n in _all_nodes(graph):
        if not n.path or n.span is None:
            continue
        inside = [(s.end_line - s.line, name) for name, s in spans
                  if s.file == n.span.file and s.line <= n.span.line <= s.end_line]
        if inside:
            votes.setdefault(n.path, Counter())[min(inside)[1]] += 1
    return {p: c.most_common(1)[0][0] for p, c in votes.items()}


def _op_count(graph: Graph) -> int:
    return sum(1 for n in _all_nodes(graph) if n.op not in ("constant", "input", "target"))


def backward_of(graph: Graph, values=None, input_grads: bool | None = None):
    """The backward graph drawn for `graph`: a Trace's own, or autodiff's (input gradients included when
    asked, or when the model has no parameters, so that there is something to differentiate)."""
    if values is not None:
        return values.backward_graph, values.info
    from nnspec.compiler.autodiff import NoGradientRule, build_backward
    wrt = input_grads if input_grads is not None else graph.param_count() == 0
    try:
        return build_backward(graph, wrt_inputs=wrt)
    except NoGradientRule as e:
        raise BackwardUnavailable(f"cannot draw the backward graph of {graph.name}: {e}") from None


@dataclass
class Picture:
    dot: str
    depth: int | None             # the folding used (None: every op drawn)
    nodes: int                    # nodes drawn


def to_dot(graph: Graph, kind: str = "forward", depth=None, unroll: int | None = None, values=None,
           rankdir: str = "TB", weights: str = "auto", input_grads: bool | None = None,
           fold_repeats: bool = True) -> str:
    """The forward or backward graph of `graph` as DOT text (see the module docstring).

    depth: None or "auto" chooses a folding for big graphs, "all" draws every op, N folds the blocks
    nested deeper than N. unroll: draw each scan as that many steps. values: a Trace from run_values().
    weights: "nodes", "label" or "auto" (nodes for small graphs). input_grads: draw dL/d<input> too
    (default: only for a model without parameters).
    """
    return draw(graph, kind, depth, unroll, values, rankdir, weights, input_grads, fold_repeats).dot


def draw(graph: Graph, kind: str = "forward", depth=None, unroll: int | None = None, values=None,
         rankdir: str = "TB", weights: str = "auto", input_grads: bool | None = None,
         fold_repeats: bool = True) -> Picture:
    """to_dot, with the depth it chose and the number of nodes it drew."""
    if kind not in ("forward", "backward"):
        raise RenderError(f"kind must be 'forward' or 'backward', got {kind!r}")
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise RenderError(f"rankdir must be TB, LR, BT or RL, got {rankdir!r}")
    if weights not in ("auto", "nodes", "label"):
        raise RenderError(f"weights must be 'auto', 'nodes' or 'label', got {weights!r}")
    if unroll is not None and unroll < 1:
        raise RenderError(f"unroll must be at least 1, got {unroll}")
    compact = weights == "label" or (weights == "auto" and _op_count(graph) > MAX_DETAILED_OPS)
    d = Drawing(graph, values, compact, unroll)
    if kind == "forward":
        d.forward()
    else:
        bwd, info = backward_of(graph, values, input_grads)
        d.backward(bwd, info)
    d.settle_paths()
    chosen = d.choose_depth(depth, MAX_NODES if kind == "forward" else MAX_BACKWARD_NODES)
    d.fold(chosen, kind == "backward")
    if fold_repeats and chosen is not None:
        d.merge_repeats(kind == "backward")
    params = graph.param_count()
    facts = [x for x in (_short_source(graph), f"{params:,} parameters" if params else "",
                         f"depth {chosen}" if chosen is not None else "",
                         f"unrolled {unroll} steps" if unroll else "", "with values" if values is not None else "")
             if x]
    title = [("bold", f"{graph.name} \u2014 {kind} graph"), ("note", " · ".join(facts))]
    return Picture(d.emit(title, rankdir), chosen, len(d.nodes))


# ---------------------------------------------------------------------------------------- values
def run_values(graph: Graph, given: dict | None = None, dims: dict | None = None, seed: int = 0):
    """Run the model and its backward graph on `given` inputs (numbers or lists; the others random with
    a fixed seed; symbolic sizes from `dims`, else 2 for the batch and 3 for any other) -> Trace."""
    import torch
    from nnspec.compiler.execute import trace
    from nnspec.compiler.summary import _batch_symbols, evaluate_dim

    given = dict(given or {})
    names = [graph.nodes[n].attrs["name"] for n in graph.inputs + graph.targets]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise RenderError(f"unknown input `{unknown[0]}`: the inputs of {graph.name} are {', '.join(names) or 'none'}")
    env = dict(dims or {})
    batch = set(_batch_symbols(graph))
    for sym in graph.symbols:
        env.setdefault(sym, 2 if sym in batch else 3)
    gen = torch.Generator().manual_seed(seed)
    inputs = {}
    for nid in graph.inputs + graph.targets:
        node = graph.nodes[nid]
        name, t = node.attrs["name"], node.outputs[0]
        if name in given:
            dtype = torch.get_default_dtype() if t.is_float else (torch.bool if t.dtype == "bool" else torch.long)
            inputs[name] = torch.tensor(given[name], dtype=dtype)
            continue
        shape = [evaluate_dim(dim, env) for dim in t.shape]
        if any(s is None for s in shape):
            raise RenderError(f"the size of {name}: {t} is not known: give it with --dim NAME=SIZE "
                              f"or --input {name}=...")
        if t.is_float:
            inputs[name] = torch.randn(shape, generator=gen)
        else:  # class indices: 0 is valid for any number of classes
            inputs[name] = torch.zeros(shape, dtype=torch.bool if t.dtype == "bool" else torch.long)
    torch.manual_seed(seed)
    try:
        return trace(graph, inputs)
    except Exception as e:
        from nnspec.compiler.autodiff import NoGradientRule
        if isinstance(e, NoGradientRule):
            raise BackwardUnavailable(f"cannot compute values for {graph.name}: {e}") from None
        raise


# ---------------------------------------------------------------------------------------- files
def dot_available() -> bool:
    return shutil.which("dot") is not None


def pipe(dot_text: str, fmt: str) -> bytes:
    """DOT -> svg/png/pdf bytes with graphviz's `dot`."""
    import graphviz
    return graphviz.Source(dot_text, engine="dot", encoding="utf-8").pipe(format=fmt)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so that a reader never sees half of it (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a picture is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class Rendered:
    path: Path
    dot_only: bool = False        # `dot` was missing: the .dot file was written instead
    notes: list = field(default_factory=list)


def write_rendered(dot_text: str, base: Path, fmt: str) -> Rendered:
    """Write `base.<fmt>` (or `base.dot` when graphviz's `dot` is not installed)."""
    if fmt not in FORMATS:
        raise RenderError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    base = Path(base)
    if fmt == "dot" or not dot_available():
        path = base.with_name(base.name + ".dot")
        write_bytes_atomic(path, dot_text.encode("utf-8"))
        if fmt == "dot":
            return Rendered(path)
        note = (f"graphviz's `dot` program was not found, so {path} holds the graph in DOT; {INSTALL_HINT}; "
                f"then `dot -T{fmt} {path} -o {base.name}.{fmt}`")
        return Rendered(path, True, [note])
    path = base.with_name(f"{base.name}.{fmt}")
    write_bytes_atomic(path, pipe(dot_text, fmt))
    return Rendered(path)


def svg(graph: Graph, **options) -> str | None:
    """The forward graph as SVG text (for Jupyter's _repr_svg_), or None without graphviz's `dot`."""
    if not dot_available():
        return None
    return pipe(to_dot(graph, "forward", **options), "svg").decode("utf-8")
