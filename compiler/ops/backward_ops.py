"""Ops that appear only in backward graphs: accumulation, reductions back to an operand's shape,
saved forward values, and the dedicated backward ops of heavy forward ops (convolution, pooling,
normalisation, embedding...). Lowerings that need more than one expression call small helper
functions that codegen copies into the generated file (see compiler/codegen/backward.py: HELPERS).
"""
from __future__ import annotations

from nnspec.compiler.ops.common import broadcast
from nnspec.compiler.ops.registry import Attr, register
from nnspec.compiler.shapes import TensorType


def _same(i):
    return lambda ctx, ins, a: ins[i]


def _typed_by_builder(ctx, ins, a):
    raise AssertionError(f"{ctx.op.name} nodes are typed by autodiff")


register("accumulate", inputs=("*grads",), shape=lambda ctx, ins, a: broadcast(ctx, ins, a), kind="elementwise",
         category="backward", lower=lambda i, a, c: " + ".join(i),
         doc="sum of the gradients that reach a value along several paths (the copy gate's gradient adder)")
register("saved", inputs=(), attrs=(Attr("ref", "any"),), shape=_typed_by_builder, category="backward",
         lower=lambda i, a, c: f"saved[{_saved_key(a['ref'])!r}]", doc="a forward value the backward pass reads")
register("param_value", inputs=(), attrs=(Attr("module", "str"), Attr("param", "str")), shape=_typed_by_builder,
         category="backward", lower=lambda i, a, c: c.module + (f".{a['param']}" if a["param"] else ""),
         doc="a parameter's current value, read by a gradient rule")
register("sum_to", inputs=("x",), attrs=(Attr("shape", "dims"),),
         shape=lambda ctx, ins, a: TensorType(ins[0].dtype, tuple(a["shape"])), kind="reduction", category="backward",
         lower=lambda i, a, c: f"{i[0]}.sum_to_size({c.dims(a['shape'])})" if a["shape"] else f"{i[0]}.sum()",
         doc="sum a broadcast gradient back to an operand's shape")
register("expand_to", inputs=("g",), attrs=(Attr("shape", "dims"), Attr("dim", "any", None), Attr("keepdim", "bool", False)),
         shape=lambda ctx, ins, a: TensorType(ins[0].dtype, tuple(a["shape"])), kind="broadcast", category="backward",
         lower=lambda i, a, c: f"_expand_reduced({i[0]}, {c.dims(a['shape'])}, {a['dim']!r}, {a['keepdim']!r})",
         doc="broadcast the gradient of a reduction back over the reduced dimensions")
register("zeros_like", inputs=("x",), shape=_same(0), kind="elementwise", category="backward",
         lower=lambda i, a, c: f"torch.zeros_like({i[0]})", doc="zeros shaped like x (a missing gradient)")


def _py(v) -> str:
    """A Python literal for an attribute value; infinities and NaN become math.inf / math.nan."""
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return "math.nan" if v != v else ("math.inf" if v > 0 else "-math.inf")
    if isinstance(v, tuple):
        inner = ", ".join(_py(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, list):
        return "[" + ", ".join(_py(x) for x in v) + "]"
    return repr(v)


def _saved_key(ref) -> str:
    return f"{ref[0]}" if ref[1] == 0 else f"{ref[0]}:{ref[1]}"


register("scan_backward", inputs=("*grads",), attrs=(Attr("body_backward", "any"),), shape=_typed_by_builder,
         category="backward", kind="opaque",
         doc="backpropagation through time: the cell's backward graph run over the steps in reverse, "
             "accumulating the shared weights' gradients")


def _multi(n_out_fn):
    return n_out_fn


# ---- dedicated backward ops of heavy forward ops; each lowers to a helper of the generated file
def _like_inputs(*idx):
    def rule(ctx, ins, a):
        outs = [ins[i] for i in idx if i < len(ins)]  # an optional weight may be absent (affine=false)
        return outs if len(outs) > 1 else outs[0]
    return rule


for _name, _inputs, _outs, _doc in (
    ("conv_backward", ("g", "x", "w"), (1, 2), "dL/dx and dL/dw of a convolution (aten convolution_backward)"),
    ("max_pool_grad", ("g", "x"), (1,), "route the gradient to each window's maximum"),
    ("avg_pool_grad", ("g", "x"), (1,), "spread the gradient evenly over each window"),
    ("adaptive_pool_grad", ("g", "x"), (1,), "gradient of adaptive average/max pooling"),
    ("upsample_grad", ("g", "x"), (1,), "gradient of nearest/bilinear upsampling"),
    ("batch_norm_grad", ("g", "x", "w"), (1, 2, 2), "dL/dx, dL/dgamma, dL/dbeta of batch normalisation"),
    ("layer_norm_grad", ("g", "x", "w"), (1, 2, 2), "dL/dx, dL/dgamma, dL/dbeta of layer normalisation"),
    ("group_norm_grad", ("g", "x", "w"), (1, 2, 2), "dL/dx, dL/dgamma, dL/dbeta of group/instance normalisation"),
    ("getitem_grad", ("g", "x"), (1,), "scatter the gradient of a slice back into a zero tensor"),
    ("gather_grad", ("g", "x", "index"), (1,), "scatter-add the gradient of gather"),
    ("embedding_grad", ("g", "ids", "w"), (2,), "row-wise scatter-add of the gradient into the table"),
    ("loss_grad", ("g", "input", "target"), (1,), "dL/dinput of a loss (formula per loss in the helper)"),
    ("loss_grad3", ("g", "a", "b", "c"), (1, 2, 3), "dL/d inputs of a three-input loss"),
    ("pair_grad", ("g", "a", "b"), (1, 2), "gradients of a two-input similarity or distance"),
    ("reduce_grad", ("g", "x", "out"), (1,), "gradient of max/min/var/std/norm/logsumexp/prod reductions"),
    ("dropout_grad", ("g", "x", "out"), (1,), "gradient of (alpha) dropout: the kept elements' scale, read off the "
     "forward input and output"),
):
    register(_name, inputs=_inputs, attrs=(Attr("op", "str"), Attr("attrs", "any", None)),
             shape=_like_inputs(*_outs), kind="opaque", category="backward", nondiff_inputs=tuple(range(len(_inputs))),
             optional_inputs=1 if _name.endswith("norm_grad") else 0,
             lower=lambda i, a, c, _name=_name: f"_{_name}({', '.join(i)}, {a['op']!r}, {_py(a['attrs'])}"
             + (f", {c.module})" if _name.endswith("norm_grad") else ")"), doc=_doc)


# ---- backward ops of the fused forms the rewrites create (compiler/passes/rewrite.py)
register("sdpa_backward", inputs=("g", "q", "k", "v", "mask"), optional_inputs=1,
         attrs=(Attr("is_causal", "bool", False), Attr("scale", "float_or_none", None)),
         shape=_like_inputs(1, 2, 3), kind="opaque", category="backward", nondiff_inputs=(0, 1, 2, 3, 4),
         lower=lambda i, a, c: f"_sdpa_backward({', '.join(i[:4])}, {i[4] if len(i) > 4 else None}, "
                               f"{a['is_causal']!r}, {a['scale']!r})",
         doc="dL/dq, dL/dk, dL/dv of scaled dot-product attention: the softmax's Jacobian written out")
register("lstm_backward", inputs=("g_y", "g_h", "g_c", "x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"),
         optional_inputs=2, attrs=(Attr("batch_first", "bool", True),),
         shape=lambda ctx, ins, a: list(ins[3:]), kind="opaque", category="backward",
         nondiff_inputs=tuple(range(10)),
         lower=lambda i, a, c: f"_lstm_backward(({', '.join(i[:3])}), ({', '.join(i[3:])}), {a['batch_first']!r})",
         doc="gradients of lstm for its input, initial states and weights (backpropagation through time)")
register("linear_cross_entropy_backward", inputs=("g_logits", "g_loss", "x", "weight", "target"),
         attrs=(Attr("ignore_index", "int", -100),), shape=_like_inputs(2, 3), kind="opaque", category="backward",
         nondiff_inputs=tuple(range(5)),
         lower=lambda i, a, c: f"_linear_cross_entropy_backward({', '.join(i)}, {a['ignore_index']!r})",
         doc="dL/dx and dL/dweight of linear_cross_entropy: (softmax - one-hot) / count, times the weight or the input")
