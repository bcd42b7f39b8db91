"""The compiler pipeline: one ordered list of named passes, and the optimisations compiled modules get.

    load (text or YAML, imports) -> elaborate -> infer_shapes -> validate -> dce -> cse
    optimize (nnspec.compile, `nnspec compile`): remove_identities -> attention_to_sdpa -> linear_cross_entropy
                  -> lstm_scan_to_fused -> dce -> infer_shapes -> layouts -> fold_conv_batch_norm
                  -> inplace_activations
                  -> pool_indices_from_input

`build(spec)` runs PASSES and returns the checked graph: what `check`, `summary` and `render` show, the
spec's own computation. `build(spec, optimize=True)` also runs OPTIMIZATIONS (compiler/passes/rewrite.py),
rewrites that keep every output and gradient equal: spelled-out attention becomes scaled_dot_product_attention,
a cross-entropy of x W^T one fused op that never stores the logits' softmax or gradient, an LSTM cell's scan
torch's fused LSTM; each convolution runs in its faster memory layout; conv + batch norm fold in inference; activations
overwrite inputs nothing else needs.
`nnspec.compile` and `nnspec compile` build that way (`--no-optimize` for the spec as written).
A failure inside a pass names the passes that ran before it. Later stages (fusion, autodiff, codegen) start
from the graph `build` returns.
"""
from __future__ import annotations

from typing import Protocol

from nnspec.compiler.ir import Graph
from nnspec.compiler.passes.cse import CommonSubexpressionElimination
from nnspec.compiler.passes.dce import DeadCodeElimination
from nnspec.compiler.passes.infer_shapes import InferShapes
from nnspec.compiler.passes.rewrite import (AttentionToSDPA, ChooseLayouts, FoldConvBatchNorm, InplaceActivations,
                                            LinearCrossEntropy, LSTMScanToFused, PoolIndicesFromInput, RemoveIdentities)
from nnspec.compiler.passes.validate import Validate
from nnspec.dsl.elaborate import elaborate
from nnspec.dsl.loader import Program, load
from nnspec.errors import SpecError



class Pass(Protocol):
    """What every pass has: a name (for messages) and a `run` that returns the graph (the same or a new one)."""

    name: str

    def run(self, graph: Graph) -> Graph: ...


PASSES: list[Pass] = [InferShapes(), Validate(), DeadCodeElimination(), CommonSubexpressionElimination()]
OPTIMIZATIONS: list[Pass] = [RemoveIdentities(), AttentionToSDPA(), LinearCrossEntropy(), LSTMScanToFused(), DeadCodeElimination(),
                 InferShapes(), ChooseLayouts(), FoldConvBatchNorm(), InplaceActivations(),
                 PoolIndicesFromInput()]


class PassFailure(RuntimeError):
    """An internal error in a pass (not a mistake in the spec)."""


def run_passes(graph: Graph, passes=None, ran: list | None = None) -> Graph:
    ran = list(ran or ["elaborate"])
    for p in passes or PASSES:
        try:
            graph = p.run(graph)
        except SpecError as e:
            e.notes.append(f"found by the {p.name} pass (after {', '.join(ran)})")
            raise
        except Exception as e:  # an internal error: say where it happened
            raise PassFailure(f"pass {p.name} failed after {', '.join(ran)}: {type(e).__name__}: {e}") from e
        ran.append(p.name)
    return graph


def optimize(graph: Graph, passes=None) -> Graph:
    """The OPTIMIZATIONS on a checked graph (in place; returns it)."""
    return run_passes(graph, passes or OPTIMIZATIONS, ran=["elaborate"] + [p.name for p in PASSES])


def build(spec, params: dict | None = None, model: str | None = None, text: str | None = None,
          optimize: bool = False) -> Graph:
    """Spec (path, built-in name, or text with `text=`) -> checked graph (and optimised, with `optimize`)."""
    program = load(spec, text=text) if not isinstance(spec, Program) else spec
    try:
        graph = elaborate(program, model=model, params=params)
        graph = run_passes(graph)
        if optimize:
            graph = run_passes(graph, OPTIMIZATIONS, ran=["elaborate"] + [p.name for p in PASSES])
    except SpecError as e:
        e.sources = program.sources  # type: ignore[attr-defined]
        raise
    graph.program = program  # type: ignore[attr-defined]
    return graph
