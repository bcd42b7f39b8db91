"""Symbolic tensor shapes.

A dimension is a Python `int` or a `Sym`: a polynomial with integer coefficients over named symbols
(`B`, `T`, `2*H + 1`). Floor division that does not divide exactly becomes an opaque atom, written
like `(H - 1)//2`, so equal computations give equal dimensions. Shapes are tuples of dimensions;
`TensorType` pairs a shape with a dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard, Union

Monomial = tuple  # sorted tuple of atom names; () is the constant term


class Sym:
    """An integer polynomial over symbols: {monomial: coefficient}."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: dict):
        self.terms = {m: c for m, c in terms.items() if c != 0}
        self._hash = None

    @staticmethod
    def var(name: str) -> "Sym":
        return Sym({(name,): 1})

    # --------------------------------------------------------------- arithmetic
    def __add__(self, other):
        other = _as_terms(other)
        if other is None:
            return NotImplemented
        out = dict(self.terms)
        for m, c in other.items():
            out[m] = out.get(m, 0) + c
        return simplify(Sym(out))

    __radd__ = __add__

    def __neg__(self):
        return Sym({m: -c for m, c in self.terms.items()})

    def __sub__(self, other):
        other = _as_terms(other)
        if other is None:
            return NotImplemented
        return self + Sym({m: -c for m, c in other.items()})

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        other = _as_terms(other)
        if other is None:
            return NotImplemented
        out: dict = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in other.items():
                m = tuple(sorted(m1 + m2))
                out[m] = out.get(m, 0) + c1 * c2
        return simplify(Sym(out))

    __rmul__ = __mul__

    def __floordiv__(self, other):
        if isinstance(other, int) and other != 0:
            if all(c % other == 0 for c in self.terms.values()):
                return simplify(Sym({m: c // other for m, c in self.terms.items()}))
            return Sym.var(f"({self})//{other}")
        if isinstance(other, Sym):
            return Sym.var(f"({self})//({other})")
        return NotImplemented

    def __rfloordiv__(self, other):
        return Sym.var(f"({other})//({self})")

    def __truediv__(self, other):
        return self.__floordiv__(other)

    # --------------------------------------------------------------- comparison
    def __eq__(self, other):
        if isinstance(other, Sym):
            return self.terms == other.terms
        if isinstance(other, int) and not isinstance(other, bool):
            return self.terms == ({(): other} if other else {})
        return False

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        if self._hash is None:
            self._hash = hash(frozenset(self.terms.items()))
        return self._hash

    def symbols(self) -> set[str]:
        return {a for m in self.terms for a in m}

    def __str__(self) -> str:
        parts = []
        for m in sorted(self.terms, key=lambda m: (-len(m), m)):
            c = self.terms[m]
            body = "*".join(m)
            if not m:
                txt = str(abs(c))
            elif abs(c) == 1:
                txt = body
            else:
                txt = f"{abs(c)}*{body}"
            sign = "-" if c < 0 else "+"
            parts.append((sign, txt))
        if not parts:
            return "0"
        first_sign, first = parts[0]
        out = ("-" if first_sign == "-" else "") + first
        for sign, txt in parts[1:]:
            out += f" {sign} {txt}"
        return out

    __repr__ = __str__


Dim = Union[int, Sym]
Shape = tuple


def _as_terms(x):
    if isinstance(x, Sym):
        return x.terms
    if isinstance(x, int) and not isinstance(x, bool):
        return {(): x} if x else {}
    return None


def simplify(d: Dim) -> Dim:
    """A Sym with only a constant term becomes an int."""
    if isinstance(d, Sym):
        if not d.terms:
            return 0
        if set(d.terms) == {()}:
            return d.terms[()]
    return d


def is_concrete(d) -> TypeGuard[int]:
    return isinstance(d, int) and not isinstance(d, bool)


def dim_str(d: Dim) -> str:
    return str(d)


def shape_str(shape) -> str:
    return "[" + ", ".join(dim_str(d) for d in shape) + "]"


def numel(shape) -> Dim:
    n: Dim = 1
    for d in shape:
        n = n * d
    return simplify(n) if isinstance(n, Sym) else n


def dims_equal(a: Dim, b: Dim) -> bool:
    return a == b


def broadcast_shapes(a, b):
    """NumPy broadcasting of two symbolic shapes; returns None if they do not broadcast."""
    out = []
    for i in range(max(len(a), len(b))):
        da = a[len(a) - 1 - i] if i < len(a) else 1
        db = b[len(b) - 1 - i] if i < len(b) else 1
        if da == db:
            out.append(da)
        elif da == 1:
            out.append(db)
        elif db == 1:
            out.append(da)
        else:
            return None
        # nothing else: two different symbols could be equal at run time, but we report, not guess
    return tuple(reversed(out))


def conv_out(size: Dim, kernel: int, stride: int, padding: int, dilation: int) -> Dim:
    """floor((size + 2p - d(k-1) - 1)/s) + 1, symbolic when size is."""
    num = size + 2 * padding - dilation * (kernel - 1) - 1
    if isinstance(num, int):
        return num // stride + 1
    return simplify(num // stride + 1)


DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64", "i32": "int32",
          "i64": "int64", "bool": "bool"}
FLOAT_DTYPES = ("f16", "bf16", "f32", "f64")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{shape_str(self.shape)}"

    def with_shape(self, shape) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES
