"""Triton scalar expressions: one entry per fusable op, the math a fused kernel writes for it.

Importing this module attaches each entry to `REGISTRY[name].scalar` (the way compiler/ops/gradients.py
keeps one gradient rule per op). The fusion pass (compiler/passes/fuse.py) fuses exactly the ops that have
an entry; the Triton codegen (compiler/codegen/triton.py) writes a kernel line per op from it.

An entry is `fn(args, attrs, k) -> str`: `args` are the Triton expressions of the operands (a variable or
a literal; float values are fp32, comparisons give int1), `attrs` the node's attributes, and `k` the kernel
being written. Elementwise entries are one expression and ignore `k`. Row reductions (softmax, sum over the
last dimension, ...) run one program per row: they emit their steps through `k`:

    k.let(expr)      bind an expression to a fresh variable and return its name
    k.row_sum(v)     the sum of v over the row's valid lanes (the masked-off lanes never count)
    k.row_max(v), k.row_min(v)
    k.n_cols         the row length (a kernel argument)

A value reduced over the row is one number per program; Triton broadcasts it against the row's lanes, which
is exactly keepdim broadcasting. Math is fp32 whatever the tensors' dtype (the fused softmax tutorial's
accumulation), so fp16/bf16 kernels are at least as accurate as the torch ops they replace.

`triton.language` has no tanh, log1p or expm1, and the interpreter (TRITON_INTERPRET=1) runs no libdevice
calls, so those come from small @triton.jit HELPERS written with tl.exp/tl.log (accurate forms: Kahan's
expm1 and log1p, tanh through expm1); codegen copies a helper into the generated file only when a kernel
calls it.

Ops of kind elementwise or broadcast without an entry are in NO_SCALAR with the reason; that reason is the
fusion pass's boundary reason. KERNEL_ONLY holds the rules of backward ops that appear only inside the
backward kernel derived for a group (the gradient of a row reduction); the pass never fuses them. LAYERS
holds layers with parameters that a kernel computes by decomposing them into the ops above (layer_norm over
the last dimension), the parameters becoming kernel inputs; their gradients then follow from the same rules.
"""
from __future__ import annotations

import math

from nnspec.compiler.ops.registry import REGISTRY

SCALAR: dict = {}


def scalar(*names):
    def deco(fn):
        for n in names:
            SCALAR[n] = fn
        return fn
    return deco


def expr(template: str):
    """An entry that is one expression: {0}, {1} ... are the operands, {name} an attribute."""
    return lambda a, attrs, k: template.format(*a, **{n: num(v) for n, v in attrs.items()
                                                       if isinstance(v, (int, float))})


def num(v) -> str:
    """A number as a Triton literal (inf and nan included)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return 'float("inf")' if v > 0 else '-float("inf")'
        return repr(v)
    return repr(v)


def _table(rows: dict) -> None:
    for name, template in rows.items():
        SCALAR[name] = expr(template)


# ------------------------------------------------------------------------------ arithmetic and comparisons
_table({
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}",
    "maximum": "_max({0}, {1})", "minimum": "_min({0}, {1})",
    "eq": "{0} == {1}", "ne": "{0} != {1}", "lt": "{0} < {1}", "le": "{0} <= {1}", "gt": "{0} > {1}",
    "ge": "{0} >= {1}", "logical_and": "{0} & {1}", "logical_or": "{0} | {1}",
    "where": "tl.where({0}, {1}, {2})", "masked_fill": "tl.where({1}, {value}, {0})",
    "straight_through": "{0} + ({1} - {0})",   # the forward value of x + (q - x).detach(), rounded the same way
    "neg": "-{0}", "exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "tl.sqrt({0})", "rsqrt": "tl.rsqrt({0})",
    "abs": "tl.abs({0})", "sin": "tl.sin({0})", "cos": "tl.cos({0})", "square": "{0} * {0}",
    "reciprocal": "1.0 / {0}", "erf": "tl.erf({0})", "log1p": "_log1p({0})", "expm1": "_expm1({0})",
    "sign": "tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, 0.0))", "floor": "tl.floor({0})",
    "round": "_round_half_even({0})", "atanh": "0.5 * _log1p(2.0 * {0} / (1.0 - {0}))",
    "identity": "{0}", "stop_gradient": "{0}", "zeros_like": "tl.zeros_like({0})",
})


@scalar("accumulate")
def _accumulate(a, attrs, k):
    return " + ".join(a)


@scalar("constant")
def _constant(a, attrs, k):
    return num(attrs["value"])


@scalar("pow")
def _pow(a, attrs, k):
    try:
        p = float(a[1])
    except ValueError:  # a tensor exponent: x^p = exp(p log x), defined for x > 0 as in the gradient rule
        try:
            return f"tl.exp({a[1]} * {num(math.log(float(a[0])))})"  # a number to a tensor power
        except ValueError:
            return f"tl.exp({a[1]} * tl.log({a[0]}))"
    if p == int(p) and 0 <= p <= 4:   # torch.pow's small integer powers are products: exact for negative x
        return " * ".join([a[0]] * int(p)) if p else "1.0"
    if p == 0.5:
        return f"tl.sqrt({a[0]})"
    if p == -1:
        return f"1.0 / {a[0]}"
    if p == int(p):                   # an odd or even integer power keeps the sign rules of x^p
        sign = f"tl.where({a[0]} < 0, -1.0, 1.0) * " if int(p) % 2 else ""
        return f"{sign}tl.exp({a[1]} * tl.log(tl.abs({a[0]})))"
    return f"tl.exp({a[1]} * tl.log({a[0]}))"


@scalar("clamp")
def _clamp(a, attrs, k):
    out = a[0]
    if attrs.get("min") is not None:
        out = f"_max({out}, {num(attrs['min'])})"
    if attrs.get("max") is not None:
        out = f"_min({out}, {num(attrs['max'])})"
    return out


_TL_DTYPE = {"f16": "tl.float16", "bf16": "tl.bfloat16", "f64": "tl.float64", "i32": "tl.int32", "i64": "tl.int64"}


@scalar("cast")
def _cast(a, attrs, k):
    dtype = attrs["dtype"]
    if dtype == "bool":
        return f"{a[0]} != 0"
    if dtype in ("f16", "bf16"):  # round to the narrow type, keep computing in fp32
        return f"{a[0]}.to({_TL_DTYPE[dtype]}).to(tl.float32)"
    if dtype in ("i32", "i64"):
        return f"{a[0]}.to({_TL_DTYPE[dtype]})"
    return f"{a[0]}.to(tl.float32)"  # f32 is the model's float dtype: the kernel's compute type already


# ------------------------------------------------------------------------------ activations
_table({
    "relu": "tl.where({0} < 0, 0.0, {0})",   # NaN stays NaN, as in torch
    "leaky_relu": "tl.where({0} > 0, {0}, {0} * {negative_slope})",
    "elu": "tl.where({0} > 0, {0}, {alpha} * _expm1({0}))",
    "celu": "tl.where({0} > 0, {0}, {alpha} * _expm1({0} / {alpha}))",
    "selu": "1.0507009873554805 * tl.where({0} > 0, {0}, 1.6732632423543772 * _expm1({0}))",
    "relu6": "_min(_max({0}, 0.0), 6.0)",
    "sigmoid": "tl.sigmoid({0})",
    "tanh": "_tanh({0})",
    "softsign": "{0} / (1.0 + tl.abs({0}))",
    "hardtanh": "_min(_max({0}, {min_val}), {max_val})",
    "threshold": "tl.where({0} > {threshold}, {0}, {value})",
    "tanhshrink": "{0} - _tanh({0})",
    "softshrink": "tl.where({0} > {lambd}, {0} - {lambd}, tl.where({0} < -{lambd}, {0} + {lambd}, 0.0))",
    "hardshrink": "tl.where(tl.abs({0}) > {lambd}, {0}, 0.0)",
    "logsigmoid": "_min({0}, 0.0) - _log1p(tl.exp(-tl.abs({0})))",
    "silu": "{0} * tl.sigmoid({0})",
    "mish": "{0} * _tanh(_softplus({0}, 1.0, 20.0))",
    "hardsigmoid": "_min(_max({0} + 3.0, 0.0), 6.0) / 6.0",
    "hardswish": "{0} * _min(_max({0} + 3.0, 0.0), 6.0) / 6.0",
    "softplus": "_softplus({0}, {beta}, {threshold})",
})


@scalar("gelu")
def _gelu(a, attrs, k):
    x = a[0]
    if attrs.get("approximate") == "tanh":
        return f"0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))"
    return f"0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476))"


# ------------------------------------------------------------------------------ row reductions (last dimension)
@scalar("softmax")
def _softmax(a, attrs, k):
    m = k.row_max(a[0])
    e = k.let(f"tl.exp({a[0]} - {m})")
    return f"{e} / {k.row_sum(e)}"


@scalar("softmin")
def _softmin(a, attrs, k):
    neg = k.let(f"-{a[0]}")
    return _softmax([neg], attrs, k)


@scalar("log_softmax")
def _log_softmax(a, attrs, k):
    m = k.row_max(a[0])
    s = k.row_sum(k.let(f"tl.exp({a[0]} - {m})"))
    return f"{a[0]} - {m} - tl.log({s})"


@scalar("logsumexp")
def _logsumexp(a, attrs, k):
    m = k.row_max(a[0])
    m = k.let(f'tl.where(tl.abs({m}) == float("inf"), 0.0, {m})')  # torch's shift: an all -inf row gives -inf
    return f"{m} + tl.log({k.row_sum(k.let(f'tl.exp({a[0]} - {m})'))})"


@scalar("sum")
def _sum(a, attrs, k):
    return k.row_sum(a[0])


@scalar("mean")
def _mean(a, attrs, k):
    return f"{k.row_sum(a[0])} / {k.n_cols}"


@scalar("amax", "max")
def _amax(a, attrs, k):
    return k.row_max(a[0])


@scalar("amin", "min")
def _amin(a, attrs, k):
    return k.row_min(a[0])


# ------------------------------------------------------------------------------ only in derived backward kernels
def _expand_to(a, attrs, k):
    return a[0]  # a row value broadcast over the row: Triton's scalar broadcasting


def _reduce_grad(a, attrs, k):
    """dL/dx of a row reduction out = op(x), given g = dL/dout (one number per row)."""
    g, x, out = a
    op = attrs["op"]
    if op == "mean":
        return f"{g} / {k.n_cols}"
    if op == "logsumexp":
        return f"{g} * tl.exp({x} - {out})"
    if op in ("amax", "max", "amin", "min"):  # torch splits the gradient evenly between tied extremes
        hit = k.let(f"{x} == {out}")
        count = k.row_sum(k.let(f"tl.where({hit}, 1.0, 0.0)"))
        return f"tl.where({hit}, {g} / {count}, 0.0)"
    raise KeyError(f"no kernel rule for the gradient of {op}")


def _dropout_grad(a, attrs, k):
    """dropout's gradient inside a group's backward kernel: the forward kernel's mask drawn again from the same
    seed and element offsets (the Triton tutorials' low-memory dropout), so no mask, input or output is saved."""
    if attrs.get("dropout") is None:
        raise KeyError("dropout_grad outside a group (its mask is read off saved tensors there)")
    return k.dropout(a[0], attrs["dropout"])


KERNEL_ONLY = {"expand_to": _expand_to, "reduce_grad": _reduce_grad, "dropout_grad": _dropout_grad}


@scalar("dropout")
def _dropout(a, attrs, k):
    """Keep an element with probability 1 - p (a Philox draw from the call's seed at the element's offset in the
    iteration space) and scale it by 1/(1 - p). p is a kernel argument: 0 in eval mode."""
    return k.dropout(a[0], k.node_id)


# ------------------------------------------------------------------------------ layers a kernel computes
def _layer_norm_fits(node) -> bool:
    return node.attrs.get("dims", 1) == 1     # normalised over the last dimension: one row per program


def _layer_norm(add, x, params: dict, attrs: dict):
    """layer_norm over the last dimension as ops with scalar expressions (biased variance, like torch):
    `add(op, inputs, **attrs) -> ref` adds an op; params holds the refs of `weight` and `bias` if it has them."""
    mu = add("mean", [x], dim=-1, keepdim=True)
    d = add("sub", [x, mu])
    var = add("mean", [add("mul", [d, d])], dim=-1, keepdim=True)
    y = add("mul", [d, add("rsqrt", [add("add", [var, ("const", float(attrs["eps"]))])])])
    if "weight" in params:
        y = add("mul", [y, params["weight"]])
    if "bias" in params:
        y = add("add", [y, params["bias"]])
    return y


# op -> (does this call fit a kernel, its decomposition): layers with parameters that a fused kernel computes
# from the ops above, their parameters passed in as inputs (the residual add + layer norm of a transformer)
LAYERS = {"layer_norm": (_layer_norm_fits, _layer_norm)}


# ------------------------------------------------------------------------------ ops that are not fused, and why
_RANDOM = "draws random numbers: kept in torch, so the kernel and the fallback see the same random stream"
NO_SCALAR = {
    **{name: _RANDOM for name in ("rrelu", "randn_like", "rand_like", "normal", "uniform", "bernoulli")},
    "dropout2d": "zeroes whole channels: one draw per channel, not per element (kept in torch)",
    "alpha_dropout": "draws random numbers: kept in torch (its kept/dropped affine map is not in the kernels)",
    **{name: "creates a tensor from its attributes (nothing to read: torch fills it)"
       for name in ("zeros", "ones", "full", "arange")},
    "expand": "a view with zero strides: its consumers read the smaller tensor directly",
    "expand_to": "a view that re-inserts reduced dimensions: its consumers read the smaller tensor directly",
    "outer": "its operands index different dimensions (a rank-1 product, not a broadcast)",
    "prelu": "owns its slope parameter (a library layer)",
}


# ------------------------------------------------------------------------------ helpers the expressions call
HELPERS = {
    "_max": '''
@triton.jit
def _max(a, b):
    """max(a, b), NaN if either is NaN (torch.maximum, clamp)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)
''',
    "_min": '''
@triton.jit
def _min(a, b):
    """min(a, b), NaN if either is NaN (torch.minimum, clamp)."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)
''',
    "_expm1": '''
@triton.jit
def _expm1(x):
    """e^x - 1, accurate near 0 (Kahan: (u - 1) * x / log(u) with u = e^x)."""
    u = tl.exp(x)
    um1 = u - 1.0
    return tl.where(um1 == 0.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / tl.log(tl.where(um1 == 0.0, 2.0, u))))
''',
    "_log1p": '''
@triton.jit
def _log1p(x):
    """log(1 + x), accurate near 0 (Goldberg: log(u) * x / (u - 1) with u = 1 + x)."""
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0.0, x, tl.log(u) * x / tl.where(d == 0.0, 1.0, d))
''',
    "_tanh": '''
@triton.jit
def _tanh(x):
    """tanh through expm1: -expm1(-2|x|) / (2 + expm1(-2|x|)), with x's sign; no overflow, accurate near 0."""
    e = _expm1(-2.0 * tl.abs(x))
    t = -e / (2.0 + e)
    return tl.where(x < 0, -t, t)
''',
    "_softplus": '''
@triton.jit
def _softplus(x, beta, threshold):
    """log(1 + e^(beta x)) / beta, linear where beta x > threshold (torch's softplus)."""
    bx = beta * x
    return tl.where(bx > threshold, x, _log1p(tl.exp(_min(bx, threshold))) / beta)
''',
    "_round_half_even": '''
@triton.jit
def _round_half_even(x):
    """round to nearest, ties to even (torch.round)."""
    r = tl.floor(x + 0.5)
    tie = (r - x) == 0.5
    return tl.where(tie & ((r - 2.0 * tl.floor(r * 0.5)) != 0.0), r - 1.0, r)
''',
}
HELPER_DEPENDS = {"_tanh": ("_expm1",), "_softplus": ("_log1p", "_min")}


def helpers_used(text: str) -> list[str]:
    """The helpers a kernel text calls (and those they call), in an order where callees come first."""
    found: list[str] = []

    def visit(name: str) -> None:
        if name in found:
            return
        for dep in HELPER_DEPENDS.get(name, ()):
            visit(dep)
        found.append(name)

    for name in HELPERS:
        if f"{name}(" in text:
            visit(name)
    return found


for _name, _fn in SCALAR.items():
    if _name in REGISTRY:
        REGISTRY[_name].scalar = _fn
