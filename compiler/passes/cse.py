"""cse: common subexpression elimination: two nodes computing the same op on the same inputs become one.

Nodes are visited in topological order and keyed by (op, inputs after earlier merges, attributes, layer,
output types); a node whose key was seen is replaced by the first one (its users and the graph's outputs,
losses and metrics re-pointed) and removed. Never merged: graph structure (inputs, targets, parameters,
scans, whose bodies are handled as graphs of their own), ops that draw random numbers (two dropouts are two
different masks), and calls of a layer whose forward changes its state (batch norm in training updates its
running statistics once per call). Calls of one shared stateless layer on the same input do merge.
"""
from __future__ import annotations

import math

from nnspec.compiler.ir import Graph
from nnspec.compiler.ops import REGISTRY

NEVER = {"input", "target", "parameter", "layer_param", "scan", "saved", "param_value"}


class CommonSubexpressionElimination:
    name = "cse"

    def run(self, graph: Graph) -> Graph:
        eliminate(graph)
        return graph


def eliminate(graph: Graph) -> int:
    """Merge equal nodes of `graph` (and of its scan bodies); returns how many nodes were removed."""
    seen: dict = {}
    replaced: dict = {}       # removed node id -> the node id that stands for it
    removed = 0
    for nid in graph.topo_order():
        node = graph.nodes[nid]
        body = node.attrs.get("body")
        if isinstance(body, Graph):
            removed += eliminate(body)
        if any(src in replaced for src, _ in node.inputs):
            graph.set_inputs(nid, [(replaced.get(src, src), k) for src, k in node.inputs])
        key = _key(node)
        if key is None:
            continue
        first = seen.get(key)
        if first is None:
            seen[key] = nid
            continue
        replaced[nid] = first
        keep = graph.nodes[first]
        if keep.label is None and node.label is not None:
            keep.label = node.label
        for table in (graph.outputs, graph.losses, graph.metrics):
            for name, (src, k) in table.items():
                if src == nid:
                    table[name] = (first, k)
    for nid in replaced:  # users were re-pointed as they came up in topological order
        graph.remove_node(nid)
        removed += 1
    return removed


def _key(node):
    op = REGISTRY.get(node.op)
    if node.op in NEVER or op is None or op.random:
        return None
    if node.module is not None and op.train_dependent:
        return None
    attrs = _frozen(node.attrs)
    if attrs is _UNHASHABLE:
        return None
    types = tuple((t.dtype, _frozen(tuple(t.shape))) for t in node.outputs)
    return (node.op, tuple(node.inputs), attrs, node.module, types)


_UNHASHABLE = object()


def _frozen(v):
    """A hashable, type-exact form of an attribute value (1, 1.0 and True stay different)."""
    if isinstance(v, dict):
        items = []
        for k in sorted(v, key=repr):
            f = _frozen(v[k])
            if f is _UNHASHABLE:
                return _UNHASHABLE
            items.append((k, f))
        return ("dict", tuple(items))
    if isinstance(v, (list, tuple)):
        parts = []
        for x in v:
            f = _frozen(x)
            if f is _UNHASHABLE:
                return _UNHASHABLE
            parts.append(f)
        return (type(v).__name__, tuple(parts))
    if isinstance(v, float) and math.isnan(v):
        return ("float", "nan")
    try:
        hash(v)
    except TypeError:
        return _UNHASHABLE
    return (type(v).__name__, v)
