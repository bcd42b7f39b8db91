"""Loss functions (seed 001:385-618). Each takes predictions and targets and a `reduction`
('mean', 'sum' or 'none'), and lowers to torch.nn.functional with PyTorch's exact definition.
Targets (class indices, labels) take no gradient.
"""
from __future__ import annotations

from nnspec.compiler.ops.common import float_input
from nnspec.compiler.ops.registry import Attr, register
from nnspec.compiler.shapes import TensorType, shape_str

_RED = Attr("reduction", "str", "mean", ("mean", "sum", "none"))


def _reduce(t: TensorType, a) -> TensorType:
    return t if a["reduction"] == "none" else t.with_shape(())


def _kw(a, defaults: dict) -> str:
    parts = [f"{k}={a[k]!r}" for k, d in defaults.items() if a[k] != d]
    return "".join(", " + p for p in parts)


def _same_shape(ctx, ins, a):
    x, y = ins[0], ins[1]
    float_input(ctx, ins, a)
    if x.shape != y.shape:
        ctx.fail("E0301", f"shape mismatch in {ctx.op.name}: prediction is {shape_str(x.shape)}, target is {shape_str(y.shape)}",
                 found=shape_str(y.shape), expected=shape_str(x.shape),
                 hint="the prediction and the target must have the same shape")
    if not y.is_float:
        ctx.fail("E0305", f"{ctx.op.name} needs a floating-point target, found {y.dtype}", found=str(y),
                 expected="a float tensor", hint="declare the target as f32")
    return _reduce(x, a)


def _regression(name, fn, extra=(), doc=""):
    defaults = {"reduction": "mean", **{e.name: e.default for e in extra}}
    register(name, inputs=("input", "target"), attrs=tuple(extra) + (_RED,), shape=_same_shape,
             kind="reduction", category="loss", nondiff_inputs=(1,), doc=doc,
             lower=lambda i, a, c: f"{fn}({i[0]}, {i[1]}{_kw(a, defaults)})")


_regression("mse_loss", "F.mse_loss", doc="mean((x - y)^2)")
_regression("l1_loss", "F.l1_loss", doc="mean(|x - y|)")
_regression("smooth_l1_loss", "F.smooth_l1_loss", (Attr("beta", "float", 1.0),),
            doc="0.5 (x-y)^2 / beta if |x-y| < beta else |x-y| - 0.5 beta")
_regression("huber_loss", "F.huber_loss", (Attr("delta", "float", 1.0),), doc="Huber loss")
_regression("soft_margin_loss", "F.soft_margin_loss", doc="mean(log(1 + exp(-y x))), y in {-1, 1}")


def _bce_shape(ctx, ins, a):
    return _same_shape(ctx, ins, a)


register("bce", inputs=("input", "target"), attrs=(_RED,), shape=_bce_shape, kind="reduction", category="loss",
         nondiff_inputs=(1,), doc="-[y log x + (1 - y) log(1 - x)]; x must be a probability (after sigmoid)",
         lower=lambda i, a, c: f"F.binary_cross_entropy({i[0]}, {i[1]}{_kw(a, {'reduction': 'mean'})})")
register("bce_with_logits", inputs=("input", "target"), attrs=(_RED,), shape=_bce_shape, kind="reduction",
         category="loss", nondiff_inputs=(1,), doc="bce(sigmoid(x), y), numerically stable",
         lower=lambda i, a, c: f"F.binary_cross_entropy_with_logits({i[0]}, {i[1]}{_kw(a, {'reduction': 'mean'})})")


def _class_shape(ctx, ins, a):
    x, y = ins
    float_input(ctx, ins, a)
    if x.rank < 1:
        ctx.check_rank(x, (1, 2, 3, 4))
    if y.dtype in ("i32", "i64"):
        expect = (x.shape[:1] + x.shape[2:]) if x.rank >= 2 else ()
        if tuple(y.shape) != tuple(expect):
            ctx.fail("E0301", f"shape mismatch in {ctx.op.name}: logits are {shape_str(x.shape)}, so class indices "
                     f"must be {shape_str(expect)}; found {shape_str(y.shape)}",
                     found=shape_str(y.shape), expected=shape_str(expect),
                     hint="the class dimension is dimension 1 of the logits")
        out = y
    elif y.is_float and ctx.op.name == "cross_entropy":  # class probabilities
        if y.shape != x.shape:
            ctx.fail("E0301", f"shape mismatch in cross_entropy: probability targets must match the logits {shape_str(x.shape)}",
                     found=shape_str(y.shape), expected=shape_str(x.shape))
        out = y.with_shape(x.shape[:1] + x.shape[2:] if x.rank >= 2 else ())  # unbatched logits: one loss
    else:
        ctx.fail("E0305", f"{ctx.op.name} needs integer class indices as target, found {y.dtype}", found=str(y),
                 expected="an i64 tensor of class indices")
    return TensorType(x.dtype, out.shape) if a["reduction"] == "none" else TensorType(x.dtype, ())


register("cross_entropy", inputs=("input", "target"),
         attrs=(Attr("ignore_index", "int", -100), Attr("label_smoothing", "float", 0.0), _RED),
         shape=_class_shape, kind="reduction", category="loss", nondiff_inputs=(1,),
         doc="log_softmax + nll: -log(exp(x_y) / sum_j exp(x_j)); takes raw logits",
         lower=lambda i, a, c: f"F.cross_entropy({i[0]}, {i[1]}{_kw(a, {'ignore_index': -100, 'label_smoothing': 0.0, 'reduction': 'mean'})})")
register("nll_loss", inputs=("input", "target"), attrs=(Attr("ignore_index", "int", -100), _RED),
         shape=_class_shape, kind="reduction", category="loss", nondiff_inputs=(1,),
         doc="-x[y]; input is log-probabilities (after log_softmax)",
         lower=lambda i, a, c: f"F.nll_loss({i[0]}, {i[1]}{_kw(a, {'ignore_index': -100, 'reduction': 'mean'})})")


def _kl_shape(ctx, ins, a):
    return _same_shape(ctx, ins, {**a, "reduction": "mean" if a["reduction"] != "none" else "none"})


register("kl_div", inputs=("input", "target"),
         attrs=(Attr("reduction", "str", "batchmean", ("batchmean", "mean", "sum", "none")), Attr("log_target", "bool", False)),
         shape=_kl_shape, kind="reduction", category="loss", nondiff_inputs=(1,),
         doc="sum y (log y - x) / batch; input in log space (001:533-551)",
         lower=lambda i, a, c: f"F.kl_div({i[0]}, {i[1]}, reduction={a['reduction']!r}"
         + (", log_target=True" if a["log_target"] else "") + ")")


def _hinge_shape(ctx, ins, a):
    return _same_shape(ctx, ins, a)


register("hinge_embedding_loss", inputs=("input", "target"), attrs=(Attr("margin", "float", 1.0), _RED),
         shape=_hinge_shape, kind="reduction", category="loss", nondiff_inputs=(1,),
         doc="x if y = 1, max(0, margin - x) if y = -1",
         lower=lambda i, a, c: f"F.hinge_embedding_loss({i[0]}, {i[1]}{_kw(a, {'margin': 1.0, 'reduction': 'mean'})})")


def _pair_target_shape(ctx, ins, a):
    x1, x2, y = ins
    float_input(ctx, ins, a)
    if x1.shape != x2.shape:
        ctx.fail("E0301", f"shape mismatch in {ctx.op.name}: inputs are {shape_str(x1.shape)} and {shape_str(x2.shape)}",
                 found=shape_str(x2.shape), expected=shape_str(x1.shape))
    rows = x1.shape if ctx.op.name == "margin_ranking_loss" else x1.shape[:-1]
    if tuple(y.shape) != tuple(rows):
        ctx.fail("E0301", f"shape mismatch in {ctx.op.name}: target must be {shape_str(rows)}",
                 found=shape_str(y.shape), expected=shape_str(rows))
    return _reduce(TensorType(x1.dtype, rows), a)


register("margin_ranking_loss", inputs=("x1", "x2", "target"), attrs=(Attr("margin", "float", 0.0), _RED),
         shape=_pair_target_shape, kind="reduction", category="loss", nondiff_inputs=(2,),
         doc="max(0, -y (x1 - x2) + margin)",
         lower=lambda i, a, c: f"F.margin_ranking_loss({i[0]}, {i[1]}, {i[2]}{_kw(a, {'margin': 0.0, 'reduction': 'mean'})})")
register("cosine_embedding_loss", inputs=("x1", "x2", "target"), attrs=(Attr("margin", "float", 0.0), _RED),
         shape=_pair_target_shape, kind="reduction", category="loss", nondiff_inputs=(2,),
         doc="1 - cos(x1, x2) if y = 1, max(0, cos(x1, x2) - margin) if y = -1",
         lower=lambda i, a, c: f"F.cosine_embedding_loss({i[0]}, {i[1]}, {i[2]}{_kw(a, {'margin': 0.0, 'reduction': 'mean'})})")


def _triplet_shape(ctx, ins, a):
    a_, p, n = ins
    float_input(ctx, ins, a)
    for k, t in (("positive", p), ("negative", n)):
        if t.shape != a_.shape:
            ctx.fail("E0301", f"shape mismatch in triplet_margin_loss: {k} is {shape_str(t.shape)}, anchor is {shape_str(a_.shape)}",
                     found=shape_str(t.shape), expected=shape_str(a_.shape))
    return _reduce(a_.with_shape(a_.shape[:-1]), a)


register("triplet_margin_loss", inputs=("anchor", "positive", "negative"),
         attrs=(Attr("margin", "float", 1.0), Attr("p", "float", 2.0), _RED), shape=_triplet_shape,
         kind="reduction", category="loss", doc="max(0, d(a, p) - d(a, n) + margin)",
         lower=lambda i, a, c: f"F.triplet_margin_loss({i[0]}, {i[1]}, {i[2]}{_kw(a, {'margin': 1.0, 'p': 2.0, 'reduction': 'mean'})})")


def _multi_margin_shape(ctx, ins, a):
    x, y = ins
    float_input(ctx, ins, a)
    ctx.check_rank(x, (1, 2))
    if a["p"] not in (1, 2):
        ctx.fail("E0401", f"attribute `p` of multi_margin_loss must be 1 or 2, found {a['p']!r}", found=repr(a["p"]),
                 expected="1 or 2")
    if y.dtype not in ("i32", "i64") or tuple(y.shape) != tuple(x.shape[:-1]):
        ctx.fail("E0301", f"multi_margin_loss needs class indices of shape {shape_str(x.shape[:-1])}",
                 found=str(y), expected=f"i64{shape_str(x.shape[:-1])}")
    return _reduce(TensorType(x.dtype, x.shape[:-1]), a)


register("multi_margin_loss", inputs=("input", "target"), attrs=(Attr("p", "int", 1), Attr("margin", "float", 1.0), _RED),
         shape=_multi_margin_shape, kind="reduction", category="loss", nondiff_inputs=(1,),
         doc="multi-class hinge: sum_{j != y} max(0, margin - x_y + x_j)^p / C",
         lower=lambda i, a, c: f"F.multi_margin_loss({i[0]}, {i[1]}{_kw(a, {'p': 1, 'margin': 1.0, 'reduction': 'mean'})})")
