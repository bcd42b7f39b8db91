"""Helpers that generated files carry, kept as real Python modules (linted, typed, tested) in this package.

A generated module imports nothing of nnspec, so the helpers it calls (`_conv_bn`, `_linear_cross_entropy`,
the backward ops' torch code, the Triton launch helpers and @triton.jit math) are copied into it as source.
They live here as ordinary code that imports torch; codegen never imports them (`nnspec check` and `compile`
stay torch-free): `copy_source(names)` reads the definitions from the files with `ast` and returns their text,
with the helpers they use themselves, in the order the files define them. Tests import the modules and call
the helpers directly.

A helper is any top-level function, class or assignment of a module listed in MODULES; the names it refers to
that are helpers too are copied with it. Module-level imports are not copied: the generated file has its own
(torch, torch.nn as nn, torch.nn.functional as F, math, and triton / triton.language as tl where kernels are).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES: tuple[str, ...] = ()   # file stems in this folder, in the order their helpers are written


@dataclass(frozen=True)
class Helper:
    name: str
    module: str
    order: int          # position among all helpers: module order, then definition order
    source: str
    uses: frozenset     # names of other helpers it refers to


@lru_cache(maxsize=1)
def helpers() -> dict[str, Helper]:
    """Every helper of every module, by name (a name defined twice is an error)."""
    found: dict[str, Helper] = {}
    raw: list[tuple[str, str, str, set]] = []
    for stem in MODULES:
        text = (HERE / f"{stem}.py").read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in tree.body:
            names = _defined(node)
            if not names:
                continue
            segment = ast.get_source_segment(text, node, padded=False)
            assert segment is not None
            decorators = getattr(node, "decorator_list", None) or []
            start = decorators[0].lineno if decorators else node.lineno
            lines = text.splitlines()
            source = "\n".join(lines[start - 1:node.end_lineno])
            refs = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            refs |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            for name in names:
                raw.append((name, stem, source, refs))
    defined = {name for name, *_ in raw}
    for i, (name, stem, source, refs) in enumerate(raw):
        if name in found:
            raise AssertionError(f"helper {name} is defined twice ({found[name].module}, {stem})")
        found[name] = Helper(name, stem, i, source, frozenset((refs & defined) - {name}))
    return found


def _defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [t.id for t in targets if isinstance(t, ast.Name)]
    return []


def closure(names) -> list[str]:
    """The named helpers and every helper they use, transitively, in definition order."""
    table = helpers()
    seen: set[str] = set()
    todo = [n for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in table:
            raise KeyError(f"no helper named {name!r} in compiler/codegen/support")
        seen.add(name)
        todo.extend(table[name].uses)
    return sorted(seen, key=lambda n: table[n].order)


def copy_source(names) -> str:
    """The source text of the named helpers and what they use (each once), separated like top-level code."""
    table = helpers()
    texts = list(dict.fromkeys(table[n].source for n in closure(names)))
    return "\n\n\n".join(texts)


def used_by(text: str, candidates=None) -> list[str]:
    """The helpers (of `candidates`, default all) that a piece of generated code calls or reads."""
    table = helpers()
    pool = table if candidates is None else {n: table[n] for n in candidates}
    return [n for n in pool if re.search(rf"(?<![\w.]){re.escape(n)}\b", text)]
