"""validate: structural checks and warnings after elaboration.

Errors: a graph that breaks the IR's invariants (an internal error, reported with the passes that
ran). Warnings (printed by `nnspec check`, never fatal): inputs and targets nothing reads, values
computed but never used, layers defined with `let` but never called.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from nnspec.compiler.ir import Graph
from nnspec.errors import Span


@dataclass
class Warning_:
    code: str
    message: str
    span: Span | None = None

    def format(self, sources=None) -> str:
        where = f"\n  --> {self.span}" if self.span else ""
        return f"warning[{self.code}]: {self.message}{where}"


class Validate:
    name = "validate"

    def run(self, graph: Graph) -> Graph:
        problems = graph.lint()
        if problems:
            raise AssertionError("invalid graph after elaboration:\n  " + "\n  ".join(problems))
        graph.warnings = warnings_for(graph)  # type: ignore[attr-defined]
        return graph


def warnings_for(graph: Graph) -> list[Warning_]:
    out = []
    results = {r[0] for r in graph.result_refs()}
    live: set[str] = set(results)
    for nid in results:
        live |= nx.ancestors(graph.nx, nid)
    for nid in graph.inputs + graph.targets:
        node = graph.nodes[nid]
        if nid not in live:
            kind = "input" if nid in graph.inputs else "target"
            out.append(Warning_("W0101", f"{kind} `{node.attrs['name']}` is never used", node.span))
    dead = [graph.nodes[n] for n in graph.nodes if n not in live and graph.nodes[n].op not in ("input", "target", "constant")]
    labels = sorted({n.label for n in dead if n.label})
    for label in labels:
        node = next(n for n in dead if n.label == label)
        out.append(Warning_("W0102", f"`{label}` is computed but never used by an output, loss or metric", node.span))
    return out
