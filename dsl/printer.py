"""AST -> canonical DSL text: the inverse of `parser.parse_text`.

`print_module(module)` writes one statement per line, 4-space indents, `{ }` blocks, pipelines as
` |> ` chains and only the parentheses that the grammar's precedence requires, so that
`parse_text(print_module(m)) == m` for every module the parser produces. `format_expr` and
`format_tensor_type` print single pieces (the YAML front end writes tensor types with them).

Precedence, loosest first (see grammar.lark): if-expression, `or`, `and`, `not`, comparisons,
`+ -`, `* / // % @`, unary `- +`, `|>`, `**`, postfix (call, index, attribute), atoms.
A pipe's value is printed at postfix level: `a ** b |> f` parses as `a ** (b |> f)`.
"""
from __future__ import annotations

import math

from nnspec.dsl import ast

INDENT = "    "

# precedence levels, loosest first
IF, OR, AND, NOT, COMPARE, ARITH, TERM, UNARY, PIPE, POWER, POSTFIX, ATOM = range(12)

COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
BINARY_LEVELS = {"or": OR, "and": AND, "+": ARITH, "-": ARITH, "*": TERM, "/": TERM, "//": TERM, "%": TERM,
                 "@": TERM, "**": POWER, **{op: COMPARE for op in COMPARISONS}}

_STRING_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


# ------------------------------------------------------------------------------------ module level
def print_module(module: ast.Module) -> str:
    """The canonical DSL text of `module` (header comment, then items separated by blank lines)."""
    parts = []
    if module.header:
        parts.append(_comment_lines(module.header))
    parts.extend(_item(item) for item in module.items)
    return "\n\n".join(parts) + "\n" if parts else ""


def _comment_lines(text: str) -> str:
    return "\n".join(f"# {row}".rstrip() for row in text.splitlines())


def _item(item) -> str:
    if isinstance(item, ast.ImportStmt):
        return f"import {quote_string(item.path)}"
    doc = _comment_lines(item.doc) + "\n" if item.doc else ""
    if isinstance(item, ast.ModelDef):
        return doc + _with_body(f"model {item.name}{_param_list(item.params)}", item.body, 0)
    if isinstance(item, ast.BlockDef):
        inputs = ", ".join(_block_input(i) for i in item.inputs)
        return doc + _with_body(f"block {item.name}{_param_list(item.params)} ({inputs})", item.body, 0)
    raise TypeError(f"not a module item: {item!r}")


def _param_list(params: list[ast.ParamDecl]) -> str:
    if not params:
        return ""
    return "(" + ", ".join(_param_decl(p) for p in params) + ")"


def _param_decl(p: ast.ParamDecl) -> str:
    default = f" = {format_expr(p.default)}" if p.default is not None else ""
    return f"{p.name}: {p.type}{default}"


def _block_input(i: ast.BlockInput) -> str:
    return f"{i.name}: {format_tensor_type(i.type)}" if i.type is not None else i.name


# ------------------------------------------------------------------------------------- statements
def _with_body(opening: str, body: list, depth: int) -> str:
    return "\n".join(_block_lines(opening, body, depth))


def _block_lines(opening: str, body: list, depth: int) -> list[str]:
    """`opening {`, the statements indented one level deeper, `}`; an empty body is `opening {}`."""
    if not body:
        return [f"{opening} {{}}"]
    return [f"{opening} {{", *_body_lines(body, depth + 1), INDENT * depth + "}"]


def _body_lines(body: list, depth: int) -> list[str]:
    return [line for s in body for line in _stmt_lines(s, depth)]


def _stmt_lines(s, depth: int) -> list[str]:
    pad = INDENT * depth
    if isinstance(s, ast.ForStmt):
        return _block_lines(f"{pad}for {s.var} in {_expr(s.start, OR)}..{_expr(s.stop, OR)}", s.body, depth)
    if isinstance(s, ast.IfStmt):
        return _if_stmt_lines(s, depth)
    return [pad + _simple_stmt(s)]


def _if_stmt_lines(s: ast.IfStmt, depth: int) -> list[str]:
    pad = INDENT * depth
    lines = []
    for n, (cond, body) in enumerate(s.branches):
        opening = "if" if n == 0 else "} elif"
        lines.append(f"{pad}{opening} {_expr(cond, OR)} {{")
        lines.extend(_body_lines(body, depth + 1))
    if s.orelse:
        lines.append(pad + "} else {")
        lines.extend(_body_lines(s.orelse, depth + 1))
    return lines + [pad + "}"]


def _simple_stmt(s) -> str:
    if isinstance(s, ast.InputStmt):
        return f"input {s.name}: {format_tensor_type(s.type)}"
    if isinstance(s, ast.TargetStmt):
        return f"target {s.name}: {format_tensor_type(s.type)}"
    if isinstance(s, ast.Assign):
        return f"{', '.join(s.targets)} = {format_expr(s.value)}"
    if isinstance(s, ast.LetStmt):
        return f"let {s.name} = {format_expr(s.value)}"
    if isinstance(s, ast.ParamStmt):
        init = f" = {format_expr(s.init)}" if s.init is not None else ""
        return f"param {s.name}: {format_tensor_type(s.type)}{init}"
    if isinstance(s, ast.LossStmt):
        return f"loss {s.name} = {format_expr(s.value)}"
    if isinstance(s, ast.MetricStmt):
        return f"metric {s.name} = {format_expr(s.value)}"
    if isinstance(s, ast.OutputStmt):
        return "output " + ", ".join(_output_item(i) for i in s.items)
    if isinstance(s, ast.ReturnStmt):
        return "return " + ", ".join(format_expr(v) for v in s.values)
    raise TypeError(f"not a statement: {s!r}")


def _output_item(item: ast.OutputItem) -> str:
    return f"{item.name} = {format_expr(item.value)}" if item.value is not None else item.name


# ------------------------------------------------------------------------------------ expressions
def format_tensor_type(t: ast.TensorTypeExpr) -> str:
    """`f32[B, 1, 28, 28]`, or `[N, C]` when the type has no dtype."""
    dims = ", ".join(format_expr(d) for d in t.dims)
    return f"{t.dtype or ''}[{dims}]"


def format_expr(e) -> str:
    """One expression with minimal parentheses."""
    return _expr(e, IF)


def _expr(e, min_level: int) -> str:
    text, level = _expr_with_level(e)
    return f"({text})" if level < min_level else text


def _expr_with_level(e) -> tuple[str, int]:
    if isinstance(e, ast.Name):
        return e.id, ATOM
    if isinstance(e, ast.Num):
        return _number(e.value)
    if isinstance(e, ast.Str):
        return quote_string(e.value), ATOM
    if isinstance(e, ast.Bool):
        return ("true" if e.value else "false"), ATOM
    if isinstance(e, ast.ListExpr):
        return "[" + ", ".join(format_expr(i) for i in e.items) + "]", ATOM
    if isinstance(e, ast.Call):
        return f"{e.func}({_arguments(e)})", POSTFIX
    if isinstance(e, ast.Index):
        return f"{_expr(e.value, POSTFIX)}[{', '.join(_subscript(i) for i in e.items)}]", POSTFIX
    if isinstance(e, ast.Attribute):
        return f"{_expr(e.value, POSTFIX)}.{e.name}", POSTFIX
    if isinstance(e, ast.Pipe):
        return " |> ".join([_expr(e.value, POSTFIX)] + [_stage(s) for s in e.stages]), PIPE
    if isinstance(e, ast.BinOp):
        return _binop(e)
    if isinstance(e, ast.UnaryOp):
        return _unary(e)
    if isinstance(e, ast.IfExpr):
        return _if_expr(e), IF
    raise TypeError(f"cannot print {type(e).__name__} as an expression: {e!r}")


def _number(value) -> tuple[str, int]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number literal: {value!r}")
    if isinstance(value, float):
        if math.isnan(value):
            raise ValueError("NaN has no DSL literal")
        text = repr(value) if math.isfinite(value) else ("1e999" if value > 0 else "-1e999")
    else:
        text = str(value)
    negative = text.startswith("-")
    return text, UNARY if negative else ATOM


def _binop(e: ast.BinOp) -> tuple[str, int]:
    level = BINARY_LEVELS[e.op]
    if level == COMPARE:  # `a < b < c` is not in the grammar: both sides are arithmetic
        lhs, rhs = _expr(e.lhs, ARITH), _expr(e.rhs, ARITH)
    elif level == POWER:  # postfix "**" unary: right-associative
        lhs, rhs = _expr(e.lhs, POSTFIX), _expr(e.rhs, UNARY)
    else:  # left-associative
        lhs, rhs = _expr(e.lhs, level), _expr(e.rhs, level + 1)
    return f"{lhs} {e.op} {rhs}", level


def _unary(e: ast.UnaryOp) -> tuple[str, int]:
    if e.op == "not":
        return f"not {_expr(e.operand, NOT)}", NOT
    return f"{e.op}{_expr(e.operand, UNARY)}", UNARY


def _if_expr(e: ast.IfExpr) -> str:
    text = f"if {_expr(e.cond, OR)} {{ {format_expr(e.then)} }}"
    orelse = e.orelse
    while isinstance(orelse, ast.IfExpr):  # an else-branch that is an if-expression is an `elif`
        text += f" elif {_expr(orelse.cond, OR)} {{ {format_expr(orelse.then)} }}"
        orelse = orelse.orelse
    return text + f" else {{ {format_expr(orelse)} }}"


def _arguments(call: ast.Call) -> str:
    args = [format_expr(a) for a in call.args]
    args += [f"{k.name}={format_expr(k.value)}" for k in call.kwargs]
    return ", ".join(args)


def _stage(call: ast.Call) -> str:
    if not isinstance(call, ast.Call):
        raise TypeError(f"a pipeline stage must be a call: {call!r}")
    if not call.args and not call.kwargs:
        return call.func
    return f"{call.func}({_arguments(call)})"


def _subscript(item) -> str:
    if isinstance(item, ast.EllipsisExpr):
        return "..."
    if isinstance(item, ast.Slice):
        text = f"{_optional(item.start)}:{_optional(item.stop)}"
        return text + f":{format_expr(item.step)}" if item.step is not None else text
    return format_expr(item)


def _optional(e) -> str:
    return format_expr(e) if e is not None else ""


def quote_string(value: str) -> str:
    """A double-quoted DSL string literal that reads back as exactly `value`."""
    out = []
    for ch in value:
        if ch in _STRING_ESCAPES:
            out.append(_STRING_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(_escape_code(ord(ch)))
    return '"' + "".join(out) + '"'


def _escape_code(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
