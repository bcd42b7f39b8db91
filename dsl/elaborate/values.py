"""What elaboration computes with: tensor values, layer instances waiting for inputs, scopes; the limits that
keep compile-time evaluation bounded; and small helpers that describe values in messages."""
from __future__ import annotations

import builtins
import keyword
from dataclasses import dataclass, field

from nnspec.compiler.ir import Graph, is_identifier
from nnspec.compiler.shapes import Sym, TensorType
from nnspec.dsl import ast
from nnspec.errors import Span, SpecError

MAX_REPEAT = 10_000          # iterations of one `for`
MAX_NODES = 200_000          # nodes in one model
MAX_STEPS = 100_000          # loop iterations plus block instances while elaborating one model
MAX_INT_BITS = 10_000        # compile-time integers (sizes), so that no arithmetic can run away
MAX_VALUE_LEN = 100_000      # compile-time strings and lists
MAX_BLOCK_DEPTH = 48         # nested block instantiations (bounded recursion is allowed)
# inputs, targets and symbols become variables of the generated forward(): they cannot be Python keywords,
# builtins, or the names the generated code relies on
RESERVED_NAMES = set(keyword.kwlist) | set(dir(builtins)) | {"self", "torch", "nn", "F", "math", "return_losses"}

BINARY_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "**": "pow", "@": "matmul",
              "==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}


@dataclass
class Tensor:
    """A tensor value during elaboration: which node output, and its type."""

    ref: tuple
    type: TensorType


@dataclass
class Instance:
    """A block or layer waiting for its tensor inputs (`let enc = Encoder(64)`, scan cells)."""

    kind: str                   # 'block' or 'op'
    target: str                 # block or op name
    args: list
    kwargs: dict
    name: str | None            # module name under the scope's path; None = choose at call
    span: Span | None
    shared: bool                # True for `let`: every call uses the same parameters
    token: object = field(default_factory=object)


@dataclass
class Scope:
    graph: Graph
    path: tuple
    vars: dict = field(default_factory=dict)
    block: ast.BlockDef | None = None
    names_used: dict = field(default_factory=dict)  # module name -> count, for automatic names
    owner: object | None = None                     # shared-instance token that owns new modules
    returned: list | None = None
    later: dict = field(default_factory=dict)       # names assigned later in this body -> span
    defined: dict = field(default_factory=dict)     # name -> span of its first definition, for notes
    call: int = 0                                   # the BlockCall (graph.blocks) new nodes belong to
    assigned: dict = field(default_factory=dict)    # name -> how often the body assigned it


def is_value(v) -> bool:
    """A compile-time value (not a tensor, not a layer)."""
    return isinstance(v, (int, float, bool, str, list, tuple, Sym)) and not (
        isinstance(v, tuple) and any(isinstance(x, (Tensor, Instance)) for x in v))


def short(v) -> str:
    """A compile-time value for a message, cut short when huge."""
    text = repr(v) if not (isinstance(v, int) and v.bit_length() > 200) else f"a {len(str(abs(v)))}-digit number"
    return text if len(text) <= 60 else text[:57] + "..."


def bounded(v, span):
    """A compile-time result, refused when it has grown out of all proportion (sizes, lists, polynomials)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > MAX_INT_BITS:
        raise SpecError("E0413", f"number too large ({v.bit_length()} bits)", span)
    if isinstance(v, (str, list)) and len(v) > MAX_VALUE_LEN:
        raise SpecError("E0502", f"a compile-time value of {len(v)} elements is too large (limit {MAX_VALUE_LEN})", span)
    if isinstance(v, Sym) and (len(v.terms) > 1000 or any(len(m) > 64 for m in v.terms)
                               or any(abs(c).bit_length() > MAX_INT_BITS for c in v.terms.values())):
        raise SpecError("E0413", "symbolic dimension too large to track", span)
    return v


def check_param_type(d: ast.ParamDecl, value, span, owner):
    t = d.type
    ok = {
        "int": isinstance(value, (int, Sym)) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
        "list": isinstance(value, (list, tuple)),
        "any": not isinstance(value, (Tensor, Instance)),
    }[t]
    if not ok:
        raise SpecError("E0401", f"parameter `{d.name}` of `{owner}` is {t}, found {kind_of(value)}", span,
                        expected=t, found=show(value))
    if t == "float":
        return float(value)
    if t == "list":
        return list(value)
    return value


def name_of(v, span) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise SpecError("E0206", f"name= takes a string or an int, found {kind_of(v)}", span)
    s = str(v)
    if not (is_identifier(s) or s.isdigit()):
        raise SpecError("E0206", f"{f'`{s}`' if s.isprintable() else repr(s)} is not a valid layer name", span,
                        hint="names are identifiers (letters, digits, _) or plain numbers")
    return s


def check_reserved(name: str, span, what: str) -> None:
    if name in RESERVED_NAMES:
        raise SpecError("E0206", f"`{name}` cannot name {what}: it is reserved in the generated Python code", span,
                        hint=f"choose another name, e.g. `{name}_`")


def snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def defined_names(stmt) -> list[str]:
    if isinstance(stmt, ast.Assign):
        return list(stmt.targets)
    if isinstance(stmt, (ast.LetStmt, ast.ParamStmt, ast.InputStmt, ast.TargetStmt, ast.LossStmt, ast.MetricStmt)):
        return [stmt.name]
    return []


def kind_of(v) -> str:
    if isinstance(v, Tensor):
        return f"a tensor {v.type}"
    if isinstance(v, Instance):
        return f"the layer `{v.target}`"
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, int):
        return "an int"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, Sym):
        return f"the symbolic dimension `{v}`"
    if isinstance(v, (list, tuple)):
        return "a list"
    return type(v).__name__


def show(v) -> str:
    if isinstance(v, Tensor):
        return str(v.type)
    if isinstance(v, Sym):
        return str(v)
    return repr(v)


def dim_text(d) -> str:
    if isinstance(d, ast.Name):
        return d.id
    if isinstance(d, ast.Num):
        return str(d.value)
    return "..." if isinstance(d, ast.EllipsisExpr) else "?"


def flatten(v):
    if isinstance(v, (list, tuple)):
        out = []
        for x in v:
            out.extend(flatten(x))
        return out
    return [v]


def nested_shape(v) -> tuple:
    if isinstance(v, (list, tuple)):
        if not v:
            return (0,)
        inner = {nested_shape(x) for x in v}
        if len(inner) != 1:
            return (-1,)
        return (len(v),) + inner.pop()
    return ()


def to_float_nested(v):
    if isinstance(v, (list, tuple)):
        return tuple(to_float_nested(x) for x in v)
    return float(v)


