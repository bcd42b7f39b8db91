"""The op registry: one `OpDef` per operation, everything about it in one place.

An op definition holds its tensor inputs, its attribute schema (types, defaults, allowed values),
its symbolic shape rule, its parameters and the torch module that owns them, its torch lowering
(the Python expression codegen writes), its fusion kind (TVM's lattice), its MAC count, and a torch
reference used by the registry test. Gradient rules and Triton scalar expressions attach here too.

This module and the op tables import nothing heavy: `nnspec check` and `compile` never import torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from nnspec.compiler.ir import ParamSpec
from nnspec.compiler.shapes import Sym, TensorType, is_concrete, shape_str
from nnspec.errors import Span, SpecError, suggest


class _Required:
    def __repr__(self):
        return "<required>"


REQUIRED = _Required()

FUSION_KINDS = ("elementwise", "broadcast", "injective", "reduction", "opaque")


@dataclass(frozen=True)
class Attr:
    """One attribute of an op: its type, default and allowed values.

    Types: int, float, bool, str, number, ints (list of ints), int_or_ints, dims (a shape, symbols and -1
    allowed), dim (one int or symbol), int_or_none, float_or_none, any.
    """

    name: str
    type: str
    default: Any = REQUIRED
    choices: tuple | None = None
    doc: str = ""


@dataclass
class OpDef:
    name: str
    inputs: tuple = ("x",)                 # tensor inputs; a leading '*' marks a variadic list
    attrs: tuple = ()
    shape: Callable | None = None          # (ctx, in_types, attrs) -> TensorType | list[TensorType]
    lower: Callable | None = None          # (in_exprs, attrs, LowerCtx) -> python expression
    params: Callable | None = None         # (in_types, attrs) -> list[ParamSpec]
    module: Callable | None = None         # (in_types, attrs) -> constructor expression "nn.Linear(...)"
    kind: str = "opaque"
    macs: Callable | None = None           # (in_types, out_types, attrs) -> int or Sym
    category: str = "misc"
    doc: str = ""
    optional_inputs: int = 0               # trailing tensor inputs that may be omitted
    nondiff_inputs: tuple = ()             # indices of inputs that take no gradient (targets, indices)
    random: bool = False                   # draws random numbers
    train_dependent: bool = False          # behaves differently in train and eval mode
    reference: Callable | None = None      # torch reference (tensors..., **attrs) for the registry test
    test_inputs: Callable | None = None    # () -> list of (shape, dtype, kind) for the registry test
    grad: Any = None                       # gradient rule (see compiler/autodiff.py)
    scalar: Any = None                     # Triton scalar expression for fusable ops

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[0].startswith("*")

    @property
    def attr_names(self) -> list[str]:
        return [a.name for a in self.attrs]

    def attr(self, name: str) -> Attr | None:
        for a in self.attrs:
            if a.name == name:
                return a
        return None

    def signature(self) -> str:
        parts = [i.lstrip("*") + ("..." if i.startswith("*") else "") for i in self.inputs]
        for a in self.attrs:
            parts.append(a.name if a.default is REQUIRED else f"{a.name}={a.default!r}")
        return f"{self.name}({', '.join(parts)})"


REGISTRY: dict[str, OpDef] = {}


def register(name: str, **kw) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name!r} is defined twice")
    op = OpDef(name, **kw)
    assert op.kind in FUSION_KINDS, (name, op.kind)
    REGISTRY[name] = op
    return op


def get(name: str) -> OpDef | None:
    return REGISTRY.get(name)


# ---------------------------------------------------------------------------------- shape context
class OpContext:
    """What a shape rule gets besides its inputs: a way to fail with the call's location."""

    def __init__(self, op: OpDef, span: Span | None, input_notes: list[str] | None = None):
        self.op = op
        self.span = span
        self.input_notes = input_notes or []

    def fail(self, code: str, message: str, *, found=None, expected=None, hint=None, notes=None):
        raise SpecError(code, f"{message}", self.span, found=found, expected=expected, hint=hint,
                        notes=(notes or []) + self.input_notes)

    def check_rank(self, t: TensorType, ranks, what: str = "input") -> None:
        ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
        if t.rank not in ranks:
            want = " or ".join(str(r) for r in ranks)
            self.fail("E0302", f"rank mismatch in {self.op.name}: {what} has rank {t.rank}, expected {want}",
                      found=f"{what} {shape_str(t.shape)}", expected=f"a rank-{want} tensor")

    def check_dim(self, got, want, message: str, *, hint=None) -> None:
        if got != want:
            kind = "conflicting symbolic dimensions" if not (is_concrete(got) and is_concrete(want)) else "shape mismatch"
            self.fail("E0303" if kind.startswith("conflicting") else "E0301",
                      f"{kind} in {self.op.name}: {message}", found=str(got), expected=str(want), hint=hint)

    def axis(self, dim: int, rank: int, what: str = "dim") -> int:
        if isinstance(dim, bool) or not isinstance(dim, int):
            self.fail("E0401", f"{what} of {self.op.name} must be an int, found {_type_name(dim)}",
                      expected=f"an int in [{-rank}, {max(rank - 1, 0)}]", found=repr(dim))
        if not -rank <= dim < max(rank, 1):
            self.fail("E0304", f"{what}={dim} is out of range for a rank-{rank} tensor in {self.op.name}",
                      expected=f"{what} in [{-rank}, {rank - 1}]", found=str(dim))
        return dim % rank if rank else 0


    def check_positive(self, a: dict, *names: str, minimum: int = 1) -> None:
        """Each named attribute (an int or a list of ints; None is skipped) is at least `minimum`."""
        for name in names:
            v = a.get(name)
            values = v if isinstance(v, (list, tuple)) else (v,)
            if any(isinstance(x, int) and not isinstance(x, bool) and x < minimum for x in values):
                what = "positive" if minimum == 1 else f"at least {minimum}"
                self.fail("E0401", f"attribute `{name}` of {self.op.name} must be {what}, found {v!r}",
                          found=repr(v), expected=f"{'ints' if isinstance(v, (list, tuple)) else 'an int'} >= {minimum}")


# ---------------------------------------------------------------------------------- attributes
def _type_name(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, Sym):
        return "symbolic dim"
    if v is None:
        return "none"
    return type(v).__name__


def coerce_attr(op: OpDef, attr: Attr, value, span: Span | None):
    """Check a compile-time value against an attribute's type; return the normalised value."""

    def bad(expected: str):
        hint = None
        if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
            hint = f"write {attr.name}={value.strip()} without quotes"
        raise SpecError("E0401", f"attribute `{attr.name}` of {op.name} expects {expected}, found {_type_name(value)}",
                        span, expected=expected, found=repr(value) if not isinstance(value, Sym) else str(value),
                        hint=hint)

    t = attr.type
    v = value
    if t == "any":
        return v
    if t in ("int", "dim"):
        if isinstance(v, bool) or not (isinstance(v, int) or (t == "dim" and isinstance(v, Sym))):
            bad("an int" if t == "int" else "an int or a dimension")
    elif t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            bad("a number")
        v = float(v)
    elif t == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            bad("a number")
    elif t == "bool":
        if not isinstance(v, bool):
            bad("true or false")
    elif t == "str":
        if not isinstance(v, str):
            bad("a string")
    elif t == "ints":
        if isinstance(v, int) and not isinstance(v, bool):
            v = (v,)
        if not isinstance(v, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            bad("a list of ints")
        v = tuple(v)
    elif t == "int_or_ints":
        if isinstance(v, (list, tuple)):
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
                bad("an int or a list of ints")
            v = tuple(v)
        elif isinstance(v, bool) or not isinstance(v, int):
            if not (attr.choices and isinstance(v, str)):
                bad("an int or a list of ints")
    elif t == "dims":
        if isinstance(v, (int, Sym)) and not isinstance(v, bool):
            v = (v,)
        if not isinstance(v, (list, tuple)) or not all(
                (isinstance(i, int) and not isinstance(i, bool)) or isinstance(i, Sym) for i in v):
            bad("a shape (a list of ints and dimensions)")
        v = tuple(v)
    elif t == "int_or_none":
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            bad("an int or none")
    elif t == "float_or_none":
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                bad("a number or none")
            v = float(v)
    else:  # pragma: no cover - a registry bug, caught by the registry test
        raise AssertionError(f"unknown attribute type {t!r} on {op.name}.{attr.name}")
    if attr.choices is not None and isinstance(v, str) and v not in attr.choices:
        hint = suggest(v, attr.choices)
        raise SpecError("E0403", f"attribute `{attr.name}` of {op.name} must be one of "
                        f"{', '.join(repr(c) for c in attr.choices)}", span, found=repr(v),
                        expected=" | ".join(repr(c) for c in attr.choices), hint=hint)
    return v


def bind_attrs(op: OpDef, positional: list, keywords: dict, span: Span | None, kw_spans: dict | None = None) -> dict:
    """Map positional and keyword compile-time arguments to the op's attributes, with defaults."""
    kw_spans = kw_spans or {}
    if len(positional) > len(op.attrs):
        raise SpecError("E0406", f"{op.name} takes at most {len(op.attrs)} attribute argument(s), "
                        f"{len(positional)} given", span, expected=op.signature())
    values: dict = {}
    for attr, v in zip(op.attrs, positional):
        values[attr.name] = (v, span)
    for key, v in keywords.items():
        attr = op.attr(key)
        if attr is None:
            hint = suggest(key, op.attr_names)
            raise SpecError("E0402", f"{op.name} has no attribute `{key}`", kw_spans.get(key, span),
                            expected=op.signature(), hint=hint or f"{op.name} takes: {', '.join(op.attr_names) or 'no attributes'}")
        if key in values:
            raise SpecError("E0404", f"attribute `{key}` of {op.name} is given twice", kw_spans.get(key, span))
        values[key] = (v, kw_spans.get(key, span))
    out = {}
    for attr in op.attrs:
        if attr.name in values:
            v, sp = values[attr.name]
            out[attr.name] = coerce_attr(op, attr, v, sp)
        elif attr.default is REQUIRED:
            raise SpecError("E0407", f"{op.name} is missing its argument `{attr.name}`", span,
                            expected=op.signature(), hint=f"write {op.name}(..., {attr.name}=...)")
        else:
            out[attr.name] = attr.default
    return out


# ---------------------------------------------------------------------------------- lowering
@dataclass
class LowerCtx:
    """What a lowering needs besides its inputs' expressions."""

    module: str | None = None            # e.g. "self.layer1[0].conv1"
    in_types: list = field(default_factory=list)
    out_types: list = field(default_factory=list)
    device: str = "None"                 # expression of the model's device (e.g. "x.device")
    dtype: str = "torch.float32"         # expression of the model's float dtype (e.g. "x.dtype")
    training: str = "self.training"

    def dims(self, shape) -> str:
        """A shape as a Python tuple expression; symbols are local variables bound in forward()."""
        parts = [str(d) for d in shape]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def kwargs_text(op: OpDef, a: dict, names) -> str:
    """`name=value` for each listed attribute that differs from its default (readable calls)."""
    out = []
    for n in names:
        attr = op.attr(n)
        if attr is not None and attr.default is not REQUIRED and a[n] == attr.default:
            continue
        out.append(f"{n}={a[n]!r}")
    return ", ".join(out)


def params_of(specs) -> list[ParamSpec]:
    return [ParamSpec(*s) if isinstance(s, tuple) else s for s in specs]
