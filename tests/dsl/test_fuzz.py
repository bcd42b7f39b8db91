"""No input, however malformed, makes the compiler fail with anything but a SpecError.

Random text, random bytes, every truncation of valid specs, token-level mutations of valid specs
(deleted, repeated and swapped tokens, numbers made huge, negative or zero, ops renamed), deeply nested
expressions, huge repeat counts and huge dimensions all go through `pipeline.build`; each must either
raise a SpecError (whose message formats) or build a graph. Whatever builds must also go through codegen
and give valid Python.
"""
from __future__ import annotations

import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.compiler.codegen.pytorch import generate
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.pipeline import build
from nnspec.dsl.parser import KEYWORDS
from nnspec.errors import SpecError

# Valid specs written here (not read from specs/) so that the fuzz inputs are fixed and cover the language:
# parameters, targets, losses, metrics, blocks with input patterns, for, if, let, scan, param, recursion.
MLP = '''# A small classifier
model Mlp(hidden: int = 32, classes: int = 10, p: float = 0.1) {
    input x: f32[B, 784]
    target y: i64[B]
    h = x |> linear(hidden) |> relu |> dropout(p)
    h = h |> layer_norm
    logits = h |> linear(classes, in_features=hidden)
    loss ce = cross_entropy(logits, y, label_smoothing=0.1)
    metric acc = mean(cast(argmax(logits, dim=1) == y, "f32"))
    output logits, probs = softmax(logits, dim=1)
}
'''

CNN = '''block ConvBn(c: int, stride: int = 1) (x: [N, C, H, W]) {
    h = x |> conv2d(c, kernel=3, stride=stride, padding=1, bias=false) |> batch_norm |> relu
    s = if stride != 1 or C != c { x |> conv2d(c, kernel=1, stride=stride) } else { x }
    return h + s
}
model Cnn(width: int = 8, depth: int = 2) {
    input x: f32[B, 3, 32, 32]
    h = x
    for i in 0..depth {
        h = h |> ConvBn(width * (i + 1), stride=2, name="stage" + str(i))
    }
    h = h |> max_pool2d(2) |> flatten
    let head = linear(10)
    output y = head(h)
}
'''

RNN = '''block Cell(hidden: int) (x: [N, I], h: [N, H]) {
    return concat(x, h, dim=1) |> linear(hidden) |> tanh
}
block Tower(n: int) (x: [N, D]) {
    y = if n == 0 { x } else { x |> linear(D) |> relu |> Tower(n - 1) }
    return y
}
model Rnn(hidden: int = 16) {
    input xs: f32[B, T, 8]
    h0 = zeros([B, hidden])
    let cell = Cell(hidden=hidden)
    ys, hT = scan(cell, xs, h0, axis=1)
    param scale: f32[1] = normal(std=0.5)
    z = hT |> Tower(2)
    target t: f32[B, 16]
    loss mse = mse_loss(z * scale, t)
    output out = z * scale, ys
}
'''

YAML = '''# The MLP in YAML
models:
  - model: Mlp
    params: {hidden: {type: int, default: 16}}
    body:
      - input: {x: "f32[B, 20]"}
      - target: {y: "i64[B]"}
      - h: {in: x, then: [{linear: [hidden]}, relu]}
      - logits: {in: h, then: [{linear: [3]}]}
      - loss: {ce: {cross_entropy: [logits, y]}}
      - output: [logits]
'''

VALID = {"mlp.nn": MLP, "cnn.nn": CNN, "rnn.nn": RNN}

# no example database (nothing written into the checkout); a failure prints its input
FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|\|>|\.\.\.?|\*\*|//|==|!=|<=|>=|[A-Za-z_][A-Za-z0-9_]*'
                   r'|\d+\.\d+(?:[eE][+-]?\d+)?|\d+|\s+|.', re.S)
ODD_NUMBERS = ["0", "-1", "-100000", "10**9", "99999999999999999999999999", "1e308", "0.0", "-0.5", "10**10**10",
               "2**64", "1.5", "3"]
OP_NAMES = sorted(REGISTRY)
PUNCT = ["(", ")", "[", "]", "{", "}", ",", ":", "=", "|>", "..", "...", "+", "-", "*", "/", "//", "@", "**",
         "==", "<", ".", "\n", '"', "'", "#", ";", "_", "\\", "\t", "\x00", "\u00e9", "\u2028", "\x0c"]


def check(text: str, path: str = "fuzz.nn") -> str | None:
    """Build `text`: a SpecError is fine (its message must format); success must give valid Python."""
    try:
        graph = build(path, text=text)
    except SpecError as e:
        assert re.fullmatch(r"E\d{4}", e.code), e.code
        message = e.format(getattr(e, "sources", None))
        assert message.startswith(f"error[{e.code}]: ")
        str(e)
        return None
    source = generate(graph)
    compile(source, "<generated>", "exec")
    return source


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


# ------------------------------------------------------------------------------------------- sanity
@pytest.mark.parametrize("name", sorted(VALID))
def test_the_fuzz_seeds_are_valid(name):
    assert check(VALID[name], name) is not None
    assert "".join(tokens(VALID[name])) == VALID[name]


def test_the_yaml_seed_is_valid():
    assert check(YAML, "mlp.yaml") is not None


# ------------------------------------------------------------------------------------------- random input
DSL_SOUP = st.lists(st.sampled_from(sorted(KEYWORDS) + OP_NAMES[:40] + PUNCT + ODD_NUMBERS + ["x", "B", "f32", " "]),
                    max_size=80).map(" ".join)


@settings(max_examples=150, **FUZZ)
@given(st.text(max_size=300))
def test_random_text(text):
    check(text)


@settings(max_examples=150, **FUZZ)
@given(DSL_SOUP)
def test_random_token_soup(text):
    check(text)


@settings(max_examples=100, **FUZZ)
@given(st.text(alphabet=string.printable, max_size=300))
def test_random_yaml_text(text):
    check(text, "fuzz.yaml")


@settings(max_examples=60, **FUZZ)
@given(st.binary(max_size=400), st.sampled_from(["fuzz.nn", "fuzz.yaml"]))
def test_random_bytes(data, name):
    check(data.decode("utf-8", errors="replace"), name)
    check(data.decode("latin-1"), name)
    with tempfile.TemporaryDirectory() as tmp:  # read from disk too: invalid UTF-8 is an error, not a crash
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            graph = build(str(path))
        except SpecError as e:
            e.format(getattr(e, "sources", None))
        else:
            compile(generate(graph), "<generated>", "exec")


# ------------------------------------------------------------------------------------------- truncations
@pytest.mark.parametrize("name", sorted(VALID) + ["mlp.yaml"])
def test_every_truncation(name):
    text = YAML if name.endswith(".yaml") else VALID[name]
    for n in range(len(text)):
        check(text[:n], name)


# ------------------------------------------------------------------------------------------- mutations
MUTATION = st.tuples(st.sampled_from(["delete", "duplicate", "swap", "number", "rename", "insert"]),
                     st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=10_000),
                     st.integers(min_value=0, max_value=10_000))


def mutate(text: str, mutations) -> str:
    toks = tokens(text)
    for kind, a, b, c in mutations:
        solid = [i for i, t in enumerate(toks) if not t.isspace()]
        if not solid:
            break
        i, j = solid[a % len(solid)], solid[b % len(solid)]
        tok = toks[i]
        if kind == "delete":
            toks[i] = ""
        elif kind == "duplicate":
            toks[i] = tok + " " + tok
        elif kind == "swap":
            toks[i], toks[j] = toks[j], toks[i]
        elif kind == "number":
            numbers = [k for k in solid if toks[k][:1].isdigit()] or solid
            toks[numbers[a % len(numbers)]] = ODD_NUMBERS[c % len(ODD_NUMBERS)]
        elif kind == "rename":
            names = [k for k in solid if re.fullmatch(r"[A-Za-z_]\w*", toks[k])] or solid
            k = names[a % len(names)]
            choices = OP_NAMES + sorted(KEYWORDS) + ["zzz", "_", "B", "self", "None", "class", toks[k][:-1] or "q",
                                                    toks[k] + toks[k][-1:]]
            toks[k] = choices[c % len(choices)]
        else:
            toks.insert(i, " " + PUNCT[c % len(PUNCT)] + " ")
    return "".join(toks)


@settings(max_examples=300, **FUZZ)
@given(st.sampled_from(sorted(VALID)), st.lists(MUTATION, min_size=1, max_size=4))
def test_token_mutations(name, mutations):
    check(mutate(VALID[name], mutations), name)


@settings(max_examples=80, **FUZZ)
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_yaml_token_mutations(mutations):
    check(mutate(YAML, mutations), "mlp.yaml")


@settings(max_examples=60, **FUZZ)
@given(st.sampled_from(sorted(VALID)), st.integers(min_value=0, max_value=10_000),
       st.sampled_from(OP_NAMES + ["max_pool", "conv", "Linear", "Tower", "Cell"]))
def test_every_op_in_place_of_another(name, which, op):
    # rename one call to any op of the registry: wrong arity, wrong attributes, wrong dtypes
    calls = [m for m in re.finditer(r"\b([a-z_][a-z0-9_]*)\(", VALID[name]) if m.group(1) in REGISTRY]
    m = calls[which % len(calls)]
    check(VALID[name][:m.start(1)] + op + VALID[name][m.end(1):], name)


ODD_VALUES = ["-1", "0", "1", "3", "100000000000000000000", '"abc"', '"same"', "1.5", "-2.5", "true", "[]",
              "[1, 2, 3]", "[[1]]", "[-1, 0]", "B", "[B, -1]", "x", "[x, x]", "inf", "-inf", "inf - inf"]
ODD_INPUTS = ["f32[B, 4, 8, 8]", "f32[B, 4]", "i64[B, 4]", "f32[]", "f32[B, 0, 8]", "f32[2, 3, 5]", "bool[B, 4, 8, 8]",
              "f64[B, T, 16]"]
USER_OPS = sorted(n for n, op in REGISTRY.items() if op.category not in ("graph", "backward"))


@settings(max_examples=300, **FUZZ)
@given(st.sampled_from(USER_OPS), st.sampled_from(ODD_INPUTS), st.integers(min_value=0, max_value=3),
       st.lists(st.tuples(st.integers(min_value=0, max_value=20), st.sampled_from(ODD_VALUES)), max_size=3),
       st.booleans())
def test_every_op_with_odd_arguments(name, shape, n_inputs, odd, fill_required):
    # any op, given any number of inputs of any shape and odd values for its attributes (required ones filled
    # with 2 or left out): a SpecError or a valid module, never a crash in a shape rule or a lowering
    op = REGISTRY[name]
    kwargs = {a.name: "2" for a in op.attrs if fill_required and repr(a.default) == "<required>"}
    for index, value in odd:
        if op.attrs:
            kwargs[op.attrs[index % len(op.attrs)].name] = value
    args = ", ".join([f"x{i}" for i in range(n_inputs)] + [f"{k}={v}" for k, v in kwargs.items()])
    inputs = "".join(f"    input x{i}: {shape}\n" for i in range(n_inputs))
    check(f"model M {{\n    input x: f32[B, 8]\n{inputs}    y = {name}({args})\n    output y\n}}\n")


ODD_CALLS = {
    "scan axis 1.5": "scan(cell, x3, zeros([B, 4]), axis=1.5)",
    "scan reverse 3": "scan(cell, x3, zeros([B, 4]), reverse=3)",
    "scan steps -1": "scan(cell, zeros([B, 4]), steps=-1)",
    "scan with a tensor cell": "scan(x, x3, zeros([B, 4]))",
    "scan without states": "scan(cell, x3)",
    "pool stride string": 'max_pool2d(x4, 2, stride="abc")',
    "pool padding too large": "max_pool2d(x4, 2, padding=2)",
    "reduction dim string": 'sum(x, dim="a")',
    "reduction repeated dim": "sum(x, dim=[1, 1])",
    "split empty sizes": "split(x, [], dim=1)",
    "conv empty padding": "conv2d(x4, 2, kernel=3, padding=[])",
    "conv zero groups": "conv2d(x4, 2, kernel=3, groups=0)",
    "transposed conv output padding": "conv_transpose2d(x4, 2, kernel=3, stride=1, output_padding=1)",
    "einsum unknown output letter": 'einsum(x, equation="ab->c")',
    "einsum two arrows": 'einsum(x, equation="ab->b->a")',
    "getitem called by name": "getitem(x, key=1)",
    "internal op": "saved(x)",
    "upsample huge factor": "upsample(x4, scale_factor=1e300)",
    "embedding padding_idx out of range": "embedding(cast(x, \"i64\"), 10, 4, padding_idx=10)",
    "chunk of a scalar": "chunk(sum(x), 2)",
    "squeeze of a scalar": "squeeze(sum(x), dim=0)",
    "concat of scalars": "concat(sum(x), sum(x), dim=0)",
    "cdist of vectors": "cdist(sum(x, dim=1), sum(x, dim=1))",
    "reshape 0 and -1": "reshape(x, [0, -1])",
}


@pytest.mark.parametrize("case", sorted(ODD_CALLS))
def test_odd_calls(case):
    cell = "block Cell() (x: [N, I], h: [N, H]) {\n    return concat(x, h, dim=1) |> linear(H) |> tanh\n}\n"
    check(cell + "model M {\n    input x: f32[B, 8]\n    input x3: f32[B, T, 8]\n    input x4: f32[B, 3, 8, 8]\n"
          "    let cell = Cell()\n" f"    y = {ODD_CALLS[case]}\n    output y\n}}\n")


# ------------------------------------------------------------------------------------------- extremes
def _model(expr: str, extra: str = "") -> str:
    return f"model M {{\n    input x: f32[B, 8]\n{extra}    y = {expr}\n    output y\n}}\n"


DEEP = {
    "5000 nested parentheses": _model("(" * 5000 + "x" + ")" * 5000),
    "100000-term sum": _model(" + ".join(["x"] * 100_000)),
    "5000 unary minus": _model("-" * 5000 + "x"),
    "3000 nots": _model("not " * 3000 + "true"),
    "3000 nested lists": _model("x", "    l = " + "[" * 3000 + "]" * 3000 + "\n"),
    "3000 nested calls": _model("relu(" * 3000 + "x" + ")" * 3000),
    "2000 nested if expressions": _model("if true { " * 2000 + "x" + " } else { x }" * 2000),
    "300 nested if statements": "model M {\n    input x: f32[B, 8]\n" + "if true {\n" * 300 + "y = x\n"
                                + "}\n" * 300 + "    output y\n}\n",
    "5000 unclosed braces": "model M {" + "{" * 5000,
    "3000 pipeline stages": _model("x" + " |> relu" * 3000),
    "300 chained powers": _model("x", "    n = " + "2 ** " * 300 + "2\n"),
    "deep block recursion": "block R(n: int) (x: [N, C]) {\n    y = if n == 0 { x } else { x |> R(n - 1) }\n"
                            "    return y\n}\n" + _model("x |> R(10000)"),
    "branching block recursion": "block T(n: int) (x: [N, C]) {\n    y = if n == 0 { x } else "
                                 "{ x |> T(n - 1) |> T(n - 1) }\n    return y\n}\n" + _model("x |> T(40)"),
}


@pytest.mark.parametrize("case", sorted(DEEP))
def test_deeply_nested_input(case):
    check(DEEP[case])


HUGE = {
    "a billion repeats": "model M {\n    input x: f32[B, 8]\n    h = x\n    for i in 0..10**9 {\n        h = h |> relu\n"
                         "    }\n    output h\n}\n",
    "nested repeats": "model M {\n    input x: f32[B, 8]\n    n = 0\n    for i in 0..10000 {\n"
                      "        for j in 0..10000 { n = n + 1 }\n    }\n    output x\n}\n",
    "negative repeats": "model M {\n    input x: f32[B, 8]\n    h = x\n    for i in 0..-10**9 { h = h |> relu }\n"
                        "    output h\n}\n",
    "huge dimension": "model M {\n    input x: f32[B, 10**30]\n    y = x |> linear(10**30)\n    output y\n}\n",
    "huge layer": _model("x |> linear(99999999999999999999999999999)"),
    "huge embedding": "model M {\n    input x: i64[B, 8]\n    y = x |> embedding(10**18, 10**18)\n    output y\n}\n",
    "huge parameter": _model("x", "    param w: f32[10**20, 10**20] = zeros\n"),
    "huge list": _model("x", "    l = [1] * 10**9\n"),
    "huge range": _model("x", "    l = range(10**12)\n"),
    "doubling list": _model("x", "    l = [1]\n    for i in 0..64 { l = l + l }\n"),
    "squaring number": _model("x", "    n = 3\n    for i in 0..64 { n = n * n }\n"),
    "squaring dimension": _model("x", "    n = B + 1\n    for i in 0..64 { n = n * n }\n"),
    "power tower": _model("x", "    n = 10 ** 10 ** 10 ** 10\n"),
    "huge literal": _model("x * 1" + "0" * 5000),
    "huge float": _model("x * 1e999999"),
    "zero sizes": "model M {\n    input x: f32[0, 0]\n    y = x |> linear(1)\n    output y\n}\n",
    "negative size": _model("x |> linear(-5)"),
    "negative dimension": "model M {\n    input x: f32[B, -8]\n    output x\n}\n",
    "zero stride": "model M {\n    input x: f32[B, 3, 8, 8]\n    y = x |> max_pool2d(2, stride=0)\n    output y\n}\n",
    "huge slice": _model("x[:, 10**30:-10**30:10**30]"),
    "huge index": _model("x[:, 10**30]"),
    "division by zero": _model("x |> linear(8 // 0)"),
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_huge_values(case):
    check(HUGE[case])


def test_a_huge_file_is_refused_before_parsing():
    with pytest.raises(SpecError) as err:
        build("big.nn", text="#" * 3_000_000)
    assert err.value.code == "E0104"


def test_special_files_are_refused(tmp_path):
    for ref in ("/dev/zero", str(tmp_path), "a\x00b.nn", "x" * 5000 + ".nn"):
        with pytest.raises(SpecError):
            build(ref)
    (tmp_path / "imp.nn").write_text('import "/dev/zero"\n' + _model("x"))
    with pytest.raises(SpecError):
        build(str(tmp_path / "imp.nn"))
