"""Elaboration: AST -> IR graph.

Runs a model's statements top to bottom with compile-time values (ints, floats, bools, strings,
lists, symbolic dimensions) and tensor values (references to graph nodes). Blocks are instantiated
inline under a block path (`layer1.0.conv1`) and recorded as calls of the graph's block tree
(`graph.blocks`, `Node.scope`), `for` repeats unroll, `if` is decided at compile time, `let` makes
shared instances whose parameters exist once, and `scan` builds a recurrence region with its own body
graph. Every op's shape rule runs as its node is created, so input features are inferred (`linear(128)`)
and a mismatch is reported at the line that caused it.

    values.py       tensor values, instances, scopes, limits, message helpers
    statements.py   statements         expressions.py  expressions and compile-time built-ins
    calls.py        op and block calls parameters.py   types, `param`, initialisers, the module table
    blocks.py       block instances and `scan`
"""
from __future__ import annotations

from nnspec.compiler.ir import Graph
from nnspec.dsl import ast
from nnspec.dsl.elaborate.blocks import BlocksMixin
from nnspec.dsl.elaborate.calls import CallsMixin
from nnspec.dsl.elaborate.expressions import ExpressionsMixin
from nnspec.dsl.elaborate.parameters import ParametersMixin
from nnspec.dsl.elaborate.statements import StatementsMixin
from nnspec.dsl.elaborate.values import MAX_STEPS, Scope, check_param_type, check_reserved
from nnspec.dsl.loader import Program
from nnspec.errors import SpecError, suggest, too_deep

__all__ = ["elaborate", "Elaborator"]


def elaborate(program: Program, model: str | None = None, params: dict | None = None) -> Graph:
    """Build the graph of one model of a program (the first, or the one named)."""
    models = program.root.models
    if not models:
        blocks = ", ".join(b.name for b in program.root.blocks)
        raise SpecError("E0505", f"{program.path} defines no model" + (f" (only blocks: {blocks})" if blocks else ""),
                        None, hint="add `model Name { input ...; output ... }`")
    if model is None:
        mdef = models[0]
    else:
        found = [m for m in models if m.name == model]
        if not found:
            raise SpecError("E0201", f"no model named `{model}` in {program.path}", None,
                            hint=suggest(model, [m.name for m in models]) or f"models: {', '.join(m.name for m in models)}")
        mdef = found[0]
    try:
        return Elaborator(program).model(mdef, params or {})
    except RecursionError:
        raise too_deep(program.path, mdef.span) from None


class Elaborator(StatementsMixin, ExpressionsMixin, CallsMixin, ParametersMixin, BlocksMixin):
    """Elaborates one model of a program; each mixin holds one kind of construct."""

    def __init__(self, program: Program):
        self.program = program
        self.depth: list[str] = []
        self.node_count = 0
        self.steps = 0

    def _step(self, span) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SpecError("E0502", f"the model unrolls into more than {MAX_STEPS} steps (loop iterations and block "
                            "instances)", span, hint="check the repeat counts and the recursion of blocks")

    def model(self, mdef: ast.ModelDef, overrides: dict) -> Graph:
        graph = Graph(mdef.name)
        graph.source = self.program.path
        graph.doc = self.program.root.header
        if not mdef.body:
            raise SpecError("E0506", f"model `{mdef.name}` is empty", mdef.span,
                            hint="a model needs at least an `input` and an `output`")
        scope = Scope(graph, ())
        for decl in mdef.params:  # they become arguments of the generated __init__
            check_reserved(decl.name, decl.span, "a model parameter")
        graph.params = self._bind_params(mdef.params, [], dict(overrides), mdef.span, scope, mdef.name,
                                         from_user=True)
        graph.param_decls = [(p.name, p.type) for p in mdef.params]  # type: ignore[attr-defined]
        graph.blocks[0].args = dict(graph.params)
        graph.blocks[0].span = mdef.span
        self._run_body(mdef.body, scope, in_model=True)
        if not graph.outputs and not graph.losses:
            raise SpecError("E0505", f"model `{mdef.name}` has no output", mdef.span,
                            hint="declare what the model computes: `output logits` (and/or `loss name = ...`)")
        if not graph.inputs:
            raise SpecError("E0505", f"model `{mdef.name}` has no input", mdef.span,
                            hint="declare an input: `input x: f32[B, 784]`")
        return graph

    def _bind_params(self, decls, positional, keywords, span, scope, owner, from_user=False) -> dict:
        if len(positional) > len(decls):
            raise SpecError("E0406", f"`{owner}` takes {len(decls)} parameter(s), {len(positional)} given", span,
                            expected=f"{owner}({', '.join(d.name for d in decls)})")
        values = {}
        for d, v in zip(decls, positional):
            values[d.name] = v
        names = [d.name for d in decls]
        for k, v in keywords.items():
            if k not in names:
                raise SpecError("E0402", f"`{owner}` has no parameter `{k}`", span,
                                expected=f"{owner}({', '.join(names)})", hint=suggest(k, names))
            if k in values:
                raise SpecError("E0404", f"parameter `{k}` of `{owner}` is given twice", span)
            values[k] = v
        seen = set()
        for d in decls:
            if d.name in seen:
                raise SpecError("E0203", f"parameter `{d.name}` of `{owner}` is declared twice", d.span)
            seen.add(d.name)
            if d.name in values:
                value = values[d.name]
            elif d.default is not None:
                value = self._const(d.default, scope, f"default of `{d.name}`")
            else:
                raise SpecError("E0407", f"`{owner}` is missing its parameter `{d.name}`", span,
                                expected=f"{owner}(..., {d.name}=...)", hint=f"`{d.name}: {d.type}` has no default")
            value = check_param_type(d, value, span, owner)
            values[d.name] = value
            scope.vars[d.name] = value
        return values
