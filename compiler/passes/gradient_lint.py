"""Gradient-flow lint: warnings about parameters that training will not move.

Built on the backward graph (compiler/autodiff.py), so it reports what the gradients really do:
  (one warning per layer, naming its parameters)
  W0201  a trainable parameter that no loss (or output) depends on at all;
  W0202  a parameter whose every path to the losses is cut by stop_gradient (names the cut);
  W0203  a parameter that reaches a loss only through an op without a gradient (round, sign, argmax,
         comparisons, sampling): it gets no gradient although the loss depends on it;
  W0204  a stop_gradient that cuts a path from trainable parameters (informational: intended in
         GANs, BYOL/SimSiam, VQ-VAE — but worth seeing).
Pure Python (no torch), run by `nnspec check`.
"""
from __future__ import annotations

import networkx as nx

from nnspec.compiler.autodiff import build_backward
from nnspec.compiler.ir import Graph
from nnspec.compiler.ops.gradients import RULES, _none
from nnspec.compiler.passes.validate import Warning_


def gradient_warnings(graph: Graph) -> list[Warning_]:
    try:
        _, info = build_backward(graph)
    except Exception as e:  # a missing rule is reported, not fatal for `check`
        return [Warning_("W0299", f"the backward graph could not be built: {e}")]
    out: list[Warning_] = []
    roots = [r[0] for r in (graph.losses or graph.outputs).values()]
    reach: set[str] = set(roots)
    for r in roots:
        reach |= nx.ancestors(graph.nx, r)
    users_of_module: dict[str, list[str]] = {}
    for nid, node in graph.nodes.items():
        if node.module:
            users_of_module.setdefault(node.module, []).append(nid)
    flagged: set[str] = set()
    by_module: dict[str, list[str]] = {}
    for key in info.unreached:
        module = key if key in graph.modules else key.rpartition(".")[0]
        by_module.setdefault(module, []).append(key[len(module) + 1:] if key != module else "")
    for module, pnames in by_module.items():
        shown = [p for p in pnames if p]
        key = f"{module}` ({', '.join(shown)})" if shown else f"{module}`"
        users = users_of_module.get(module, [])
        node = graph.nodes[users[0]] if users else None
        span = node.span if node else graph.modules[module].span if module in graph.modules else None
        if not any(u in reach for u in users):
            out.append(Warning_("W0201", f"layer `{key} is trainable but no loss depends on it", span))
            continue
        blocker = _blocker(graph, users, set(roots))
        if blocker is not None and blocker.op == "stop_gradient":
            where = f" (line {blocker.span.line})" if blocker.span else ""
            out.append(Warning_("W0202", f"layer `{key} gets no gradient: every path to the losses goes through "
                                f"stop_gradient{where}", span))
            flagged.add(blocker.id)
        elif blocker is not None:
            where = f" at line {blocker.span.line}" if blocker.span else ""
            out.append(Warning_("W0203", f"layer `{key} reaches the losses only through `{blocker.op}`{where}, "
                                "which has no gradient: training will not change it", span))
        else:
            out.append(Warning_("W0201", f"layer `{key} gets no gradient from the losses", span))
    for nid in info.cut:
        if nid in flagged:
            continue
        node = graph.nodes[nid]
        upstream = nx.ancestors(graph.nx, nid)
        if any(graph.nodes[u].module for u in upstream):
            out.append(Warning_("W0204", "stop_gradient cuts the gradient flow here: the layers before it are not "
                                "trained through this path", node.span))
    return out


def _blocker(graph: Graph, users: list[str], roots: set[str]):
    """The first op without a gradient on the paths from a layer's calls to the losses, if any."""
    for start in users:
        for nid in nx.bfs_tree(graph.nx, start):
            node = graph.nodes[nid]
            if nid != start and RULES.get(node.op) is _none and _leads_to(graph, nid, roots):
                return node
    return None


def _leads_to(graph: Graph, nid: str, roots: set[str]) -> bool:
    return nid in roots or bool(nx.descendants(graph.nx, nid) & roots)
