"""Golden error messages: every bad spec in tests/golden/errors/ fails with exactly the message in its .err file.

Each case is one small spec (`.nn` or `.yaml`) next to `<case>.err`, the complete `SpecError.format()` text
the compiler prints for it (code, message, `--> file:line:col`, the source line with its caret, expected and
found values, notes, hint). The test checks the error code, the line and column, and the whole text.

To accept new or changed messages on purpose, rewrite the golden files and review the diff:

    NNSPEC_UPDATE_GOLDEN=1 python -m pytest tests/dsl/test_diagnostics.py
    python -m pytest tests/dsl --update-golden

(pytest reads `--update-golden` from tests/dsl/conftest.py, so the flag needs tests/dsl or a file in it on
the command line; the environment variable works with any command line.)
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnspec.compiler.pipeline import build
from nnspec.errors import SpecError

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "errors"
CASES = sorted(p for p in GOLDEN.iterdir() if p.suffix in (".nn", ".yaml")) if GOLDEN.is_dir() else []
HEADER = re.compile(r"^error\[(E\d{4})\]: ")
WHERE = re.compile(r"^ *--> (.+):(\d+):(\d+)$", re.M)

# every category of mistake the golden suite must keep covering (code -> what it is)
REQUIRED_CODES = {
    "E0101": "unexpected character / unterminated string", "E0102": "unexpected token, keyword as name",
    "E0103": "unexpected end of file", "E0201": "undefined name", "E0203": "duplicate name",
    "E0204": "unknown op", "E0205": "use before definition (a dataflow cycle)", "E0301": "shape mismatch",
    "E0302": "rank mismatch", "E0303": "conflicting symbolic dimensions", "E0305": "dtype mismatch",
    "E0306": "broadcasting", "E0308": "channels and groups", "E0309": "window larger than the input",
    "E0310": "element count", "E0311": "shared instance sizes", "E0312": "scan state shape",
    "E0401": "attribute type", "E0402": "unknown keyword", "E0403": "bad choice / dtype", "E0407": "missing argument",
    "E0501": "compile-time value needed", "E0502": "repeat count", "E0504": "recursive block",
    "E0505": "no model, no output", "E0506": "empty model", "E0507": "block without return",
    "E0508": "input inside a block", "E0511": "loss not a scalar", "E0601": "missing import", "E0602": "import cycle",
}


def _error_for(case: Path) -> SpecError:
    try:
        build(str(case.relative_to(REPO)))
    except SpecError as e:
        return e
    raise AssertionError(f"{case.name} compiled without an error; a golden error case must fail")


def _formatted(e: SpecError) -> str:
    return e.format(getattr(e, "sources", None)) + "\n"


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    # messages show paths relative to the working folder: run from the repository root
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden_error(case: Path, update_golden: bool):
    e = _error_for(case)
    text = _formatted(e)
    golden = case.with_suffix(".err")
    if update_golden:
        if not golden.exists() or golden.read_text(encoding="utf-8") != text:
            golden.write_text(text, encoding="utf-8")
        return
    assert golden.exists(), (f"{golden.name} is missing; write it with NNSPEC_UPDATE_GOLDEN=1 and review it:\n"
                             f"{text}")
    want = golden.read_text(encoding="utf-8")
    code = HEADER.match(want)
    assert code, f"{golden.name} does not start with error[Ennnn]"
    assert e.code == code.group(1), f"{case.name}: error code {e.code}, the golden file says {code.group(1)}"
    where = WHERE.search(want)
    if where is None:
        assert e.span is None, f"{case.name}: the error points at {e.span}, the golden file has no location"
    else:
        assert e.span is not None, f"{case.name}: the error has no location, the golden file says {where.group(0)}"
        assert (e.span.line, e.span.col) == (int(where.group(2)), int(where.group(3))), \
            f"{case.name}: the error is at {e.span.line}:{e.span.col}, the golden file says {where.group(2)}:{where.group(3)}"
    assert text == want, f"{case.name}: the message differs from {golden.name}"


def test_no_orphan_golden_files():
    specs = {c.stem for c in CASES}
    orphans = sorted(p.name for p in GOLDEN.glob("*.err") if p.stem not in specs)
    assert not orphans, f"golden messages without a spec: {orphans}"


def test_golden_suite_covers_every_category():
    assert len(CASES) >= 30, f"only {len(CASES)} golden error cases"
    codes = set()
    for case in CASES:
        golden = case.with_suffix(".err")
        if golden.exists():
            m = HEADER.match(golden.read_text(encoding="utf-8"))
            if m:
                codes.add(m.group(1))
    missing = {c: what for c, what in REQUIRED_CODES.items() if c not in codes}
    assert not missing, f"no golden case for: {missing}"


def test_every_located_message_shows_its_line_with_a_caret():
    # the caret row sits under the quoted source line and is made of ^ only
    for golden in sorted(GOLDEN.glob("*.err")):
        rows = golden.read_text(encoding="utf-8").splitlines()
        where = [i for i, r in enumerate(rows) if r.lstrip().startswith("--> ")]
        if not where:
            continue
        i = where[0]
        assert rows[i + 1].strip() == "|", golden.name
        assert re.match(r"^ *\d+ \| ", rows[i + 2]), golden.name
        caret = rows[i + 3]
        assert re.fullmatch(r" *\| *\^+", caret), f"{golden.name}: no caret row: {caret!r}"


def test_messages_name_what_was_found_and_a_way_out():
    # a message a user can act on: it says what was expected or found, or gives a help line or a note
    for golden in sorted(GOLDEN.glob("*.err")):
        text = golden.read_text(encoding="utf-8")
        assert any(k in text for k in ("= expected:", "= found:", "= help:", "= note:", "expected")), \
            f"{golden.name} gives neither what was expected, what was found, a note nor a hint:\n{text}"
