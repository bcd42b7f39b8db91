"""dce: remove nodes that no output, loss or metric depends on (and the layers only they used)."""
from __future__ import annotations

import networkx as nx

from nnspec.compiler.ir import Graph


class DeadCodeElimination:
    name = "dce"

    def run(self, graph: Graph) -> Graph:
        live: set[str] = set(graph.inputs) | set(graph.targets)
        for src, _ in graph.result_refs():
            live.add(src)
            live |= nx.ancestors(graph.nx, src)
        for nid in [n for n in graph.nodes if n not in live]:
            graph.remove_node(nid)
        used = {n.module for n in graph.nodes.values() if n.module}
        for n in graph.nodes.values():
            body = n.attrs.get("body")
            if isinstance(body, Graph):
                used |= {b.module for b in body.nodes.values() if b.module}
        for path in [p for p in graph.modules if p not in used]:
            del graph.modules[path]
        return graph
