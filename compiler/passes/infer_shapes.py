"""infer_shapes: run every op's shape rule over the graph in topological order.

The elaborator already types each node as it creates it; this pass re-derives every type from the
inputs, so a pass that rewrites the graph cannot leave a stale or wrong type behind. Scan bodies are
inferred with their step inputs' types.
"""
from __future__ import annotations

from nnspec.compiler.ir import Graph
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.registry import OpContext
from nnspec.errors import SpecError

STRUCTURAL = ("input", "target", "parameter", "layer_param")  # typed where they are created


class InferShapes:
    name = "infer_shapes"

    def run(self, graph: Graph) -> Graph:
        infer(graph)
        return graph


def infer(graph: Graph) -> None:
    for nid in graph.topo_order():
        node = graph.nodes[nid]
        if node.op in STRUCTURAL:
            continue
        in_types = [graph.type_of(r) for r in node.inputs]
        if node.op == "scan":
            body: Graph = node.attrs["body"]
            step_types = ([in_types[0].with_shape(in_types[0].shape[:node.attrs["axis"]] + in_types[0].shape[node.attrs["axis"] + 1:])]
                          if node.attrs["has_xs"] else []) + in_types[1 if node.attrs["has_xs"] else 0:]
            for bid, t in zip(body.inputs, step_types):
                body.nodes[bid].outputs = [t]
            infer(body)
            for k in range(node.attrs["n_carries"]):
                got = body.type_of(body.outputs[f"carry{k}"])
                if got.shape != step_types[len(step_types) - node.attrs["n_carries"] + k].shape:
                    raise SpecError("E0312", f"scan state {k} changes shape in one step", node.span)
            continue
        op = REGISTRY[node.op]
        assert op.shape is not None, node.op
        outs = op.shape(OpContext(op, node.span), in_types, node.attrs)
        node.outputs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
