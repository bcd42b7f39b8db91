"""Text front end: `grammar.lark` (LALR) -> parse tree -> AST with source spans.

`parse_text(text, path)` returns an `ast.Module`; any malformed input raises `SpecError` (never a
lark exception). The transformer runs after `parse()` so that every node knows its position.
"""
from __future__ import annotations

import ast as pyast
import re
from functools import lru_cache
from pathlib import Path

import lark
from lark import Transformer, v_args

from nnspec.dsl import ast
from nnspec.errors import Span, SpecError, too_deep

GRAMMAR_PATH = Path(__file__).resolve().parent.parent / "grammar.lark"

KEYWORDS = {"model", "block", "import", "input", "target", "let", "param", "loss", "metric", "output", "return",
            "for", "in", "if", "elif", "else", "and", "or", "not", "true", "false"}

# readable names for the grammar's terminals, used in "expected ..." lists
TERMINAL_TEXT = {
    "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`",
    "COMMA": "`,`", "COLON": "`:`", "EQUAL": "`=`", "NAME": "a name", "INT": "an integer",
    "FLOAT": "a number", "STRING": "a string", "PLUS": "`+`", "MINUS": "`-`", "STAR": "`*`",
    "SLASH": "`/`", "DOT": "`.`", "COMP_OP": "a comparison", "__ANON_0": "`|>`", "$END": "end of file",
}

MAX_SOURCE_BYTES = 2_000_000


@lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    return lark.Lark(GRAMMAR_PATH.read_text(), parser="lalr", propagate_positions=True,
                     maybe_placeholders=True, cache=False)


def _terminal_text(name: str) -> str:
    if name in TERMINAL_TEXT:
        return TERMINAL_TEXT[name]
    try:
        pattern = _lark().get_terminal(name).pattern
        if pattern.type == "str":
            return f"`{pattern.value}`"
    except (KeyError, AttributeError):
        pass
    return name.lower()


def _expected(names, closers_first: bool = False) -> str:
    closers = ("`}`", "`)`", "`]`") if closers_first else ()  # at the end of a file, a missing closer is likeliest
    texts = sorted({_terminal_text(n) for n in names}, key=lambda t: (t not in closers, t))
    if len(texts) > 8:
        texts = texts[:8] + ["..."]
    return ", ".join(texts)


def parse_text(text: str, path: str = "<spec>") -> ast.Module:
    """Parse DSL source into an AST Module; raise SpecError on any malformed input."""
    if len(text) > MAX_SOURCE_BYTES:
        raise SpecError("E0104", f"spec file is too large ({len(text)} bytes; the limit is {MAX_SOURCE_BYTES})",
                        Span(path, 1, 1))
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise SpecError("E0105", "spec file contains a NUL byte: is it a binary file?", Span(path, line, 1))
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedCharacters as e:
        span = Span(path, e.line, e.column, e.line, e.column + 1)
        char = text[e.pos_in_stream] if e.pos_in_stream is not None and e.pos_in_stream < len(text) else "?"
        hint = None
        if char == "'":
            hint = "strings use double quotes: \"...\""
        if char == '"' and _STRING_RE.match(text, e.pos_in_stream) is None:
            rest = text[e.pos_in_stream:].split("\n", 1)[0]
            raise SpecError("E0101", "unterminated string", Span(path, e.line, e.column, e.line, e.column + len(rest)),
                            expected="a closing `\"` on the same line", found=rest,
                            hint="a string ends on the line where it starts") from None
        raise SpecError("E0101", f"unexpected character {char!r}", span,
                        expected=_expected(e.allowed) if e.allowed else None, hint=hint) from None
    except lark.exceptions.UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            lines = text.rstrip("\n").split("\n")  # counted like the parser counts lines
            span = Span(path, len(lines), len(lines[-1].rstrip("\r")) + 1)
            opened = _unclosed(text)
            if opened is not None:
                ch, line, col = opened
                raise SpecError("E0103", "unexpected end of file", span, expected=_expected(e.expected, True),
                                notes=[f"the `{ch}` at line {line}, column {col} is never closed"],
                                hint=f"add the missing `{_PAIRS[ch]}`") from None
            raise SpecError("E0103", "unexpected end of file", span, expected=_expected(e.expected, True),
                            hint="the last statement is incomplete") from None
        width = max(len(str(tok.value)), 1)
        span = Span(path, tok.line, tok.column, tok.line, tok.column + width)
        hint = None
        before = max((tok.start_pos or 0) - 64, 0)
        prev = _PREV_WORD.search(text[before:tok.start_pos]) if tok.start_pos is not None else None
        if prev is not None and prev.group(1) in KEYWORDS and tok.type in ("EQUAL", "COMMA"):
            kw, at = prev.group(1), before + prev.start(1)
            line = text.count("\n", 0, at) + 1
            col = at - (text.rfind("\n", 0, at) + 1) + 1
            hint = f"choose another name, e.g. `{kw}_value`"
            if kw in ("loss", "metric"):
                hint += f"; to declare a {kw}, write `{kw} name = ...`"
            raise SpecError("E0102", f"`{kw}` is a keyword and cannot be used as a name",
                            Span(path, line, col, line, col + len(kw)), found=f"`{kw}` followed by `{tok.value}`",
                            hint=hint) from None
        if tok.type != "NAME" and str(tok.value) in KEYWORDS and "NAME" in e.expected:
            hint = f"`{tok.value}` is a keyword and cannot be used as a name"
        elif tok.type == "EQUAL" and "COMP_OP" in e.expected:
            hint = "use `==` to compare"
        raise SpecError("E0102", f"unexpected {_token_text(tok)}", span, expected=_expected(e.expected),
                        hint=hint) from None
    except lark.exceptions.LarkError as e:  # any other parser failure is still a syntax error
        raise SpecError("E0100", f"cannot parse spec: {e}", Span(path, 1, 1)) from None
    except RecursionError:
        raise too_deep(path) from None
    try:
        module = _ToAST(path).transform(tree)
    except RecursionError:
        raise too_deep(path) from None
    except lark.exceptions.VisitError as e:
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc from None
        if isinstance(e.orig_exc, RecursionError):
            raise too_deep(path) from None
        raise
    module.path = path
    module.header = _header_comment(text)
    return module


_STRING_RE = re.compile(r'"([^"\\\n]|\\.)*"')
_PREV_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t]*$")
_PAIRS = {"{": "}", "(": ")", "[": "]"}


def _unclosed(text: str):
    """The innermost bracket left open at the end of the text, as (char, line, column), or None."""
    stack = []
    line, col, i, n = 1, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            j = n if j < 0 else j
            col += j - i
            i = j
            continue
        if c == '"':
            m = _STRING_RE.match(text, i)
            if m is not None and "\n" not in m.group(0):
                col += m.end() - i
                i = m.end()
                continue
        if c in _PAIRS:
            stack.append((c, line, col))
        elif c in ")]}" and stack and _PAIRS[stack[-1][0]] == c:
            stack.pop()
        if c == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return stack[-1] if stack else None


def _token_text(tok) -> str:
    if tok.type == "NAME":
        return f"name `{tok.value}`"
    if tok.type in ("INT", "FLOAT"):
        return f"number `{tok.value}`"
    if tok.type == "STRING":
        return f"string {tok.value}"
    return f"`{tok.value}`"


def _header_comment(text: str) -> str | None:
    lines = []
    for row in text.splitlines():
        s = row.strip()
        if s.startswith("#"):
            body = s[1:]
            lines.append((body[1:] if body.startswith(" ") else body).rstrip())  # keep the text's own indentation
        elif s == "" and not lines:
            continue
        else:
            break
    return "\n".join(lines) or None


class _ToAST(Transformer):
    """Parse tree -> AST. Each method builds one node and attaches its span."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def _span(self, meta) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok_span(self, tok) -> Span:
        return Span(self.path, tok.line, tok.column, tok.end_line, tok.end_column)

    # ----------------------------------------------------------------- file level
    def start(self, items):
        return ast.Module(list(items), self.path)

    @v_args(meta=True)
    def import_stmt(self, meta, children):
        return ast.ImportStmt(_unquote(children[0]), self._span(meta))

    @v_args(meta=True)
    def model_def(self, meta, children):
        name, params, body = children
        _check_name(name, self)
        return ast.ModelDef(str(name), params or [], body, span=self._span(meta))

    @v_args(meta=True)
    def block_def(self, meta, children):
        name = children[0]
        _check_name(name, self)
        params = children[1] or []
        body = children[-1]
        inputs = [m for m in children[2:-1] if m is not None]
        return ast.BlockDef(str(name), params, inputs, body, span=self._span(meta))

    def param_list(self, children):
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def param_decl(self, meta, children):
        name, typ, default = children
        if str(typ) not in ast.PARAM_TYPES:
            raise SpecError("E0402", f"unknown parameter type `{typ}`", self._tok_span(typ),
                            expected=", ".join(ast.PARAM_TYPES), found=str(typ))
        return ast.ParamDecl(str(name), str(typ), default, self._span(meta))

    @v_args(meta=True)
    def block_input(self, meta, children):
        name, typ = children
        return ast.BlockInput(str(name), typ, self._span(meta))

    def body(self, children):
        return list(children)

    # ----------------------------------------------------------------- statements
    @v_args(meta=True)
    def input_stmt(self, meta, children):
        return ast.InputStmt(str(children[0]), children[1], self._span(meta))

    @v_args(meta=True)
    def target_stmt(self, meta, children):
        return ast.TargetStmt(str(children[0]), children[1], self._span(meta))

    @v_args(meta=True)
    def tensor_type(self, meta, children):
        dtype, *dims = children
        if dtype is not None and str(dtype) not in ast.DTYPES:
            raise SpecError("E0403", f"unknown dtype `{dtype}`", self._tok_span(dtype),
                            expected=", ".join(ast.DTYPES), found=str(dtype))
        dims = [d for d in dims if d is not None]
        return ast.TensorTypeExpr(str(dtype) if dtype is not None else None, dims, self._span(meta))

    @v_args(meta=True)
    def assign(self, meta, children):
        *names, value = children
        return ast.Assign([str(n) for n in names], value, self._span(meta))

    @v_args(meta=True)
    def let_stmt(self, meta, children):
        return ast.LetStmt(str(children[0]), children[1], self._span(meta))

    @v_args(meta=True)
    def param_stmt(self, meta, children):
        name, typ, init = children
        return ast.ParamStmt(str(name), typ, init, self._span(meta))

    @v_args(meta=True)
    def loss_stmt(self, meta, children):
        return ast.LossStmt(str(children[0]), children[1], self._span(meta))

    @v_args(meta=True)
    def metric_stmt(self, meta, children):
        return ast.MetricStmt(str(children[0]), children[1], self._span(meta))

    @v_args(meta=True)
    def output_stmt(self, meta, children):
        return ast.OutputStmt(list(children), self._span(meta))

    @v_args(meta=True)
    def output_item(self, meta, children):
        return ast.OutputItem(str(children[0]), children[1], self._span(meta))

    @v_args(meta=True)
    def return_stmt(self, meta, children):
        return ast.ReturnStmt(list(children), self._span(meta))

    @v_args(meta=True)
    def for_stmt(self, meta, children):
        var, start, stop, body = children
        return ast.ForStmt(str(var), start, stop, body, self._span(meta))

    @v_args(meta=True)
    def if_stmt(self, meta, children):
        cond, body, *rest = children
        branches = [(cond, body)]
        orelse: list = []
        for r in rest:
            if r is None:
                continue
            if r[0] == "elif":
                branches.append((r[1], r[2]))
            else:
                orelse = r[1]
        return ast.IfStmt(branches, orelse, self._span(meta))

    def elif_clause(self, children):
        return ("elif", children[0], children[1])

    def else_clause(self, children):
        return ("else", children[0])

    # ----------------------------------------------------------------- expressions
    @v_args(meta=True)
    def if_expr(self, meta, children):
        # cond, then, (cond, then)*, else  -> nested IfExpr
        *pairs, orelse = children
        result = orelse
        for i in range(len(pairs) - 2, -1, -2):
            result = ast.IfExpr(pairs[i], pairs[i + 1], result, self._span(meta))
        return result

    def _bin(op):  # noqa: N805 - helper that builds transformer methods
        @v_args(meta=True)
        def method(self, meta, children):
            return ast.BinOp(op, children[0], children[-1], self._span(meta))
        return method

    or_op = _bin("or")
    and_op = _bin("and")
    add = _bin("+")
    sub = _bin("-")
    mul = _bin("*")
    div = _bin("/")
    floordiv = _bin("//")
    mod = _bin("%")
    matmul = _bin("@")
    pow = _bin("**")

    @v_args(meta=True)
    def compare(self, meta, children):
        lhs, op, rhs = children
        return ast.BinOp(str(op), lhs, rhs, self._span(meta))

    @v_args(meta=True)
    def not_op(self, meta, children):
        return ast.UnaryOp("not", children[0], self._span(meta))

    @v_args(meta=True)
    def neg(self, meta, children):
        operand = children[0]
        if isinstance(operand, ast.Num) and operand.span is not None:  # fold literal -3 at parse time
            return ast.Num(-operand.value, self._span(meta))
        return ast.UnaryOp("-", operand, self._span(meta))

    @v_args(meta=True)
    def pos(self, meta, children):
        return ast.UnaryOp("+", children[0], self._span(meta))

    @v_args(meta=True)
    def pipe(self, meta, children):
        value, *stages = children
        return ast.Pipe(value, stages, self._span(meta))

    @v_args(meta=True)
    def stage(self, meta, children):
        func, args = (children + [None])[:2]
        positional, kwargs = args if args is not None else ([], [])
        return ast.Call(func, positional, kwargs, self._span(meta))

    def dotted_name(self, children):
        return ".".join(str(c) for c in children)

    @v_args(meta=True)
    def call(self, meta, children):
        func, args = children
        positional, kwargs = args if args is not None else ([], [])
        name = _callee_name(func)
        if name is None:
            raise SpecError("E0107", "only named ops, blocks and instances can be called", func.span or self._span(meta))
        return ast.Call(name, positional, kwargs, self._span(meta))

    def arguments(self, children):
        positional, kwargs = [], []
        for c in children:
            if c is None:
                continue
            if isinstance(c, ast.Keyword):
                if any(k.name == c.name for k in kwargs):
                    raise SpecError("E0404", f"keyword argument `{c.name}` is given twice", c.span)
                kwargs.append(c)
            else:
                if kwargs:
                    raise SpecError("E0405", "a positional argument follows a keyword argument", c.span)
                positional.append(c)
        return positional, kwargs

    @v_args(meta=True)
    def keyword(self, meta, children):
        return ast.Keyword(str(children[0]), children[1], self._span(meta))

    @v_args(meta=True)
    def index(self, meta, children):
        value, *items = children
        return ast.Index(value, items, self._span(meta))

    @v_args(meta=True)
    def slice(self, meta, children):
        start, stop, step = (list(children) + [None, None, None])[:3]
        return ast.Slice(start, stop, step, self._span(meta))

    @v_args(meta=True)
    def ellipsis(self, meta, children):
        return ast.EllipsisExpr(self._span(meta))

    @v_args(meta=True)
    def attribute(self, meta, children):
        return ast.Attribute(children[0], str(children[1]), self._span(meta))

    @v_args(meta=True)
    def name(self, meta, children):
        return ast.Name(str(children[0]), self._span(meta))

    @v_args(meta=True)
    def int(self, meta, children):
        digits = str(children[0]).replace("_", "")
        if len(digits) > 1000:
            raise SpecError("E0101", f"integer literal of {len(digits)} digits is too large", self._span(meta),
                            expected="at most 1000 digits")
        return ast.Num(int(digits), self._span(meta))

    @v_args(meta=True)
    def float(self, meta, children):
        return ast.Num(float(str(children[0])), self._span(meta))

    @v_args(meta=True)
    def string(self, meta, children):
        return ast.Str(_unquote(children[0]), self._span(meta))

    @v_args(meta=True)
    def true(self, meta, children):
        return ast.Bool(True, self._span(meta))

    @v_args(meta=True)
    def false(self, meta, children):
        return ast.Bool(False, self._span(meta))

    @v_args(meta=True)
    def list(self, meta, children):
        return ast.ListExpr([c for c in children if c is not None], self._span(meta))


def _callee_name(expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        inner = _callee_name(expr.value)
        return f"{inner}.{expr.name}" if inner else None
    return None


def _check_name(tok, tr: _ToAST) -> None:
    if str(tok) in KEYWORDS:
        raise SpecError("E0102", f"`{tok}` is a keyword and cannot be used as a name", tr._tok_span(tok),
                        hint=f"choose another name, e.g. `{str(tok).capitalize()}`")


def _unquote(tok) -> str:
    try:
        value = pyast.literal_eval(str(tok))
    except (ValueError, SyntaxError):
        return str(tok)[1:-1]
    return value if isinstance(value, str) else str(value)
