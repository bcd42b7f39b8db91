"""Compiler diagnostics: `SpecError` and its rendering.

Every mistake in a spec becomes a `SpecError` carrying an error code, a source span, what was found,
what was expected, notes and a hint. `format()` renders it like a compiler does:

    error[E0301]: shape mismatch in linear: input has 2304 features, the weight expects 1600
      --> specs/mnist_cnn_bad.nn:12:18
       |
    12 |     logits = h |> flatten |> linear(128)
       |                  ^^^^^^^^^^^^^^^^^^^^^^^
       = note: ...
       = help: ...

Error codes (documented in the README):
    E01xx syntax and reading        E02xx names and definitions     E03xx shapes
    E04xx attributes and arguments  E05xx structure (cycles, recursion, outputs)  E06xx imports
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of a source file, 1-based lines and columns; `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class SpecError(Exception):
    """A mistake in a spec, reported with a code and a source location."""

    def __init__(self, code: str, message: str, span: Span | None = None, *, notes: list[str] | None = None,
                 hint: str | None = None, found: str | None = None, expected: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.span = span
        self.notes = list(notes or [])
        self.hint = hint
        self.found = found
        self.expected = expected

    def with_note(self, note: str) -> "SpecError":
        self.notes.append(note)
        return self

    def format(self, sources: "SourceCache | None" = None) -> str:
        lines = [f"error[{self.code}]: {self.message}"]
        pad = "  "
        if self.span is not None:
            text = sources.line(self.span.file, self.span.line) if sources else None
            num = str(self.span.line).rjust(2)  # the gutter lines up with the `= note` lines below
            pad = " " * len(num)
            lines.append(f"{pad}--> {self.span}")
            if text is not None:
                lines.append(f"{pad} |")
                shown = text.rstrip("\n").expandtabs(4)
                lines.append(f"{num} | {shown}")
                start = len(text[:max(self.span.col - 1, 0)].expandtabs(4))
                if self.span.end_line in (None, self.span.line) and self.span.end_col:
                    width = max(self.span.end_col - self.span.col, 1)
                else:
                    width = max(len(shown.rstrip()) - start, 1)
                lines.append(f"{pad} | {' ' * start}{'^' * width}")
            else:
                lines.append(f"{pad} |")
        if self.found is not None or self.expected is not None:
            if self.expected is not None:
                lines.append(f"{pad} = expected: {self.expected}")
            if self.found is not None:
                lines.append(f"{pad} = found:    {self.found}")
        for note in self.notes:
            lines.append(f"{pad} = note: {note}")
        if self.hint:
            lines.append(f"{pad} = help: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        where = f"{self.span}: " if self.span else ""
        return f"{where}error[{self.code}]: {self.message}"


@dataclass
class SourceCache:
    """Text of every source file read while compiling, for printing the offending line."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        self.texts[name] = text

    def line(self, name: str, lineno: int) -> str | None:
        text = self.texts.get(name)
        if text is None:
            return None
        rows = text.split("\n")  # lines as the parser counts them (not str.splitlines, which also splits at \f)
        if 1 <= lineno <= len(rows):
            return rows[lineno - 1].rstrip("\r")
        return None


def too_deep(path: str, span: Span | None = None) -> SpecError:
    """The error for an expression too deep to compile (thousands of nested brackets or chained operators)."""
    return SpecError("E0106", "expression is nested too deeply to compile", span or Span(path, 1, 1),
                     hint="a chain of thousands of operators or brackets nests as deeply: split it into "
                          "several assignments")


def suggest(name: str, candidates) -> str | None:
    """'did you mean `x`?' for the closest candidate, or None."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None
