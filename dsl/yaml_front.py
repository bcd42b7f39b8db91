"""YAML front end: the same spec AST as the text DSL, written as structured YAML, both ways.

`load_yaml(text, path)` reads YAML into an `ast.Module` (every node carries a Span pointing at its
YAML line and column); `dump_yaml(module)` writes a module as YAML. For every module `m` that the text
parser produces, `load_yaml(dump_yaml(m)) == m`. Reading uses PyYAML's safe composer only (no object
construction), refuses aliases (`*name`, so no document can expand into a huge tree) and inputs over
2 MB, and reports every problem as a `SpecError`: E0110 for YAML syntax errors (at the reported line
and column), E0111 for a document whose structure is not a spec (naming the key and what was
expected), E0106 for nesting too deep to read, E0104 for an input that is too large.

YAML schema
-----------
Leading `#` comment lines are the module header. The document is a mapping with the keys `imports`,
`models` and `blocks` (each a list; items are kept in key order, then list order), or with the single
key `items`, an ordered list mixing `{import: path}`, model and block entries. `dump_yaml` writes the
grouped form when each kind of item is contiguous and the `items` form otherwise. An empty document
is an empty module.

    # MNIST classifier
    imports: ["std/blocks.nn"]
    models:
      - model: MnistCNN
        doc: "optional description"
        params: {classes: {type: int, default: 10}, width: int}
        body:
          - input: {x: "f32[B, 1, 28, 28]"}
          - target: {y: "i64[B]"}
          - h: {in: x, then: [{conv2d: [32], kernel: 3}, relu, {max_pool2d: [2]}]}
          - loss: {ce: {cross_entropy: [logits, y]}}
          - output: [logits]
    blocks:
      - block: Residual
        params: {c: int}
        inputs: {x: "[N, C, H, W]", skip: null}
        body:
          - return: [{"+": [x, skip]}]

Models: `model` (name), `body` (list of statements), optional `params` and `doc`. Blocks also take
`inputs`, a mapping from input name to tensor type or null. `params` maps each name to its type
(`int`, `float`, `bool`, `str`, `list`, `any`) or to `{type: T, default: expression}`. Where a name
repeats (an error the compiler reports), `params` and `inputs` are lists of one-key mappings instead.

Tensor types: a compact string in the DSL's type syntax (`"f32[B, 1, 28, 28]"`, `"[N, C]"`), a list
of dimension expressions (no dtype), or `{dtype: f32, shape: [B, 1, 28, 28]}` (`dtype` optional).

Statements (each a mapping in a `body` list):

    - h: expr                           assignment
    - "a, b": expr                      tuple assignment
    - input: {x: type}                  - target: {y: type}
    - let: {enc: expr}                  - loss: {ce: expr}        - metric: {acc: expr}
    - param: {w: type}                  optional sibling key `init: expr`
    - output: [logits, {probs: expr}]   names, or `{name: expr}` for computed outputs
    - return: [expr, ...]
    - for: i                            with `from: expr`, `to: expr`, `body: [...]`
    - if: cond                          with `then: [...]`, optional `elif: [{if: cond, then: [...]}]`
                                        and optional `else: [...]`

Expressions:

    x                         a name (a YAML string that is an identifier)
    3, 0.5, true              numbers and booleans
    {str: "text"}             a string literal
    [a, b]                    a list
    {conv2d: [32], kernel: 3} a call: the FIRST key names the op (dotted names allowed) and holds
                              the positional arguments (a list; null for none; any other value is
                              one argument); the other keys are keyword arguments
    {call: f, args: [...], kwargs: {k: v}}
                              the general call form (`args`, `kwargs` optional), used when the op or
                              a keyword is named like one of the reserved keys below
    {in: x, then: [stage, ...]}   a pipeline `x |> stage |> ...`; a stage is an op name or a call
    {"+": [a, b]}             binary operators: + - * / // % ** @ == != < <= > >= and or
    {neg: x}, {pos: x}, {not: x}  unary -, + and not (`{neg: 3}` reads as the number -3, as in text)
    {if: c, then: a, else: b} an if-expression
    {index: x, at: [i, {slice: [start, stop, step]}, {ellipsis: true}]}
                              indexing; slice parts may be null or left off at the end;
                              `slice` and `ellipsis` may appear only in `at`
    {attr: x, name: shape}    attribute access `x.shape`

Reserved keys, which make a mapping one of the forms above rather than a call: str, call, in, if,
index, slice, ellipsis, attr, neg, pos, not and the operators. A mapping holding two of them is an
error.
"""
from __future__ import annotations

import dataclasses
import re

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from nnspec.dsl import ast
from nnspec.dsl.parser import KEYWORDS, MAX_SOURCE_BYTES, _header_comment, parse_text
from nnspec.dsl.printer import BINARY_LEVELS, format_tensor_type
from nnspec.errors import Span, SpecError

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DOTTED_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

BINARY_OPS = tuple(BINARY_LEVELS)
UNARY_KEYS = {"neg": "-", "pos": "+", "not": "not"}
UNARY_NAMES = {op: key for key, op in UNARY_KEYS.items()}
HEAD_KEYS = {"str", "call", "in", "if", "index", "slice", "ellipsis", "attr", *UNARY_KEYS, *BINARY_OPS}
STATEMENT_KEYS = ("input", "target", "let", "param", "loss", "metric", "output", "return", "for", "if")
GROUP_KEYS = {"imports": ast.ImportStmt, "models": ast.ModelDef, "blocks": ast.BlockDef}
ITEM_KEYS = ("import", "model", "block")

_TAG = "tag:yaml.org,2002:"
_TYPE_PREFIX = "model T { input t: "
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


# ========================================================================================== loading
def load_yaml(text: str, path: str = "<spec>") -> ast.Module:
    """Read a YAML spec into an AST Module; raise SpecError on any malformed input."""
    if len(text) > MAX_SOURCE_BYTES:
        raise SpecError("E0104", f"spec file is too large ({len(text)} bytes; the limit is {MAX_SOURCE_BYTES})",
                        Span(path, 1, 1))
    root = _compose(text, path)
    try:
        items = _Reader(path).module_items(root)
    except RecursionError:
        raise SpecError("E0106", "the YAML document is nested too deeply", Span(path, 1, 1)) from None
    return ast.Module(items, path, header=_header_comment(text))


class _AliasFound(Exception):
    def __init__(self, mark):
        super().__init__("alias")
        self.mark = mark


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, composing nodes only and refusing aliases (`*name`)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasFound(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _compose(text: str, path: str):
    try:
        return yaml.compose(text, Loader=_NoAliasLoader)
    except _AliasFound as e:
        raise SpecError("E0111", "YAML aliases (`*name`) are not supported in specs", _mark_span(path, e.mark),
                        hint="write the value out in full") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        span = _mark_span(path, mark) if mark is not None else Span(path, 1, 1)
        message = " ".join(part for part in (e.context, e.problem) if part) or "malformed YAML"
        raise SpecError("E0110", f"YAML syntax error: {message}", span) from None
    except yaml.reader.ReaderError as e:
        before = text[: e.position]
        span = Span(path, before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1)
        raise SpecError("E0110", f"YAML syntax error: {e.reason} (character {e.character!r})", span) from None
    except yaml.YAMLError as e:
        raise SpecError("E0110", f"YAML syntax error: {e}", Span(path, 1, 1)) from None
    except RecursionError:
        raise SpecError("E0106", "the YAML document is nested too deeply", Span(path, 1, 1)) from None


def _mark_span(path: str, mark, end=None) -> Span:
    end = end or mark
    return Span(path, mark.line + 1, mark.column + 1, end.line + 1, end.column + 1)


def _describe(node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _TAG + "null":
        return "null"
    tag = node.tag.removeprefix(_TAG)
    value = node.value if len(node.value) <= 60 else node.value[:57] + "..."
    if tag == "str":
        return f"`{value}`"
    return f"{tag} `{value}`" if tag in ("int", "float", "bool") else f"a value tagged `{node.tag}`"


class _Reader:
    """Composed YAML nodes -> AST nodes, with spans; each method reads one construct of the schema."""

    def __init__(self, path: str):
        self.path = path

    # ----------------------------------------------------------------- helpers
    def span(self, node, last=None) -> Span:
        return _mark_span(self.path, node.start_mark, (last or node).end_mark)

    def error(self, node, message: str, expected: str | None = None, hint: str | None = None) -> SpecError:
        return SpecError("E0111", message, self.span(node), expected=expected, found=_describe(node), hint=hint)

    def entries(self, node, what: str) -> list[tuple[str, object, object]]:
        """A mapping's (key, key node, value node) triples, in order; keys are plain, unique strings."""
        if not isinstance(node, MappingNode):
            raise self.error(node, f"{what} must be a mapping", expected="a mapping")
        seen, result = set(), []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.error(key_node, f"a key in {what} must be a plain string", expected="a name")
            if key_node.value in seen:
                raise self.error(key_node, f"duplicate key `{key_node.value}` in {what}")
            seen.add(key_node.value)
            result.append((key_node.value, key_node, value_node))
        return result

    def fields(self, node, what: str, required: tuple, optional: tuple = ()) -> dict:
        """The values of a mapping with a fixed set of keys, by key."""
        entries = self.entries(node, what)
        found = {key: value for key, _, value in entries}
        allowed = required + optional
        for key, key_node, _ in entries:
            if key not in allowed:
                raise self.error(key_node, f"unknown key `{key}` in {what}",
                                 expected=", ".join(f"`{k}`" for k in allowed))
        for key in required:
            if key not in found:
                raise self.error(node, f"{what} has no `{key}` key", expected=", ".join(f"`{k}`" for k in allowed))
        return found

    def single(self, node, what: str) -> tuple[str, object, object]:
        entries = self.entries(node, what)
        if len(entries) != 1:
            raise self.error(node, f"{what} must be a mapping with exactly one key", expected="`name: value`")
        return entries[0]

    def named_entries(self, node, what: str) -> list[tuple[str, object, object]]:
        """`{a: x, b: y}`, or `[{a: x}, {a: y}]` where a name repeats (the compiler reports that later)."""
        if isinstance(node, SequenceNode):
            return [self.single(entry, f"an entry of {what}") for entry in node.value]
        return self.entries(node, what)

    def sequence(self, node, what: str, nonempty: bool = False) -> list:
        if not isinstance(node, SequenceNode):
            raise self.error(node, f"{what} must be a list", expected="a list")
        if nonempty and not node.value:
            raise self.error(node, f"{what} must not be empty", expected="at least one entry")
        return node.value

    def string(self, node, what: str) -> str:
        if not isinstance(node, ScalarNode) or node.tag != _TAG + "str":
            raise self.error(node, f"{what} must be a string", expected="a string",
                             hint="quote the value to make it a string")
        return node.value

    def name(self, node, what: str) -> str:
        return self.check_name(node, self.string(node, what), what)

    def check_name(self, node, text: str, what: str, pattern=NAME_RE) -> str:
        if not pattern.fullmatch(text):
            raise self.error(node, f"{what} must be {'a dotted name' if pattern is DOTTED_RE else 'a name'}",
                             expected="letters, digits and `_`, not starting with a digit")
        return text

    def optional(self, fields: dict, key: str, read):
        return read(fields[key]) if key in fields and not _is_null(fields[key]) else None

    # ----------------------------------------------------------------- module level
    def module_items(self, root) -> list:
        if root is None:
            return []
        entries = self.entries(root, "the document")
        keys = [key for key, _, _ in entries]
        if "items" in keys and len(keys) > 1:
            raise self.error(root, "a document has either `items` or `imports`/`models`/`blocks`, not both")
        items = []
        for key, key_node, value in entries:
            if key == "items":
                items += [self.item(n, None) for n in self.sequence(value, "`items`")]
            elif key in GROUP_KEYS:
                items += [self.item(n, GROUP_KEYS[key]) for n in self.sequence(value, f"`{key}`")]
            else:
                raise self.error(key_node, f"unknown top-level key `{key}`",
                                 expected="`imports`, `models`, `blocks` or `items`")
        return items

    def item(self, node, kind):
        if kind is ast.ImportStmt:
            return ast.ImportStmt(self.string(node, "an import"), self.span(node))
        what = "a `models` entry" if kind is ast.ModelDef else "a `blocks` entry" if kind else "an `items` entry"
        keys = [key for key, _, _ in self.entries(node, what) if key in ITEM_KEYS]
        wanted = {ast.ModelDef: "model", ast.BlockDef: "block"}.get(kind)
        if len(keys) != 1 or (wanted and keys[0] != wanted):
            expected = f"`{wanted}: Name`" if wanted else "one of `import`, `model`, `block`"
            raise self.error(node, f"{what} must name what it defines", expected=expected)
        return {"import": self.import_item, "model": self.model, "block": self.block}[keys[0]](node)

    def import_item(self, node) -> ast.ImportStmt:
        fields = self.fields(node, "an import", ("import",))
        return ast.ImportStmt(self.string(fields["import"], "`import`"), self.span(node))

    def model(self, node) -> ast.ModelDef:
        fields = self.fields(node, "a model", ("model", "body"), ("params", "doc"))
        name = self.def_name(fields["model"], "`model`")
        return ast.ModelDef(name, self.params(fields.get("params")), self.body(fields["body"], f"`body` of `{name}`"),
                            doc=self.optional(fields, "doc", lambda n: self.string(n, "`doc`")), span=self.span(node))

    def block(self, node) -> ast.BlockDef:
        fields = self.fields(node, "a block", ("block", "body"), ("params", "inputs", "doc"))
        name = self.def_name(fields["block"], "`block`")
        return ast.BlockDef(name, self.params(fields.get("params")), self.block_inputs(fields.get("inputs")),
                            self.body(fields["body"], f"`body` of `{name}`"),
                            doc=self.optional(fields, "doc", lambda n: self.string(n, "`doc`")), span=self.span(node))

    def def_name(self, node, what: str) -> str:
        name = self.name(node, what)
        if name in KEYWORDS:
            raise self.error(node, f"`{name}` is a keyword and cannot be used as a name")
        return name

    def params(self, node) -> list[ast.ParamDecl]:
        if node is None or _is_null(node):
            return []
        return [self.param_decl(key_node, value) for _, key_node, value in self.named_entries(node, "`params`")]

    def param_decl(self, key_node, node) -> ast.ParamDecl:
        name = self.check_name(key_node, key_node.value, "a parameter name")
        if isinstance(node, MappingNode):
            fields = self.fields(node, f"parameter `{name}`", ("type",), ("default",))
            type_node, default = fields["type"], self.optional(fields, "default", self.expr)
        else:
            type_node, default = node, None
        type_name = self.string(type_node, f"the type of parameter `{name}`")
        if type_name not in ast.PARAM_TYPES:
            raise SpecError("E0402", f"unknown parameter type `{type_name}`", self.span(type_node),
                            expected=", ".join(ast.PARAM_TYPES), found=type_name)
        return ast.ParamDecl(name, type_name, default, self.span(key_node, node))

    def block_inputs(self, node) -> list[ast.BlockInput]:
        if node is None or _is_null(node):
            return []
        inputs = []
        for _, key_node, value in self.named_entries(node, "`inputs`"):
            name = self.check_name(key_node, key_node.value, "a block input name")
            typ = None if _is_null(value) else self.tensor_type(value)
            inputs.append(ast.BlockInput(name, typ, self.span(key_node, value)))
        return inputs

    # ----------------------------------------------------------------- tensor types
    def tensor_type(self, node) -> ast.TensorTypeExpr:
        if isinstance(node, ScalarNode):
            return self.compact_type(node)
        if isinstance(node, SequenceNode):
            return ast.TensorTypeExpr(None, [self.expr(d) for d in node.value], self.span(node))
        fields = self.fields(node, "a tensor type", ("shape",), ("dtype",))
        dtype = self.optional(fields, "dtype", lambda n: self.string(n, "`dtype`"))
        if dtype is not None and dtype not in ast.DTYPES:
            raise SpecError("E0403", f"unknown dtype `{dtype}`", self.span(fields["dtype"]),
                            expected=", ".join(ast.DTYPES), found=dtype)
        dims = [self.expr(d) for d in self.sequence(fields["shape"], "`shape`")]
        return ast.TensorTypeExpr(dtype, dims, self.span(node))

    def compact_type(self, node) -> ast.TensorTypeExpr:
        """`"f32[B, 28]"`: read with the text parser, its spans moved onto the YAML scalar."""
        text = self.string(node, "a tensor type")
        if "\n" in text:
            raise self.error(node, "a tensor type must fit on one line", expected="`dtype[dims]`")
        try:
            module = parse_text(_TYPE_PREFIX + text + " }", self.path)
        except SpecError as e:
            raise SpecError(e.code, f"{e.message} in tensor type `{text}`", self.inner_span(node, e.span),
                            expected=e.expected, found=e.found, hint=e.hint) from None
        body = module.items[0].body if len(module.items) == 1 and not module.items[0].params else []
        if len(body) != 1 or not isinstance(body[0], ast.InputStmt):
            raise self.error(node, f"`{text}` is not a tensor type", expected="`dtype[dims]` or `[dims]`")
        typ = body[0].type
        _respan(typ, lambda s: self.inner_span(node, s))
        return typ

    def inner_span(self, node, span: Span | None) -> Span:
        """Map a span inside `_TYPE_PREFIX + text` onto the YAML scalar holding `text`."""
        if span is None or span.line != 1 or span.col <= len(_TYPE_PREFIX):
            return self.span(node)
        quote = 1 if node.style in ("'", '"') else 0
        line, start = node.start_mark.line + 1, node.start_mark.column + 1 + quote - len(_TYPE_PREFIX)
        end_col = span.end_col + start - 1 if span.end_line == 1 and span.end_col else None
        return Span(self.path, line, span.col + start - 1, line if end_col else None, end_col)

    # ----------------------------------------------------------------- statements
    def body(self, node, what: str) -> list:
        return [self.statement(n) for n in self.sequence(node, what)]

    def statement(self, node):
        entries = self.entries(node, "a statement")
        keywords = [key for key, _, _ in entries if key in STATEMENT_KEYS]
        if len(keywords) > 1:
            raise self.error(node, f"a statement has more than one keyword ({', '.join(keywords)})")
        if keywords:
            return getattr(self, f"stmt_{keywords[0]}")(node)
        return self.assign(node)

    def assign(self, node) -> ast.Assign:
        key, key_node, value = self.single(node, "an assignment")
        targets = [self.check_name(key_node, t.strip(), "an assignment target") for t in key.split(",")]
        return ast.Assign(targets, self.expr(value), self.span(node))

    def named(self, node, key: str, what: str) -> tuple[str, object]:
        """`{key: {name: value}}` -> (name, value node)."""
        fields = self.fields(node, f"a `{key}` statement", (key,))
        name, key_node, value = self.single(fields[key], f"`{key}`")
        return self.check_name(key_node, name, what), value

    def stmt_input(self, node) -> ast.InputStmt:
        name, value = self.named(node, "input", "an input name")
        return ast.InputStmt(name, self.tensor_type(value), self.span(node))

    def stmt_target(self, node) -> ast.TargetStmt:
        name, value = self.named(node, "target", "a target name")
        return ast.TargetStmt(name, self.tensor_type(value), self.span(node))

    def stmt_let(self, node) -> ast.LetStmt:
        name, value = self.named(node, "let", "a `let` name")
        return ast.LetStmt(name, self.expr(value), self.span(node))

    def stmt_loss(self, node) -> ast.LossStmt:
        name, value = self.named(node, "loss", "a loss name")
        return ast.LossStmt(name, self.expr(value), self.span(node))

    def stmt_metric(self, node) -> ast.MetricStmt:
        name, value = self.named(node, "metric", "a metric name")
        return ast.MetricStmt(name, self.expr(value), self.span(node))

    def stmt_param(self, node) -> ast.ParamStmt:
        fields = self.fields(node, "a `param` statement", ("param",), ("init",))
        name, key_node, value = self.single(fields["param"], "`param`")
        name = self.check_name(key_node, name, "a param name")
        return ast.ParamStmt(name, self.tensor_type(value), self.optional(fields, "init", self.expr), self.span(node))

    def stmt_output(self, node) -> ast.OutputStmt:
        fields = self.fields(node, "an `output` statement", ("output",))
        items = [self.output_item(n) for n in self.sequence(fields["output"], "`output`", nonempty=True)]
        return ast.OutputStmt(items, self.span(node))

    def output_item(self, node) -> ast.OutputItem:
        if isinstance(node, ScalarNode):
            return ast.OutputItem(self.name(node, "an output"), None, self.span(node))
        name, key_node, value = self.single(node, "an output")
        return ast.OutputItem(self.check_name(key_node, name, "an output name"), self.expr(value), self.span(node))

    def stmt_return(self, node) -> ast.ReturnStmt:
        fields = self.fields(node, "a `return` statement", ("return",))
        values = [self.expr(n) for n in self.sequence(fields["return"], "`return`", nonempty=True)]
        return ast.ReturnStmt(values, self.span(node))

    def stmt_for(self, node) -> ast.ForStmt:
        fields = self.fields(node, "a `for` statement", ("for", "from", "to", "body"))
        return ast.ForStmt(self.name(fields["for"], "the `for` variable"), self.expr(fields["from"]),
                           self.expr(fields["to"]), self.body(fields["body"], "`body` of `for`"), self.span(node))

    def stmt_if(self, node) -> ast.IfStmt:
        fields = self.fields(node, "an `if` statement", ("if", "then"), ("elif", "else"))
        branches = [(self.expr(fields["if"]), self.body(fields["then"], "`then`"))]
        for branch in self.sequence(fields["elif"], "`elif`") if "elif" in fields else []:
            elif_fields = self.fields(branch, "an `elif` branch", ("if", "then"))
            branches.append((self.expr(elif_fields["if"]), self.body(elif_fields["then"], "`then`")))
        orelse = self.body(fields["else"], "`else`") if "else" in fields else []
        return ast.IfStmt(branches, orelse, self.span(node))

    # ----------------------------------------------------------------- expressions
    def expr(self, node):
        if isinstance(node, ScalarNode):
            return self.scalar_expr(node)
        if isinstance(node, SequenceNode):
            return ast.ListExpr([self.expr(n) for n in node.value], self.span(node))
        heads = [key for key, _, _ in self.entries(node, "an expression") if key in HEAD_KEYS]
        if len(heads) > 1:
            raise self.error(node, f"an expression mapping has more than one form key ({', '.join(heads)})",
                             hint="a call whose op or keyword is named like a form key is written "
                                  "{call: name, args: [...], kwargs: {...}}")
        if not heads:
            return self.call_shorthand(node)
        return self.form(heads[0], node)

    def scalar_expr(self, node):
        tag = node.tag.removeprefix(_TAG)
        span = self.span(node)
        if tag == "bool":
            return ast.Bool(self.construct(node, _CONSTRUCTOR.construct_yaml_bool), span)
        if tag == "int":
            return ast.Num(self.construct(node, _CONSTRUCTOR.construct_yaml_int), span)
        if tag == "float":
            return ast.Num(self.construct(node, _CONSTRUCTOR.construct_yaml_float), span)
        if tag == "str" and NAME_RE.fullmatch(node.value):
            return ast.Name(node.value, span)
        raise self.error(node, "expected an expression", expected="a name, number, boolean, list or mapping",
                         hint="a string literal is written {str: \"...\"}" if tag == "str" else None)

    def construct(self, node, construct):
        """A YAML bool/int/float scalar's value; a value that does not fit its tag is an E0111."""
        try:
            return construct(node)
        except (ValueError, KeyError, TypeError, yaml.YAMLError):
            raise self.error(node, f"`{node.value}` is not a valid {node.tag.rsplit(':', 1)[-1]}") from None

    def form(self, head: str, node):
        if head in BINARY_OPS:
            fields = self.fields(node, f"a `{head}` expression", (head,))
            operands = self.sequence(fields[head], f"the operands of `{head}`")
            if len(operands) != 2:
                raise self.error(fields[head], f"`{head}` takes exactly two operands", expected="[lhs, rhs]")
            return ast.BinOp(head, self.expr(operands[0]), self.expr(operands[1]), self.span(node))
        if head in UNARY_KEYS:
            return self.unary(head, node)
        if head in ("slice", "ellipsis"):
            raise self.error(node, f"`{head}` may appear only in the `at` list of an index")
        return getattr(self, f"form_{head}")(node)

    def unary(self, head: str, node):
        operand = self.expr(self.fields(node, f"a `{head}` expression", (head,))[head])
        if head == "neg" and isinstance(operand, ast.Num):  # as in the text parser, -3 is a literal
            return ast.Num(-operand.value, self.span(node))
        return ast.UnaryOp(UNARY_KEYS[head], operand, self.span(node))

    def form_str(self, node) -> ast.Str:
        fields = self.fields(node, "a string literal", ("str",))
        return ast.Str(self.string(fields["str"], "`str`"), self.span(node))

    def form_call(self, node) -> ast.Call:
        fields = self.fields(node, "a call", ("call",), ("args", "kwargs"))
        func_node = fields["call"]
        func = self.check_name(func_node, self.string(func_node, "`call`"), "`call`", DOTTED_RE)
        args = [self.expr(n) for n in self.sequence(fields["args"], "`args`")] if "args" in fields else []
        kwargs = []
        if "kwargs" in fields:
            kwargs = [self.keyword(k, kn, v) for k, kn, v in self.entries(fields["kwargs"], "`kwargs`")]
        return ast.Call(func, args, kwargs, self.span(node))

    def call_shorthand(self, node) -> ast.Call:
        entries = self.entries(node, "a call")
        if not entries:
            raise self.error(node, "an empty mapping is not an expression", expected="an op name as the first key")
        (func, func_node, args_node), *rest = entries
        self.check_name(func_node, func, "the op of a call (its first key)", DOTTED_RE)
        if _is_null(args_node):
            args = []
        elif isinstance(args_node, SequenceNode):
            args = [self.expr(n) for n in args_node.value]
        else:
            args = [self.expr(args_node)]
        return ast.Call(func, args, [self.keyword(k, kn, v) for k, kn, v in rest], self.span(node))

    def keyword(self, key: str, key_node, value) -> ast.Keyword:
        name = self.check_name(key_node, key, "a keyword argument")
        return ast.Keyword(name, self.expr(value), self.span(key_node, value))

    def form_in(self, node) -> ast.Pipe:
        fields = self.fields(node, "a pipeline", ("in", "then"))
        stages = [self.stage(n) for n in self.sequence(fields["then"], "`then` of a pipeline", nonempty=True)]
        return ast.Pipe(self.expr(fields["in"]), stages, self.span(node))

    def stage(self, node) -> ast.Call:
        if isinstance(node, ScalarNode):
            func = self.string(node, "a pipeline stage")
            return ast.Call(self.check_name(node, func, "a pipeline stage", DOTTED_RE), [], [], self.span(node))
        call = self.expr(node)
        if not isinstance(call, ast.Call):
            raise self.error(node, "a pipeline stage must be a call", expected="an op name or a call mapping")
        return call

    def form_if(self, node) -> ast.IfExpr:
        fields = self.fields(node, "an if-expression", ("if", "then", "else"))
        return ast.IfExpr(self.expr(fields["if"]), self.expr(fields["then"]), self.expr(fields["else"]),
                          self.span(node))

    def form_index(self, node) -> ast.Index:
        fields = self.fields(node, "an index", ("index", "at"))
        items = [self.subscript(n) for n in self.sequence(fields["at"], "`at` of an index", nonempty=True)]
        return ast.Index(self.expr(fields["index"]), items, self.span(node))

    def subscript(self, node):
        if isinstance(node, MappingNode):
            keys = [key for key, _, _ in self.entries(node, "a subscript")]
            if "slice" in keys:
                return self.slice(node)
            if "ellipsis" in keys:
                value = self.fields(node, "an ellipsis", ("ellipsis",))["ellipsis"]
                if not (isinstance(value, ScalarNode) and value.tag == _TAG + "bool"
                        and self.construct(value, _CONSTRUCTOR.construct_yaml_bool)):
                    raise self.error(value, "`ellipsis` must be `true`", expected="true")
                return ast.EllipsisExpr(self.span(node))
        return self.expr(node)

    def slice(self, node) -> ast.Slice:
        value = self.fields(node, "a slice", ("slice",))["slice"]
        parts = self.sequence(value, "`slice`")
        if len(parts) > 3:
            raise self.error(value, "a slice has at most three parts", expected="[start, stop, step]")
        start, stop, step = [None if _is_null(p) else self.expr(p) for p in parts] + [None] * (3 - len(parts))
        return ast.Slice(start, stop, step, self.span(node))

    def form_attr(self, node) -> ast.Attribute:
        fields = self.fields(node, "an attribute", ("attr", "name"))
        return ast.Attribute(self.expr(fields["attr"]), self.name(fields["name"], "`name` of an attribute"),
                             self.span(node))


def _is_null(node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null"


def _respan(obj, move) -> None:
    """Replace every span in an AST subtree by `move(span)`."""
    if isinstance(obj, (list, tuple)):
        for x in obj:
            _respan(x, move)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "span":
                setattr(obj, "span", move(value))
            else:
                _respan(value, move)


# ========================================================================================== dumping
class _FlowMap(dict):
    """A mapping written inline (`{a: 1}`): expressions and small records."""


class _FlowSeq(list):
    """A list written inline (`[a, b]`)."""


class _Quoted(str):
    """A string written double-quoted with escapes (string literals, paths, types): always lossless."""


class _Dumper(yaml.SafeDumper):
    """Safe dumper that indents lists under their key and writes expressions inline."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)

    def ignore_aliases(self, data):
        return True


_Dumper.add_representer(
    _FlowMap, lambda d, data: d.represent_mapping(_TAG + "map", list(data.items()), flow_style=True))
_Dumper.add_representer(_FlowSeq, lambda d, data: d.represent_sequence(_TAG + "seq", data, flow_style=True))
_Dumper.add_representer(_Quoted, lambda d, data: d.represent_scalar(_TAG + "str", str(data), style='"'))


def dump_yaml(module: ast.Module) -> str:
    """The YAML form of `module`: header comment lines, then the document."""
    header = "".join(f"# {row}".rstrip() + "\n" for row in module.header.splitlines()) if module.header else ""
    text = yaml.dump(_module_data(module), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120,
                     default_flow_style=False)
    return header + text


def _module_data(module: ast.Module) -> dict:
    kinds = [type(item) for item in module.items]
    runs = [kind for n, kind in enumerate(kinds) if n == 0 or kinds[n - 1] is not kind]
    if len(runs) != len(set(runs)):  # some kind is split: keep the order in one `items` list
        return {"items": [_item_data(item, tagged_import=True) for item in module.items]}
    group_of = {kind: key for key, kind in GROUP_KEYS.items()}
    data: dict = {}
    for item in module.items:
        data.setdefault(group_of[type(item)], []).append(_item_data(item, tagged_import=False))
    return data


def _item_data(item, tagged_import: bool):
    if isinstance(item, ast.ImportStmt):
        path = _Quoted(item.path)
        return {"import": path} if tagged_import else path
    data = {"model": item.name} if isinstance(item, ast.ModelDef) else {"block": item.name}
    if item.doc:
        data["doc"] = _Quoted(item.doc)
    if item.params:
        data["params"] = _named_data([(p.name, _param_data(p)) for p in item.params], dict)
    if isinstance(item, ast.BlockDef) and item.inputs:
        data["inputs"] = _named_data([(i.name, _type_data(i.type) if i.type else None) for i in item.inputs],
                                     _FlowMap)
    data["body"] = _body_data(item.body)
    return data


def _named_data(pairs: list[tuple[str, object]], mapping: type):
    """A mapping of the pairs, or a list of one-key mappings when a name repeats."""
    if len({name for name, _ in pairs}) == len(pairs):
        return mapping(pairs)
    return [_FlowMap([pair]) for pair in pairs]


def _param_data(p: ast.ParamDecl):
    if p.default is None:
        return p.type
    return _FlowMap(type=p.type, default=_expr_data(p.default))


def _type_data(t: ast.TensorTypeExpr) -> str:
    return _Quoted(format_tensor_type(t))


def _body_data(body: list) -> list:
    return [_stmt_data(s) for s in body]


def _stmt_data(s) -> dict:
    if isinstance(s, ast.Assign):
        return {", ".join(s.targets): _expr_data(s.value)}
    if isinstance(s, (ast.InputStmt, ast.TargetStmt)):
        key = "input" if isinstance(s, ast.InputStmt) else "target"
        return {key: _FlowMap({s.name: _type_data(s.type)})}
    if isinstance(s, (ast.LetStmt, ast.LossStmt, ast.MetricStmt)):
        key = {ast.LetStmt: "let", ast.LossStmt: "loss", ast.MetricStmt: "metric"}[type(s)]
        return {key: _FlowMap({s.name: _expr_data(s.value)})}
    if isinstance(s, ast.ParamStmt):
        data = {"param": _FlowMap({s.name: _type_data(s.type)})}
        if s.init is not None:
            data["init"] = _expr_data(s.init)
        return data
    if isinstance(s, ast.OutputStmt):
        return {"output": _FlowSeq(_output_data(i) for i in s.items)}
    if isinstance(s, ast.ReturnStmt):
        return {"return": _FlowSeq(_expr_data(v) for v in s.values)}
    if isinstance(s, ast.ForStmt):
        return {"for": s.var, "from": _expr_data(s.start), "to": _expr_data(s.stop), "body": _body_data(s.body)}
    if isinstance(s, ast.IfStmt):
        return _if_stmt_data(s)
    raise TypeError(f"not a statement: {s!r}")


def _output_data(item: ast.OutputItem):
    return item.name if item.value is None else _FlowMap({item.name: _expr_data(item.value)})


def _if_stmt_data(s: ast.IfStmt) -> dict:
    (cond, body), *elifs = s.branches
    data = {"if": _expr_data(cond), "then": _body_data(body)}
    if elifs:
        data["elif"] = [{"if": _expr_data(c), "then": _body_data(b)} for c, b in elifs]
    if s.orelse:
        data["else"] = _body_data(s.orelse)
    return data


def _expr_data(e):
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, (ast.Num, ast.Bool)):
        return e.value
    if isinstance(e, ast.Str):
        return _FlowMap(str=_Quoted(e.value))
    if isinstance(e, ast.ListExpr):
        return _FlowSeq(_expr_data(i) for i in e.items)
    if isinstance(e, ast.Call):
        return _call_data(e)
    if isinstance(e, ast.Pipe):
        return _FlowMap({"in": _expr_data(e.value), "then": _FlowSeq(_stage_data(s) for s in e.stages)})
    if isinstance(e, ast.BinOp):
        return _FlowMap({e.op: _FlowSeq([_expr_data(e.lhs), _expr_data(e.rhs)])})
    if isinstance(e, ast.UnaryOp):
        return _FlowMap({UNARY_NAMES[e.op]: _expr_data(e.operand)})
    if isinstance(e, ast.IfExpr):
        return _FlowMap({"if": _expr_data(e.cond), "then": _expr_data(e.then), "else": _expr_data(e.orelse)})
    if isinstance(e, ast.Index):
        return _FlowMap(index=_expr_data(e.value), at=_FlowSeq(_subscript_data(i) for i in e.items))
    if isinstance(e, ast.Attribute):
        return _FlowMap(attr=_expr_data(e.value), name=e.name)
    raise TypeError(f"cannot write {type(e).__name__} as a YAML expression: {e!r}")


def _call_data(call: ast.Call) -> dict:
    args = _FlowSeq(_expr_data(a) for a in call.args)
    kwargs = {k.name: _expr_data(k.value) for k in call.kwargs}
    reserved = HEAD_KEYS | {call.func}
    if call.func not in HEAD_KEYS and not any(name in reserved for name in kwargs):
        return _FlowMap({call.func: args, **kwargs})
    data = _FlowMap(call=call.func)
    if args:
        data["args"] = args
    if kwargs:
        data["kwargs"] = _FlowMap(kwargs)
    return data


def _stage_data(call: ast.Call):
    return call.func if not call.args and not call.kwargs else _call_data(call)


def _subscript_data(item):
    if isinstance(item, ast.EllipsisExpr):
        return _FlowMap(ellipsis=True)
    if isinstance(item, ast.Slice):
        parts = [None if p is None else _expr_data(p) for p in (item.start, item.stop, item.step)]
        while parts and parts[-1] is None:
            parts.pop()
        return _FlowMap(slice=_FlowSeq(parts))
    return _expr_data(item)
