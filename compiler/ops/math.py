"""Elementwise math, comparisons, where, matrix products, reductions, similarity, random sampling and
stop_gradient. Binary operators in a spec (`a + b`, `x ** 2`) lower to these ops; a number on one side
becomes a `constant` node, written inline by codegen.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from nnspec.compiler.ops.common import broadcast, broadcast_bool, float_input, number_text, reduction, same_as_input
from nnspec.compiler.ops.registry import Attr, register
from nnspec.compiler.shapes import TensorType, broadcast_shapes, numel, shape_str

# ---------------------------------------------------------------------------------- binary
_BINARY = {
    "add": ("{0} + {1}", "a + b"), "sub": ("{0} - {1}", "a - b"), "mul": ("{0} * {1}", "a * b"),
    "div": ("{0} / {1}", "a / b"), "pow": ("{0} ** {1}", "a ** b"),
    "maximum": ("torch.maximum({0}, {1})", "elementwise max"), "minimum": ("torch.minimum({0}, {1})", "elementwise min"),
}
def _div_shape(ctx, ins, a):
    t = broadcast(ctx, ins, a)
    return t if t.is_float else TensorType("f32", t.shape)  # true division: int / int is a float tensor in torch


for _name, (_fmt, _doc) in _BINARY.items():
    register(_name, inputs=("a", "b"), shape=_div_shape if _name == "div" else broadcast, kind="broadcast",
             category="math", doc=_doc,
             lower=lambda i, a, c, _fmt=_fmt: _fmt.format(*i))

for _name, _sym in (("eq", "=="), ("ne", "!="), ("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">=")):
    register(_name, inputs=("a", "b"), shape=broadcast_bool, kind="broadcast", category="math",
             nondiff_inputs=(0, 1), doc=f"a {_sym} b, a bool tensor",
             lower=lambda i, a, c, _sym=_sym: f"{i[0]} {_sym} {i[1]}")

register("logical_and", inputs=("a", "b"), shape=broadcast_bool, kind="broadcast", category="math",
         nondiff_inputs=(0, 1), lower=lambda i, a, c: f"{i[0]} & {i[1]}", doc="a and b")
register("logical_or", inputs=("a", "b"), shape=broadcast_bool, kind="broadcast", category="math",
         nondiff_inputs=(0, 1), lower=lambda i, a, c: f"{i[0]} | {i[1]}", doc="a or b")


def _where_shape(ctx, ins, a):
    if ins[0].dtype != "bool":
        ctx.fail("E0305", "where's condition must be a bool tensor", found=str(ins[0]), expected="a comparison, e.g. x > 0")
    out = broadcast(ctx, ins[1:], a)
    shape = broadcast_shapes(ins[0].shape, out.shape)
    if shape is None:
        ctx.fail("E0306", f"where: condition {shape_str(ins[0].shape)} does not broadcast with {shape_str(out.shape)}")
    return out.with_shape(shape)


register("where", inputs=("cond", "a", "b"), shape=_where_shape, kind="broadcast", category="math", nondiff_inputs=(0,),
         lower=lambda i, a, c: f"torch.where({i[0]}, {i[1]}, {i[2]})", doc="a where cond else b")

def _masked_fill_shape(ctx, ins, a):
    if ins[1].dtype != "bool":
        ctx.fail("E0305", "masked_fill's mask must be a bool tensor", found=str(ins[1]), expected="a comparison")
    out = broadcast(ctx, ins, a, dtype=ins[0].dtype)
    if out.shape != ins[0].shape:
        ctx.fail("E0306", f"masked_fill: mask {shape_str(ins[1].shape)} must broadcast to x {shape_str(ins[0].shape)}")
    return ins[0]


register("masked_fill", inputs=("x", "mask"), attrs=(Attr("value", "number"),), shape=_masked_fill_shape,
         kind="broadcast", category="math", nondiff_inputs=(1,),
         lower=lambda i, a, c: f"{i[0]}.masked_fill({i[1]}, {_float_text(a['value'])})",
         doc="x with value written where mask is true (attention masks)")


_float_text: Callable[[Any], str] = number_text


# ---------------------------------------------------------------------------------- unary
_UNARY = {
    "neg": ("-{0}", "-x"), "exp": ("torch.exp({0})", "e^x"), "log": ("torch.log({0})", "natural log"),
    "sqrt": ("torch.sqrt({0})", "square root"), "rsqrt": ("torch.rsqrt({0})", "1/sqrt(x)"),
    "abs": ("torch.abs({0})", "|x|"), "sin": ("torch.sin({0})", "sine"), "cos": ("torch.cos({0})", "cosine"),
    "square": ("torch.square({0})", "x^2"), "reciprocal": ("torch.reciprocal({0})", "1/x"),
    "erf": ("torch.erf({0})", "error function"), "log1p": ("torch.log1p({0})", "log(1 + x)"),
    "expm1": ("torch.expm1({0})", "e^x - 1"), "sign": ("torch.sign({0})", "sign of x (gradient 0)"),
    "floor": ("torch.floor({0})", "round down (gradient 0)"), "round": ("torch.round({0})", "round (gradient 0)"),
    "atanh": ("torch.atanh({0})", "inverse tanh"),
}
_INT_PRESERVING = ("neg", "abs", "square", "sign", "floor", "round")  # the others give floats for integer input


def _float_result(ctx, ins, a):
    t = ins[0]
    return t if t.is_float else TensorType("f32", t.shape)


for _name, (_fmt, _doc) in _UNARY.items():
    register(_name, inputs=("x",), shape=same_as_input if _name in _INT_PRESERVING else _float_result,
             kind="elementwise", category="math", doc=_doc,
             lower=lambda i, a, c, _fmt=_fmt: _fmt.format(*i))

def _clamp_shape(ctx, ins, a):
    if a["min"] is None and a["max"] is None:  # torch.clamp(x) with no bound is a run-time error
        ctx.fail("E0407", "clamp needs `min`, `max` or both", expected="clamp(min=0.0) or clamp(max=1.0)")
    return ins[0]


register("clamp", inputs=("x",), attrs=(Attr("min", "float_or_none", None), Attr("max", "float_or_none", None)),
         shape=_clamp_shape, kind="elementwise", category="math", doc="limit x to [min, max]",
         lower=lambda i, a, c: f"torch.clamp({i[0]}" + (f", min={a['min']!r}" if a["min"] is not None else "")
         + (f", max={a['max']!r}" if a["max"] is not None else "") + ")")


def _cast_shape(ctx, ins, a):
    return TensorType(a["dtype"], ins[0].shape)


_DT = {"f16": "torch.float16", "bf16": "torch.bfloat16", "f32": "torch.float32", "f64": "torch.float64",
       "i32": "torch.int32", "i64": "torch.int64", "bool": "torch.bool"}
register("cast", inputs=("x",), attrs=(Attr("dtype", "str", choices=tuple(_DT)),), shape=_cast_shape, kind="elementwise",
         category="math", lower=lambda i, a, c: f"{i[0]}.to({_DT[a['dtype']] if a['dtype'] != 'f32' else c.dtype})",
         doc="convert to another dtype (float casts follow the model's dtype)")

register("stop_gradient", inputs=("x",), shape=same_as_input, kind="elementwise", category="autodiff",
         nondiff_inputs=(0,), lower=lambda i, a, c: f"{i[0]}.detach()",
         doc="the value of x, with no gradient flowing back (detach)")
register("straight_through", inputs=("x", "q"), shape=lambda ctx, ins, a: broadcast(ctx, ins, a).with_shape(ins[0].shape),
         kind="broadcast", category="autodiff", nondiff_inputs=(1,),
         lower=lambda i, a, c: f"{i[0]} + ({i[1]} - {i[0]}).detach()",
         doc="forward value q, gradient passed straight to x (VQ-VAE)")

# ---------------------------------------------------------------------------------- matrix products


def _matmul_shape(ctx, ins, a):
    x, w = ins
    if x.rank == 0 or w.rank == 0:
        ctx.fail("E0302", "matmul needs tensors of rank >= 1", found=f"{x} and {w}")
    k1 = x.shape[-1]
    k2 = w.shape[-2] if w.rank >= 2 else w.shape[0]
    if k1 != k2:
        ctx.check_dim(k1, k2, f"inner dimensions differ: {shape_str(x.shape)} @ {shape_str(w.shape)}",
                      hint="the last dimension of the left operand must equal the second-to-last of the right")
    xb, wb = x.shape[:-2], w.shape[:-2]
    batch = broadcast_shapes(xb, wb)
    if batch is None:
        ctx.fail("E0306", f"matmul batch dimensions {shape_str(xb)} and {shape_str(wb)} do not broadcast")
    rows = x.shape[-2:-1] if x.rank >= 2 else ()
    cols = w.shape[-1:] if w.rank >= 2 else ()
    return TensorType(x.dtype, tuple(batch) + tuple(rows) + tuple(cols))


register("matmul", inputs=("a", "b"), shape=_matmul_shape, kind="opaque", category="math",
         lower=lambda i, a, c: f"{i[0]} @ {i[1]}", doc="matrix product with batch broadcasting (a @ b)",
         macs=lambda ins, outs, a: numel(outs[0].shape) * ins[0].shape[-1])


def _outer_shape(ctx, ins, a):
    ctx.check_rank(ins[0], 1, "a")
    ctx.check_rank(ins[1], 1, "b")
    return TensorType(ins[0].dtype, (ins[0].shape[0], ins[1].shape[0]))


register("outer", inputs=("a", "b"), shape=_outer_shape, kind="broadcast", category="math",
         lower=lambda i, a, c: f"torch.outer({i[0]}, {i[1]})", doc="outer product of two vectors")


def _einsum_shape(ctx, ins, a):
    eq = a["equation"].replace(" ", "")
    if "->" not in eq:
        ctx.fail("E0401", "einsum equation needs an explicit '->' output", found=repr(a["equation"]))
    if not re.fullmatch(r"[A-Za-z]*(,[A-Za-z]*)*->[A-Za-z]*", eq):
        ctx.fail("E0401", "einsum equation must be letters, commas and one '->'", found=repr(a["equation"]),
                 expected="e.g. \"bij,bjk->bik\"")
    lhs, out = eq.split("->")
    missing = sorted(set(out) - set(lhs))
    if missing or len(set(out)) != len(out):
        ctx.fail("E0401", "each output letter of an einsum must appear once in the output and in some operand",
                 found=repr(a["equation"]), hint=f"`{missing[0]}` appears in no operand" if missing else None)
    terms = lhs.split(",")
    if len(terms) != len(ins):
        ctx.fail("E0406", f"einsum equation names {len(terms)} operands, {len(ins)} given", found=repr(a["equation"]))
    sizes: dict = {}
    for t, term in zip(ins, terms):
        if len(term) != t.rank:
            ctx.fail("E0302", f"rank mismatch in einsum: '{term}' has {len(term)} letters for a rank-{t.rank} operand",
                     found=shape_str(t.shape))
        for ch, d in zip(term, t.shape):
            if ch in sizes and sizes[ch] != d and d != 1 and sizes[ch] != 1:
                ctx.check_dim(d, sizes[ch], f"einsum index '{ch}' has two sizes")
            if ch not in sizes or sizes[ch] == 1:
                sizes[ch] = d
    return TensorType(ins[0].dtype, tuple(sizes[ch] for ch in out))


register("einsum", inputs=("*xs",), attrs=(Attr("equation", "str"),), shape=_einsum_shape, kind="opaque",
         category="math", lower=lambda i, a, c: f"torch.einsum({a['equation']!r}, {', '.join(i)})",
         doc="Einstein summation")

# ---------------------------------------------------------------------------------- reductions
_RED = {"sum": "torch.sum", "mean": "torch.mean", "amax": "torch.amax", "amin": "torch.amin",
        "logsumexp": "torch.logsumexp", "prod": "torch.prod"}


def _red_lower(fn, needs_dim=False):
    def lower(i, a, c):
        if a["dim"] is None:
            if a["keepdim"]:
                return f"{fn}({i[0]}, dim=tuple(range({i[0]}.dim())), keepdim=True)"
            return f"{fn}({i[0]})" if not needs_dim else f"{fn}({i[0]}, dim=tuple(range({i[0]}.dim())))"
        dim = a["dim"] if isinstance(a["dim"], int) else tuple(a["dim"])
        return f"{fn}({i[0]}, dim={dim!r}" + (", keepdim=True" if a["keepdim"] else "") + ")"
    return lower


def _prod_lower(i, a, c):
    # torch.prod takes one dim: reduce several one at a time, from the last (so earlier indices stay valid)
    dim, keep = a["dim"], ", keepdim=True" if a["keepdim"] else ""
    if dim is None and not keep:
        return f"torch.prod({i[0]})"
    if isinstance(dim, int):
        return f"torch.prod({i[0]}, dim={dim}{keep})"
    rank = max(c.in_types[0].rank, 1)  # a 0-d tensor reduces like a 1-element vector
    out = i[0]
    for d in sorted({d % rank for d in (range(rank) if dim is None else dim)}, reverse=True):
        out = f"torch.prod({out}, dim={d}{keep})"
    return out


def _int_sum_shape(ctx, ins, a):
    t = reduction(ctx, ins, a)
    return TensorType("i64", t.shape) if t.dtype in ("bool", "i32") else t  # torch sums bool/int32 as int64


def _float_reduction(ctx, ins, a):
    float_input(ctx, ins, a)  # torch's mean, var, std and norm reject integer tensors
    return reduction(ctx, ins, a)


_RED_SHAPE = {"sum": _int_sum_shape, "prod": _int_sum_shape, "mean": _float_reduction,
              "logsumexp": lambda ctx, ins, a: _float_result(ctx, [reduction(ctx, ins, a)], a)}
for _name, _fn in _RED.items():
    register(_name, inputs=("x",), attrs=(Attr("dim", "any", None), Attr("keepdim", "bool", False)),
             shape=_RED_SHAPE.get(_name, reduction), kind="reduction", category="reduction",
             lower=_prod_lower if _name == "prod" else _red_lower(_fn, needs_dim=_name in ("logsumexp", "amax", "amin")),
             doc=f"{_name} over dim (all dims when none)")
register("max", inputs=("x",), attrs=(Attr("dim", "any", None), Attr("keepdim", "bool", False)), shape=reduction,
         kind="reduction", category="reduction", lower=_red_lower("torch.amax", True),
         doc="maximum over dim (values; the gradient goes to the max element)")
register("min", inputs=("x",), attrs=(Attr("dim", "any", None), Attr("keepdim", "bool", False)), shape=reduction,
         kind="reduction", category="reduction", lower=_red_lower("torch.amin", True), doc="minimum over dim")
for _name in ("var", "std"):
    register(_name, inputs=("x",), attrs=(Attr("dim", "any", None), Attr("keepdim", "bool", False),
                                          Attr("correction", "int", 1)),
             shape=_float_reduction, kind="reduction", category="reduction",
             lower=lambda i, a, c, _n=_name: f"torch.{_n}({i[0]}" + (f", dim={a['dim']!r}" if a["dim"] is not None else "")
             + (f", correction={a['correction']}" if a["correction"] != 1 else "") + (", keepdim=True" if a["keepdim"] else "") + ")",
             doc=f"{_name} over dim (Bessel-corrected by default)")
register("norm", inputs=("x",), attrs=(Attr("p", "float", 2.0), Attr("dim", "any", None), Attr("keepdim", "bool", False)),
         shape=_float_reduction, kind="reduction", category="reduction",
         lower=lambda i, a, c: f"torch.linalg.vector_norm({i[0]}, ord={_float_text(a['p'])}" + (f", dim={a['dim']!r}" if a["dim"] is not None else "")
         + (", keepdim=True" if a["keepdim"] else "") + ")", doc="p-norm over dim")


def _arg_shape(ctx, ins, a):
    t = reduction(ctx, ins, a)
    return TensorType("i64", t.shape)


for _name in ("argmax", "argmin"):
    register(_name, inputs=("x",), attrs=(Attr("dim", "int", -1), Attr("keepdim", "bool", False)), shape=_arg_shape,
             kind="reduction", category="reduction", nondiff_inputs=(0,),
             lower=lambda i, a, c, _n=_name: f"torch.{_n}({i[0]}, dim={a['dim']}" + (", keepdim=True" if a["keepdim"] else "") + ")",
             doc="index of the extreme value (no gradient)")


def _cos_shape(ctx, ins, a):
    t = broadcast(ctx, ins, a)
    float_input(ctx, [t], a)
    return reduction(ctx, [t], {"dim": a["dim"], "keepdim": False})


register("cosine_similarity", inputs=("a", "b"), attrs=(Attr("dim", "int", 1), Attr("eps", "float", 1e-8)),
         shape=_cos_shape, kind="reduction", category="math",
         lower=lambda i, a, c: f"F.cosine_similarity({i[0]}, {i[1]}, dim={a['dim']}" + (f", eps={a['eps']!r}" if a["eps"] != 1e-8 else "") + ")",
         doc="a.b / (|a| |b|), in [-1, 1] (the notes' 0..1 at 001:609-618 is wrong)")
register("pairwise_distance", inputs=("a", "b"), attrs=(Attr("p", "float", 2.0), Attr("eps", "float", 1e-6)),
         shape=lambda ctx, ins, a: reduction(ctx, [broadcast(ctx, ins, a)], {"dim": -1, "keepdim": False}),
         kind="reduction", category="math",
         lower=lambda i, a, c: f"F.pairwise_distance({i[0]}, {i[1]}, p={_float_text(a['p'])}"
         + (f", eps={a['eps']!r}" if a["eps"] != 1e-6 else "") + ")", doc="|a - b|_p along the last dim")


def _cdist_shape(ctx, ins, a):
    x, y = ins
    ctx.check_rank(x, (2, 3, 4), "a")
    ctx.check_rank(y, (2, 3, 4), "b")
    if x.shape[-1] != y.shape[-1]:
        ctx.check_dim(y.shape[-1], x.shape[-1], "cdist: feature sizes differ")
    return TensorType(x.dtype, x.shape[:-1] + (y.shape[-2],))


register("cdist", inputs=("a", "b"), attrs=(Attr("p", "float", 2.0),), shape=_cdist_shape, kind="opaque",
         category="math", lower=lambda i, a, c: f"torch.cdist({i[0]}, {i[1]}, p={_float_text(a['p'])})",
         doc="all pairwise distances between rows of a and rows of b (VQ-VAE codebook lookup)")

# ---------------------------------------------------------------------------------- random sampling
for _name, _fn, _doc in (("randn_like", "torch.randn_like", "standard normal noise shaped like x (reparameterisation)"),
                         ("rand_like", "torch.rand_like", "uniform [0, 1) noise shaped like x")):
    register(_name, inputs=("x",), shape=same_as_input, kind="elementwise", category="random", random=True,
             nondiff_inputs=(0,), lower=lambda i, a, c, _fn=_fn: f"{_fn}({i[0]})", doc=_doc)


def _sample_shape(ctx, ins, a):
    return TensorType("f32", tuple(a["shape"]))


register("normal", inputs=(), attrs=(Attr("shape", "dims"), Attr("mean", "float", 0.0), Attr("std", "float", 1.0)),
         shape=_sample_shape, kind="elementwise", category="random", random=True,
         lower=lambda i, a, c: f"torch.randn({c.dims(a['shape'])}, device={c.device}, dtype={c.dtype})"
         + (f" * {a['std']!r}" if a["std"] != 1.0 else "") + (f" + {a['mean']!r}" if a["mean"] != 0.0 else ""),
         doc="samples from N(mean, std^2)")
register("uniform", inputs=(), attrs=(Attr("shape", "dims"), Attr("low", "float", 0.0), Attr("high", "float", 1.0)),
         shape=_sample_shape, kind="elementwise", category="random", random=True,
         lower=lambda i, a, c: f"torch.rand({c.dims(a['shape'])}, device={c.device}, dtype={c.dtype})"
         + (f" * {a['high'] - a['low']!r}" if a["high"] - a["low"] != 1.0 else "") + (f" + {a['low']!r}" if a["low"] != 0.0 else ""),
         doc="samples from U(low, high)")
register("bernoulli", inputs=("p",), shape=same_as_input, kind="elementwise", category="random", random=True,
         nondiff_inputs=(0,), lower=lambda i, a, c: f"torch.bernoulli({i[0]})", doc="0/1 samples with probability p")
