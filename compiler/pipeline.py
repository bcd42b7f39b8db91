"""The compiler pipeline: one ordered list of named passes.

    load (text or YAML, imports) -> elaborate -> infer_shapes -> validate -> dce

`build(spec)` runs it and returns the checked graph. A failure inside a pass names the passes that
ran before it. Later stages (fusion, autodiff, codegen, render) start from this graph.
"""
from __future__ import annotations

from nnspec.compiler.ir import Graph
from nnspec.compiler.passes.dce import DeadCodeElimination
from nnspec.compiler.passes.infer_shapes import InferShapes
from nnspec.compiler.passes.validate import Validate
from nnspec.dsl.elaborate import elaborate
from nnspec.dsl.loader import Program, load
from nnspec.errors import SpecError

PASSES = [InferShapes(), Validate(), DeadCodeElimination()]


class PassFailure(RuntimeError):
    """An internal error in a pass (not a mistake in the spec)."""


def run_passes(graph: Graph, passes=None) -> Graph:
    ran = ["elaborate"]
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


def build(spec, params: dict | None = None, model: str | None = None, text: str | None = None) -> Graph:
    """Spec (path, built-in name, or text with `text=`) -> checked graph."""
    program = load(spec, text=text) if not isinstance(spec, Program) else spec
    try:
        graph = elaborate(program, model=model, params=params)
        graph = run_passes(graph)
    except SpecError as e:
        e.sources = program.sources  # type: ignore[attr-defined]
        raise
    graph.program = program  # type: ignore[attr-defined]
    return graph
