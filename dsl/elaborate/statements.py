"""Elaboration of statements: inputs and targets, assignments, `let`, `param`, losses and metrics, outputs,
`return`, and the compile-time `for` and `if` (a repeat unrolls; an `if` picks its branch now)."""
from __future__ import annotations

from nnspec.compiler.ir import Graph, Node
from nnspec.compiler.shapes import Sym
from nnspec.dsl import ast
from nnspec.dsl.elaborate.values import (MAX_REPEAT, Instance, Scope, Tensor, check_reserved, defined_names, kind_of,
                                         show)
from nnspec.errors import Span, SpecError


class StatementsMixin:
    """The Elaborator's statements (see dsl/elaborate/__init__.py for the whole class)."""

    def _run_body(self, body: list, scope: Scope, in_model: bool) -> None:
        later: dict = {}
        for stmt in body:
            for name in defined_names(stmt):
                later.setdefault(name, stmt.span)
        scope.later = later
        for stmt in body:
            if scope.returned is not None:
                raise SpecError("E0509", "statement after `return` is never run", stmt.span)
            for name in defined_names(stmt):
                if later.get(name) is stmt.span:
                    later.pop(name, None)
            self._stmt(stmt, scope, in_model)

    def _stmt(self, stmt, scope: Scope, in_model: bool) -> None:
        for kinds, method in _STATEMENTS:
            if isinstance(stmt, kinds):
                for name in defined_names(stmt):
                    scope.assigned[name] = scope.assigned.get(name, 0) + 1
                getattr(self, method)(stmt, scope, in_model)
                return
        raise SpecError("E0100", f"unsupported statement {type(stmt).__name__}",  # pragma: no cover
                        getattr(stmt, "span", None))

    def _input_stmt(self, stmt, scope: Scope, in_model: bool) -> None:
        graph = scope.graph
        kind = "input" if isinstance(stmt, ast.InputStmt) else "target"
        if not in_model:
            raise SpecError("E0508", f"`{kind}` declarations belong in a model; a block takes its inputs in its "
                            "signature", stmt.span, hint="write `block Name(params) (x: [N, C]) { ... }`")
        check_reserved(stmt.name, stmt.span, f"an {kind}" if kind == "input" else f"a {kind}")
        self._declare(scope, stmt.name, stmt.span)
        ttype = self._tensor_type(stmt.type, scope, bind_symbols=True, owner=stmt.name)
        node = Node(graph.fresh_id(stmt.name), kind, [], {"name": stmt.name}, [ttype], span=stmt.span,
                    path=scope.path, label=stmt.name, scope=scope.call)
        graph.add_node(node)
        for axis, d in enumerate(ttype.shape):
            if isinstance(d, Sym):
                for sym in d.symbols():
                    if d == Sym.var(sym):
                        graph.symbols.setdefault(sym, (node.id, axis))
        (graph.inputs if kind == "input" else graph.targets).append(node.id)
        scope.vars[stmt.name] = Tensor((node.id, 0), ttype)

    def _assign(self, stmt: ast.Assign, scope: Scope, in_model: bool) -> None:
        graph = scope.graph
        before = len(graph.nodes)
        value = self._expr(stmt.value, scope)
        if len(stmt.targets) == 1:
            values = [value]
        else:
            if not isinstance(value, tuple):
                raise SpecError("E0409", f"cannot unpack one value into {len(stmt.targets)} names", stmt.span)
            if len(value) != len(stmt.targets):
                raise SpecError("E0409", f"cannot unpack {len(value)} values into {len(stmt.targets)} names",
                                stmt.span, expected=str(len(stmt.targets)), found=str(len(value)))
            values = list(value)
        producers = {v.ref[0] for v in values if isinstance(v, Tensor)}
        if len(stmt.targets) > 1 and len(producers) == 1 and all(isinstance(v, Tensor) for v in values):
            node = graph.nodes[producers.pop()]
            if len(node.outputs) == len(values):
                node.out_labels = list(stmt.targets)
        for name, v in zip(stmt.targets, values):
            if isinstance(v, Instance):
                raise SpecError("E0410", f"`{name}` would hold a layer, not a value: use `let {name} = ...` for a "
                                "shared instance, or give it its input", stmt.span)
            scope.defined.setdefault(name, stmt.span)
            self._check_assignable(scope, name, stmt.span)
            scope.vars[name] = v
        if len(stmt.targets) == 1 and isinstance(value, Tensor):
            self._label_new_nodes(graph, before, stmt.targets[0])

    def _let(self, stmt: ast.LetStmt, scope: Scope, in_model: bool) -> None:
        self._declare(scope, stmt.name, stmt.span)
        inst = self._instance(stmt.value, scope, stmt.name)
        scope.vars[stmt.name] = inst
        scope.names_used[inst.name] = scope.names_used.get(inst.name, 0) + 1

    def _param_stmt(self, stmt: ast.ParamStmt, scope: Scope, in_model: bool) -> None:
        self._declare(scope, stmt.name, stmt.span)
        scope.vars[stmt.name] = self._param(stmt, scope)

    def _loss_or_metric(self, stmt, scope: Scope, in_model: bool) -> None:
        graph = scope.graph
        is_loss = isinstance(stmt, ast.LossStmt)
        kind = "loss" if is_loss else "metric"
        table = graph.losses if is_loss else graph.metrics
        if stmt.name in graph.losses or stmt.name in graph.metrics or stmt.name in graph.outputs:
            first = graph.nodes[table[stmt.name][0]].span
            raise SpecError("E0203", f"{kind} `{stmt.name}` is defined twice", stmt.span,
                            notes=[f"the first `{stmt.name}` is at {first}"] if first else [],
                            hint=f"give each {kind} its own name; several losses are summed into `loss`"
                            if is_loss else f"give each {kind} its own name")
        before = len(graph.nodes)
        value = self._expr(stmt.value, scope)
        t = self._tensor(value, stmt.value, f"{kind} `{stmt.name}`", scope)
        if is_loss and t.type.rank != 0:
            raise SpecError("E0511", f"loss `{stmt.name}` must be a scalar, found {t.type}", stmt.value.span,
                            found=str(t.type), expected="a rank-0 tensor",
                            hint="use reduction=\"mean\" or wrap it in mean(...)")
        if is_loss and not t.type.is_float:
            raise SpecError("E0305", f"loss `{stmt.name}` must be a floating-point value, found {t.type}",
                            stmt.value.span)
        table[stmt.name] = t.ref
        self._label_new_nodes(graph, before, stmt.name)
        self._check_assignable(scope, stmt.name, stmt.span)
        scope.vars[stmt.name] = t

    def _output(self, stmt: ast.OutputStmt, scope: Scope, in_model: bool) -> None:
        graph = scope.graph
        if not in_model:
            raise SpecError("E0508", "`output` belongs in a model; a block gives its result with `return`",
                            stmt.span)
        for item in stmt.items:
            if item.name in graph.outputs or item.name in graph.losses or item.name in graph.metrics:
                raise SpecError("E0203", f"output `{item.name}` is declared twice", item.span)
            if item.value is not None:
                before = len(graph.nodes)
                value = self._expr(item.value, scope)
                self._label_new_nodes(graph, before, item.name)
            else:
                value = self._lookup(item.name, item.span, scope)
            t = self._tensor(value, item.value or ast.Name(item.name, span=item.span), f"output `{item.name}`", scope)
            graph.outputs[item.name] = t.ref
            if item.value is not None:
                scope.vars[item.name] = t

    def _return(self, stmt: ast.ReturnStmt, scope: Scope, in_model: bool) -> None:
        if in_model:
            raise SpecError("E0508", "`return` belongs in a block; a model declares `output`", stmt.span)
        scope.returned = [self._expr(v, scope) for v in stmt.values]

    def _for(self, stmt: ast.ForStmt, scope: Scope, in_model: bool) -> None:
        start = self._const(stmt.start, scope, "the start of a `for` range")
        stop = self._const(stmt.stop, scope, "the end of a `for` range")
        for v, e in ((start, stmt.start), (stop, stmt.stop)):
            if not (isinstance(v, int) and not isinstance(v, bool)):
                raise SpecError("E0503", f"`for` range bounds must be compile-time ints, found {kind_of(v)}", e.span,
                                found=show(v), expected="an int")
        if stop - start > MAX_REPEAT:
            where = stmt.span
            if stmt.start.span and stmt.stop.span:
                where = Span(stmt.start.span.file, stmt.start.span.line, stmt.start.span.col,
                             stmt.stop.span.end_line, stmt.stop.span.end_col)
            raise SpecError("E0502", f"`for` repeats {stop - start} times; the limit is {MAX_REPEAT}", where,
                            found=f"{start}..{stop}", expected=f"at most {MAX_REPEAT} iterations",
                            hint="a model this deep is almost surely a mistake in the range")
        for i in range(start, stop):
            self._step(stmt.span)
            scope.vars[stmt.var] = i
            scope.assigned[stmt.var] = scope.assigned.get(stmt.var, 0) + 1
            self._run_nested(stmt.body, scope)
            if scope.returned is not None:
                break

    def _if(self, stmt: ast.IfStmt, scope: Scope, in_model: bool) -> None:
        for cond, body in stmt.branches:
            c = self._condition(cond, scope)
            if not isinstance(c, bool):
                raise SpecError("E0501", f"`if` needs a compile-time true/false, found {kind_of(c)}", cond.span,
                                found=show(c), hint="to choose per element at run time, use where(cond, a, b)")
            if c:
                self._run_nested(body, scope)
                break
        else:
            self._run_nested(stmt.orelse, scope)

    def _run_nested(self, body, scope: Scope) -> None:
        in_model = scope.block is None and scope.path == () and not scope.graph.name.startswith("scan:")
        for stmt in body:
            if scope.returned is not None:
                raise SpecError("E0509", "statement after `return` is never run", stmt.span)
            self._stmt(stmt, scope, in_model=in_model)

    def _declare(self, scope: Scope, name: str, span) -> None:
        first = scope.defined.get(name)
        notes = [f"the first `{name}` is at {first}"] if first else []
        if name in scope.vars and isinstance(scope.vars[name], Sym) and scope.vars[name] == Sym.var(name):
            raise SpecError("E0203", f"`{name}` is already defined as a dimension of an input", span, notes=notes,
                            hint="choose another name")
        if name in scope.vars and not isinstance(scope.vars[name], int | float | bool | str | list | tuple | Sym):
            raise SpecError("E0203", f"`{name}` is already defined", span, notes=notes, hint="choose another name")
        if name in scope.vars:
            raise SpecError("E0203", f"`{name}` is already defined as a parameter", span, notes=notes)
        scope.defined[name] = span

    def _condition(self, cond, scope: Scope):
        """The value of an `if` condition, which must be decided at compile time."""
        c = self._expr(cond, scope)
        if isinstance(c, Tensor):
            raise SpecError("E0501", "an `if` condition must be known at compile time, but it is a tensor", cond.span,
                            found=str(c.type), expected="a compile-time true/false (parameters, dimensions)",
                            hint="`if` chooses the model's structure when it compiles; to choose per element at "
                                 "run time, use where(cond, a, b)")
        if isinstance(c, Instance):
            raise SpecError("E0501", f"an `if` condition must be a value, but `{c.target}` is a layer", cond.span)
        return c

    def _check_assignable(self, scope: Scope, name: str, span) -> None:
        old = scope.vars.get(name)
        if isinstance(old, Instance):
            raise SpecError("E0203", f"`{name}` is a shared instance and cannot be reassigned", span)

    def _label_new_nodes(self, graph: Graph, before: int, name: str) -> None:
        for nid in list(graph.nodes)[before:]:
            node = graph.nodes[nid]
            if node.label is None and node.op != "constant":
                node.label = name


_STATEMENTS = (
    ((ast.InputStmt, ast.TargetStmt), "_input_stmt"),
    (ast.Assign, "_assign"),
    (ast.LetStmt, "_let"),
    (ast.ParamStmt, "_param_stmt"),
    ((ast.LossStmt, ast.MetricStmt), "_loss_or_metric"),
    (ast.OutputStmt, "_output"),
    (ast.ReturnStmt, "_return"),
    (ast.ForStmt, "_for"),
    (ast.IfStmt, "_if"),
)
