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


def _promote(ins) -> str:
    # a rank-0 constant takes the other operand's dtype (like a Python scalar in torch)
    tensors = [t for t in ins if t.rank > 0] or ins
    return max((t.dtype for t in tensors), key=_ORDER.index)


def reduce_shape(ctx, t: TensorType, dim, keepdim: bool):
    if dim is None:
        return t.with_shape(() if not keepdim else (1,) * t.rank)
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    axes = {ctx.axis(d, t.rank) for d in dims}
    shape = [(1 if i in axes else s) for i, s in enumerate(t.shape) if keepdim or i not in axes]
    return t.with_shape(shape)


def reduction(ctx, ins, a):
    return reduce_shape(ctx, ins[0], a.get("dim"), a.get("keepdim", False))


def loss_reduction(ctx, t: TensorType, reduction: str):
    if reduction == "none":
        return t
    return t.with_shape(())


def dim_kw(a) -> str:
    return f"dim={a['dim']!r}"
