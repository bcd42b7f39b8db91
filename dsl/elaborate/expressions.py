"""Elaboration of expressions: names, literals, pipelines, arithmetic and comparison (a tensor op when a
tensor is involved, else computed now, within bounds), indexing and slicing, attributes (`x.shape`, `.T`),
and the compile-time built-in functions (`len`, `min`, `range`, ...)."""
from __future__ import annotations

import math

from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.shapes import Sym, simplify
from nnspec.dsl import ast
from nnspec.dsl.elaborate.values import (BINARY_OPS, MAX_INT_BITS, MAX_REPEAT, Instance, Scope, Tensor, bounded, kind_of,
                                         short, show)
from nnspec.errors import SpecError, suggest


class ExpressionsMixin:
    """The Elaborator's expressions (see dsl/elaborate/__init__.py)."""

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
        raise SpecError("E0412", f"{what} must be a tensor, found {kind_of(v)}", getattr(expr, "span", None),
                        found=show(v))

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
                raise SpecError("E0501", f"`not` needs a compile-time true/false, found {kind_of(v)}", e.span)
            if e.op == "+":
                return v
            if isinstance(v, Tensor):
                return self._emit(scope, "neg", [v], {}, e.span)[0]
            if isinstance(v, (int, float, Sym)) and not isinstance(v, bool):
                return -v
            raise SpecError("E0413", f"cannot negate {kind_of(v)}", e.span)
        if isinstance(e, ast.IfExpr):
            c = self._condition(e.cond, scope)
            if not isinstance(c, bool):
                raise SpecError("E0501", f"`if` needs a compile-time true/false, found {kind_of(c)}", e.cond.span,
                                found=show(c), hint="to choose per element at run time, use where(cond, a, b)")
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
            raise SpecError("E0201", f"{kind_of(v)} has no attribute `{e.name}`", e.span,
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
                raise SpecError("E0501", f"`{e.op}` needs compile-time true/false values, found {kind_of(lhs)}", e.lhs.span)
            if (e.op == "and" and not lhs) or (e.op == "or" and lhs):
                return lhs
            rhs = self._const(e.rhs, scope, f"the right side of `{e.op}`")
            if not isinstance(rhs, bool):
                raise SpecError("E0501", f"`{e.op}` needs compile-time true/false values, found {kind_of(rhs)}", e.rhs.span)
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
        return bounded(const_binop(e, lhs, rhs), e.span)

    def _as_tensor(self, v, expr, scope: Scope) -> Tensor:
        if isinstance(v, Tensor):
            return v
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return self._emit(scope, "constant", [], {"value": v}, expr.span)[0]
        if isinstance(v, Sym):
            raise SpecError("E0413", f"the symbolic dimension `{v}` cannot be used as a tensor value", expr.span,
                            hint="dimensions are compile-time values; use arange or full to make tensors from them")
        raise SpecError("E0412", f"expected a tensor or a number, found {kind_of(v)}", expr.span, found=show(v))

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
                            raise SpecError("E0401", f"slice bounds must be ints, found {kind_of(pv)}", p.span)
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
                        raise SpecError("E0401", f"an index must be an int, found {kind_of(iv)}", item.span)
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
                raise SpecError("E0401", f"an index must be an int, found {kind_of(i)}", e.items[0].span)
            if not -len(v) <= i < len(v):
                raise SpecError("E0304", f"index {i} is out of range for {len(v)} values", e.items[0].span)
            return v[i]
        raise SpecError("E0413", f"{kind_of(v)} cannot be indexed", e.span)



def const_binop(e: ast.BinOp, lhs, rhs):
    op = e.op
    for v, side in ((lhs, e.lhs), (rhs, e.rhs)):
        if isinstance(v, Instance):
            raise SpecError("E0413", f"`{op}` is not defined on layers", side.span)
    try:
        if op in ("==", "!="):
            if isinstance(lhs, Sym) or isinstance(rhs, Sym):
                if isinstance(lhs, Sym) and isinstance(rhs, Sym) and lhs == rhs:
                    return op == "=="
                raise SpecError("E0501", f"cannot decide `{show(lhs)} {op} {show(rhs)}` at compile time: "
                                "a symbolic dimension is involved", e.span,
                                hint="give that dimension a concrete size in the input declaration")
            return (lhs == rhs) if op == "==" else (lhs != rhs)
        if op in ("<", "<=", ">", ">="):
            if isinstance(lhs, Sym) or isinstance(rhs, Sym):
                raise SpecError("E0501", f"cannot decide `{show(lhs)} {op} {show(rhs)}` at compile time", e.span)
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
                raise SpecError("E0413", f"the power {short(lhs)} ** {rhs} is too large", e.span)
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
    raise SpecError("E0413", f"`{op}` is not defined on {kind_of(lhs)} and {kind_of(rhs)}", e.span)


BUILTINS = {"len", "min", "max", "int", "float", "str", "abs", "sqrt", "exp", "log", "floor", "ceil", "range", "sum"}
TENSOR_BUILTINS = {"min": "minimum", "max": "maximum"}


def builtin(name: str, args, kwargs, span):
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
        raise SpecError("E0413", f"{name}({', '.join(short(a) for a in args)}) is too large", span) from None
    except ValueError:
        if name in ("sqrt", "log", "int", "float") and len(args) == 1 and isinstance(args[0], (int, float)):
            raise SpecError("E0413", f"{name}({short(args[0])}) is not defined", span) from None
    except TypeError:
        pass
    raise SpecError("E0413", f"{name}() cannot take {', '.join(kind_of(a) for a in args) or 'no arguments'}", span)


