"""The command line, run as a user runs it: `python -m nnspec ...` in a subprocess.

A bad spec exits with status 1 and a compiler-style message on stderr (never a Python traceback);
`compile` writes nothing for a bad spec and writes its output atomically for a good one; `check`,
`summary`, `compile` and `convert` run with torch made unimportable; and no spec can smuggle code into
the generated module.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnspec import cli
from nnspec.compiler.codegen.pytorch import generate
from nnspec.compiler.pipeline import build
from nnspec.errors import SpecError

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
# A tiny classifier
model Tiny(hidden: int = 8) {
    input x: f32[B, 4]
    target y: i64[B]
    logits = x |> linear(hidden) |> relu |> linear(3)
    loss ce = cross_entropy(logits, y)
    output logits
}
"""

BAD = """\
model Tiny {
    input x: f32[B, 4]
    logits = x |> linear(8) |> rellu
    output logits
}
"""

# runs the command line like `python -m nnspec`, with `import torch` failing
NO_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = 'nnspec'; "
            "runpy.run_module('nnspec', run_name='__main__', alter_sys=True)")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Environment in which `python -m nnspec` imports this checkout, from any folder.

    An installed nnspec (pip install -e .) is used as it is when it is this checkout; otherwise a temporary
    folder holding a link `nnspec -> repository root` goes on PYTHONPATH (the checkout's folder need not be
    named nnspec).
    """
    e = dict(os.environ)
    e.pop("NNSPEC_DEBUG", None)
    e["PYTHONIOENCODING"] = "utf-8"
    probe = subprocess.run([sys.executable, "-c", "import nnspec, sys; sys.stdout.write(nnspec.__file__)"],
                           cwd=tmp_path_factory.mktemp("probe"), env=e, capture_output=True, text=True)
    if probe.returncode == 0 and Path(probe.stdout).resolve() == (REPO / "__init__.py").resolve():
        return e
    link_dir = tmp_path_factory.mktemp("pkg")
    (link_dir / "nnspec").symlink_to(REPO, target_is_directory=True)
    e["PYTHONPATH"] = os.pathsep.join([str(link_dir)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return e


def nnspec(env, cwd, *args, torch_blocked=True) -> subprocess.CompletedProcess:
    head = [sys.executable, "-c", NO_TORCH] if torch_blocked else [sys.executable, "-m", "nnspec"]
    return subprocess.run(head + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def assert_spec_error(result: subprocess.CompletedProcess, code: str | None = None) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "error[E" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    if code:
        assert f"error[{code}]" in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------- errors
def test_check_of_a_good_spec(env, tmp_path):
    (tmp_path / "tiny.nn").write_text(GOOD)
    r = nnspec(env, tmp_path, "check", "tiny.nn")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: Tiny"), r.stdout


def test_check_of_a_bad_spec(env, tmp_path):
    (tmp_path / "tiny.nn").write_text(BAD)
    r = nnspec(env, tmp_path, "check", "tiny.nn")
    assert_spec_error(r, "E0204")
    assert "--> tiny.nn:3:32" in r.stderr
    assert "did you mean `relu`?" in r.stderr
    assert r.stdout == ""


def test_the_python_m_entry_point(env, tmp_path):
    # the plain `python -m nnspec`, torch importable
    (tmp_path / "tiny.nn").write_text(BAD)
    assert_spec_error(nnspec(env, tmp_path, "check", "tiny.nn", torch_blocked=False), "E0204")


BAD_INPUTS = {
    "binary.nn": bytes(range(256)) * 4,
    "nul.nn": b"model M {\x00}",
    "latin1.nn": "# caf\u00e9\nmodel M {}\n".encode("latin-1"),
    "empty.nn": b"",
    "truncated.nn": GOOD[:57].encode(),
    "nested.nn": ("model M {\n input x: f32[B, 4]\n y = " + "(" * 5000 + "x" + ")" * 4999 + "\n output y\n}\n").encode(),
    "long_sum.nn": ("model M {\n input x: f32[B, 4]\n y = " + " + ".join(["x"] * 20000) + "\n output y\n}\n").encode(),
    "repeat.nn": b"model M {\n input x: f32[B, 4]\n h = x\n for i in 0..10**9 { h = h |> relu }\n output h\n}\n",
    "garbage.yaml": b"models: [{model: M, body: {{{",
    "not_a_spec.yaml": b"- 1\n- 2\n",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_gives_a_message_not_a_traceback(env, tmp_path, name):
    (tmp_path / name).write_bytes(BAD_INPUTS[name])
    assert_spec_error(nnspec(env, tmp_path, "check", name))


@pytest.mark.parametrize("args", [["missing.nn"], ["."], ["/dev/zero"], ["tiny.nn", "-p", "nope=1"],
                                  ["tiny.nn", "--model", "Nope"], ["tiny.nn", "-p", "hidden=-3"],
                                  ["no_such_builtin_spec"]])
def test_bad_arguments_give_a_message_not_a_traceback(env, tmp_path, args):
    (tmp_path / "tiny.nn").write_text(GOOD)
    assert_spec_error(nnspec(env, tmp_path, "check", *args))


# ------------------------------------------------------------------------------------------- compile
def test_compile_of_a_bad_spec_writes_nothing(env, tmp_path):
    (tmp_path / "tiny.nn").write_text(BAD)
    r = nnspec(env, tmp_path, "compile", "tiny.nn", "-o", "out")
    assert_spec_error(r, "E0204")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failed_compile_keeps_the_previous_output(env, tmp_path):
    spec = tmp_path / "tiny.nn"
    spec.write_text(GOOD)
    r = nnspec(env, tmp_path, "compile", "tiny.nn", "-o", "out")
    assert r.returncode == 0, r.stderr
    target = tmp_path / "out" / "tiny.py"
    before = target.read_bytes()
    spec.write_text(BAD)
    assert_spec_error(nnspec(env, tmp_path, "compile", "tiny.nn", "-o", "out"))
    assert target.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tiny.py"]


def test_compile_of_a_good_spec_writes_a_complete_module(env, tmp_path):
    (tmp_path / "tiny.nn").write_text(GOOD)
    r = nnspec(env, tmp_path, "compile", "tiny.nn", "-o", "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote out/tiny.py"), r.stdout
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["tiny.py"], files  # no temporary file left behind
    source = (tmp_path / "out" / "tiny.py").read_text()
    compile(source, "tiny.py", "exec")
    assert "class Tiny(nn.Module):" in source
    r = nnspec(env, tmp_path, "compile", "tiny.nn", "--stdout")
    assert r.returncode == 0 and r.stdout == source


def test_write_atomic_replaces_the_file_in_one_step(tmp_path):
    target = tmp_path / "m.py"
    target.write_text("old contents\n")
    with target.open() as reader:  # a reader of the old file never sees a half-written new one
        cli.write_atomic(target, "new contents\n" * 1000)
        assert reader.read() == "old contents\n"
    assert target.read_text() == "new contents\n" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]


def test_write_atomic_leaves_the_old_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "m.py"
    target.write_text("old contents\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cli.os, "replace", broken_replace)
    with pytest.raises(OSError):
        cli.write_atomic(target, "new contents\n")
    assert target.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]


# ------------------------------------------------------------------------------------------- no torch
@pytest.mark.parametrize("command", [["check", "tiny.nn"], ["summary", "tiny.nn", "--batch", "4"],
                                     ["compile", "tiny.nn", "-o", "out"], ["compile", "tiny.nn", "--stdout"],
                                     ["convert", "tiny.nn"], ["check", "bad.nn"], ["compile", "bad.nn", "-o", "out"]])
def test_commands_never_import_torch(env, tmp_path, command):
    (tmp_path / "tiny.nn").write_text(GOOD)
    (tmp_path / "bad.nn").write_text(BAD)
    r = nnspec(env, tmp_path, *command, torch_blocked=True)
    assert "import of torch halted" not in r.stdout + r.stderr, r.stderr  # what an import of torch would print
    if command[1] == "bad.nn":
        assert_spec_error(r, "E0204")
    else:
        assert r.returncode == 0, r.stderr


def test_the_torch_block_works(env, tmp_path):
    # the same harness does stop `import torch`, so the test above means something
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None\nimport torch"], cwd=tmp_path,
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "import of torch halted" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------- code injection
def payload(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


def test_the_injection_check_catches_a_payload(tmp_path):
    # the checker below does refuse code that runs a payload, so its passing means something
    for bad in ("import os\nclass M: pass\n", f"class M:\n    x = {payload(tmp_path / 'p')}\n",
                "class M:\n    def f(self):\n        os.system('x')\n"):
        with pytest.raises(AssertionError):
            assert_only_a_module(bad)


def injection_specs(marker: Path) -> dict[str, str]:
    p = payload(marker)
    body = "    input x: f32[B, 4]\n    y = x |> linear(2)\n    output y\n}\n"
    return {
        "header closes the docstring": f'# title """\n# {p}\n# """\nmodel M {{\n{body}',
        "header with a newline escape": f'# title \\n{p}\nmodel M {{\n{body}',
        "header with a backslash at the end": f'# title \\\nmodel M {{\n{body}',
        "header with carriage returns": f'# title\r{p}\r\nmodel M {{\n{body}',
        "header with a line separator": f'# title\u2028{p}\nmodel M {{\n{body}',
        "string parameter default": f'model M(act: str = "\\"\\"\\"\\n{p}\\n#") {{\n{body}',
        "string parameter with quotes": f"model M(act: str = \"'); {p}; ('\") {{\n{body}",
        "layer name with a newline": f'model M {{\n    input x: f32[B, 4]\n    y = x |> linear(2, name="a\\n{p}")\n'
                                     '    output y\n}\n',
        "layer name with quotes": f'model M {{\n    input x: f32[B, 4]\n    y = x |> linear(2, name="\\")\\n{p}#")\n'
                                  '    output y\n}\n',
        "padding mode with code": f'model M {{\n    input x: f32[B, 3, 8, 8]\n    y = x |> conv2d(2, kernel=3, '
                                  f'padding_mode="zeros\\")\\n{p}#")\n    output y\n}}\n',
        "einsum equation with code": f'model M {{\n    input x: f32[B, 4]\n    y = einsum(x, equation="bi->b\\")\\n{p}#")\n'
                                     '    output y\n}\n',
        "cast dtype with code": f'model M {{\n    input x: f32[B, 4]\n    y = cast(x, "f32\\n{p}")\n    output y\n}}\n',
        "keyword as an input name": 'model M {\n    input import: f32[B, 4]\n    output import\n}\n',
        "reserved input name": 'model M {\n    input self: f32[B, 4]\n    output self\n}\n',
        "reserved symbol": 'model M {\n    input x: f32[torch, 4]\n    y = zeros([torch, 2])\n    output y\n}\n',
        "keyword parameter": f'model M(lambda: int = 1) {{\n{body}',
        "output and loss names": 'model M {\n    input x: f32[B, 4]\n    target t: f32[B, 2]\n    y = x |> linear(2)\n'
                                 '    loss os = mse_loss(y, t)\n    metric system = mean(y)\n    output exec = y\n}\n',
        "unicode names": 'model M\u00e9 {\n    input x\u00e9: f32[B, 4]\n    output x\u00e9\n}\n',
        # YAML takes any string as a key: names are checked there too
        "yaml input name": f'models:\n  - model: M\n    body:\n      - input: {{"x\\n{p}": "f32[B, 4]"}}\n'
                           f'      - output: ["x\\n{p}"]\n',
        "yaml model name": f'models:\n  - model: "M(object):\\n    pass\\n{p}\\nclass N"\n    body:\n'
                           '      - input: {x: "f32[B, 4]"}\n      - output: [x]\n',
        "yaml header": f'# """\n# {p}\nmodels:\n  - model: M\n    body:\n      - input: {{x: "f32[B, 4]"}}\n'
                       '      - output: [x]\n',
    }


EXPECTED_IMPORTS = {"math", "torch", "torch.nn", "torch.nn.functional"}
FORBIDDEN_CALLS = {"__import__", "exec", "eval", "open", "compile", "globals", "locals", "getattr", "setattr",
                   "system", "popen", "breakpoint", "input"}
FORBIDDEN_MODULES = {"os", "sys", "subprocess", "builtins", "shutil"}


def assert_only_a_module(source: str) -> None:
    """The generated file holds a docstring, the usual imports and one class, and calls nothing dangerous."""
    tree = ast.parse(source)
    compile(source, "<generated>", "exec")
    kinds = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            kinds.append("docstring")
        elif isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= EXPECTED_IMPORTS, ast.dump(node)
            kinds.append("import")
        elif isinstance(node, ast.ImportFrom):
            assert node.module in EXPECTED_IMPORTS, ast.dump(node)
            kinds.append("import")
        elif isinstance(node, ast.ClassDef):
            kinds.append("class")
        else:
            raise AssertionError(f"unexpected top-level statement: {ast.dump(node)[:200]}")
    assert kinds.count("class") == 1 and kinds.count("docstring") <= 1, kinds
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            assert node in tree.body, f"an import inside the class: {ast.dump(node)}"
        if isinstance(node, ast.Call):  # (a local variable may be named `os`: only calls matter)
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            assert name not in FORBIDDEN_CALLS, f"the generated code calls `{name}`: {ast.unparse(node)[:120]}"
            root = func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root is not func:
                assert root.id not in FORBIDDEN_MODULES, f"the generated code calls into `{root.id}`"


def test_specs_cannot_inject_code(tmp_path):
    marker = tmp_path / "pwned"
    compiled = {}
    for label, text in injection_specs(marker).items():
        suffix = ".yaml" if label.startswith("yaml") else ".nn"
        try:
            graph = build(label.replace(" ", "_") + suffix, text=text)
        except SpecError:
            continue
        source = generate(graph)
        try:
            assert_only_a_module(source)
        except (AssertionError, SyntaxError) as e:
            raise AssertionError(f"{label}: {e}\n{source}") from None
        compiled[label] = source
    assert compiled, "every injection attempt was refused: the check below would test nothing"
    assert not marker.exists()
    # import each generated module and build the model: the payload must not run
    folder = tmp_path / "generated"
    folder.mkdir()
    for i, source in enumerate(compiled.values()):
        (folder / f"m{i}.py").write_text(source, encoding="utf-8")
    script = textwrap.dedent(f"""
        import importlib.util, inspect, sys
        import torch.nn as nn
        for path in sorted(__import__("pathlib").Path({str(folder)!r}).glob("m*.py")):
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            classes = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, nn.Module)
                       and c.__module__ == module.__name__]
            assert len(classes) == 1, path
            classes[0]()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert not marker.exists(), "the payload ran"


def test_a_header_ending_in_a_quote_gives_valid_python():
    source = generate(build("quote.nn", text='# title "quoted"\nmodel M {\n    input x: f32[B, 4]\n    output x\n}\n'))
    assert_only_a_module(source)


def test_a_file_name_cannot_inject_code(env, tmp_path):
    marker = tmp_path / "pwned"
    name = "evil\n__import__('os').system('touch pwned')\n#.nn"  # a file name holds no `/`: touch in the cwd
    (tmp_path / name).write_text(GOOD)
    r = nnspec(env, tmp_path, "compile", name, "-o", "out")
    assert r.returncode == 0, r.stderr
    outputs = list((tmp_path / "out").iterdir())
    assert len(outputs) == 1
    source = outputs[0].read_text(encoding="utf-8")
    assert_only_a_module(source)
    r = subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path({str(outputs[0])!r})"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), "the payload ran"


def test_infinite_parameter_defaults_give_importable_code():
    source = generate(build("inf.nn", text="model M(lo: float = -inf, hi: float = inf) {\n    input x: f32[B, 4]\n"
                                           "    output y = clamp(x, min=lo, max=hi)\n}\n"))
    assert "math.inf" in source
    namespace: dict = {}
    exec(compile(source, "<inf>", "exec"), namespace)  # noqa: S102 - the module under test
    namespace["M"]()
