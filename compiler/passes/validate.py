"""validate: structural checks and warnings after elaboration.

Errors: a graph that breaks the IR's invariants (an internal error, reported with the passes that
ran); a loss fed the wrong kind of value (E0417: bce on an unbounded score, a softmax before
cross_entropy). Warnings (printed by `nnspec check`, never fatal): inputs and targets nothing reads, values
computed but never used, layers defined with `let` but never called.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from nnspec.compiler.ir import Graph
from nnspec.errors import Span, SpecError


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
        check_loss_inputs(graph)
        graph.warnings = warnings_for(graph)  # type: ignore[attr-defined]
        return graph


# A loss that needs probabilities, or raw logits, looks at the op its input comes from (through ops that
# only move values). Seed 000:326 gives BCELoss an unbounded Linear output; 000:486 and 000:495 put a Softmax
# before CrossEntropyLoss, which applies its own.
_MOVES = {"reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "getitem", "select", "expand",
          "repeat", "identity"}
_UNBOUNDED = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "matmul", "einsum", "embedding", "relu",
              "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "softplus", "prelu", "tanh", "log_softmax",
              "logsigmoid"}
_LOSS_INPUTS = {
    "bce": (_UNBOUNDED, "bce needs probabilities in [0, 1], but its input comes from {op}, whose values are not "
            "confined to [0, 1]", "probabilities in [0, 1]",
            "apply sigmoid first, or give the raw scores to bce_with_logits (stable, the sigmoid is inside)"),
    "bce_with_logits": ({"sigmoid"}, "bce_with_logits applies the sigmoid itself, but its input already comes from "
                        "sigmoid: the sigmoid is applied twice", "raw scores (logits)",
                        "give it the scores before the sigmoid, or give the probabilities to bce"),
    "cross_entropy": ({"softmax"}, "cross_entropy takes raw logits and applies log_softmax itself, but its input "
                      "comes from softmax: the softmax is applied twice", "raw scores (logits)",
                      "give it the logits before the softmax (output softmax(logits) separately for probabilities)"),
    "nll_loss": ({"softmax"}, "nll_loss takes log-probabilities, but its input comes from softmax",
                 "log-probabilities", "use log_softmax instead of softmax"),
}


def check_loss_inputs(graph: Graph) -> None:
    for node in graph.nodes.values():
        rule = _LOSS_INPUTS.get(node.op)
        if rule is None or not node.inputs:
            continue
        bad, message, expected, hint = rule
        src = graph.nodes[node.inputs[0][0]]
        while src.op in _MOVES and src.inputs:
            src = graph.nodes[src.inputs[0][0]]
        if src.op in bad:
            what = f"`{src.label}` = {src.op}(...)" if src.label else f"{src.op}(...)"
            raise SpecError("E0417", message.format(op=src.op), node.span, found=what, expected=expected, hint=hint,
                            notes=[f"{what} is at {src.span}"] if src.span else [])


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
