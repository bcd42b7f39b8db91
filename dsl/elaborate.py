"""Elaboration: AST -> IR graph.

Runs a model's statements top to bottom with compile-time values (ints, floats, bools, strings,
lists, symbolic dimensions) and tensor values (references to graph nodes). Blocks are instantiated
inline under a block path (`layer1.0.conv1`), `for` repeats unroll, `if` is decided at compile time,
`let` makes shared instances whose parameters exist once, and `scan` builds a recurrence region with
its own body graph. Every op's shape rule runs as its node is created, so input features are
inferred (`linear(128)`) and a mismatch is reported at the line that caused it.
"""
from __future__ import annotations

import builtins
import keyword
import math
from dataclasses import dataclass, field

from nnspec.compiler.ir import Graph, ModuleInfo, Node, ParamSpec, is_identifier
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.registry import OpContext, bind_attrs
from nnspec.compiler.shapes import Sym, TensorType, is_concrete, shape_str, simplify
from nnspec.dsl import ast
from nnspec.dsl.loader import Program
from nnspec.errors import Span, SpecError, suggest, too_deep

MAX_REPEAT = 10_000          # iterations of one `for`
MAX_NODES = 200_000          # nodes in one model
MAX_STEPS = 100_000          # loop iterations plus block instances while elaborating one model
MAX_INT_BITS = 10_000        # compile-time integers (sizes), so that no arithmetic can run away
MAX_VALUE_LEN = 100_000      # compile-time strings and lists
MAX_BLOCK_DEPTH = 48         # nested block instantiations (bounded recursion is allowed)
# inputs, targets and symbols become variables of the generated forward(): they cannot be Python keywords,
# builtins, or the names the generated code relies on
RESERVED_NAMES = set(keyword.kwlist) | set(dir(builtins)) | {"self", "torch", "nn", "F", "math", "return_losses"}

BINARY_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow", "@": "matmul",
              "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
INIT_FUNCS = {"zeros", "ones", "constant", "normal", "uniform", "xavier_uniform", "xavier_normal",
              "kaiming_uniform", "kaiming_normal", "orthogonal", "eye"}


@dataclass
class Tensor:
    """A tensor value during elaboration: which node output, and its type."""

    ref: tuple
    type: TensorType


@dataclass
class Instance:
    """A block or layer waiting for its tensor inputs (`let enc = Encoder(64)`, scan cells)."""

    kind: str                   # 'block' or 'op'
    target: str                 # block or op name
    args: list
    kwargs: dict
    name: str | None            # module name under the scope's path; None = choose at call
    span: Span | None
    shared: bool                # True for `let`: every call uses the same parameters
    token: object = field(default_factory=object)


@dataclass
class Scope:
    graph: Graph
    path: tuple
    vars: dict = field(default_factory=dict)
    block: ast.BlockDef | None = None
    names_used: dict = field(default_factory=dict)  # module name -> count, for automatic names
    owner: object | None = None                     # shared-instance token that owns new modules
    returned: list | None = None
    later: dict = field(default_factory=dict)       # names assigned later in this body -> span
    defined: dict = field(default_factory=dict)     # name -> span of its first definition, for notes


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


class Elaborator:
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

    # ================================================================== model
    def model(self, mdef: ast.ModelDef, overrides: dict) -> Graph:
        graph = Graph(mdef.name)
        graph.source = self.program.path
        graph.doc = self.program.root.header
        if not mdef.body:
            raise SpecError("E0506", f"model `{mdef.name}` is empty", mdef.span,
                            hint="a model needs at least an `input` and an `output`")
        scope = Scope(graph, ())
        for decl in mdef.params:  # they become arguments of the generated __init__
            _check_reserved(decl.name, decl.span, "a model parameter")
        graph.params = self._bind_params(mdef.params, [], dict(overrides), mdef.span, scope, mdef.name,
                                         from_user=True)
        graph.param_decls = [(p.name, p.type) for p in mdef.params]  # type: ignore[attr-defined]
        self._run_body(mdef.body, scope, in_model=True)
        if not graph.outputs and not graph.losses:
            raise SpecError("E0505", f"model `{mdef.name}` has no output", mdef.span,
                            hint="declare what the model computes: `output logits` (and/or `loss name = ...`)")
        if not graph.inputs:
            raise SpecError("E0505", f"model `{mdef.name}` has no input", mdef.span,
                            hint="declare an input: `input x: f32[B, 784]`")
        return graph

    # ================================================================== parameters of models and blocks
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
            value = _check_param_type(d, value, span, owner)
            values[d.name] = value
            scope.vars[d.name] = value
        return values

    # ================================================================== statements
    def _run_body(self, body: list, scope: Scope, in_model: bool) -> None:
        later: dict = {}
        for stmt in body:
            for name in _defined_names(stmt):
                later.setdefault(name, stmt.span)
        scope.later = later
        for i, stmt in enumerate(body):
            if scope.returned is not None:
                raise SpecError("E0509", "statement after `return` is never run", stmt.span)
            for name in _defined_names(stmt):
                if later.get(name) is stmt.span:
                    later.pop(name, None)
            self._stmt(stmt, scope, in_model)

    def _stmt(self, stmt, scope: Scope, in_model: bool) -> None:
        graph = scope.graph
        if isinstance(stmt, (ast.InputStmt, ast.TargetStmt)):
            kind = "input" if isinstance(stmt, ast.InputStmt) else "target"
            if not in_model:
                raise SpecError("E0508", f"`{kind}` declarations belong in a model; a block takes its inputs in its "
                                "signature", stmt.span, hint="write `block Name(params) (x: [N, C]) { ... }`")
            _check_reserved(stmt.name, stmt.span, f"an {kind}" if kind == "input" else f"a {kind}")
            self._declare(scope, stmt.name, stmt.span)
            ttype = self._tensor_type(stmt.type, scope, bind_symbols=True, owner=stmt.name)
            node = Node(graph.fresh_id(stmt.name), kind, [], {"name": stmt.name}, [ttype], span=stmt.span,
                        path=scope.path, label=stmt.name)
            graph.add_node(node)
            for axis, d in enumerate(ttype.shape):
                if isinstance(d, Sym):
                    for sym in d.symbols():
                        if d == Sym.var(sym):
                            graph.symbols.setdefault(sym, (node.id, axis))
            (graph.inputs if kind == "input" else graph.targets).append(node.id)
            scope.vars[stmt.name] = Tensor((node.id, 0), ttype)
        elif isinstance(stmt, ast.Assign):
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
        elif isinstance(stmt, ast.LetStmt):
            self._declare(scope, stmt.name, stmt.span)
            inst = self._instance(stmt.value, scope, stmt.name)
            scope.vars[stmt.name] = inst
            scope.names_used[inst.name] = scope.names_used.get(inst.name, 0) + 1
        elif isinstance(stmt, ast.ParamStmt):
            self._declare(scope, stmt.name, stmt.span)
            scope.vars[stmt.name] = self._param(stmt, scope)
        elif isinstance(stmt, (ast.LossStmt, ast.MetricStmt)):
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
        elif isinstance(stmt, ast.OutputStmt):
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
        elif isinstance(stmt, ast.ReturnStmt):
            if in_model:
                raise SpecError("E0508", "`return` belongs in a block; a model declares `output`", stmt.span)
            scope.returned = [self._expr(v, scope) for v in stmt.values]
        elif isinstance(stmt, ast.ForStmt):
            start = self._const(stmt.start, scope, "the start of a `for` range")
            stop = self._const(stmt.stop, scope, "the end of a `for` range")
            for v, e in ((start, stmt.start), (stop, stmt.stop)):
                if not (isinstance(v, int) and not isinstance(v, bool)):
                    raise SpecError("E0503", f"`for` range bounds must be compile-time ints, found {_kind(v)}", e.span,
                                    found=_show(v), expected="an int")
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
                self._run_nested(stmt.body, scope)
                if scope.returned is not None:
                    break
        elif isinstance(stmt, ast.IfStmt):
            for cond, body in stmt.branches:
                c = self._condition(cond, scope)
                if not isinstance(c, bool):
                    raise SpecError("E0501", f"`if` needs a compile-time true/false, found {_kind(c)}", cond.span,
                                    found=_show(c), hint="to choose per element at run time, use where(cond, a, b)")
                if c:
                    self._run_nested(body, scope)
                    break
            else:
                self._run_nested(stmt.orelse, scope)
        else:  # pragma: no cover - the parser produces no other statement
            raise SpecError("E0100", f"unsupported statement {type(stmt).__name__}", getattr(stmt, "span", None))

    def _run_nested(self, body, scope: Scope) -> None:
        for stmt in body:
            if scope.returned is not None:
                raise SpecError("E0509", "statement after `return` is never run", stmt.span)
            self._stmt(stmt, scope, in_model=scope.block is None and scope.path == () and not scope.graph.name.startswith("scan:"))

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

    # ================================================================== types and parameters
    def _tensor_type(self, texpr: ast.TensorTypeExpr, scope: Scope, bind_symbols: bool, owner: str) -> TensorType:
        dims = []
        for d in texpr.dims:
            if isinstance(d, ast.Name) and d.id not in scope.vars and bind_symbols:
                if d.id in REGISTRY or d.id in self.program.blocks:
                    raise SpecError("E0206", f"`{d.id}` names an op; choose another symbol name", d.span)
                _check_reserved(d.id, d.span, "a dimension")
                sym = Sym.var(d.id)
                scope.vars[d.id] = sym
                dims.append(sym)
                continue
            v = self._const(d, scope, f"a dimension of `{owner}`")
            if isinstance(v, bool) or not isinstance(v, (int, Sym)):
                raise SpecError("E0401", f"a dimension must be an int or a symbol, found {_kind(v)}", d.span)
            if isinstance(v, int) and v < 0:
                raise SpecError("E0310", f"a dimension cannot be negative ({v})", d.span)
            dims.append(v)
        return TensorType(texpr.dtype or "f32", tuple(dims))

    def _param(self, stmt: ast.ParamStmt, scope: Scope) -> Tensor:
        graph = scope.graph
        ttype = self._tensor_type(stmt.type, scope, bind_symbols=False, owner=stmt.name)
        for d in ttype.shape:
            if not is_concrete(d):
                raise SpecError("E0307", f"parameter `{stmt.name}` needs concrete sizes, found {shape_str(ttype.shape)}",
                                stmt.type.span)
        init = self._init_spec(stmt.init, scope, ttype) if stmt.init is not None else ("normal", 0.0, 1.0)
        path = ".".join(scope.path + (stmt.name,))
        self._register_module(scope, path, "parameter", _param_ctor(ttype, init),
                              [ParamSpec("", ttype.shape, init)], stmt.span, None)
        node = Node(graph.fresh_id(stmt.name), "parameter", [], {"init": init}, [ttype], module=path, span=stmt.span,
                    path=scope.path, label=stmt.name)
        graph.add_node(node)
        return Tensor((node.id, 0), ttype)

    def _init_spec(self, expr, scope: Scope, ttype: TensorType):
        if isinstance(expr, (ast.Call, ast.Name)) and (expr.func if isinstance(expr, ast.Call) else expr.id) in INIT_FUNCS:
            name = expr.func if isinstance(expr, ast.Call) else expr.id
            args = [self._const(a, scope, "an initialiser argument") for a in getattr(expr, "args", [])]
            kwargs = {k.name: self._const(k.value, scope, "an initialiser argument") for k in getattr(expr, "kwargs", [])}
            defaults = {"normal": {"mean": 0.0, "std": 1.0}, "uniform": {"low": 0.0, "high": 1.0},
                        "constant": {"value": 0.0}}.get(name, {"gain": 1.0} if name.startswith(("xavier", "orth")) else {})
            keys = list(defaults)
            for k, v in zip(keys, args):
                kwargs.setdefault(k, v)
            for k in kwargs:
                if k not in defaults:
                    raise SpecError("E0402", f"initialiser {name} has no argument `{k}`", expr.span,
                                    expected=f"{name}({', '.join(keys)})")
            vals = [float(kwargs.get(k, d)) for k, d in defaults.items()]
            return (name, *vals)
        value = self._const(expr, scope, "a parameter's initial value")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return ("constant", float(value))
        if isinstance(value, (list, tuple)):
            flat = _flatten(value)
            if _nested_shape(value) != tuple(ttype.shape):
                raise SpecError("E0301", f"initial value has shape {list(_nested_shape(value))}, the parameter is "
                                f"{shape_str(ttype.shape)}", expr.span)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
                raise SpecError("E0401", "initial values must be numbers", expr.span)
            return ("values", _to_float_nested(value))
        raise SpecError("E0401", "a parameter's initial value must be a number, a list of numbers or an initialiser "
                        f"({', '.join(sorted(INIT_FUNCS))})", expr.span)

    def _register_module(self, scope: Scope, path: str, op: str, ctor: str, params, span, owner) -> None:
        graph = scope.graph
        for part in path.split("."):
            if not (is_identifier(part) or part.isdigit()):
                raise SpecError("E0206", f"`{part}` is not a valid layer name", span,
                                hint="names are identifiers (letters, digits, _) or plain numbers")
        if path.split(".")[0].isdigit():  # the generated module itself cannot be indexed (self[0])
            raise SpecError("E0206", f"`{path.split('.')[0]}` cannot name a layer of the model itself: a number names "
                            "an item of a list inside a block", span,
                            hint='use an identifier (name="layer" + str(i)), or put the repeat inside a block')
        existing = graph.modules.get(path)
        if existing is not None:
            if owner is not None and existing.owner is owner:
                if existing.ctor != ctor:
                    raise SpecError("E0311", f"shared instance `{path}` is called with inputs of a different shape",
                                    span, found=ctor, expected=existing.ctor,
                                    notes=[f"first called at {existing.span}"] if existing.span else [],
                                    hint="every call of a shared instance must fit the same weights")
                existing.calls += 1
                return
            raise SpecError("E0203", f"two layers are named `{path}`", span,
                            notes=[f"the other one is at {existing.span}"] if existing.span else [],
                            hint="give one of them another name=...")
        graph.modules[path] = ModuleInfo(path, op, ctor, list(params), span, calls=1, owner=owner)

    # ================================================================== expressions
    def _const(self, expr, scope: Scope, what: str):
        v = self._expr(expr, scope)
        if isinstance(v, Tensor):
            raise SpecError("E0501", f"{what} must be known at compile time, but it is a tensor", expr.span,
                            found=str(v.type), expected="a compile-time value",
                            hint="compile-time values are numbers, parameters and dimensions")
        if isinstance(v, Instance):
            raise SpecError("E0501", f"{what} must be a value, but `{v.target}` is a layer", expr.span)
        return v

    def _tensor(self, v, expr, what: str, scope: Scope) -> Tensor:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, tuple) and len(v) and all(isinstance(x, Tensor) for x in v):
            raise SpecError("E0409", f"{what} is {len(v)} values; pick one", getattr(expr, "span", None))
        if isinstance(v, Instance):
            raise SpecError("E0412", f"{what} is the layer `{v.target}` with no input", getattr(expr, "span", None),
                            hint=f"give it an input: x |> {v.target}(...)")
        raise SpecError("E0412", f"{what} must be a tensor, found {_kind(v)}", getattr(expr, "span", None),
                        found=_show(v))

    def _expr(self, e, scope: Scope):
        if isinstance(e, ast.Num):
            return e.value
        if isinstance(e, ast.Bool):
            return e.value
        if isinstance(e, ast.Str):
            return e.value
        if isinstance(e, ast.Name):
            return self._lookup(e.id, e.span, scope)
        if isinstance(e, ast.ListExpr):
            return [self._expr(i, scope) for i in e.items]
        if isinstance(e, ast.Pipe):
            value = self._expr(e.value, scope)
            for stage in e.stages:
                value = self._call(stage, scope, piped=value)
            return value
        if isinstance(e, ast.Call):
            return self._call(e, scope)
        if isinstance(e, ast.BinOp):
            return self._binop(e, scope)
        if isinstance(e, ast.UnaryOp):
            v = self._expr(e.operand, scope)
            if e.op == "not":
                if isinstance(v, bool):
                    return not v
                raise SpecError("E0501", f"`not` needs a compile-time true/false, found {_kind(v)}", e.span)
            if e.op == "+":
                return v
            if isinstance(v, Tensor):
                return self._emit(scope, "neg", [v], {}, e.span)[0]
            if isinstance(v, (int, float, Sym)) and not isinstance(v, bool):
                return -v
            raise SpecError("E0413", f"cannot negate {_kind(v)}", e.span)
        if isinstance(e, ast.IfExpr):
            c = self._condition(e.cond, scope)
            if not isinstance(c, bool):
                raise SpecError("E0501", f"`if` needs a compile-time true/false, found {_kind(c)}", e.cond.span,
                                found=_show(c), hint="to choose per element at run time, use where(cond, a, b)")
            return self._expr(e.then if c else e.orelse, scope)
        if isinstance(e, ast.Index):
            return self._index(e, scope)
        if isinstance(e, ast.Attribute):
            v = self._expr(e.value, scope)
            if isinstance(v, Tensor):
                if e.name == "shape":
                    return tuple(v.type.shape)
                if e.name == "rank":
                    return v.type.rank
                if e.name == "dtype":
                    return v.type.dtype
                if e.name == "T":
                    return self._emit(scope, "transpose", [v], {"dim0": -2, "dim1": -1}, e.span)[0]
            raise SpecError("E0201", f"{_kind(v)} has no attribute `{e.name}`", e.span,
                            hint="tensors have .shape, .rank, .dtype and .T")
        if isinstance(e, (ast.Slice, ast.EllipsisExpr)):
            raise SpecError("E0413", "slices are only allowed inside [ ]", e.span)
        raise SpecError("E0100", f"unsupported expression {type(e).__name__}", getattr(e, "span", None))

    def _lookup(self, name: str, span, scope: Scope):
        if name in scope.vars:
            return scope.vars[name]
        if name in ("inf",):
            return math.inf
        if name == "pi":
            return math.pi
        if name in scope.later:
            raise SpecError("E0205", f"`{name}` is used before it is defined", span,
                            notes=[f"`{name}` is defined later, at {scope.later[name]}"],
                            hint="values flow top to bottom: define it first (a value cannot depend on itself)")
        candidates = list(scope.vars) + list(self.program.blocks) + list(REGISTRY)
        where = f"block `{scope.block.name}`" if scope.block else "this model"
        raise SpecError("E0201", f"`{name}` is not defined in {where}", span,
                        hint=suggest(name, candidates) or "define it above this line, or declare it as a parameter: "
                        f"{'block' if scope.block else 'model'} Name({name}: int = ...)")

    # ------------------------------------------------------------------ binary operators
    def _binop(self, e: ast.BinOp, scope: Scope):
        if e.op in ("and", "or"):
            lhs = self._const(e.lhs, scope, f"the left side of `{e.op}`")
            if not isinstance(lhs, bool):
                raise SpecError("E0501", f"`{e.op}` needs compile-time true/false values, found {_kind(lhs)}", e.lhs.span)
            if (e.op == "and" and not lhs) or (e.op == "or" and lhs):
                return lhs
            rhs = self._const(e.rhs, scope, f"the right side of `{e.op}`")
            if not isinstance(rhs, bool):
                raise SpecError("E0501", f"`{e.op}` needs compile-time true/false values, found {_kind(rhs)}", e.rhs.span)
            return rhs
        lhs = self._expr(e.lhs, scope)
        rhs = self._expr(e.rhs, scope)
        if isinstance(lhs, Tensor) or isinstance(rhs, Tensor):
            op = BINARY_OPS.get(e.op)
            if op is None:
                raise SpecError("E0413", f"`{e.op}` is not defined on tensors", e.span,
                                hint="use floor(a / b) or a - b * floor(a / b)")
            a = self._as_tensor(lhs, e.lhs, scope)
            b = self._as_tensor(rhs, e.rhs, scope)
            return self._emit(scope, op, [a, b], {}, e.span)[0]
        return _bounded(_const_binop(e, lhs, rhs), e.span)

    def _as_tensor(self, v, expr, scope: Scope) -> Tensor:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return self._emit(scope, "constant", [], {"value": v}, expr.span)[0]
        if isinstance(v, Sym):
            raise SpecError("E0413", f"the symbolic dimension `{v}` cannot be used as a tensor value", expr.span,
                            hint="dimensions are compile-time values; use arange or full to make tensors from them")
        raise SpecError("E0412", f"expected a tensor or a number, found {_kind(v)}", expr.span, found=_show(v))

    # ------------------------------------------------------------------ indexing
    def _index(self, e: ast.Index, scope: Scope):
        v = self._expr(e.value, scope)
        if isinstance(v, Tensor):
            key = []
            for item in e.items:
                if isinstance(item, ast.EllipsisExpr):
                    key.append("...")
                elif isinstance(item, ast.Slice):
                    parts = []
                    for p in (item.start, item.stop, item.step):
                        pv = None if p is None else self._const(p, scope, "a slice bound")
                        if pv is not None and (isinstance(pv, bool) or not isinstance(pv, (int, Sym))):
                            raise SpecError("E0401", f"slice bounds must be ints, found {_kind(pv)}", p.span)
                        parts.append(pv)
                    if parts[2] is not None and (not isinstance(parts[2], int) or parts[2] <= 0):
                        raise SpecError("E0401", "slice step must be a positive int", item.span)
                    key.append(("slice", *parts))
                else:
                    iv = self._expr(item, scope)
                    if isinstance(iv, Tensor):
                        raise SpecError("E0413", "indexing with a tensor is not supported in [ ]", item.span,
                                        hint="use gather(x, index, dim=...) or index_select(x, index, dim=...)")
                    if isinstance(iv, bool) or not isinstance(iv, int):
                        raise SpecError("E0401", f"an index must be an int, found {_kind(iv)}", item.span)
                    key.append(iv)
            if key.count("...") > 1:
                raise SpecError("E0413", "at most one `...` in an index", e.span)
            return self._emit(scope, "getitem", [v], {"key": tuple(key)}, e.span)[0]
        if isinstance(v, (list, tuple)):
            if len(e.items) != 1 or isinstance(e.items[0], (ast.Slice, ast.EllipsisExpr)):
                if len(e.items) == 1 and isinstance(e.items[0], ast.Slice):
                    s = e.items[0]
                    bounds = [None if p is None else self._const(p, scope, "a slice bound") for p in (s.start, s.stop, s.step)]
                    return type(v)(v[slice(*bounds)])
                raise SpecError("E0413", "a list takes one index", e.span)
            i = self._const(e.items[0], scope, "an index")
            if isinstance(i, bool) or not isinstance(i, int):
                raise SpecError("E0401", f"an index must be an int, found {_kind(i)}", e.items[0].span)
            if not -len(v) <= i < len(v):
                raise SpecError("E0304", f"index {i} is out of range for {len(v)} values", e.items[0].span)
            return v[i]
        raise SpecError("E0413", f"{_kind(v)} cannot be indexed", e.span)

    # ------------------------------------------------------------------ calls
    def _call(self, call: ast.Call, scope: Scope, piped=None):
        if self.node_count > MAX_NODES:
            raise SpecError("E0502", f"the model has more than {MAX_NODES} operations", call.span,
                            hint="check the repeat counts")
        args = [] if piped is None else [piped]
        args += [self._expr(a, scope) for a in call.args]
        kwargs = {}
        kw_spans = {}
        for k in call.kwargs:
            kwargs[k.name] = self._expr(k.value, scope)
            kw_spans[k.name] = k.span
        name = call.func
        target = scope.vars.get(name)
        if isinstance(target, Instance):
            if kwargs or any(not isinstance(a, Tensor) for a in args):
                raise SpecError("E0406", f"`{name}` is a layer instance: call it with tensors only", call.span)
            return self._call_instance(target, args, scope, call.span)
        if name in scope.vars and not isinstance(target, Instance) and not (
                name in REGISTRY or name in self.program.blocks or name in BUILTINS or name in ("scan", "fail")):
            # a value never hides an op: `dropout: float` as a parameter and dropout(p=dropout) both work
            raise SpecError("E0414", f"`{name}` is {_kind(target)}, not an op or block", call.span)
        if name == "scan":
            return self._scan(call, args, kwargs, scope)
        if name == "fail" and name not in scope.vars:
            message = args[0] if len(args) == 1 and isinstance(args[0], str) and not kwargs else None
            if message is None:
                raise SpecError("E0406", "fail() takes one string: fail(\"what went wrong\")", call.span)
            raise SpecError("E0510", message, call.span,
                            notes=[f"in block `{scope.block.name}`"] if scope.block else [])
        if name in BUILTINS and not any(isinstance(a, Tensor) for a in args):
            return _builtin(name, args, kwargs, call.span)
        if name in TENSOR_BUILTINS and any(isinstance(a, Tensor) for a in args):
            name = TENSOR_BUILTINS[name]
        if name in self.program.blocks:
            return self._call_block(self.program.blocks[name], args, kwargs, scope, call.span, kw_spans)
        op = REGISTRY.get(name)
        if op is not None and (op.category in ("graph", "backward") or op.name == "getitem"):
            raise SpecError("E0204", f"`{name}` is internal to the compiler and cannot be called in a spec", call.span,
                            hint="index with x[...]" if name == "getitem" else "run `nnspec ops` for the list of ops")
        if op is None:
            hint = suggest(name, list(REGISTRY) + list(self.program.blocks) + [v for v, x in scope.vars.items()
                                                                                  if isinstance(x, Instance)])
            raise SpecError("E0204", f"unknown op or block `{name}`", call.span,
                            hint=hint or "run `nnspec ops` for the list of ops")
        return self._call_op(op, args, kwargs, scope, call.span, kw_spans)

    def _split_args(self, args, span, what: str):
        tensors, consts = [], []
        for a in args:
            if isinstance(a, Tensor):
                if consts:
                    raise SpecError("E0408", f"{what}: a tensor argument comes after a non-tensor argument", span,
                                    hint="tensor inputs come first: op(x, y, attributes...)")
                tensors.append(a)
            elif isinstance(a, list) and a and all(isinstance(t, Tensor) for t in a) and not consts and not tensors:
                tensors.extend(a)
            elif isinstance(a, tuple) and a and all(isinstance(t, Tensor) for t in a) and not consts:
                tensors.extend(a)
            elif isinstance(a, Instance):
                raise SpecError("E0412", f"{what}: the layer `{a.target}` is passed as an argument", span)
            else:
                consts.append(a)
        return tensors, consts

    def _call_op(self, op, args, kwargs, scope: Scope, span, kw_spans, instance: Instance | None = None):
        name_arg = kwargs.pop("name", None)
        tensors, consts = self._split_args(args, span, op.name)
        n_in = len(op.inputs)
        if not tensors and n_in and not op.variadic and instance is None:
            # a layer without its input yet: `let fc = linear(10)`, or a stage in a scan cell
            bind_attrs(op, consts, kwargs, span, kw_spans)  # validate now
            return Instance("op", op.name, consts, kwargs, _name_of(name_arg, span), span, shared=False)
        if op.variadic:
            if not tensors:
                raise SpecError("E0407", f"{op.name} needs at least one tensor input", span, expected=op.signature())
        elif not (n_in - op.optional_inputs <= len(tensors) <= n_in):
            raise SpecError("E0406", f"{op.name} takes {n_in} tensor input(s), {len(tensors)} given", span,
                            expected=op.signature(), found=f"{len(tensors)} tensor(s)")
        attrs = bind_attrs(op, consts, kwargs, span, kw_spans)
        module = None
        if op.module is not None:
            in_types = [t.type for t in tensors]
            ctx = OpContext(op, span, self._input_notes(scope, tensors))
            _pre_check(op, ctx, in_types, attrs)
            op.shape(ctx, in_types, attrs)  # shape errors before the module is made
            if instance is not None:
                mname = instance.name
                owner = instance.token if instance.shared else None
            else:
                mname = _name_of(name_arg, span) or self._auto_name(scope, op.name)
                owner = scope.owner
            self._claim(scope, mname, span, owner)
            module = ".".join(scope.path + (mname,))
            try:
                self._register_module(scope, module, op.name, op.module(in_types, attrs), op.params(in_types, attrs),
                                      span, owner if owner is not None else (instance.token if instance else None))
            except SpecError as err:
                if err.code == "E0311":  # a shared layer called again: show what it is given this time
                    err.notes.extend(ctx.input_notes)
                raise
        elif name_arg is not None:
            pass  # a name on a parameter-free op only labels the value
        outs = self._emit(scope, op.name, tensors, attrs, span, module=module)
        if name_arg is not None and module is None:
            scope.graph.nodes[outs[0].ref[0]].label = str(name_arg)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _claim(self, scope: Scope, name: str, span, owner) -> None:
        if owner is None and name in scope.names_used and scope.names_used[name] > 0:
            path = ".".join(scope.path + (name,))
            existing = scope.graph.modules.get(path)
            if existing is not None and existing.owner is None:
                raise SpecError("E0203", f"two layers are named `{path}`", span,
                                notes=[f"the other one is at {existing.span}"] if existing.span else [],
                                hint="give one of them another name=...")
        scope.names_used[name] = scope.names_used.get(name, 0) + 1

    def _auto_name(self, scope: Scope, base: str) -> str:
        n = scope.names_used.get(base, 0)
        name = base if n == 0 else f"{base}_{n}"
        while name in scope.names_used:
            n += 1
            name = f"{base}_{n}"
        scope.names_used.setdefault(base, 0)
        return name

    def _input_notes(self, scope: Scope, tensors) -> list[str]:
        notes = []
        graph = scope.graph
        for k, t in enumerate(tensors):
            node = graph.nodes.get(t.ref[0])
            if node is None or node.op == "constant":
                continue
            trail = []
            cur = node
            while cur is not None and len(trail) < 3 and cur.op not in ("input", "target", "parameter"):
                if cur.span is not None:
                    trail.append(f"{cur.op} at line {cur.span.line}")
                cur = graph.nodes.get(cur.inputs[0][0]) if cur.inputs else None
            ordinal = ("first", "second", "third")[k] if len(tensors) > 1 and k < 3 else None
            name = f"`{node.label}`" if node.label else f"the {ordinal} input" if ordinal else "the input"
            where = f" ({', '.join(reversed(trail))})" if trail else ""
            notes.append(f"{name} is {t.type} here{where}")
        return notes

    def _emit(self, scope: Scope, op_name: str, inputs: list, attrs: dict, span, module=None) -> list:
        op = REGISTRY[op_name]
        in_types = [t.type for t in inputs]
        ctx = OpContext(op, span, self._input_notes(scope, inputs) if inputs else [])
        _pre_check(op, ctx, in_types, attrs)
        outs = op.shape(ctx, in_types, attrs)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        for t in outs:
            if any(is_concrete(d) and d < 0 for d in t.shape):
                ctx.fail("E0310", f"{op_name} would produce a negative size: {shape_str(t.shape)}", found=str(t),
                         hint="check the sizes, strides and paddings given to this op")
        graph = scope.graph
        node = Node(graph.fresh_id(op_name), op_name, [t.ref for t in inputs], dict(attrs), outs, module=module,
                    span=span, path=scope.path)
        graph.add_node(node)
        self.node_count += 1
        return [Tensor((node.id, k), t) for k, t in enumerate(outs)]

    # ------------------------------------------------------------------ instances and blocks
    def _instance(self, expr, scope: Scope, let_name: str) -> Instance:
        if not isinstance(expr, ast.Call):
            raise SpecError("E0410", "`let` binds a shared layer or block instance, e.g. `let enc = Encoder(64)`",
                            expr.span, hint=f"for a value, write `{let_name} = ...`")
        value = self._call(expr, scope)
        if not isinstance(value, Instance):
            raise SpecError("E0410", "`let` binds a layer or block without its inputs; this call already computed a value",
                            expr.span, hint=f"write `{let_name} = ...` for a value")
        value.shared = True
        value.name = value.name or let_name
        self._claim(scope, value.name, expr.span, value.token)
        return value

    def _call_instance(self, inst: Instance, tensors, scope: Scope, span):
        if inst.kind == "op":
            op = REGISTRY[inst.target]
            name = inst.name or self._auto_name(scope, op.name)
            live = Instance(inst.kind, inst.target, inst.args, inst.kwargs, name, inst.span, inst.shared, inst.token) \
                if not inst.shared else inst
            if not inst.shared:
                live.token = object()
            return self._call_op(op, list(tensors) + list(inst.args), dict(inst.kwargs), scope, span, {}, instance=live)
        block = self.program.blocks[inst.target]
        return self._instantiate(block, inst.args, inst.kwargs, tensors, scope, span,
                                 inst.name or self._auto_name(scope, _snake(block.name)),
                                 inst.token if inst.shared else None)

    def _call_block(self, block: ast.BlockDef, args, kwargs, scope: Scope, span, kw_spans):
        name_arg = kwargs.pop("name", None)
        tensors, consts = self._split_args(args, span, block.name)
        if not tensors and block.inputs:
            return Instance("block", block.name, consts, kwargs, _name_of(name_arg, span), span, shared=False)
        name = _name_of(name_arg, span) or self._auto_name(scope, _snake(block.name))
        self._claim(scope, name, span, scope.owner)
        return self._instantiate(block, consts, kwargs, tensors, scope, span, name, scope.owner)

    def _instantiate(self, block: ast.BlockDef, consts, kwargs, tensors, scope: Scope, span, name: str, owner):
        self._step(span)
        if len(self.depth) >= MAX_BLOCK_DEPTH:
            chain = " -> ".join(self.depth[-4:] + [block.name])
            raise SpecError("E0504", f"block `{block.name}` calls itself without end (nesting deeper than "
                            f"{MAX_BLOCK_DEPTH}: {chain})", span,
                            hint="a recursive block needs a compile-time `if` that stops the recursion")
        if len(tensors) != len(block.inputs):
            raise SpecError("E0406", f"block `{block.name}` takes {len(block.inputs)} tensor input(s), "
                            f"{len(tensors)} given", span,
                            expected=f"{block.name}({', '.join(i.name for i in block.inputs)})")
        inner = Scope(scope.graph, scope.path + (name,), block=block, owner=owner)
        self._bind_params(block.params, consts, kwargs, span, inner, block.name)
        for bin_, t in zip(block.inputs, tensors):
            if bin_.name in inner.vars:
                raise SpecError("E0203", f"`{bin_.name}` is both a parameter and an input of `{block.name}`", bin_.span)
            if bin_.type is not None:
                self._match_type(bin_, t, inner, span, block)
            inner.vars[bin_.name] = t
        self.depth.append(block.name)
        try:
            self._run_body(block.body, inner, in_model=False)
        finally:
            self.depth.pop()
        if inner.returned is None:
            raise SpecError("E0507", f"block `{block.name}` has no `return`", block.span,
                            hint="end the block with `return value`")
        values = inner.returned
        return values[0] if len(values) == 1 else tuple(values)

    def _match_type(self, bin_: ast.BlockInput, t: Tensor, inner: Scope, span, block) -> None:
        texpr = bin_.type
        if texpr.dtype is not None and texpr.dtype != t.type.dtype:
            raise SpecError("E0305", f"block `{block.name}` expects `{bin_.name}` as {texpr.dtype}, found {t.type.dtype}",
                            span, found=str(t.type), expected=texpr.dtype)
        pattern = texpr.dims
        has_ellipsis = any(isinstance(d, ast.EllipsisExpr) for d in pattern)
        if not has_ellipsis and len(pattern) != t.type.rank:
            raise SpecError("E0302", f"rank mismatch: block `{block.name}` expects `{bin_.name}` of rank {len(pattern)}, "
                            f"found {t.type}", span, found=shape_str(t.type.shape),
                            expected="[" + ", ".join(_dim_text(d) for d in pattern) + "]",
                            notes=[f"`{bin_.name}` is declared at {bin_.span or block.span}"])
        for axis, (d, actual) in enumerate(zip(pattern, t.type.shape)):
            if isinstance(d, ast.Name) and d.id == "_":
                continue
            if isinstance(d, ast.Name) and d.id not in inner.vars:
                inner.vars[d.id] = actual
                continue
            want = self._const(d, inner, "a dimension")
            if want != actual:
                kind = "E0301" if is_concrete(want) and is_concrete(actual) else "E0303"
                what = f"size {want}" if isinstance(d, ast.Num) else f"{_dim_text(d)} = {want}"
                raise SpecError(kind, f"block `{block.name}` expects `{bin_.name}` to have {what} at dimension {axis}, "
                                f"found {actual}", span, found=shape_str(t.type.shape),
                                expected="[" + ", ".join(_dim_text(x) for x in pattern) + "]",
                                notes=[f"`{bin_.name}` is declared at {bin_.span or block.span}"]
                                + ([f"`{_dim_text(d)}` = {want} was bound by an earlier input or parameter"]
                                   if isinstance(d, ast.Name) else []))

    # ------------------------------------------------------------------ scan
    def _scan(self, call: ast.Call, args, kwargs, scope: Scope):
        if not args or not isinstance(args[0], Instance):
            raise SpecError("E0415", "scan's first argument is the step block or layer, e.g. scan(cell, x, h0)",
                            call.span, hint="define the cell with `let cell = RNNCell(hidden=32)`")
        cell = args[0]
        tensors = args[1:]
        if any(not isinstance(t, Tensor) for t in tensors):
            raise SpecError("E0415", "scan takes the cell, then the sequence, then the initial states", call.span)
        unknown = set(kwargs) - {"axis", "steps", "reverse"}
        if unknown:
            key = sorted(unknown)[0]
            raise SpecError("E0402", f"scan has no argument `{key}`", call.span,
                            expected="scan(cell, xs, init..., axis=1, steps=None, reverse=false)",
                            hint=suggest(key, ["axis", "steps", "reverse"]))
        axis = kwargs.get("axis", 1)
        steps = kwargs.get("steps")
        reverse = kwargs.get("reverse", False)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise SpecError("E0401", f"scan's axis must be an int, found {_kind(axis)}", call.span,
                            found=_show(axis), expected="an int, e.g. axis=1")
        if not isinstance(reverse, bool):
            raise SpecError("E0401", f"scan's reverse must be true or false, found {_kind(reverse)}", call.span,
                            found=_show(reverse), expected="true or false")
        if isinstance(steps, int) and not isinstance(steps, bool) and steps < 1:
            raise SpecError("E0401", f"scan's steps must be at least 1, found {steps}", call.span,
                            found=str(steps), expected="an int >= 1")
        if steps is None:
            if not tensors:
                raise SpecError("E0415", "scan needs a sequence to scan over, or steps=N", call.span)
            xs, inits = tensors[0], tensors[1:]
            if not -xs.type.rank <= axis < xs.type.rank:
                raise SpecError("E0304", f"scan axis {axis} is out of range for {xs.type}", call.span)
            axis = axis % xs.type.rank
            length = xs.type.shape[axis]
            step_in = [TensorType(xs.type.dtype, xs.type.shape[:axis] + xs.type.shape[axis + 1:])]
        else:
            if isinstance(steps, bool) or not isinstance(steps, (int, Sym)):
                raise SpecError("E0401", "scan's steps must be an int or a dimension", call.span)
            xs, inits, length = None, tensors, steps
            step_in = []
        if not inits:
            raise SpecError("E0415", "scan needs at least one initial state (the carried value)", call.span)
        body = Graph(f"scan:{cell.name or cell.target}")
        body.modules = scope.graph.modules
        body_scope = Scope(body, scope.path, owner=scope.owner)
        body_scope.names_used = scope.names_used
        body_inputs = []
        names = (["x_t"] if xs is not None else []) + [f"carry{i}" for i in range(len(inits))]
        if cell.kind == "block":
            declared = [b.name for b in self.program.blocks[cell.target].inputs]
            if len(declared) == len(names):
                names = (["x_t"] if xs is not None else []) + declared[len(names) - len(inits):]
        for nm, tt in zip(names, step_in + [t.type for t in inits]):
            node = Node(body.fresh_id(nm), "input", [], {"name": nm}, [tt], label=nm, span=call.span, path=scope.path)
            body.add_node(node)
            body.inputs.append(node.id)
            body_inputs.append(Tensor((node.id, 0), tt))
        shared = Instance(cell.kind, cell.target, cell.args, cell.kwargs,
                          cell.name or self._auto_name(scope, _snake(cell.target)), cell.span, True,
                          cell.token if cell.shared else object())
        if not cell.shared:
            scope.names_used[shared.name] = scope.names_used.get(shared.name, 0) + 1
        result = self._call_instance(shared, body_inputs, body_scope, call.span)
        results = list(result) if isinstance(result, tuple) else [result]
        n = len(inits)
        if len(results) not in (n, n + 1):
            raise SpecError("E0416", f"the scan cell returns {len(results)} value(s); with {n} carried state(s) it must "
                            f"return {n} (new states) or {n + 1} (new states, then the step's output)", call.span)
        for k, (r, init) in enumerate(zip(results, inits)):
            t = self._tensor(r, call, f"scan state {k}", body_scope)
            if t.type.shape != init.type.shape:
                raise SpecError("E0312", f"scan state {k} changes shape in one step: {init.type} -> {t.type}", call.span,
                                found=str(t.type), expected=str(init.type),
                                hint="the cell must return each state with the shape it received")
            body.outputs[f"carry{k}"] = t.ref
        y = self._tensor(results[-1] if len(results) == n + 1 else results[0], call, "scan output", body_scope)
        body.outputs["y"] = y.ref
        out_axis = axis if xs is not None else 1
        ys_shape = y.type.shape[:out_axis] + (length,) + y.type.shape[out_axis:]
        if out_axis > y.type.rank:
            ys_shape = y.type.shape + (length,)
        outs = [TensorType(y.type.dtype, ys_shape)] + [t.type for t in inits]
        graph = scope.graph
        node = Node(graph.fresh_id("scan"), "scan", [t.ref for t in tensors],
                    {"axis": out_axis, "steps": steps, "reverse": reverse, "n_carries": n,
                     "has_xs": xs is not None, "body": body, "length": length},
                    outs, span=call.span, path=scope.path + (shared.name,))
        graph.add_node(node)
        self.node_count += len(body.nodes)
        return tuple(Tensor((node.id, k), t) for k, t in enumerate(outs))


# ====================================================================== helpers
def _pre_check(op, ctx, in_types, attrs) -> None:
    """Checks shared by layers: an explicit in_features/in_channels must match the input."""
    for key, axis, what in (("in_features", -1, "features"), ("in_channels", 1, "channels")):
        want = attrs.get(key)
        if want is not None and in_types:
            got = in_types[0].shape[axis] if in_types[0].rank else None
            if got != want:
                ctx.fail("E0301", f"shape mismatch in {op.name}: input has {got} {what}, the weight expects {want}",
                         found=f"{got} {what}", expected=f"{want} {what}")


def _const_binop(e: ast.BinOp, lhs, rhs):
    op = e.op
    for v, side in ((lhs, e.lhs), (rhs, e.rhs)):
        if isinstance(v, Instance):
            raise SpecError("E0413", f"`{op}` is not defined on layers", side.span)
    try:
        if op in ("==", "!="):
            if isinstance(lhs, Sym) or isinstance(rhs, Sym):
                if isinstance(lhs, Sym) and isinstance(rhs, Sym) and lhs == rhs:
                    return op == "=="
                raise SpecError("E0501", f"cannot decide `{_show(lhs)} {op} {_show(rhs)}` at compile time: "
                                "a symbolic dimension is involved", e.span,
                                hint="give that dimension a concrete size in the input declaration")
            return (lhs == rhs) if op == "==" else (lhs != rhs)
        if op in ("<", "<=", ">", ">="):
            if isinstance(lhs, Sym) or isinstance(rhs, Sym):
                raise SpecError("E0501", f"cannot decide `{_show(lhs)} {op} {_show(rhs)}` at compile time", e.span)
            return {"<": lhs < rhs, "<=": lhs <= rhs, ">": lhs > rhs, ">=": lhs >= rhs}[op]
        if isinstance(lhs, bool) or isinstance(rhs, bool):
            raise TypeError
        if isinstance(lhs, str) or isinstance(rhs, str):
            if op == "+" and isinstance(lhs, (str, int)) and isinstance(rhs, (str, int)) and not isinstance(lhs, Sym):
                return f"{lhs}{rhs}"
            raise TypeError
        if isinstance(lhs, list) or isinstance(rhs, list):
            if op == "+" and isinstance(lhs, list) and isinstance(rhs, list):
                return lhs + rhs
            if op == "*" and isinstance(lhs, list) and isinstance(rhs, int):
                if rhs > MAX_REPEAT:
                    raise SpecError("E0502", f"list repeated {rhs} times; the limit is {MAX_REPEAT}", e.span)
                return lhs * rhs
            raise TypeError
        if op == "+":
            return lhs + rhs
        if op == "-":
            return lhs - rhs
        if op == "*":
            return lhs * rhs
        if op == "/":
            if isinstance(lhs, Sym) or isinstance(rhs, Sym):
                return simplify(lhs // rhs)
            return lhs / rhs
        if op == "//":
            return lhs // rhs
        if op == "%":
            if isinstance(lhs, Sym) or isinstance(rhs, Sym):
                raise TypeError
            return lhs % rhs
        if op == "**":
            if isinstance(lhs, Sym) or isinstance(rhs, Sym):
                raise TypeError
            if isinstance(rhs, int) and isinstance(lhs, int) and abs(lhs) > 1 and (
                    abs(rhs) > 64 or rhs * abs(lhs).bit_length() > MAX_INT_BITS):
                raise SpecError("E0413", f"the power {_short(lhs)} ** {rhs} is too large", e.span)
            result = lhs ** rhs
            if isinstance(result, complex):
                raise TypeError
            return result
        if op == "@":
            raise TypeError
    except ZeroDivisionError:
        raise SpecError("E0413", "division by zero", e.span) from None
    except OverflowError:
        raise SpecError("E0413", "number too large", e.span) from None
    except TypeError:
        pass
    raise SpecError("E0413", f"`{op}` is not defined on {_kind(lhs)} and {_kind(rhs)}", e.span)


BUILTINS = {"len", "min", "max", "int", "float", "str", "abs", "sqrt", "exp", "log", "floor", "ceil", "range", "sum"}
TENSOR_BUILTINS = {"min": "minimum", "max": "maximum"}


def _builtin(name: str, args, kwargs, span):
    if kwargs:
        raise SpecError("E0402", f"{name}() takes no keyword arguments", span)
    try:
        if name == "len":
            (v,) = args
            return len(v)
        if name in ("min", "max"):
            vals = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            if any(isinstance(v, Sym) for v in vals):
                raise SpecError("E0501", f"{name}() of symbolic dimensions is not known at compile time", span)
            return (min if name == "min" else max)(vals)
        if name == "int":
            (v,) = args
            return int(v)
        if name == "float":
            (v,) = args
            return float(v)
        if name == "str":
            (v,) = args
            return str(v)
        if name == "abs":
            (v,) = args
            return abs(v)
        if name in ("sqrt", "exp", "log", "floor", "ceil"):
            (v,) = args
            return getattr(math, name)(v)
        if name == "range":
            r = range(*args)
            if len(r) > MAX_REPEAT:
                raise SpecError("E0502", f"range of {len(r)} values; the limit is {MAX_REPEAT}", span)
            return list(r)
        if name == "sum":
            (v,) = args
            return sum(v)
    except SpecError:
        raise
    except OverflowError:
        raise SpecError("E0413", f"{name}({', '.join(_short(a) for a in args)}) is too large", span) from None
    except ValueError:
        if name in ("sqrt", "log", "int", "float") and len(args) == 1 and isinstance(args[0], (int, float)):
            raise SpecError("E0413", f"{name}({_short(args[0])}) is not defined", span) from None
    except TypeError:
        pass
    raise SpecError("E0413", f"{name}() cannot take {', '.join(_kind(a) for a in args) or 'no arguments'}", span)


def _short(v) -> str:
    """A compile-time value for a message, cut short when huge."""
    text = repr(v) if not (isinstance(v, int) and v.bit_length() > 200) else f"a {len(str(abs(v)))}-digit number"
    return text if len(text) <= 60 else text[:57] + "..."


def _bounded(v, span):
    """A compile-time result, refused when it has grown out of all proportion (sizes, lists, polynomials)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
        raise SpecError("E0413", f"number too large ({v.bit_length()} bits)", span)
    if isinstance(v, (str, list)) and len(v) > MAX_VALUE_LEN:
        raise SpecError("E0502", f"a compile-time value of {len(v)} elements is too large (limit {MAX_VALUE_LEN})", span)
    if isinstance(v, Sym) and (len(v.terms) > 1000 or any(len(m) > 64 for m in v.terms)
                               or any(abs(c).bit_length() > MAX_INT_BITS for c in v.terms.values())):
        raise SpecError("E0413", "symbolic dimension too large to track", span)
    return v


def _check_param_type(d: ast.ParamDecl, value, span, owner):
    t = d.type
    ok = {
        "int": isinstance(value, (int, Sym)) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, (list, tuple)),
        "any": not isinstance(value, (Tensor, Instance)),
    }[t]
    if not ok:
        raise SpecError("E0401", f"parameter `{d.name}` of `{owner}` is {t}, found {_kind(value)}", span,
                        expected=t, found=_show(value))
    if t == "float":
        return float(value)
    if t == "list":
        return list(value)
    return value


def _name_of(v, span) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise SpecError("E0206", f"name= takes a string or an int, found {_kind(v)}", span)
    s = str(v)
    if not (is_identifier(s) or s.isdigit()):
        raise SpecError("E0206", f"{f'`{s}`' if s.isprintable() else repr(s)} is not a valid layer name", span,
                        hint="names are identifiers (letters, digits, _) or plain numbers")
    return s


def _check_reserved(name: str, span, what: str) -> None:
    if name in RESERVED_NAMES:
        raise SpecError("E0206", f"`{name}` cannot name {what}: it is reserved in the generated Python code", span,
                        hint=f"choose another name, e.g. `{name}_`")


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _defined_names(stmt) -> list[str]:
    if isinstance(stmt, ast.Assign):
        return list(stmt.targets)
    if isinstance(stmt, (ast.LetStmt, ast.ParamStmt, ast.InputStmt, ast.TargetStmt, ast.LossStmt, ast.MetricStmt)):
        return [stmt.name]
    return []


def _kind(v) -> str:
    if isinstance(v, Tensor):
        return f"a tensor {v.type}"
    if isinstance(v, Instance):
        return f"the layer `{v.target}`"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, int):
        return "an int"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, Sym):
        return f"the symbolic dimension `{v}`"
    if isinstance(v, (list, tuple)):
        return "a list"
    return type(v).__name__


def _show(v) -> str:
    if isinstance(v, Tensor):
        return str(v.type)
    if isinstance(v, Sym):
        return str(v)
    return repr(v)


def _dim_text(d) -> str:
    if isinstance(d, ast.Name):
        return d.id
    if isinstance(d, ast.Num):
        return str(d.value)
    return "..." if isinstance(d, ast.EllipsisExpr) else "?"


def _flatten(v):
    if isinstance(v, (list, tuple)):
        out = []
        for x in v:
            out.extend(_flatten(x))
        return out
    return [v]


def _nested_shape(v) -> tuple:
    if isinstance(v, (list, tuple)):
        if not v:
            return (0,)
        inner = {_nested_shape(x) for x in v}
        if len(inner) != 1:
            return (-1,)
        return (len(v),) + inner.pop()
    return ()


def _to_float_nested(v):
    if isinstance(v, (list, tuple)):
        return tuple(_to_float_nested(x) for x in v)
    return float(v)


def _param_ctor(ttype: TensorType, init) -> str:
    shape = ", ".join(str(d) for d in ttype.shape)
    kind = init[0]
    if kind == "values":
        return f"nn.Parameter(torch.tensor({_nested_list(init[1])!r}))"
    if kind == "constant":
        return f"nn.Parameter(torch.full(({shape}{',' if len(ttype.shape) == 1 else ''}), {init[1]!r}))"
    if kind == "zeros":
        return f"nn.Parameter(torch.zeros({shape}))"
    if kind == "ones":
        return f"nn.Parameter(torch.ones({shape}))"
    if kind == "normal":
        mean, std = init[1], init[2]
        expr = f"torch.randn({shape})"
        if std != 1.0:
            expr += f" * {std!r}"
        if mean != 0.0:
            expr += f" + {mean!r}"
        return f"nn.Parameter({expr})"
    if kind == "uniform":
        low, high = init[1], init[2]
        return f"nn.Parameter(torch.empty({shape}).uniform_({low!r}, {high!r}))"
    if kind == "eye":
        return f"nn.Parameter(torch.eye({shape}))"
    gain = init[1] if len(init) > 1 else 1.0
    fn = {"xavier_uniform": "xavier_uniform_", "xavier_normal": "xavier_normal_", "kaiming_uniform": "kaiming_uniform_",
          "kaiming_normal": "kaiming_normal_", "orthogonal": "orthogonal_"}[kind]
    arg = f", gain={gain!r}" if kind in ("xavier_uniform", "xavier_normal", "orthogonal") and gain != 1.0 else ""
    return f"nn.Parameter(nn.init.{fn}(torch.empty({shape}){arg}))"


def _nested_list(v):
    if isinstance(v, tuple):
        return [_nested_list(x) for x in v]
    return v
