"""Shape rules and lowerings shared by many ops (elementwise, broadcasting, reductions)."""
from __future__ import annotations

from nnspec.compiler.shapes import TensorType, broadcast_shapes, shape_str


def same_as_input(ctx, ins, a):
    return ins[0]


def float_input(ctx, ins, a, i: int = 0):
    if not ins[i].is_float:
        ctx.fail("E0305", f"{ctx.op.name} needs a floating-point input, found {ins[i].dtype}",
                 found=str(ins[i]), expected="f16, bf16, f32 or f64",
                 hint="integer tensors (class labels, token ids) go to embedding or to a loss as targets")
    return ins[i]


def unary_float(ctx, ins, a):
    return float_input(ctx, ins, a)


def broadcast(ctx, ins, a, dtype: str | None = None):
    shape = ins[0].shape
    for t in ins[1:]:
        out = broadcast_shapes(shape, t.shape)
        if out is None:
            ctx.fail("E0306", f"shapes {shape_str(shape)} and {shape_str(t.shape)} do not broadcast in {ctx.op.name}",
                     found=f"{shape_str(shape)} and {shape_str(t.shape)}",
                     expected="equal sizes, or 1, in each trailing dimension",
                     hint="reshape or unsqueeze one operand so that its dimensions line up")
        shape = out
    return TensorType(dtype or _promote(ins), shape)


def broadcast_bool(ctx, ins, a):
    return broadcast(ctx, ins, a, dtype="bool")


_ORDER = ["bool", "i32", "i64", "f16", "bf16", "f32", "f64"]


def _kind(dtype: str) -> int:
    return 0 if dtype == "bool" else 1 if dtype in ("i32", "i64") else 2


def _promote(ins) -> str:
    # a rank-0 constant takes the other operand's dtype (like a Python scalar in torch) ...
    tensors = [t for t in ins if t.rank > 0] or ins
    out = max((t.dtype for t in tensors), key=_ORDER.index)
    # ... unless it is of a higher kind: int tensor * 0.5 is a float tensor, bool mask + 1 an int tensor
    top = max(_kind(t.dtype) for t in ins)
    if top > _kind(out):
        out = max((t.dtype for t in ins if _kind(t.dtype) == top), key=_ORDER.index)
    return out


def reduce_shape(ctx, t: TensorType, dim, keepdim: bool):
    if dim is None:
        return t.with_shape(() if not keepdim else (1,) * t.rank)
    dims = (dim,) if isinstance(dim, int) else tuple(dim) if isinstance(dim, (list, tuple)) else None
    if dims is None or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        ctx.fail("E0401", f"attribute `dim` of {ctx.op.name} expects an int or a list of ints", found=repr(dim),
                 expected=f"dims in [{-t.rank}, {max(t.rank - 1, 0)}]")
    assert dims is not None  # ctx.fail raises
    axes = {ctx.axis(d, t.rank) for d in dims}
    if len(axes) != len(dims):
        ctx.fail("E0304", f"{ctx.op.name}: a dimension is listed twice in dim={list(dims)}", found=repr(dim))
    shape = [(1 if i in axes else s) for i, s in enumerate(t.shape) if keepdim or i not in axes]
    return t.with_shape(shape)


def reduction(ctx, ins, a):
    return reduce_shape(ctx, ins[0], a.get("dim"), a.get("keepdim", False))


def loss_reduction(ctx, t: TensorType, reduction: str):
    if reduction == "none":
        return t
    return t.with_shape(())


def number_text(v) -> str:
    """A number as Python source: repr, except inf and nan (repr gives `inf`, a NameError in generated code)."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return "float('nan')" if v != v else ("float('inf')" if v > 0 else "float('-inf')")
    return repr(v)


def dim_kw(a) -> str:
    return f"dim={a['dim']!r}"
