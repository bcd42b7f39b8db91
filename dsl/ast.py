"""The spec AST: what both front ends (text DSL and YAML) produce.

Every node carries a `span` (file, line, column) that takes no part in equality, so an AST read
from text and the same AST read from YAML compare equal. Expressions are small frozen dataclasses;
statements and declarations hold lists of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from nnspec.errors import Span


def _span() -> Span | None:
    return field(default=None, compare=False, repr=False)


# ----------------------------------------------------------------------------------- expressions
@dataclass
class Name:
    id: str
    span: Span | None = _span()


@dataclass
class Num:
    value: int | float
    span: Span | None = _span()

    def __eq__(self, other):  # 2 and 2.0 are different literals
        return isinstance(other, Num) and type(self.value) is type(other.value) and self.value == other.value


@dataclass
class Str:
    value: str
    span: Span | None = _span()


@dataclass
class Bool:
    value: bool
    span: Span | None = _span()


@dataclass
class ListExpr:
    items: list["Expr"]
    span: Span | None = _span()


@dataclass
class Keyword:
    name: str
    value: "Expr"
    span: Span | None = _span()


@dataclass
class Call:
    """`func(args..., key=value...)`; `func` is a name, possibly dotted (`std.Residual`)."""

    func: str
    args: list["Expr"] = field(default_factory=list)
    kwargs: list[Keyword] = field(default_factory=list)
    span: Span | None = _span()


@dataclass
class Pipe:
    """`value |> stage |> stage`: each stage is a call that receives the previous value first."""

    value: "Expr"
    stages: list[Call]
    span: Span | None = _span()


@dataclass
class BinOp:
    """Arithmetic (+ - * / // % ** @), comparisons (== != < <= > >=) and logic (and, or)."""

    op: str
    lhs: "Expr"
    rhs: "Expr"
    span: Span | None = _span()


@dataclass
class UnaryOp:
    op: str  # '-', '+', 'not'
    operand: "Expr"
    span: Span | None = _span()


@dataclass
class IfExpr:
    cond: "Expr"
    then: "Expr"
    orelse: "Expr"
    span: Span | None = _span()


@dataclass
class Slice:
    start: "Expr | None" = None
    stop: "Expr | None" = None
    step: "Expr | None" = None
    span: Span | None = _span()


@dataclass
class EllipsisExpr:
    span: Span | None = _span()


@dataclass
class Index:
    """`value[i, a:b, ...]`."""

    value: "Expr"
    items: list["Expr"]
    span: Span | None = _span()


@dataclass
class Attribute:
    """`value.name` (for example `x.shape`)."""

    value: "Expr"
    name: str
    span: Span | None = _span()


Expr = Union[Name, Num, Str, Bool, ListExpr, Call, Pipe, BinOp, UnaryOp, IfExpr, Slice, EllipsisExpr, Index,
             Attribute]


# ------------------------------------------------------------------------------------ statements
@dataclass
class TensorTypeExpr:
    """`f32[B, 1, 28, 28]`; dims are expressions (ints, symbols, arithmetic on them)."""

    dtype: str | None
    dims: list[Expr]
    span: Span | None = _span()


@dataclass
class InputStmt:
    name: str
    type: TensorTypeExpr
    span: Span | None = _span()


@dataclass
class TargetStmt:
    name: str
    type: TensorTypeExpr
    span: Span | None = _span()


@dataclass
class Assign:
    targets: list[str]
    value: Expr
    span: Span | None = _span()


@dataclass
class LetStmt:
    """`let enc = Encoder(dim=64)`: a shared instance, called later as `enc(a)`, `enc(b)`."""

    name: str
    value: Expr
    span: Span | None = _span()


@dataclass
class ParamStmt:
    """`param a: f32[1] = normal(std=1.0)`: a learned tensor owned by the model or block."""

    name: str
    type: TensorTypeExpr
    init: Expr | None = None
    span: Span | None = _span()


@dataclass
class LossStmt:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass
class MetricStmt:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass
class OutputItem:
    name: str
    value: Expr | None = None
    span: Span | None = _span()


@dataclass
class OutputStmt:
    items: list[OutputItem]
    span: Span | None = _span()


@dataclass
class ReturnStmt:
    values: list[Expr]
    span: Span | None = _span()


@dataclass
class ForStmt:
    var: str
    start: Expr
    stop: Expr
    body: list["Stmt"]
    span: Span | None = _span()


@dataclass
class IfStmt:
    """`if c { ... } elif d { ... } else { ... }`, decided at compile time."""

    branches: list[tuple[Expr, list["Stmt"]]]
    orelse: list["Stmt"] = field(default_factory=list)
    span: Span | None = _span()


Stmt = Union[InputStmt, TargetStmt, Assign, LetStmt, ParamStmt, LossStmt, MetricStmt, OutputStmt, ReturnStmt,
             ForStmt, IfStmt]


# ---------------------------------------------------------------------------------- declarations
@dataclass
class ParamDecl:
    """A compile-time parameter of a model or block: `classes: int = 10`."""

    name: str
    type: str
    default: Expr | None = None
    span: Span | None = _span()


@dataclass
class BlockInput:
    """A block's tensor argument: `x: [N, C, H, W]`; dims that are names bind on the call."""

    name: str
    type: TensorTypeExpr | None = None
    span: Span | None = _span()


@dataclass
class ModelDef:
    name: str
    params: list[ParamDecl]
    body: list[Stmt]
    doc: str | None = field(default=None, compare=False)
    span: Span | None = _span()


@dataclass
class BlockDef:
    name: str
    params: list[ParamDecl]
    inputs: list[BlockInput]
    body: list[Stmt]
    doc: str | None = field(default=None, compare=False)
    span: Span | None = _span()


@dataclass
class ImportStmt:
    path: str
    span: Span | None = _span()


@dataclass
class Module:
    """One spec file: its imports, models and blocks, in order."""

    items: list[Union[ImportStmt, ModelDef, BlockDef]]
    path: str = field(default="<spec>", compare=False)
    header: str | None = field(default=None, compare=False)

    @property
    def models(self) -> list[ModelDef]:
        return [i for i in self.items if isinstance(i, ModelDef)]

    @property
    def blocks(self) -> list[BlockDef]:
        return [i for i in self.items if isinstance(i, BlockDef)]

    @property
    def imports(self) -> list[ImportStmt]:
        return [i for i in self.items if isinstance(i, ImportStmt)]


PARAM_TYPES = ("int", "float", "bool", "str", "list", "any")
DTYPES = ("f16", "bf16", "f32", "f64", "i32", "i64", "bool")
