"""Reading spec files: text or YAML by extension, imports resolved, built-in specs by name.

`load(path_or_name)` returns a `Program`: the root module, every imported module, and one namespace
of blocks. Imports are resolved relative to the importing file, then to the built-in `specs/` folder
(so `import "std/blocks.nn"` works anywhere). Import cycles and missing files are SpecErrors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nnspec.dsl import ast
from nnspec.errors import SourceCache, Span, SpecError, suggest

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SPECS_DIR = PACKAGE_DIR / "specs"
SPEC_SUFFIXES = (".nn", ".yaml", ".yml")


@dataclass
class Program:
    root: ast.Module
    modules: dict[str, ast.Module] = field(default_factory=dict)
    blocks: dict[str, ast.BlockDef] = field(default_factory=dict)
    sources: SourceCache = field(default_factory=SourceCache)
    path: str = "<spec>"

    @property
    def models(self) -> list[ast.ModelDef]:
        return self.root.models


def builtin_specs() -> dict[str, Path]:
    """Built-in spec names (file stem) -> path, for `nnspec summary resnet18`."""
    out = {}
    for p in sorted(SPECS_DIR.glob("*")):
        if p.suffix in SPEC_SUFFIXES:
            out.setdefault(p.stem, p)
    return out


def resolve_spec(ref: str) -> Path:
    """A path, or the name of a built-in spec."""
    p = Path(ref)
    try:
        exists = p.exists()
    except (OSError, ValueError):  # a NUL byte or an over-long name
        raise SpecError("E0601", f"not a usable file name: {printable(ref)!r}"[:300], None) from None
    if exists:
        if p.is_dir():
            raise SpecError("E0601", f"{ref} is a folder, not a spec file", None)
        return p
    if p.suffix == "" and "/" not in ref:
        specs = builtin_specs()
        if ref in specs:
            return specs[ref]
        hint = suggest(ref, specs)
        raise SpecError("E0601", f"no spec file or built-in spec named `{ref}`", None,
                        hint=hint or "run `nnspec list` to see the built-in specs")
    if ref.startswith("specs/") and (SPECS_DIR / ref[len("specs/"):]).is_file():
        return SPECS_DIR / ref[len("specs/"):]  # a built-in spec as generated files name it
    raise SpecError("E0601", f"spec file not found: {ref}", None)


def display_path(p: Path) -> str:
    """How a spec file is named in messages and generated code: a built-in spec as `specs/<name>` wherever
    nnspec runs from, any other file relative to the current folder when it is below it."""
    resolved = p.resolve()
    for base, prefix in ((SPECS_DIR, "specs/"), (Path.cwd().resolve(), "")):
        try:
            return printable(prefix + str(resolved.relative_to(base)))
        except ValueError:
            continue
    return printable(str(p))


def printable(name: str) -> str:
    """A file name as shown in messages and generated comments: control characters (a newline in a file
    name could end a comment in the generated code) are written as escapes."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


MAX_FILE_BYTES = 2_000_000  # the parser's limit too; checked before reading, so /dev/zero cannot fill memory


def read_text(path: Path, shown: str, span: Span | None = None) -> str:
    try:
        if not path.is_file():
            raise SpecError("E0601", f"{shown} is not a regular file", span)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError("E0104", f"{shown} is too large ({size} bytes; the limit is {MAX_FILE_BYTES})", span)
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise SpecError("E0601", f"cannot read {shown}: {e.strerror or e}", span) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise SpecError("E0105", f"{shown} is not UTF-8 text (byte {e.start}): is it a binary file?",
                        Span(shown, line, 1)) from None


def parse_source(text: str, shown: str) -> ast.Module:
    if shown.endswith((".yaml", ".yml")):
        from nnspec.dsl.yaml_front import load_yaml
        return load_yaml(text, shown)
    from nnspec.dsl.parser import parse_text
    return parse_text(text, shown)


def load(ref: str | Path, text: str | None = None) -> Program:
    """Load a spec (path or built-in name) and everything it imports."""
    if text is None:
        path = resolve_spec(str(ref))
        shown = display_path(path)
        text = read_text(path, shown)
    else:
        path = Path(str(ref))
        shown = printable(str(ref))
    sources = SourceCache()
    sources.add(shown, text)
    program = Program(root=ast.Module([]), sources=sources, path=shown)
    try:
        root = parse_source(text, shown)
    except SpecError as e:
        e.sources = sources  # type: ignore[attr-defined]
        raise
    program.root = root
    program.modules[shown] = root
    try:
        _collect(program, root, path, [str(path.resolve()) if path.exists() else shown])
    except SpecError as e:
        e.sources = sources  # type: ignore[attr-defined]
        raise
    return program


def _collect(program: Program, module: ast.Module, path: Path, stack: list[str]) -> None:
    for imp in module.imports:
        target = _find_import(imp, path)
        key = str(target.resolve())
        if key in stack:
            chain = " -> ".join(Path(s).name for s in stack[stack.index(key):] + [key])
            raise SpecError("E0602", f"import cycle: {chain}", imp.span,
                            hint="move the shared blocks into a file that both import")
        shown = display_path(target)
        if shown in program.modules:
            continue
        text = read_text(target, shown, imp.span)
        program.sources.add(shown, text)
        sub = parse_source(text, shown)
        program.modules[shown] = sub
        if sub.models and not sub.blocks:
            pass  # importing a file for its models only is allowed; they are not callable
        _collect(program, sub, target, stack + [key])
        _add_blocks(program, sub)
    _add_blocks(program, module)


def _add_blocks(program: Program, module: ast.Module) -> None:
    for block in module.blocks:
        prev = program.blocks.get(block.name)
        if prev is not None and prev is not block:
            if prev == block:
                continue
            raise SpecError("E0202", f"block `{block.name}` is defined twice", block.span,
                            notes=[f"first defined at {prev.span}"] if prev.span else [])
        program.blocks[block.name] = block


def _find_import(imp: ast.ImportStmt, importer: Path) -> Path:
    candidates = [importer.parent / imp.path, SPECS_DIR / imp.path]
    for c in candidates:
        try:
            if c.is_file():
                return c
        except (OSError, ValueError):  # a NUL byte or an over-long name cannot be a file
            continue
    raise SpecError("E0601", f"cannot find imported file \"{imp.path}\"", imp.span,
                    notes=["looked in: " + ", ".join(display_path(c.parent) or "." for c in candidates)],
                    hint="paths are relative to the importing file, or to the built-in specs/ folder")
