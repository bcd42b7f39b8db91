"""Gradient rules: one line (or a few) per op, in the style of tinygrad's gradient table.

A rule gets the builder `b` (compiler/autodiff.py), the forward node and the gradients of its
outputs (`g[k]`, None where no gradient arrives) and returns the vector-Jacobian product for each
input, as IR ops added through `b`: a list aligned with the node's inputs, or a dict
{"inputs": [...], "params": {"weight": ..., "bias": ...}} for layers that own parameters.
`b.input_value(i)` and `b.output_value(k)` read forward values (saved-tensor edges); `b.param(name)`
reads a parameter. Ops whose gradient is zero or undefined (comparisons, argmax, sign, sampling) map to
`_none`. Heavy ops use dedicated backward ops (compiler/ops/backward_ops.py).
"""
from __future__ import annotations

from nnspec.compiler.shapes import numel

RULES: dict = {}


def rule(*names):
    def deco(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return deco


def _shape(b, i):
    return b.fwd.type_of(b.node.inputs[i]).shape


def _is_const(b, i) -> bool:
    return b.fwd.nodes[b.node.inputs[i][0]].op == "constant"


def _where(b, cond, a, other):
    return b.op("where", [cond, a, other])


def _zero(b):
    return b.const(0.0)


@rule("sign", "floor", "round", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "argmax", "argmin",
      "randn_like", "rand_like", "normal", "uniform", "bernoulli", "stop_gradient", "zeros", "ones", "full", "arange",
      "constant")
def _none(b, node, g):
    return [None] * len(node.inputs)


# ------------------------------------------------------------------------------ elementwise arithmetic
@rule("add")
def _add(b, node, g):
    return [b.sum_to(g[0], _shape(b, 0)), b.sum_to(g[0], _shape(b, 1))]


@rule("sub")
def _sub(b, node, g):
    return [b.sum_to(g[0], _shape(b, 0)), None if _is_const(b, 1) else b.sum_to(b.neg(g[0]), _shape(b, 1))]


@rule("mul")
def _mul(b, node, g):
    x, y = b.input_value(0), b.input_value(1)
    return [None if _is_const(b, 0) else b.sum_to(b.mul(g[0], y), _shape(b, 0)),
            None if _is_const(b, 1) else b.sum_to(b.mul(g[0], x), _shape(b, 1))]


@rule("div")
def _div(b, node, g):
    y = b.input_value(1)
    da = None if _is_const(b, 0) else b.sum_to(b.div(g[0], y), _shape(b, 0))
    db = None if _is_const(b, 1) else b.sum_to(b.neg(b.div(b.mul(g[0], b.output_value()), y)), _shape(b, 1))
    return [da, db]


@rule("pow")
def _pow(b, node, g):
    x, p = b.input_value(0), b.input_value(1)
    da = None
    if not _is_const(b, 0):
        # d/dx x^p = p * x^(p-1)
        da = b.sum_to(b.mul(g[0], b.mul(p, b.op("pow", [x, b.sub(p, b.const(1.0))]))), _shape(b, 0))
    db = None if _is_const(b, 1) else b.sum_to(b.mul(g[0], b.mul(b.output_value(), b.op("log", [x]))), _shape(b, 1))
    return [da, db]


@rule("maximum", "minimum")
def _maxmin(b, node, g):
    x, y = b.input_value(0), b.input_value(1)
    pick_x = b.op("ge" if node.op == "maximum" else "le", [x, y])
    return [b.sum_to(_where(b, pick_x, g[0], _zero(b)), _shape(b, 0)),
            b.sum_to(_where(b, pick_x, _zero(b), g[0]), _shape(b, 1))]


@rule("where")
def _where_rule(b, node, g):
    c = b.input_value(0)
    return [None, b.sum_to(_where(b, c, g[0], _zero(b)), _shape(b, 1)),
            b.sum_to(_where(b, c, _zero(b), g[0]), _shape(b, 2))]


@rule("masked_fill")
def _masked_fill(b, node, g):
    return [_where(b, b.input_value(1), _zero(b), g[0]), None]


@rule("neg")
def _neg(b, node, g):
    return [b.neg(g[0])]


@rule("identity", "straight_through")
def _identity(b, node, g):
    return [g[0]] + [None] * (len(node.inputs) - 1)


@rule("exp")
def _exp(b, node, g):
    return [b.mul(g[0], b.output_value())]


@rule("expm1")
def _expm1(b, node, g):
    return [b.mul(g[0], b.add(b.output_value(), b.const(1.0)))]


@rule("log")
def _log(b, node, g):
    return [b.div(g[0], b.input_value(0))]


@rule("log1p")
def _log1p(b, node, g):
    return [b.div(g[0], b.add(b.input_value(0), b.const(1.0)))]


@rule("sqrt")
def _sqrt(b, node, g):
    return [b.div(b.scale(g[0], 0.5), b.output_value())]


@rule("rsqrt")
def _rsqrt(b, node, g):
    y = b.output_value()
    return [b.mul(b.scale(g[0], -0.5), b.mul(y, b.mul(y, y)))]


@rule("abs")
def _abs(b, node, g):
    return [b.mul(g[0], b.op("sign", [b.input_value(0)]))]


@rule("sin")
def _sin(b, node, g):
    return [b.mul(g[0], b.op("cos", [b.input_value(0)]))]


@rule("cos")
def _cos(b, node, g):
    return [b.neg(b.mul(g[0], b.op("sin", [b.input_value(0)])))]


@rule("square")
def _square(b, node, g):
    return [b.mul(b.scale(g[0], 2.0), b.input_value(0))]


@rule("reciprocal")
def _reciprocal(b, node, g):
    y = b.output_value()
    return [b.neg(b.mul(g[0], b.mul(y, y)))]


@rule("erf")
def _erf(b, node, g):
    x = b.input_value(0)
    return [b.mul(b.scale(g[0], 1.1283791670955126), b.op("exp", [b.neg(b.mul(x, x))]))]  # 2/sqrt(pi) e^(-x^2)


@rule("atanh")
def _atanh(b, node, g):
    x = b.input_value(0)
    return [b.div(g[0], b.sub(b.const(1.0), b.mul(x, x)))]


@rule("clamp")
def _clamp(b, node, g):
    x = b.input_value(0)
    keep = None
    if node.attrs["min"] is not None:
        keep = b.op("ge", [x, b.const(node.attrs["min"])])
    if node.attrs["max"] is not None:
        upper = b.op("le", [x, b.const(node.attrs["max"])])
        keep = upper if keep is None else b.op("logical_and", [keep, upper])
    return [g[0] if keep is None else _where(b, keep, g[0], _zero(b))]


@rule("cast")
def _cast(b, node, g):
    return [b.op("cast", [g[0]], dtype=b.fwd.type_of(node.inputs[0]).dtype)]


# ------------------------------------------------------------------------------ activations
@rule("relu")
def _relu(b, node, g):
    return [_where(b, b.op("gt", [b.output_value(), _zero(b)]), g[0], _zero(b))]


@rule("leaky_relu")
def _leaky(b, node, g):
    x = b.input_value(0)
    return [_where(b, b.op("gt", [x, _zero(b)]), g[0], b.scale(g[0], node.attrs["negative_slope"]))]


@rule("rrelu")
def _rrelu(b, node, g):
    # the slope a drawn in the forward pass is out / x where x < 0: exact without saving the noise
    x, y = b.input_value(0), b.output_value()
    neg = b.op("lt", [x, _zero(b)])
    slope = _where(b, neg, b.div(y, _where(b, neg, x, b.const(1.0))), b.const(1.0))
    return [b.mul(g[0], slope)]


@rule("elu", "celu")
def _elu(b, node, g):
    x, y = b.input_value(0), b.output_value()
    alpha = node.attrs["alpha"]
    # x <= 0: elu' = y + alpha;  celu' = exp(x/alpha) = y/alpha + 1
    neg_grad = b.add(y, b.const(alpha)) if node.op == "elu" else b.add(b.scale(y, 1.0 / alpha), b.const(1.0))
    return [_where(b, b.op("gt", [x, _zero(b)]), g[0], b.mul(g[0], neg_grad))]


@rule("selu")
def _selu(b, node, g):
    scale, alpha = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
    x, y = b.input_value(0), b.output_value()
    return [_where(b, b.op("gt", [x, _zero(b)]), b.scale(g[0], scale), b.mul(g[0], b.add(y, b.const(scale * alpha))))]


@rule("gelu")
def _gelu(b, node, g):
    x = b.input_value(0)
    if node.attrs["approximate"] == "tanh":
        k, c = 0.7978845608028654, 0.044715  # sqrt(2/pi)
        x2 = b.mul(x, x)
        t = b.op("tanh", [b.scale(b.add(x, b.scale(b.mul(x2, x), c)), k)])
        left = b.scale(b.add(t, b.const(1.0)), 0.5)
        right = b.mul(b.scale(x, 0.5 * k), b.mul(b.sub(b.const(1.0), b.mul(t, t)), b.add(b.const(1.0), b.scale(x2, 3 * c))))
        return [b.mul(g[0], b.add(left, right))]
    cdf = b.scale(b.add(b.op("erf", [b.scale(x, 0.7071067811865476)]), b.const(1.0)), 0.5)
    pdf = b.scale(b.op("exp", [b.scale(b.mul(x, x), -0.5)]), 0.3989422804014327)
    return [b.mul(g[0], b.add(cdf, b.mul(x, pdf)))]


def _band(b, x, lo, hi):
    return b.op("logical_and", [b.op("gt", [x, b.const(lo)]), b.op("lt", [x, b.const(hi)])])


@rule("relu6", "hardtanh")
def _hardtanh(b, node, g):
    lo, hi = (0.0, 6.0) if node.op == "relu6" else (node.attrs["min_val"], node.attrs["max_val"])
    return [_where(b, _band(b, b.input_value(0), lo, hi), g[0], _zero(b))]


@rule("sigmoid")
def _sigmoid(b, node, g):
    y = b.output_value()
    return [b.mul(g[0], b.mul(y, b.sub(b.const(1.0), y)))]


@rule("tanh")
def _tanh(b, node, g):
    y = b.output_value()
    return [b.mul(g[0], b.sub(b.const(1.0), b.mul(y, y)))]


@rule("softsign")
def _softsign(b, node, g):
    d = b.add(b.const(1.0), b.op("abs", [b.input_value(0)]))
    return [b.div(g[0], b.mul(d, d))]


@rule("threshold")
def _threshold(b, node, g):
    return [_where(b, b.op("gt", [b.input_value(0), b.const(node.attrs["threshold"])]), g[0], _zero(b))]


@rule("tanhshrink")
def _tanhshrink(b, node, g):
    t = b.op("tanh", [b.input_value(0)])
    return [b.mul(g[0], b.mul(t, t))]


@rule("softshrink", "hardshrink")
def _shrink(b, node, g):
    lam = node.attrs["lambd"]
    return [_where(b, b.op("gt", [b.op("abs", [b.input_value(0)]), b.const(lam)]), g[0], _zero(b))]


@rule("logsigmoid")
def _logsigmoid(b, node, g):
    return [b.mul(g[0], b.op("sigmoid", [b.neg(b.input_value(0))]))]


@rule("softplus")
def _softplus(b, node, g):
    x = b.input_value(0)
    beta, th = node.attrs["beta"], node.attrs["threshold"]
    s = b.op("sigmoid", [b.scale(x, beta)])
    return [_where(b, b.op("gt", [b.scale(x, beta), b.const(th)]), g[0], b.mul(g[0], s))]


@rule("silu")
def _silu(b, node, g):
    x = b.input_value(0)
    s = b.op("sigmoid", [x])
    return [b.mul(g[0], b.add(s, b.mul(b.mul(x, s), b.sub(b.const(1.0), s))))]


@rule("mish")
def _mish(b, node, g):
    x = b.input_value(0)
    t = b.op("tanh", [b.op("softplus", [x])])
    d = b.add(t, b.mul(b.mul(x, b.op("sigmoid", [x])), b.sub(b.const(1.0), b.mul(t, t))))
    return [b.mul(g[0], d)]


@rule("hardsigmoid")
def _hardsigmoid(b, node, g):
    return [_where(b, _band(b, b.input_value(0), -3.0, 3.0), b.scale(g[0], 1.0 / 6.0), _zero(b))]


@rule("hardswish")
def _hardswish(b, node, g):
    x = b.input_value(0)
    mid = b.mul(g[0], b.add(b.scale(x, 1.0 / 3.0), b.const(0.5)))
    upper = _where(b, b.op("le", [x, b.const(3.0)]), mid, g[0])
    return [_where(b, b.op("lt", [x, b.const(-3.0)]), _zero(b), upper)]


@rule("softmax")
def _softmax(b, node, g):
    y = b.output_value()
    s = b.op("sum", [b.mul(g[0], y)], dim=node.attrs["dim"], keepdim=True)
    return [b.mul(y, b.sub(g[0], s))]


@rule("softmin")
def _softmin(b, node, g):
    y = b.output_value()
    s = b.op("sum", [b.mul(g[0], y)], dim=node.attrs["dim"], keepdim=True)
    return [b.neg(b.mul(y, b.sub(g[0], s)))]


@rule("log_softmax")
def _log_softmax(b, node, g):
    p = b.op("exp", [b.output_value()])
    s = b.op("sum", [g[0]], dim=node.attrs["dim"], keepdim=True)
    return [b.sub(g[0], b.mul(p, s))]


@rule("prelu")
def _prelu(b, node, g):
    x = b.input_value(0)
    a = b.param("weight")
    n = node.attrs["num_parameters"]
    rank = b.fwd.type_of(node.inputs[0]).rank
    a_b = a if n == 1 or rank < 2 else b.reshape(a, (n,) + (1,) * (rank - 2))
    pos = b.op("gt", [x, _zero(b)])
    dx = _where(b, pos, g[0], b.mul(g[0], a_b))
    ga = _where(b, pos, _zero(b), b.mul(g[0], x))
    if n == 1:
        da = b.reshape(b.op("sum", [ga]), (1,))
    else:
        dims = [d for d in range(rank) if d != 1]
        da = b.op("sum", [ga], dim=tuple(dims))
    return {"inputs": [dx], "params": {"weight": da}}


@rule("dropout", "alpha_dropout", "dropout2d")
def _dropout(b, node, g):
    # the mask is not kept: dropout's scale per element is read off its input and output (see _dropout_grad)
    return [b.op("dropout_grad", [g[0], b.input_value(0), b.output_value()], op=node.op, attrs=node.attrs["p"])]


# ------------------------------------------------------------------------------ reductions
@rule("sum", "mean")
def _sum_mean(b, node, g):
    shape = _shape(b, 0)
    dim, keep = node.attrs["dim"], node.attrs["keepdim"]
    gx = b.op("expand_to", [g[0]], shape=tuple(shape), dim=dim, keepdim=keep)
    if node.op == "mean":
        count = numel(shape) if dim is None else numel([shape[d] for d in ((dim,) if isinstance(dim, int) else dim)])
        gx = b.op("div", [gx, b.const(float(count))]) if isinstance(count, int) else \
            b.op("reduce_grad", [g[0], b.input_value(0), b.output_value()], op="mean", attrs=(dim, keep))
    return [gx]


@rule("amax", "amin", "max", "min", "logsumexp", "prod", "var", "std", "norm")
def _reduce(b, node, g):
    attrs = tuple(sorted(node.attrs.items()))
    return [b.op("reduce_grad", [g[0], b.input_value(0), b.output_value()], op=node.op, attrs=attrs)]


# ------------------------------------------------------------------------------ matrix products
@rule("matmul")
def _matmul(b, node, g):
    x, w = b.input_value(0), b.input_value(1)
    tx, tw = b.fwd.type_of(node.inputs[0]), b.fwd.type_of(node.inputs[1])
    # a vector operand is a matrix with one row (left) or one column (right), as torch treats it
    x2 = b.op("unsqueeze", [x], dim=0) if tx.rank == 1 else x
    w2 = b.op("unsqueeze", [w], dim=-1) if tw.rank == 1 else w
    out2 = b.op("matmul", [x2, w2]) if (tx.rank == 1 or tw.rank == 1) else None
    g2 = b.reshape(g[0], b.type(out2).shape) if out2 is not None else g[0]
    dx = b.op("matmul", [g2, b.op("transpose", [w2], dim0=-2, dim1=-1)])
    dw = b.op("matmul", [b.op("transpose", [x2], dim0=-2, dim1=-1), g2])
    dx = b.reshape(b.sum_to(dx, b.type(x2).shape), tx.shape)
    dw = b.reshape(b.sum_to(dw, b.type(w2).shape), tw.shape)
    return [dx, dw]


@rule("outer")
def _outer(b, node, g):
    return [b.op("matmul", [g[0], b.input_value(1)]),
            b.op("matmul", [b.op("transpose", [g[0]], dim0=0, dim1=1), b.input_value(0)])]


@rule("einsum")
def _einsum(b, node, g):
    eq = node.attrs["equation"].replace(" ", "")
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    grads = []
    for i, term in enumerate(terms):
        others = [t for j, t in enumerate(terms) if j != i]
        avail = set(out).union(*others) if others else set(out)
        kept = "".join(ch for ch in term if ch in avail)
        sub_eq = ",".join([out] + others) + "->" + kept
        vals = [g[0]] + [b.input_value(j) for j in range(len(terms)) if j != i]
        gi = b.op("einsum", vals, equation=sub_eq)
        if kept != term:  # indices summed only within this operand: broadcast the gradient back over them
            shape = _shape(b, i)
            view = tuple(shape[k] if ch in avail else 1 for k, ch in enumerate(term))
            gi = b.op("expand", [b.reshape(gi, view)], shape=tuple(shape))
        grads.append(gi)
    return grads


# ------------------------------------------------------------------------------ layout
@rule("reshape", "flatten", "squeeze", "unsqueeze")
def _reshape(b, node, g):
    return [b.reshape(g[0], _shape(b, 0))]


@rule("permute")
def _permute(b, node, g):
    rank = len(node.attrs["dims"])
    dims = [d % rank for d in node.attrs["dims"]]
    inverse = [dims.index(i) for i in range(rank)]
    return [b.op("permute", [g[0]], dims=tuple(inverse))]


@rule("transpose")
def _transpose(b, node, g):
    return [b.op("transpose", [g[0]], dim0=node.attrs["dim0"], dim1=node.attrs["dim1"])]


@rule("expand")
def _expand(b, node, g):
    return [b.sum_to(g[0], _shape(b, 0))]


@rule("repeat")
def _repeat(b, node, g):
    shape = _shape(b, 0)
    reps = node.attrs["repeats"]
    lead = len(reps) - len(shape)
    full = (1,) * lead + tuple(shape)
    view = []
    for r, s in zip(reps, full):
        view += [r, s]
    gv = b.reshape(g[0], tuple(view))
    summed = b.op("sum", [gv], dim=tuple(range(0, 2 * len(reps), 2)))
    return [b.reshape(summed, shape)]


@rule("concat")
def _concat(b, node, g):
    dim = node.attrs["dim"]
    sizes = [_shape(b, i)[dim] for i in range(len(node.inputs))]
    parts = b.op("split", [g[0]], sizes=list(sizes), dim=dim)
    return parts if isinstance(parts, list) else [parts]


@rule("stack")
def _stack(b, node, g):
    dim = node.attrs["dim"]
    n = len(node.inputs)
    parts = b.op("split", [g[0]], sizes=[1] * n, dim=dim)
    parts = parts if isinstance(parts, list) else [parts]
    return [b.op("squeeze", [p], dim=dim) for p in parts]


@rule("split", "chunk")
def _split(b, node, g):
    parts = [gk if gk is not None else b.op("zeros_like", [b.output_value(k)]) for k, gk in enumerate(g)]
    return [b.op("concat", parts, dim=node.attrs["dim"])]


@rule("getitem", "select")
def _getitem(b, node, g):
    attrs = node.attrs["key"] if node.op == "getitem" else ("select", node.attrs["dim"], node.attrs["index"])
    return [b.op("getitem_grad", [g[0], b.input_value(0)], op=node.op, attrs=attrs)]


@rule("gather", "index_select")
def _gather(b, node, g):
    return [b.op("gather_grad", [g[0], b.input_value(0), b.input_value(1)], op=node.op, attrs=node.attrs["dim"]), None]


# ------------------------------------------------------------------------------ layers
@rule("linear")
def _linear(b, node, g):
    x, w = b.input_value(0), b.param("weight")
    out_f = node.attrs["out_features"]
    in_f = _shape(b, 0)[-1]
    dx = b.op("matmul", [g[0], w])                                         # [..., out] @ [out, in]
    g2 = b.reshape(g[0], (-1, out_f))
    x2 = b.reshape(x, (-1, in_f))
    dw = b.op("matmul", [b.op("transpose", [g2], dim0=0, dim1=1), x2])     # [out, N] @ [N, in]
    params = {"weight": dw}
    if node.attrs["bias"]:
        params["bias"] = b.sum_to(g[0], (out_f,))
    return {"inputs": [dx], "params": params}


@rule("conv1d", "conv2d", "conv3d", "conv_transpose2d")
def _conv(b, node, g):
    a = node.attrs
    transposed = node.op == "conv_transpose2d"
    attrs = (a["stride"], a["padding"], a["dilation"], a["groups"], transposed, a.get("output_padding", 0),
             a.get("padding_mode", "zeros"))
    dx, dw = b.op("conv_backward", [g[0], b.input_value(0), b.param("weight")], op=node.op, attrs=attrs)
    params = {"weight": dw}
    if a["bias"]:
        rank = b.type(g[0]).rank
        n = 1 if node.op == "conv1d" else (3 if node.op == "conv3d" else 2)
        ch = 1 if rank == n + 2 else 0
        params["bias"] = b.op("sum", [g[0]], dim=tuple(d for d in range(rank) if d != ch))
    return {"inputs": [dx], "params": params}


@rule("max_pool1d", "max_pool2d")
def _max_pool(b, node, g):
    a = node.attrs
    attrs = (a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    return [b.op("max_pool_grad", [g[0], b.input_value(0)], op=node.op, attrs=attrs)]


@rule("avg_pool1d", "avg_pool2d")
def _avg_pool(b, node, g):
    a = node.attrs
    attrs = (a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])
    return [b.op("avg_pool_grad", [g[0], b.input_value(0)], op=node.op, attrs=attrs)]


@rule("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d")
def _adaptive(b, node, g):
    return [b.op("adaptive_pool_grad", [g[0], b.input_value(0)], op=node.op, attrs=node.attrs["output_size"])]


@rule("upsample")
def _upsample(b, node, g):
    return [b.op("upsample_grad", [g[0], b.input_value(0)], op="upsample",
                 attrs=(node.attrs["mode"], node.attrs["align_corners"]))]


@rule("batch_norm", "layer_norm", "instance_norm", "group_norm")
def _norm(b, node, g):
    grad_op = {"batch_norm": "batch_norm_grad", "layer_norm": "layer_norm_grad"}.get(node.op, "group_norm_grad")
    names = [p.name for p in b.fwd.modules[node.module].params if p.trainable and p.init != "buffer"]
    affine = "weight" in names
    inputs = [g[0], b.input_value(0)] + ([b.param("weight")] if affine else [])
    out = b.op(grad_op, inputs, op=node.op, attrs=None)
    if not affine:
        return [out]
    dx, dw, db = out
    params = {"weight": dw}
    if "bias" in names:
        params["bias"] = db
    return {"inputs": [dx], "params": params}


@rule("embedding")
def _embedding(b, node, g):
    dw = b.op("embedding_grad", [g[0], b.input_value(0), b.param("weight")], op="embedding",
              attrs=node.attrs["padding_idx"])
    return {"inputs": [None], "params": {"weight": dw}}


@rule("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "soft_margin_loss", "bce", "bce_with_logits",
      "hinge_embedding_loss", "kl_div", "cross_entropy", "nll_loss", "multi_margin_loss")
def _loss(b, node, g):
    attrs = tuple(sorted(node.attrs.items()))
    return [b.op("loss_grad", [g[0], b.input_value(0), b.input_value(1)], op=node.op, attrs=attrs), None]


@rule("margin_ranking_loss", "cosine_embedding_loss", "triplet_margin_loss")
def _loss3(b, node, g):
    attrs = tuple(sorted(node.attrs.items()))
    da, db, dc = b.op("loss_grad3", [g[0]] + [b.input_value(i) for i in range(3)], op=node.op, attrs=attrs)
    return [da, db, dc if node.op == "triplet_margin_loss" else None]


@rule("cosine_similarity", "pairwise_distance", "cdist")
def _pair(b, node, g):
    attrs = tuple(sorted(node.attrs.items()))
    da, db = b.op("pair_grad", [g[0], b.input_value(0), b.input_value(1)], op=node.op, attrs=attrs)
    return [da, db]


@rule("scan")
def _scan(b, node, g):
    """BPTT: the cell's own backward graph (seeded at its new states and output) runs over the steps in
    reverse; the state gradient is carried backwards and the shared weights' gradients accumulate."""
    from nnspec.compiler.autodiff import build_backward
    from nnspec.compiler.ir import Node

    a = node.attrs
    body = a["body"]
    n = a["n_carries"]
    has_xs = a["has_xs"]
    body_bwd, body_info = build_backward(body, wrt_inputs=True)
    b.info.scan_saved[node.id] = list(body_info.saved)
    names = [body.nodes[i].attrs["name"] for i in body.inputs]
    x_name = names[0] if has_xs else None
    carry_names = names[1:] if has_xs else names
    g_ys = g[0] if g[0] is not None else b.op("zeros_like", [b.output_value(0)])
    g_carries = [g[k + 1] if g[k + 1] is not None else b.op("zeros_like", [b.output_value(k + 1)]) for k in range(n)]
    steps = b.saved((node.id, "steps"))
    param_keys = sorted(body_info.param_grads)
    outs = ([b.fwd.type_of(node.inputs[0])] if has_xs else []) + [b.fwd.type_of(r) for r in node.inputs[-n:]]
    for key in param_keys:
        module, _, pname = key.rpartition(".")
        spec = next(p for p in b.fwd.modules[module].params if p.name == pname)
        outs.append(b.fwd.type_of(node.inputs[0]).with_shape(spec.shape))
    bnode = Node(b.bwd.fresh_id("scan_backward"), "scan_backward", [g_ys] + g_carries + [steps],
                 {"body_backward": body_bwd, "n_carries": n, "has_xs": has_xs, "axis": a["axis"],
                  "reverse": a["reverse"], "cell": node.path[-1] if node.path else "cell", "param_keys": param_keys,
                  "carry_names": carry_names, "x_name": x_name},
                 outs, span=node.span, path=node.path, label=f"d_{node.label or node.id}")
    b.bwd.add_node(bnode)
    refs = [(bnode.id, k) for k in range(len(outs))]
    in_grads = refs[:1 + n] if has_xs else refs[:n]
    return {"inputs": in_grads, "param_grads": dict(zip(param_keys, refs[len(in_grads):]))}


# ------------------------------------------------------------------------------ fused forms (compiler/passes/rewrite.py)
@rule("scaled_dot_product_attention")
def _sdpa(b, node, g):
    ins = [b.input_value(i) for i in range(len(node.inputs))]
    dq, dk, dv = b.op("sdpa_backward", [g[0]] + ins, is_causal=node.attrs["is_causal"], scale=node.attrs["scale"])
    return [dq, dk, dv] + [None] * (len(node.inputs) - 3)


@rule("lstm")
def _lstm(b, node, g):
    gs = [gk if gk is not None else b.op("zeros_like", [b.output_value(k)]) for k, gk in enumerate(g)]
    ins = [b.input_value(i) for i in range(len(node.inputs))]
    return b.op("lstm_backward", gs + ins, batch_first=node.attrs["batch_first"])


@rule("layer_param")
def _layer_param(b, node, g):
    return {"inputs": [], "param_grads": {f"{node.module}.{node.attrs['param']}": g[0]}}


@rule("linear_cross_entropy")
def _linear_cross_entropy(b, node, g):
    grads = [gk if gk is not None else b.op("zeros_like", [b.output_value(k)]) for k, gk in enumerate(g)]
    ins = [b.input_value(i) for i in range(3)]
    dx, dw = b.op("linear_cross_entropy_backward", grads + ins, ignore_index=node.attrs["ignore_index"])
    return [dx, dw, None]


@rule("standard_layout", "channels_last")
def _layout_conversion(b, node, g):
    return [g[0]]
