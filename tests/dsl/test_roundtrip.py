"""Round-trip tests for the two spec front ends and the printer.

For hand-written snippets covering every AST node, for every spec file under `specs/` and for random
ASTs (hypothesis): text -> AST -> text -> AST, AST -> YAML -> AST and text -> YAML -> text all give the
same AST. Also checks the YAML front end's errors (E0110 syntax, E0111 structure, aliases) and spans.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nnspec.dsl import ast
from nnspec.dsl.parser import KEYWORDS, parse_text
from nnspec.dsl.printer import format_expr, print_module
from nnspec.dsl.yaml_front import dump_yaml, load_yaml
from nnspec.errors import SpecError

SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"

SNIPPETS = {
    "mnist": """
        # MNIST classifier
        import "std/blocks.nn"
        model MnistCNN(classes: int = 10) {
            input x: f32[B, 1, 28, 28]
            target y: i64[B]
            h = x |> conv2d(32, kernel=3) |> relu |> max_pool2d(2)
            logits = h |> flatten |> linear(classes)
            loss ce = cross_entropy(logits, y)
            metric acc = accuracy(logits, y)
            output logits
        }
    """,
    "block_with_params_and_inputs": """
        block Residual(c: int, act: str = "relu", rate: float = 0.1, flag: bool = true, dims: list = [1, 2],
                       anything: any)(x: [N, C, H, W], skip, y: f16[N, C * 2]) {
            return x + skip, y
        }
        block NoParams(x) { return x }
        block Empty() {}
        model Bare {}
        model EmptyParams() { output x }
    """,
    "statements": """
        model M(n: int = 3) {
            input x: f32[B, T, D]
            target t: [B]
            let enc = std.Encoder(dim=64, depth=n)
            param w: f32[1] = normal(std=1.0)
            param b: [D]
            a, b2, c = split(x, 3, axis=-1)
            h0 = zeros(B, 64)
            hs = scan(cell, x, h0, axis=1)
            for i in 0..n {
                h0 = enc(h0)
            }
            for j in n - 1..n * 2 {}
            if n > 2 {
                z = 1
            } elif n == 2 {
                z = 2
            } elif n != 1 {
            } else {
                z = 3
            }
            if n >= 1 and n <= 9 { q = 1 }
            output a, s = b2 |> softmax(dim=-1), c
        }
    """,
    "expressions": """
        model E {
            p = -x ** 2
            q = (-3) ** 2 + 2 ** -3 - -1.5 * a ** b ** c
            r = a ** b |> f
            s = (a ** b) |> f
            t = (a |> f) |> g
            u = -a |> f(1) |> g.h(k=2)
            v = (-a) |> f
            w = not a == b and c or not (d or e)
            x2 = (a + b) * (c - d) / e // f % g @ h
            y2 = a - (b - c) + (d + e)
            z2 = if c { 1 } elif d { 2 } else { if e { 3 } else { 4 } }
            i2 = (if c { a } else { b }) + 1
            j2 = y[1:2, ::2, ..., :, a:, :b, 1:2:3, x.shape[0]]
            k2 = f(x)[0].shape
            l2 = [1, 2.5, 1e-05, 1e+16, 1e999, -1e999, 1_000, true, false, "s\\"q\\n\\t\\\\", []]
            m2 = (1).real + (-1).imag + 1.5.x
            n2 = "unicode é ☃ \\u0001"
            o2 = (x |> f)[0] + (a + b).shape + [a, b][0]
            p2 = +a + +3 - -(a + b)
            q2 = a < b
            r2 = (a < b) == (c > d)
        }
    """,
    "names_like_keywords_and_yaml_keys": """
        model K {
            model = in + input * loss
            str = x |> str |> index(1) |> call(k=2) |> neg
            idx = a + in(x) + str(y) + slice(1, 2) + f(index=1, attr=2) + g(g=1) + attr.name
            and2 = a + and(b) + or(c) + not(d)
        }
    """,
}


def _roundtrip(module: ast.Module) -> None:
    text = print_module(module)
    assert parse_text(text) == module, text
    assert print_module(parse_text(text)) == text
    yaml_text = dump_yaml(module)
    from_yaml = load_yaml(yaml_text, "spec.yaml")
    assert from_yaml == module, yaml_text
    assert print_module(from_yaml) == text
    assert load_yaml(dump_yaml(from_yaml)) == module


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_snippet_roundtrips(name):
    _roundtrip(parse_text(SNIPPETS[name], f"{name}.nn"))


def test_snippets_cover_every_node_type():
    seen: set[type] = set()

    def walk(obj):
        if isinstance(obj, (list, tuple)):
            for x in obj:
                walk(x)
        elif hasattr(obj, "__dataclass_fields__"):
            seen.add(type(obj))
            for field in obj.__dataclass_fields__:
                walk(getattr(obj, field))

    for text in SNIPPETS.values():
        walk(parse_text(text).items)
    node_types = {obj for obj in vars(ast).values()
                  if isinstance(obj, type) and hasattr(obj, "__dataclass_fields__") and obj is not ast.Module}
    assert node_types - seen == set()


@pytest.mark.parametrize("path", sorted(SPECS_DIR.rglob("*.nn")), ids=lambda p: str(p.relative_to(SPECS_DIR)))
def test_spec_file_roundtrips(path):
    _roundtrip(parse_text(path.read_text(), str(path)))


@pytest.mark.parametrize("path", sorted(SPECS_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(SPECS_DIR)))
def test_yaml_spec_file_roundtrips(path):
    _roundtrip(load_yaml(path.read_text(), str(path)))


# ------------------------------------------------------------------------------------ the printer
def test_printer_writes_canonical_text():
    module = parse_text('import "a.nn"\nmodel M(k: int=3){input x:f32[B,3]\nh=x|>relu|>linear(k,bias=false)\n'
                        'output h}')
    assert print_module(module) == (
        'import "a.nn"\n\n'
        "model M(k: int = 3) {\n"
        "    input x: f32[B, 3]\n"
        "    h = x |> relu |> linear(k, bias=false)\n"
        "    output h\n"
        "}\n")


@pytest.mark.parametrize("source", [
    "a + b * c", "(a + b) * c", "a - (b - c)", "-a ** 2", "(-a) ** 2", "a ** b ** c", "(a ** b) ** c",
    "a ** b |> f", "(a ** b) |> f", "-x |> f", "(-x) |> f", "not a == b", "(not a) == b", "a |> f + b |> g",
    "(if c { a } else { b }) * 2", "x[1:, ..., ::2]", "1e-05", "-3", "f(x).shape",
])
def test_printer_uses_minimal_parentheses(source):
    module = parse_text(f"model M {{ y = {source} }}")
    assert format_expr(module.items[0].body[0].value) == source


def test_printer_keeps_the_header_comment():
    module = parse_text("# first line\n# second\nmodel M {}\n")
    text = print_module(module)
    assert text.startswith("# first line\n# second\n\n")
    assert parse_text(text).header == "first line\nsecond"


# ------------------------------------------------------------------------------------ YAML schema
MNIST_YAML = """\
# MNIST classifier
imports: ["std/blocks.nn"]
models:
  - model: MnistCNN
    params: {classes: {type: int, default: 10}}
    body:
      - input: {x: "f32[B, 1, 28, 28]"}
      - target: {y: {dtype: i64, shape: [B]}}
      - h: {in: x, then: [{conv2d: [32], kernel: 3}, relu, {max_pool2d: 2}]}
      - logits: {in: h, then: [flatten, {linear: [classes]}]}
      - loss: {ce: {cross_entropy: [logits, y]}}
      - output: [logits]
blocks:
  - block: Residual
    params: {c: int}
    inputs: {x: [N, C, H, W], skip: null}
    body:
      - return: [{"+": [x, skip]}]
"""

MNIST_TEXT = """
# MNIST classifier
import "std/blocks.nn"
model MnistCNN(classes: int = 10) {
    input x: f32[B, 1, 28, 28]
    target y: i64[B]
    h = x |> conv2d(32, kernel=3) |> relu |> max_pool2d(2)
    logits = h |> flatten |> linear(classes)
    loss ce = cross_entropy(logits, y)
    output logits
}
block Residual(c: int)(x: [N, C, H, W], skip) {
    return x + skip
}
"""


def test_hand_written_yaml_matches_text():
    from_yaml = load_yaml(MNIST_YAML, "mnist.yaml")
    assert from_yaml == parse_text(MNIST_TEXT)
    assert from_yaml.header == "MNIST classifier"


def test_yaml_spans_point_at_yaml_lines():
    module = load_yaml(MNIST_YAML, "mnist.yaml")
    model = module.items[1]
    assert model.span.file == "mnist.yaml"
    assert (model.span.line, model.span.col) == (4, 5)
    pipe_stmt = model.body[2]
    assert (pipe_stmt.span.line, pipe_stmt.span.col) == (9, 9)
    conv = pipe_stmt.value.stages[0]
    assert conv.span.line == 9 and conv.kwargs[0].span.line == 9
    dims = model.body[0].type.dims
    line = MNIST_YAML.splitlines()[6]
    assert dims[0].span.line == 7 and line[dims[0].span.col - 1] == "B"
    assert line[dims[3].span.col - 1: dims[3].span.end_col - 1] == "28"


def test_interleaved_items_keep_their_order():
    module = parse_text('import "a.nn"\nmodel M {}\nimport "b.nn"\nblock B(x) { return x }\nmodel N {}\n')
    text = dump_yaml(module)
    assert text.startswith("items:")
    assert load_yaml(text) == module


def test_grouped_form_follows_key_order():
    module = load_yaml("blocks: [{block: B, body: []}]\nmodels: [{model: M, body: []}]\n")
    assert [type(i) for i in module.items] == [ast.BlockDef, ast.ModelDef]


def test_general_call_form_and_negated_literal():
    module = load_yaml("models:\n  - model: M\n    body:\n"
                       "      - y: {call: str, args: [x], kwargs: {index: 1}}\n"
                       "      - z: {neg: 3}\n")
    y, z = module.items[0].body
    assert y.value == ast.Call("str", [ast.Name("x")], [ast.Keyword("index", ast.Num(1))])
    assert z.value == ast.Num(-3)


def test_repeated_parameter_and_input_names_survive():
    module = parse_text("block B(k: int, k: float = 1.0)(x, x: [N]) { return x }")
    text = dump_yaml(module)
    assert "- {k: int}" in text
    assert load_yaml(text) == module


def test_empty_yaml_is_an_empty_module():
    assert load_yaml("") == ast.Module([])
    assert load_yaml(dump_yaml(ast.Module([]))) == ast.Module([])


# ------------------------------------------------------------------------------------ YAML errors
def _yaml_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_yaml(text, "bad.yaml")
    return info.value


def _body(*lines: str) -> str:
    return "models:\n  - model: M\n    body:\n" + "".join(f"      {line}\n" for line in lines)


@pytest.mark.parametrize("text, line", [
    ("models:\n  - model: M\n    body: [a, b\n", 4),
    ("models:\n  - model: M\n\tbody: []\n", 3),
    ("models: [\n  {model: M,\n   body: []}}\n", 3),
    ("a: 1\n---\nb: 2\n", 2),
    ("models: []\x00\n", 1),
])
def test_malformed_yaml_is_e0110_at_its_line(text, line):
    err = _yaml_error(text)
    assert err.code == "E0110"
    assert err.span.file == "bad.yaml" and err.span.line == line


@pytest.mark.parametrize("text, line, words", [
    ("- 1\n", 1, "document must be a mapping"),
    ("modles: []\n", 1, "unknown top-level key `modles`"),
    ("items: []\nmodels: []\n", 1, "either `items`"),
    ("models:\n  - block: B\n    body: []\n", 2, "must name what it defines"),
    ("models:\n  - model: M\n    body: {x: 1}\n", 3, "must be a list"),
    ("models:\n  - model: M\n    body: []\n    bdy: []\n", 4, "unknown key `bdy`"),
    ("models:\n  - model: M\n", 2, "no `body` key"),
    ("models:\n  - model: in\n    body: []\n", 2, "keyword"),
    (_body("- x: 'two words'"), 4, "expected an expression"),
    (_body("- x: {}"), 4, "empty mapping"),
    (_body("- x: {str: a, call: f}"), 4, "more than one form key"),
    (_body("- x: {slice: [1]}"), 4, "only in the `at` list"),
    (_body("- x: {'+': [a]}"), 4, "exactly two operands"),
    (_body("- x: {in: a, then: []}"), 4, "must not be empty"),
    (_body("- x: {in: a, then: [{neg: a}]}"), 4, "must be a call"),
    (_body("- x: {index: a, at: [{ellipsis: false}]}"), 4, "must be `true`"),
    (_body("- x: {f: [a], f: 1}"), 4, "duplicate key"),
    (_body("- x: !!int abc"), 4, "not a valid int"),
    (_body("- x: !!python/object:os.system ls"), 4, "expected an expression"),
    (_body("- input: {x: 'f32[B] } model X {'}"), 4, "not a tensor type"),
    (_body("- input: {x: 1, y: 2}"), 4, "exactly one key"),
    (_body("- output: []"), 4, "must not be empty"),
    (_body("- let: {x: 1}", "- loss: x", "  metric: y"), 5, "more than one keyword"),
])
def test_wrong_structure_is_e0111(text, line, words):
    err = _yaml_error(text)
    assert err.code == "E0111", err
    assert err.span.line == line, err
    assert words in err.message, err


def test_unknown_dtype_and_param_type_keep_the_parser_codes():
    assert _yaml_error(_body("- input: {x: 'f33[B]'}")).code == "E0403"
    assert _yaml_error(_body("- input: {x: {dtype: f33, shape: [B]}}")).code == "E0403"
    assert _yaml_error("models:\n  - model: M\n    params: {k: integer}\n    body: []\n").code == "E0402"


def test_syntax_error_inside_a_compact_type_points_into_the_string():
    err = _yaml_error(_body("- input: {x: 'f32[B,,]'}"))
    assert err.code == "E0102"
    assert (err.span.line, err.span.col) == (4, 27)


def test_aliases_are_rejected():
    err = _yaml_error("models:\n  - &m {model: M, body: []}\n  - *m\n")
    assert err.code == "E0111" and "alias" in err.message and err.span.line == 3


def test_alias_bomb_is_rejected_quickly():
    rows = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    rows += [f"{chr(98 + n)}: &{chr(98 + n)} [*{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}]"
             for n in range(8)]
    assert _yaml_error("\n".join(rows) + "\n").code == "E0111"


def test_deep_nesting_and_huge_input_are_spec_errors():
    assert _yaml_error("models: " + "[" * 600 + "]" * 600 + "\n").code == "E0106"
    assert _yaml_error("#" * 2_000_001).code == "E0104"


# ------------------------------------------------------------------------------------ random ASTs
YAML_LOOKALIKES = ["on", "off", "yes", "no", "null", "y", "n", "inf", "nan", "e5", "_", "True"]
NAMES = st.sampled_from(["x", "h", "B", "conv", "w_1"] + YAML_LOOKALIKES) | st.from_regex(
    r"[A-Za-z_][A-Za-z0-9_]{0,4}", fullmatch=True).filter(lambda s: s not in KEYWORDS)
NAMES_OR_KEYWORDS = NAMES | st.sampled_from(sorted(KEYWORDS))
TEXT = st.text(max_size=6)
BINARY_OPS = ["or", "and", "+", "-", "*", "/", "//", "%", "@", "**", "==", "!=", "<", "<=", ">", ">="]


def _expressions(names, max_leaves: int):
    """Random expressions of the shapes the parser produces (no `-` applied to a number literal)."""
    dotted = st.lists(names, min_size=1, max_size=2).map(".".join)
    leaves = st.one_of(
        st.builds(ast.Name, names),
        st.builds(ast.Num, st.integers(min_value=-10**6, max_value=10**20)),
        st.builds(ast.Num, st.floats(allow_nan=False)),
        st.builds(ast.Str, TEXT),
        st.builds(ast.Bool, st.booleans()),
    )

    def call(expr):
        kwargs = st.dictionaries(names, expr, max_size=2).map(lambda d: [ast.Keyword(k, v) for k, v in d.items()])
        return st.builds(ast.Call, dotted, st.lists(expr, max_size=2), kwargs)

    def subscript(expr):
        optional = st.none() | expr
        return st.one_of(expr, st.builds(ast.Slice, optional, optional, optional), st.builds(ast.EllipsisExpr))

    def compound(expr):
        unary = st.builds(ast.UnaryOp, st.sampled_from(["-", "+", "not"]), expr).filter(
            lambda u: not (u.op == "-" and isinstance(u.operand, ast.Num)))  # the parser folds -3 to a literal
        return st.one_of(
            st.builds(ast.ListExpr, st.lists(expr, max_size=3)),
            call(expr),
            st.builds(ast.Pipe, expr, st.lists(call(expr), min_size=1, max_size=2)),
            st.builds(ast.BinOp, st.sampled_from(BINARY_OPS), expr, expr),
            unary,
            st.builds(ast.IfExpr, expr, expr, expr),
            st.builds(ast.Index, expr, st.lists(subscript(expr), min_size=1, max_size=3)),
            st.builds(ast.Attribute, expr, names),
        )

    return st.recursive(leaves, compound, max_leaves=max_leaves)


EXPRS = _expressions(NAMES, max_leaves=12)
SMALL_EXPRS = _expressions(NAMES, max_leaves=3)  # inside random modules
TYPES = st.builds(ast.TensorTypeExpr, st.none() | st.sampled_from(ast.DTYPES), st.lists(SMALL_EXPRS, max_size=3))


def _simple_statements():
    return st.one_of(
        st.builds(ast.InputStmt, NAMES, TYPES),
        st.builds(ast.TargetStmt, NAMES, TYPES),
        st.builds(ast.Assign, st.lists(NAMES, min_size=1, max_size=3), SMALL_EXPRS),
        st.builds(ast.LetStmt, NAMES, SMALL_EXPRS),
        st.builds(ast.ParamStmt, NAMES, TYPES, st.none() | SMALL_EXPRS),
        st.builds(ast.LossStmt, NAMES, SMALL_EXPRS),
        st.builds(ast.MetricStmt, NAMES, SMALL_EXPRS),
        st.builds(ast.OutputStmt, st.lists(st.builds(ast.OutputItem, NAMES, st.none() | SMALL_EXPRS), min_size=1,
                                           max_size=3)),
        st.builds(ast.ReturnStmt, st.lists(SMALL_EXPRS, min_size=1, max_size=3)),
    )


def _nested_statements(stmt):
    body = st.lists(stmt, max_size=3)
    return st.one_of(
        st.builds(ast.ForStmt, NAMES, SMALL_EXPRS, SMALL_EXPRS, body),
        st.builds(ast.IfStmt, st.lists(st.tuples(SMALL_EXPRS, body), min_size=1, max_size=3), body),
    )


STATEMENTS = st.recursive(_simple_statements(), _nested_statements, max_leaves=4)
BODIES = st.lists(STATEMENTS, max_size=3)
DEF_NAMES = NAMES.filter(lambda s: s not in KEYWORDS)
PARAMS = st.lists(st.builds(ast.ParamDecl, NAMES, st.sampled_from(ast.PARAM_TYPES), st.none() | SMALL_EXPRS),
                  max_size=3)
ITEMS = st.one_of(
    st.builds(ast.ImportStmt, TEXT),
    st.builds(ast.ModelDef, DEF_NAMES, PARAMS, BODIES),
    st.builds(ast.BlockDef, DEF_NAMES, PARAMS, st.lists(st.builds(ast.BlockInput, NAMES, st.none() | TYPES),
                                                         max_size=3), BODIES),
)
MODULES = st.builds(ast.Module, st.lists(ITEMS, max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(MODULES)
def test_random_asts_roundtrip(module):
    _roundtrip(module)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EXPRS)
def test_random_expressions_roundtrip(expr):
    module = ast.Module([ast.ModelDef("M", [], [ast.Assign(["y"], expr)])])
    _roundtrip(module)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_expressions(NAMES_OR_KEYWORDS, max_leaves=8), NAMES_OR_KEYWORDS)
def test_parser_output_with_keyword_names_roundtrips(expr, target):
    """Keywords lex as names where the grammar expects no keyword (`model = in + 1`): such ASTs print back."""
    candidate = ast.Module([ast.ModelDef("M", [], [ast.Assign([target], expr), ast.ReturnStmt([expr])])])
    try:
        parsed = parse_text(print_module(candidate))
    except SpecError:
        assume(False)
    _roundtrip(parsed)
