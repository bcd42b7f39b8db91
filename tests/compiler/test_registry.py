"""The registry test: every op in `REGISTRY` has test cases here, and an op without one fails CI.

One table (`SPECS`) gives each op its gradient category and a list of `Case`s: input shapes, dtypes and
value ranges, attributes (defaults and some non-default ones) and an independent torch reference.
For every case the test checks

  1. the shape rule against the shapes and dtypes torch actually produces (and, for cases marked
     `sym`, that the rule stays symbolic and evaluates to the concrete shape);
  2. the lowering: the generated expression is evaluated (float32 and float64), module ops build their
     module from `op.module(...)`, whose parameters and buffers must match `op.params(...)`, and the
     output is compared with the reference computed from the same weights;
  3. gradients: `torch.autograd.gradcheck` through the lowered expression in float64 for
     differentiable ops; zero gradients for ops that have none (comparisons, argmax, sign, ...);
  4. error paths: bad shapes and attributes raise `SpecError` with the expected code;
  5. metadata: doc string, fusion kind, attribute schema, `bind_attrs` defaults.

Ops that only appear in backward graphs (accumulate, sum_to, conv_backward, ...) are compared with
torch.autograd's vector-Jacobian products. `check_ir_gradient_rule` checks every forward op's IR
gradient rule (the backward graph autodiff builds from it, compiled and run) against torch.autograd and
against finite differences.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nnspec.compiler.ir import ParamSpec
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.registry import (FUSION_KINDS, REQUIRED, LowerCtx, OpContext, bind_attrs, coerce_attr)
from nnspec.compiler.shapes import Sym, TensorType, is_concrete
from nnspec.errors import SpecError

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
pytestmark = [pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning"),
              pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")]

NS = {"torch": torch, "F": F, "nn": nn, "math": math}
try:  # helper functions that backward-graph ops call; codegen copies them into the generated file
    from nnspec.compiler.codegen.backward import HELPERS as _HELPERS
except ImportError:  # pragma: no cover - no backward codegen in this checkout
    _HELPERS = {}
for _src in _HELPERS.values():
    exec(_src, NS)
TORCH_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64,
                "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}


# =================================================================================== the table's types
@dataclass
class In:
    """One tensor input: shape, dtype (f32 | i64 | bool) and how to draw its values."""

    shape: tuple
    dtype: str = "f32"
    kind: Any = "n"          # see `_draw`


def f(*shape, k="n"):
    return In(tuple(shape), "f32", k)


def i(*shape, hi=5, lo=0):
    return In(tuple(shape), "i64", ("int", lo, hi))


def b(*shape):
    return In(tuple(shape), "bool", "bool")


@dataclass
class Case:
    ins: list                                  # list[In]
    ref: Callable | None = None                # ref(*xs) ; module ops: ref(*xs, p) with p the module's tensors
    attrs: dict = field(default_factory=dict)  # keyword attributes, bound with bind_attrs
    training: bool = False                     # value of `training` (and module.train()) for this case
    seed: bool = False                         # random op: seed torch identically before lowering and reference
    check: Callable | None = None              # extra check(out, *xs) (statistics of random ops)
    sym: Any = None                            # "B": dim 0 of every input symbolic; or {input: {axis: name}}
    env: dict = field(default_factory=dict)    # values of symbols used in attrs (creation ops)
    gradcheck: bool = True                     # include this case in the gradient check
    mod: Callable | None = None                # ops that use a module they do not own (backward ops): its constructor
    id: str = ""


GRAD_CATEGORIES = ("gradcheck", "zero", "none", "surrogate", "structural", "backward")


@dataclass
class OpSpec:
    grad: str              # gradcheck: differentiable; zero: gradient is zero; none: no float input; surrogate:
    cases: list            # a deliberate non-derivative (checked by `surrogate`); structural: graph nodes (below);
    #                        backward: ops of backward graphs, whose values are checked against torch.autograd
    surrogate: Callable | None = None   # for grad == "surrogate": check(xs_with_grad, out)


SPECS: dict[str, OpSpec] = {}


def spec(name, grad, *cases, surrogate=None):
    assert name not in SPECS, f"{name} is in the table twice"
    assert grad in GRAD_CATEGORIES, (name, grad)
    SPECS[name] = OpSpec(grad, list(cases), surrogate)


# =================================================================================== helpers for references
def _close(a, b_, tol=0.1):
    assert abs(float(a) - float(b_)) < tol, (float(a), float(b_))


def sl(start=None, stop=None, step=None):
    return ("slice", start, stop, step)


def _cos(a, b_, dim):
    return (a * b_).sum(dim) / (a.norm(dim=dim) * b_.norm(dim=dim))


# =================================================================================== activations
SQ2 = math.sqrt(2.0)
SELU_A, SELU_S = 1.6732632423543772, 1.0507009873554805

spec("relu", "gradcheck", Case([f(2, 5)], lambda x: x.clamp(min=0)),
     Case([f(4, 3)], lambda x: x.clamp(min=0), sym="B"))
spec("leaky_relu", "gradcheck", Case([f(2, 5)], lambda x: torch.where(x >= 0, x, 0.01 * x)),
     Case([f(3, 4)], lambda x: torch.where(x >= 0, x, 0.2 * x), attrs={"negative_slope": 0.2}))


def _rrelu_train_check(out, x):
    neg = x < 0
    slope = out[neg] / x[neg]
    assert bool(((slope >= 0.1 - 1e-6) & (slope <= 0.3 + 1e-6)).all())
    assert torch.equal(out[~neg], x[~neg])
    assert slope.std() > 0          # really random in training


spec("rrelu", "gradcheck",
     Case([f(2, 5)], lambda x: torch.where(x >= 0, x, x * (1 / 8 + 1 / 3) / 2)),
     Case([f(3, 4)], lambda x: torch.where(x >= 0, x, x * 0.2), attrs={"lower": 0.1, "upper": 0.3}),
     Case([f(20, 20)], lambda x: F.rrelu(x, 0.1, 0.3, training=True), attrs={"lower": 0.1, "upper": 0.3},
          training=True, seed=True, check=_rrelu_train_check, gradcheck=False, id="train"),
     Case([f(2, 3)], None, attrs={"lower": 0.1, "upper": 0.3}, training=True, seed=True, id="train-grad"))
spec("elu", "gradcheck", Case([f(2, 5)], lambda x: torch.where(x > 0, x, torch.exp(x) - 1)),
     Case([f(2, 5)], lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1)), attrs={"alpha": 0.5}))
spec("softplus", "gradcheck", Case([f(2, 5)], lambda x: torch.log1p(torch.exp(x))),
     Case([f(3, 5, k="n5")], lambda x: torch.where(2 * x > 5, x, torch.log1p(torch.exp(2 * x)) / 2),
          attrs={"beta": 2.0, "threshold": 5.0}))
spec("celu", "gradcheck",
     Case([f(2, 5)], lambda x: x.clamp(min=0) + (2 * (torch.exp(x / 2) - 1)).clamp(max=0), attrs={"alpha": 2.0}),
     Case([f(2, 5)], lambda x: x.clamp(min=0) + (torch.exp(x) - 1).clamp(max=0)))
spec("selu", "gradcheck", Case([f(2, 5)], lambda x: SELU_S * (x.clamp(min=0) + (SELU_A * (torch.exp(x) - 1)).clamp(max=0))))
spec("gelu", "gradcheck", Case([f(2, 5)], lambda x: x * 0.5 * (1 + torch.erf(x / SQ2))),
     Case([f(2, 5)], lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
          attrs={"approximate": "tanh"}))
spec("relu6", "gradcheck", Case([f(3, 5, k="n5")], lambda x: x.clamp(0, 6)))
spec("sigmoid", "gradcheck", Case([f(2, 5)], lambda x: 1 / (1 + torch.exp(-x))),
     Case([f(4, 3)], lambda x: 1 / (1 + torch.exp(-x)), sym="B"))
spec("tanh", "gradcheck", Case([f(2, 5)], lambda x: (torch.exp(x) - torch.exp(-x)) / (torch.exp(x) + torch.exp(-x))))
spec("softsign", "gradcheck", Case([f(2, 5)], lambda x: x / (1 + x.abs())))
spec("hardtanh", "gradcheck", Case([f(3, 5, k="n3")], lambda x: x.clamp(-1, 1)),
     Case([f(3, 5, k="n3")], lambda x: x.clamp(-0.5, 2.0), attrs={"min_val": -0.5, "max_val": 2.0}))
spec("threshold", "gradcheck",
     Case([f(3, 5)], lambda x: torch.where(x > 0.1, x, torch.full_like(x, 20.0)), attrs={"threshold": 0.1, "value": 20.0}))
spec("tanhshrink", "gradcheck", Case([f(2, 5)], lambda x: x - torch.tanh(x)))
spec("softshrink", "gradcheck",
     Case([f(3, 5)], lambda x: torch.where(x > 0.3, x - 0.3, torch.where(x < -0.3, x + 0.3, torch.zeros_like(x))),
          attrs={"lambd": 0.3}))
spec("hardshrink", "gradcheck", Case([f(3, 5)], lambda x: torch.where(x.abs() > 0.5, x, torch.zeros_like(x))))
spec("logsigmoid", "gradcheck", Case([f(2, 5)], lambda x: -torch.log1p(torch.exp(-x))))
spec("silu", "gradcheck", Case([f(2, 5)], lambda x: x / (1 + torch.exp(-x))))
spec("mish", "gradcheck", Case([f(2, 5)], lambda x: x * torch.tanh(torch.log1p(torch.exp(x)))))
spec("hardsigmoid", "gradcheck", Case([f(3, 5, k="n5")], lambda x: (x + 3).clamp(0, 6) / 6))
spec("hardswish", "gradcheck", Case([f(3, 5, k="n5")], lambda x: x * (x + 3).clamp(0, 6) / 6))
spec("identity", "gradcheck", Case([f(2, 5)], lambda x: x))


def _softmax_ref(x, d):
    e = torch.exp(x - x.amax(d, keepdim=True))
    return e / e.sum(d, keepdim=True)


spec("softmax", "gradcheck", Case([f(2, 5)], lambda x: _softmax_ref(x, -1)),
     Case([f(2, 3, 4)], lambda x: _softmax_ref(x, 1), attrs={"dim": 1}),
     Case([f(3, 4)], lambda x: _softmax_ref(x, -1), sym="B"))
spec("log_softmax", "gradcheck", Case([f(2, 5)], lambda x: torch.log(_softmax_ref(x, -1))),
     Case([f(2, 3, 4)], lambda x: torch.log(_softmax_ref(x, 0)), attrs={"dim": 0}))
spec("softmin", "gradcheck", Case([f(2, 5)], lambda x: _softmax_ref(-x, -1)),
     Case([f(2, 3, 4)], lambda x: _softmax_ref(-x, 1), attrs={"dim": 1}))

# =================================================================================== math: binary
spec("add", "gradcheck", Case([f(2, 1, 3), f(4, 1)], lambda a, b_: a + b_),
     Case([f(4, 3), f(3)], lambda a, b_: a + b_, sym={0: {0: "B"}}),
     Case([i(3), f()], lambda a, b_: a + b_, id="int+scalar"),
     Case([i(2, 3), i(3)], lambda a, b_: a + b_, id="int"))
spec("sub", "gradcheck", Case([f(2, 3), f(2, 1)], lambda a, b_: a - b_))
spec("mul", "gradcheck", Case([f(2, 3), f(3)], lambda a, b_: a * b_),
     Case([i(2, 3), f()], lambda a, b_: a * b_, id="int*scalar"),
     Case([b(2, 3), i(2, 3)], lambda a, b_: a * b_, id="bool*int"))
spec("div", "gradcheck", Case([f(2, 3), f(3, k="away0")], lambda a, b_: a / b_),
     Case([i(2, 3), i(3, lo=1, hi=4)], lambda a, b_: a / b_, id="int/int"))
spec("pow", "gradcheck", Case([f(2, 3, k="pos"), f(3)], lambda a, b_: torch.exp(b_ * torch.log(a))),
     Case([f(2, 3, k="pos"), f()], lambda a, b_: torch.exp(b_ * torch.log(a)), id="scalar-exp"))
spec("maximum", "gradcheck", Case([f(2, 3), f(3)], lambda a, b_: torch.where(a >= b_, a, b_)))
spec("minimum", "gradcheck", Case([f(2, 3), f(2, 1)], lambda a, b_: torch.where(a <= b_, a, b_)))
for _n, _fn in (("eq", torch.eq), ("ne", torch.ne), ("lt", torch.lt), ("le", torch.le), ("gt", torch.gt), ("ge", torch.ge)):
    spec(_n, "zero", Case([f(2, 3, k="small_int"), f(3, k="small_int")], _fn),
         Case([i(2, 3), i(2, 1)], _fn, id="int"),
         Case([f(4, 3), f(3)], _fn, sym={0: {0: "B"}}))
spec("logical_and", "none", Case([b(2, 3), b(3)], lambda a, b_: torch.logical_and(a, b_)))
spec("logical_or", "none", Case([b(2, 3), b(2, 1)], lambda a, b_: torch.logical_or(a, b_)))
spec("where", "gradcheck", Case([b(2, 3), f(2, 3), f(3)], lambda c, a, b_: torch.where(c, a, b_)),
     Case([b(3), f(2, 1), f(2, 3)], lambda c, a, b_: torch.where(c, a, b_)),
     Case([b(4, 3), f(4, 3), f(4, 3)], lambda c, a, b_: torch.where(c, a, b_), sym="B"))
spec("masked_fill", "gradcheck",
     Case([f(2, 3), b(3)], lambda x, m: torch.where(m, torch.tensor(-math.inf, dtype=x.dtype), x),
          attrs={"value": float("-inf")}, gradcheck=False, id="-inf"),  # finite differences of -inf are nan
     Case([f(2, 3), b(2, 3)], lambda x, m: torch.where(m, torch.tensor(0.5, dtype=x.dtype), x), attrs={"value": 0.5}),
     Case([i(2, 3), b(2, 3)], lambda x, m: torch.where(m, 7, x), attrs={"value": 7}, id="int"))

# =================================================================================== math: unary
spec("neg", "gradcheck", Case([f(2, 3)], lambda x: 0 - x), Case([i(2, 3)], lambda x: 0 - x, id="int"))
spec("exp", "gradcheck", Case([f(2, 3)], lambda x: math.e ** x), Case([i(4)], lambda x: math.e ** x.double(), id="int"))
spec("log", "gradcheck", Case([f(2, 3, k="pos")], lambda x: torch.log2(x) * math.log(2)),
     Case([i(4, lo=1)], lambda x: torch.log(x.double()), id="int"))
spec("sqrt", "gradcheck", Case([f(2, 3, k="pos")], lambda x: x ** 0.5),
     Case([i(4)], lambda x: x.double() ** 0.5, id="int"))
spec("rsqrt", "gradcheck", Case([f(2, 3, k="pos")], lambda x: 1 / x ** 0.5))
spec("abs", "gradcheck", Case([f(2, 3)], lambda x: torch.where(x < 0, -x, x)),
     Case([i(2, 3, lo=-3)], lambda x: torch.where(x < 0, -x, x), id="int"))
spec("sin", "gradcheck", Case([f(2, 3)], lambda x: torch.sin(x)))
spec("cos", "gradcheck", Case([f(2, 3)], lambda x: torch.sin(x + math.pi / 2)))
spec("square", "gradcheck", Case([f(2, 3)], lambda x: x * x), Case([i(2, 3)], lambda x: x * x, id="int"))
spec("reciprocal", "gradcheck", Case([f(2, 3, k="away0")], lambda x: 1 / x))
spec("erf", "gradcheck", Case([f(2, 3)], lambda x: torch.special.erf(x)))
spec("log1p", "gradcheck", Case([f(2, 3, k="pos")], lambda x: torch.log(1 + x)))
spec("expm1", "gradcheck", Case([f(2, 3)], lambda x: torch.exp(x) - 1))
spec("sign", "zero", Case([f(2, 3)], lambda x: (x > 0).to(x.dtype) - (x < 0).to(x.dtype)))
spec("floor", "zero", Case([f(2, 3, k="n3")], lambda x: x - torch.remainder(x, 1.0)))
spec("round", "zero", Case([f(2, 3, k="n3")], lambda x: torch.round(x)))
spec("atanh", "gradcheck", Case([f(2, 3, k="unit")], lambda x: 0.5 * torch.log((1 + x) / (1 - x))))
spec("clamp", "gradcheck", Case([f(2, 3)], lambda x: x.clamp(-0.5, 0.5), attrs={"min": -0.5, "max": 0.5}),
     Case([f(2, 3)], lambda x: torch.where(x < 0, torch.zeros_like(x), x), attrs={"min": 0}),
     Case([f(2, 3)], lambda x: torch.where(x > 0.2, torch.full_like(x, 0.2), x), attrs={"max": 0.2}))
spec("cast", "gradcheck", Case([f(2, 3)], lambda x: x.double(), attrs={"dtype": "f64"}),
     Case([i(2, 3)], lambda x: x.float(), attrs={"dtype": "f32"}, id="i64->f32"),
     Case([f(2, 3, k="n3")], lambda x: x.long(), attrs={"dtype": "i64"}, id="f32->i64", gradcheck=False),
     Case([f(2, 3)], lambda x: x != 0, attrs={"dtype": "bool"}, id="f32->bool", gradcheck=False))
spec("stop_gradient", "zero", Case([f(2, 3)], lambda x: x.clone()))


def _straight_through_grad(xs, out):
    x, q = xs
    gx, gq = torch.autograd.grad(out.sum(), [x, q], allow_unused=True)
    assert torch.equal(gx, torch.ones_like(x)), "straight_through must pass the gradient to x unchanged"
    assert gq is None or not gq.any(), "straight_through must not send a gradient to q"


spec("straight_through", "surrogate", Case([f(2, 3), f(2, 3)], lambda x, q: q),
     Case([f(2, 3), f(3)], lambda x, q: q.expand(2, 3)), surrogate=_straight_through_grad)

# =================================================================================== math: products
spec("matmul", "gradcheck", Case([f(2, 3), f(3, 4)], lambda a, b_: torch.einsum("ij,jk->ik", a, b_)),
     Case([f(2, 1, 2, 3), f(3, 3, 2)], lambda a, b_: (a.unsqueeze(-1) * b_.unsqueeze(-3)).sum(-2), id="batch-bcast"),
     Case([f(3), f(3, 4)], lambda a, b_: (a[:, None] * b_).sum(0), id="vec@mat"),
     Case([f(2, 3), f(3)], lambda a, b_: (a * b_).sum(-1), id="mat@vec"),
     Case([f(3), f(3)], lambda a, b_: (a * b_).sum(), id="vec@vec"),
     Case([f(2, 4, 3), f(3)], lambda a, b_: (a * b_).sum(-1), id="batch@vec"),
     Case([f(3), f(2, 3, 4)], lambda a, b_: (a[:, None] * b_).sum(-2), id="vec@batch"),
     Case([f(4, 3), f(3, 5)], lambda a, b_: a @ b_, sym={0: {0: "B"}}))
spec("outer", "gradcheck", Case([f(3), f(4)], lambda a, b_: a[:, None] * b_[None, :]))
spec("einsum", "gradcheck",
     Case([f(2, 3, 4), f(2, 4, 5)], lambda a, b_: torch.bmm(a, b_), attrs={"equation": "bij,bjk->bik"}),
     Case([f(3, 4)], lambda a: a.t(), attrs={"equation": "ij->ji"}),
     Case([f(3, 4), f(4), f(3)], lambda a, v, w: w @ a @ v, attrs={"equation": "ij,j,i->"}),
     Case([f(4, 2, 3), f(4, 3, 5)], lambda a, b_: torch.bmm(a, b_), attrs={"equation": "bij,bjk->bik"}, sym="B"))

# =================================================================================== reductions
def _red_cases(fn, x_kind="n"):
    """Cases for a reduction op whose torch reference is fn(x, dims or None, keepdim)."""
    return [Case([f(2, 3, 4, k=x_kind)], lambda x: fn(x, None, False), id="all"),
            Case([f(2, 3, 4, k=x_kind)], lambda x: fn(x, (1,), True), attrs={"dim": 1, "keepdim": True}, id="dim1-keep"),
            Case([f(2, 3, 4, k=x_kind)], lambda x: fn(x, (0, 2), False), attrs={"dim": [0, 2]}, id="dims02"),
            Case([f(2, 3, 4, k=x_kind)], lambda x: fn(x, (-1,), False), attrs={"dim": -1}, id="dim-1"),
            Case([f(2, 3, k=x_kind)], lambda x: fn(x, None, True), attrs={"keepdim": True}, id="all-keep"),
            Case([f(4, 3, k=x_kind)], lambda x: fn(x, (1,), False), attrs={"dim": 1}, sym="B")]


def _dims(x, dims):
    return tuple(range(x.dim())) if dims is None else tuple(d % x.dim() for d in dims)


def _sum_ref(x, dims, keep):
    out = x
    for d in sorted(_dims(x, dims), reverse=True):
        out = torch.stack(list(out.unbind(d)), 0).sum(0)
        if keep:
            out = out.unsqueeze(d)
    return out


def _fold_ref(fn):
    def ref(x, dims, keep):
        out = x
        for d in sorted(_dims(x, dims), reverse=True):
            out = fn(out, d)
            if keep:
                out = out.unsqueeze(d)
        return out
    return ref


_prod = _fold_ref(lambda t, d: torch.stack(list(t.unbind(d))).prod(0))
_amax = _fold_ref(lambda t, d: t.max(d).values)
_amin = _fold_ref(lambda t, d: t.min(d).values)


def _mean_ref(x, dims, keep):
    n = 1
    for d in _dims(x, dims):
        n *= x.shape[d]
    return _sum_ref(x, dims, keep) / n


def _lse_ref(x, dims, keep):
    m = _amax(x, dims, True)
    out = torch.log(_sum_ref(torch.exp(x - m), dims, True)) + m
    if not keep:
        for d in sorted(_dims(x, dims), reverse=True):
            out = out.squeeze(d)
    return out


spec("sum", "gradcheck", *_red_cases(_sum_ref),
     Case([b(3, 4)], lambda m: m.long().sum(), id="count-bool", gradcheck=False),
     Case([i(3, 4)], lambda m: m.sum(1), attrs={"dim": 1}, id="int"))
spec("mean", "gradcheck", *_red_cases(_mean_ref))
spec("amax", "gradcheck", *_red_cases(_amax))
spec("amin", "gradcheck", *_red_cases(_amin))
spec("max", "gradcheck", *_red_cases(_amax))
spec("min", "gradcheck", *_red_cases(_amin))
spec("logsumexp", "gradcheck", *_red_cases(_lse_ref))
spec("prod", "gradcheck", *_red_cases(_prod, x_kind="pos"))


def _var_ref(x, dims, keep, correction=1):
    dd = _dims(x, dims)
    n = 1
    for d in dd:
        n *= x.shape[d]
    mu = _mean_ref(x, dims, True)
    out = _sum_ref((x - mu) ** 2, dims, keep) / (n - correction)
    return out


spec("var", "gradcheck", *_red_cases(_var_ref),
     Case([f(3, 4)], lambda x: _var_ref(x, (0,), False, 0), attrs={"dim": 0, "correction": 0}, id="corr0"))
spec("std", "gradcheck", *_red_cases(lambda x, d, k: _var_ref(x, d, k) ** 0.5),
     Case([f(3, 4)], lambda x: _var_ref(x, (1,), True, 0) ** 0.5, attrs={"dim": 1, "correction": 0, "keepdim": True},
          id="corr0"))
spec("norm", "gradcheck", *_red_cases(lambda x, d, k: _sum_ref(x * x, d, k) ** 0.5),
     Case([f(3, 4)], lambda x: x.abs().sum(-1), attrs={"p": 1.0, "dim": -1}, id="p1"),
     Case([f(3, 4)], lambda x: (x.abs() ** 3).sum() ** (1 / 3), attrs={"p": 3}, id="p3"),
     Case([f(3, 4)], lambda x: x.abs().amax(-1), attrs={"p": float("inf"), "dim": -1}, id="inf"))
spec("argmax", "zero", Case([f(3, 4)], lambda x: x.max(-1).indices),
     Case([f(3, 4, 2)], lambda x: x.max(0, keepdim=True).indices, attrs={"dim": 0, "keepdim": True}),
     Case([f(4, 5)], lambda x: x.max(1).indices, attrs={"dim": 1}, sym="B"))
spec("argmin", "zero", Case([f(3, 4)], lambda x: x.min(-1).indices),
     Case([f(3, 4, 2)], lambda x: x.min(1).indices, attrs={"dim": 1}))
spec("cosine_similarity", "gradcheck", Case([f(2, 3, 4), f(2, 3, 4)], lambda a, b_: _cos(a, b_, 1)),
     Case([f(4, 3), f(3)], lambda a, b_: _cos(a, b_.expand(4, 3), -1), attrs={"dim": -1}, id="bcast"),
     Case([f(4, 3), f(4, 3)], lambda a, b_: _cos(a, b_, 1), attrs={"eps": 1e-6}, sym="B"))
spec("pairwise_distance", "gradcheck", Case([f(3, 4), f(3, 4)], lambda a, b_: (a - b_ + 1e-6).norm(dim=-1)),
     Case([f(3, 5), f(3, 5)], lambda a, b_: ((a - b_ + 0.1).abs() ** 3).sum(-1) ** (1 / 3), attrs={"p": 3.0, "eps": 0.1},
          id="p3-eps"),
     Case([f(3, 5), f(3, 5)], lambda a, b_: (a - b_ + 1e-6).abs().sum(-1), attrs={"p": 1.0}, id="p1"),
     Case([f(4), f(4)], lambda a, b_: (a - b_ + 1e-6).norm(), id="vec"),
     Case([f(3, 4), f(3, 4)], lambda a, b_: (a - b_ + 1e-6).abs().amax(-1), attrs={"p": float("inf")}, id="inf"),
     Case([f(3, 4), f(3, 4)], lambda a, b_: (a - b_ + 1e-6).norm(dim=-1), sym="B"))
spec("cdist", "gradcheck", Case([f(3, 4), f(5, 4)], lambda a, b_: ((a[:, None] - b_[None]) ** 2).sum(-1).sqrt()),
     Case([f(3, 4), f(5, 4)], lambda a, b_: (a[:, None] - b_[None]).abs().sum(-1), attrs={"p": 1.0}, id="p1"),
     Case([f(2, 3, 4), f(2, 5, 4)], lambda a, b_: ((a[:, :, None] - b_[:, None]) ** 2).sum(-1).sqrt(), id="batched"),
     Case([f(3, 4), f(5, 4)], lambda a, b_: (a[:, None] - b_[None]).abs().amax(-1), attrs={"p": float("inf")}, id="inf"))

# =================================================================================== random
_BIG = (100, 100)


def _assert(cond):
    assert cond


def _stats(mean=None, std=None, lo=None, hi=None, tol=0.1):
    def check(out, *xs):
        if mean is not None:
            _close(out.double().mean(), mean, tol)
        if std is not None:
            _close(out.double().std(), std, tol)
        if lo is not None:
            assert float(out.min()) >= lo
        if hi is not None:
            assert float(out.max()) < hi
    return check


spec("randn_like", "zero", Case([f(*_BIG)], lambda x: torch.randn_like(x), seed=True, check=_stats(0.0, 1.0)),
     Case([f(*_BIG)], None, check=_stats(0.0, 1.0), id="stats"),
     Case([f(4, 3)], lambda x: torch.randn_like(x), seed=True, sym="B"))
spec("rand_like", "zero", Case([f(*_BIG)], lambda x: torch.rand_like(x), seed=True, check=_stats(0.5, lo=0.0, hi=1.0)),
     Case([f(*_BIG)], None, check=_stats(0.5, (1 / 12) ** 0.5, 0.0, 1.0), id="stats"))
spec("bernoulli", "zero", Case([f(*_BIG, k="prob")], lambda p: torch.bernoulli(p), seed=True),
     Case([f(*_BIG, k=("const", 0.3))], None, check=lambda out, p: (_close(out.double().mean(), 0.3, 0.03),
                                                                    _assert(bool(((out == 0) | (out == 1)).all()))),
          id="stats"))


spec("normal", "none", Case([], None, attrs={"shape": [200, 100]}, check=_stats(0.0, 1.0), id="std"),
     Case([], None, attrs={"shape": [200, 100], "mean": 1.0, "std": 2.0}, check=_stats(1.0, 2.0), id="mean-std"),
     Case([], lambda: torch.randn(3, 5) * 2.0 + 1.0, attrs={"shape": [3, 5], "mean": 1.0, "std": 2.0}, seed=True),
     Case([], None, attrs={"shape": [Sym.var("B"), 3]}, env={"B": 4}, id="sym"))
spec("uniform", "none", Case([], None, attrs={"shape": [200, 100]}, check=_stats(0.5, lo=0.0, hi=1.0), id="unit"),
     Case([], None, attrs={"shape": [200, 100], "low": -2.0, "high": 3.0}, check=_stats(0.5, 5 / 12 ** 0.5, -2.0, 3.0, 0.15),
          id="range"),
     Case([], lambda: torch.rand(3, 5) * 5.0 - 2.0, attrs={"shape": [3, 5], "low": -2.0, "high": 3.0}, seed=True))

# =================================================================================== tensor / layout
spec("reshape", "gradcheck", Case([f(2, 3, 4)], lambda x: x.view(6, 4), attrs={"shape": [6, 4]}),
     Case([f(2, 3, 4)], lambda x: x.view(4, 6), attrs={"shape": [4, -1]}),
     Case([f(2, 3)], lambda x: x.view(6), attrs={"shape": [6]}),
     Case([f(4, 3, 4)], lambda x: x.view(4, 12), attrs={"shape": [-1, 12]}, sym="B"))
spec("flatten", "gradcheck", Case([f(2, 3, 4)], lambda x: x.reshape(2, 12)),
     Case([f(2, 3, 4)], lambda x: x.reshape(6, 4), attrs={"start_dim": 0, "end_dim": 1}),
     Case([f(2, 3, 4)], lambda x: x.reshape(24), attrs={"start_dim": 0}),
     Case([f(2, 3, 4, 5)], lambda x: x.reshape(2, 12, 5), attrs={"start_dim": 1, "end_dim": 2}),
     Case([f(4, 3, 2)], lambda x: x.reshape(4, 6), sym="B"),
     Case([f()], lambda x: x.reshape(1), id="scalar"))
spec("permute", "gradcheck", Case([f(2, 3, 4)], lambda x: torch.movedim(x, (2, 0, 1), (0, 1, 2)), attrs={"dims": [2, 0, 1]}),
     Case([f(4, 3, 2)], lambda x: x.permute(0, 2, 1), attrs={"dims": [0, 2, 1]}, sym="B"))
spec("transpose", "gradcheck", Case([f(2, 3, 4)], lambda x: x.swapaxes(1, 2)),
     Case([f(2, 3, 4)], lambda x: x.swapaxes(0, 2), attrs={"dim0": 0, "dim1": 2}))
spec("concat", "gradcheck", Case([f(2, 3), f(2, 1), f(2, 4)], lambda *xs: torch.cat(xs, 1)),
     Case([f(2, 3), f(1, 3)], lambda *xs: torch.cat(xs, 0), attrs={"dim": 0}),
     Case([f(4, 3), f(4, 2)], lambda *xs: torch.cat(xs, -1), attrs={"dim": -1}, sym="B"))
spec("stack", "gradcheck", Case([f(2, 3), f(2, 3)], lambda *xs: torch.cat([x[None] for x in xs], 0)),
     Case([f(2, 3), f(2, 3), f(2, 3)], lambda *xs: torch.cat([x[..., None] for x in xs], -1), attrs={"dim": -1}),
     Case([f(4, 3), f(4, 3)], lambda *xs: torch.stack(xs, 1), attrs={"dim": 1}, sym="B"))
spec("split", "gradcheck", Case([f(5, 3)], lambda x: [x[0:2], x[2:4], x[4:5]], attrs={"sizes": 2}),
     Case([f(2, 3)], lambda x: [x[:, :1], x[:, 1:]], attrs={"sizes": [1, 2], "dim": 1}),
     Case([f(4, 5)], lambda x: [x[:, :2], x[:, 2:]], attrs={"sizes": [2, 3], "dim": 1}, sym="B"))
spec("chunk", "gradcheck", Case([f(4, 3)], lambda x: [x[:2], x[2:]], attrs={"chunks": 2}),
     Case([f(2, 6)], lambda x: [x[:, :2], x[:, 2:4], x[:, 4:]], attrs={"chunks": 3, "dim": 1}),
     Case([f(4, 6)], lambda x: [x[:, :3], x[:, 3:]], attrs={"chunks": 2, "dim": -1}, sym="B"))
spec("getitem", "gradcheck",
     Case([f(2, 3, 4)], lambda x: x.select(1, 2), attrs={"key": (sl(), -1)}, id="[:, -1]"),
     Case([f(2, 3, 4)], lambda x: x.narrow(-1, 1, 2), attrs={"key": ("...", sl(1, 3))}, id="[..., 1:3]"),
     Case([f(2, 3, 4)], lambda x: x[0, 0::2].unsqueeze(0), attrs={"key": (None, 0, sl(None, None, 2))}, id="[None, 0, ::2]"),
     Case([f(2, 5, 4)], lambda x: x[:, 1:5:2], attrs={"key": (sl(), sl(1, None, 2))}, id="[:, 1::2]"),
     Case([f(2, 5, 4)], lambda x: x.narrow(1, 3, 2), attrs={"key": (sl(), sl(-2))}, id="[:, -2:]"),
     Case([f(2, 5, 4)], lambda x: x.narrow(1, 0, 4), attrs={"key": (sl(), sl(None, -1))}, id="[:, :-1]"),
     Case([f(2, 5, 4)], lambda x: x[:, 1:4:2], attrs={"key": (sl(), sl(1, -1, 2))}, id="[:, 1:-1:2]"),
     Case([f(2, 3, 4)], lambda x: x[1, ..., 2], attrs={"key": (1, "...", 2)}, id="[1, ..., 2]"),
     Case([f(2, 3, 4)], lambda x: x[:, 0:3], attrs={"key": (sl(), sl(0, 10))}, id="[:, 0:10]"),
     Case([f(4, 5, 3)], lambda x: x[:, -2:], attrs={"key": (sl(), sl(-2))}, sym={0: {0: "B", 1: "T"}}, id="sym[:, -2:]"),
     Case([f(4, 5, 3)], lambda x: x[:, 1::2], attrs={"key": (sl(), sl(1, None, 2))}, sym={0: {0: "B", 1: "T"}},
          id="sym[:, 1::2]"),
     Case([f(4, 5, 3)], lambda x: x[:, :-1], attrs={"key": (sl(), sl(None, -1))}, sym={0: {0: "B", 1: "T"}},
          id="sym[:, :-1]"),
     Case([f(4, 6, 3)], lambda x: x[:, 1:-1:2], attrs={"key": (sl(), sl(1, -1, 2))}, sym={0: {0: "B", 1: "T"}},
          id="sym[:, 1:-1:2]"),
     Case([f(4, 5, 3)], lambda x: x[:, -1], attrs={"key": (sl(), -1)}, sym={0: {0: "B", 1: "T"}}, id="sym[:, -1]"),
     Case([f(2, 5, 3)], lambda x: x[:, 1:4], attrs={"key": (sl(), sl(1, Sym.var("T") - 1))}, env={"T": 5}, id="[:, 1:T-1]"))
spec("select", "gradcheck", Case([f(2, 3, 4)], lambda x: x[:, -1], attrs={"dim": 1, "index": -1}),
     Case([f(4, 3)], lambda x: x[:, 0], attrs={"dim": 1, "index": 0}, sym="B"))
spec("squeeze", "gradcheck", Case([f(2, 1, 3, 1)], lambda x: x.reshape(2, 3)),
     Case([f(2, 1, 3, 1)], lambda x: x.reshape(2, 3, 1), attrs={"dim": 1}),
     Case([f(4, 1, 3)], lambda x: x.reshape(4, 3), attrs={"dim": 1}, sym="B"))
spec("unsqueeze", "gradcheck", Case([f(2, 3)], lambda x: x.reshape(1, 2, 3), attrs={"dim": 0}),
     Case([f(2, 3)], lambda x: x.reshape(2, 3, 1), attrs={"dim": -1}),
     Case([f(4, 3)], lambda x: x.reshape(4, 1, 3), attrs={"dim": 1}, sym="B"))
spec("expand", "gradcheck", Case([f(3, 1)], lambda x: x.repeat(2, 1, 4), attrs={"shape": [2, 3, 4]}),
     Case([f(1, 3, 1)], lambda x: x.repeat(2, 1, 4), attrs={"shape": [2, -1, 4]}),
     Case([f(3, 1)], lambda x: x.repeat(1, 4), attrs={"shape": [-1, 4]}, sym="B"))
spec("repeat", "gradcheck", Case([f(2, 3)], lambda x: torch.cat([torch.cat([x, x], 1)] * 2, 0).expand(2, 4, 6),
                                 attrs={"repeats": [2, 2, 2]}),
     Case([f(2, 3)], lambda x: torch.tile(x, (2, 1)), attrs={"repeats": [2, 1]}))
spec("gather", "gradcheck",
     Case([f(3, 4), i(3, 2, hi=4)], lambda x, ix: x[torch.arange(3)[:, None], ix], attrs={"dim": 1}),
     Case([f(3, 4), i(2, 4, hi=3)], lambda x, ix: x[ix, torch.arange(4)[None, :]], attrs={"dim": 0}))
spec("index_select", "gradcheck", Case([f(4, 3), i(5, hi=4)], lambda x, ix: x[ix], attrs={"dim": 0}),
     Case([f(4, 3), i(2, hi=3)], lambda x, ix: x[:, ix], attrs={"dim": -1}))


def _creation(name, fill):
    spec(name, "none",
         Case([], lambda: torch.full((2, 3), fill), attrs={"shape": [2, 3]}),
         Case([], lambda: torch.full((4,), fill, dtype=torch.int64), attrs={"shape": [4], "dtype": "i64"}, id="i64"),
         Case([], lambda: torch.full((2, 3), bool(fill)), attrs={"shape": [2, 3], "dtype": "bool"}, id="bool"),
         Case([], lambda: torch.full((4, 3), fill), attrs={"shape": [Sym.var("B"), 3]}, env={"B": 4}, id="sym"))


_creation("zeros", 0.0)
_creation("ones", 1.0)
spec("full", "none", Case([], lambda: torch.full((2, 3), 2.5), attrs={"shape": [2, 3], "value": 2.5}),
     Case([], lambda: torch.full((4,), 7, dtype=torch.int64), attrs={"shape": [4], "value": 7, "dtype": "i64"}, id="i64"),
     Case([], lambda: torch.full((4, 3), -1.0), attrs={"shape": [Sym.var("B"), 3], "value": -1}, env={"B": 4}, id="sym"),
     Case([], lambda: torch.full((2, 2), -math.inf), attrs={"shape": [2, 2], "value": float("-inf")}, id="-inf"))
spec("arange", "none", Case([], lambda: torch.tensor([0, 1, 2, 3, 4]), attrs={"end": 5}),
     Case([], lambda: torch.tensor([0.0, 1.0, 2.0]), attrs={"end": 3, "dtype": "f32"}, id="f32"),
     Case([], lambda: torch.tensor([0, 1, 2, 3, 4, 5]), attrs={"end": Sym.var("T")}, env={"T": 6}, id="sym"))
spec("constant", "none", Case([], lambda: torch.tensor(1.5), attrs={"value": 1.5}),
     Case([], lambda: torch.tensor(3), attrs={"value": 3}, id="int"),
     Case([], lambda: torch.tensor(math.inf), attrs={"value": float("inf")}, id="inf"))

# =================================================================================== layers with weights


def _conv(fn, **kw):
    return lambda x, p: fn(x, p["weight"], p.get("bias"), **kw)


spec("linear", "gradcheck", Case([f(2, 5)], lambda x, p: x @ p["weight"].t() + p["bias"], attrs={"out_features": 3}),
     Case([f(2, 5)], lambda x, p: x @ p["weight"].t(), attrs={"out_features": 3, "bias": False}, id="nobias"),
     Case([f(4, 2, 5)], lambda x, p: F.linear(x, p["weight"], p["bias"]), attrs={"out_features": 3}, sym="B"),
     Case([f(5)], lambda x, p: F.linear(x, p["weight"], p["bias"]), attrs={"out_features": 2}, id="vec"))
spec("conv1d", "gradcheck",
     Case([f(2, 3, 10)], _conv(F.conv1d, stride=2, padding=1), attrs={"out_channels": 4, "kernel": 3, "stride": 2, "padding": 1}),
     Case([f(2, 3, 9)], _conv(F.conv1d, padding="same", dilation=2),
          attrs={"out_channels": 2, "kernel": 3, "padding": "same", "dilation": 2}, id="same-dil"),
     Case([f(4, 3, 9)], _conv(F.conv1d), attrs={"out_channels": 2, "kernel": 3}, sym={0: {0: "B", 2: "L"}}),
     Case([f(3, 8)], _conv(F.conv1d, stride=3), attrs={"out_channels": 2, "kernel": 2, "stride": 3}, id="unbatched"))
spec("conv2d", "gradcheck",
     Case([f(2, 3, 6, 6)], _conv(F.conv2d), attrs={"out_channels": 4, "kernel": 3}),
     Case([f(2, 3, 7, 6)], _conv(F.conv2d, stride=(2, 1), padding=(1, 0)),
          attrs={"out_channels": 2, "kernel": [3, 2], "stride": [2, 1], "padding": [1, 0]}, id="tuple"),
     Case([f(2, 4, 5, 5)], lambda x, p: F.conv2d(x, p["weight"], None, groups=2, dilation=2),
          attrs={"out_channels": 6, "kernel": 2, "groups": 2, "bias": False, "dilation": 2}, id="groups"),
     Case([f(1, 2, 5, 5)], _conv(F.conv2d, padding="same"), attrs={"out_channels": 3, "kernel": 4, "padding": "same"},
          id="same"),
     Case([f(1, 2, 5, 5)], _conv(F.conv2d), attrs={"out_channels": 3, "kernel": 3, "padding": "valid"}, id="valid"),
     Case([f(1, 2, 5, 4)], lambda x, p: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), p["weight"], p["bias"]),
          attrs={"out_channels": 2, "kernel": 3, "padding": 1, "padding_mode": "reflect"}, id="reflect"),
     Case([f(1, 2, 5, 4)], lambda x, p: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), p["weight"], p["bias"]),
          attrs={"out_channels": 2, "kernel": 3, "padding": 1, "padding_mode": "circular"}, id="circular"),
     Case([f(2, 3, 9, 8)], _conv(F.conv2d, stride=2, padding=1),
          attrs={"out_channels": 2, "kernel": 3, "stride": 2, "padding": 1}, sym={0: {0: "B", 2: "H", 3: "W"}}))
spec("conv3d", "gradcheck",
     Case([f(1, 2, 5, 5, 4)], _conv(F.conv3d, stride=2, padding=1),
          attrs={"out_channels": 3, "kernel": 3, "stride": 2, "padding": 1}),
     Case([f(2, 2, 3, 4, 3)], _conv(F.conv3d), attrs={"out_channels": 2, "kernel": [1, 2, 2]}, sym="B"))
spec("conv_transpose2d", "gradcheck",
     Case([f(2, 4, 3, 3)], _conv(F.conv_transpose2d, stride=2, padding=1, output_padding=1),
          attrs={"out_channels": 3, "kernel": 3, "stride": 2, "padding": 1, "output_padding": 1}),
     Case([f(1, 4, 3, 2)], lambda x, p: F.conv_transpose2d(x, p["weight"], None, groups=2, dilation=2),
          attrs={"out_channels": 6, "kernel": [2, 3], "groups": 2, "dilation": 2, "bias": False}, id="groups-dil"),
     Case([f(2, 2, 3, 4)], _conv(F.conv_transpose2d, stride=2), attrs={"out_channels": 2, "kernel": 2, "stride": 2},
          sym={0: {0: "B", 2: "H", 3: "W"}}))


def _pool(name, fn, n):
    x = (2, 3) + (7,) * n
    x_small = (2, 2) + (5,) * n
    cases = [Case([f(*x)], lambda t: fn(t, 2), attrs={"kernel": 2}),
             Case([f(*x)], lambda t: fn(t, 3, 2, 1, ceil_mode=True), attrs={"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True},
                  id="ceil"),
             Case([f(*x_small)], lambda t: fn(t, 2, 2, 1, ceil_mode=True),
                  attrs={"kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True}, id="ceil-edge"),
             Case([f(*x)], lambda t: fn(t, 2, 3, ceil_mode=True), attrs={"kernel": 2, "stride": 3, "ceil_mode": True},
                  id="ceil-stride>kernel"),
             Case([f(*x)], lambda t: fn(t, 3, 1), attrs={"kernel": 3, "stride": 1}, id="stride1"),
             Case([f(4, 3, *(8,) * n)], lambda t: fn(t, 2), attrs={"kernel": 2},
                  sym={0: {0: "B", **{2 + k: "HW"[k] for k in range(n)}}}),
             Case([f(4, 3, *(8,) * n)], lambda t: fn(t, 3, 2, ceil_mode=True), attrs={"kernel": 3, "stride": 2, "ceil_mode": True},
                  sym={0: {0: "B", **{2 + k: "HW"[k] for k in range(n)}}}, id="sym-ceil")]
    if "max" in name:
        cases.append(Case([f(*x)], lambda t: fn(t, 2, 1, 1, dilation=2), attrs={"kernel": 2, "stride": 1, "padding": 1,
                                                                               "dilation": 2}, id="dilation"))
    else:
        cases.append(Case([f(*x)], lambda t: fn(t, 3, 2, 1, count_include_pad=False),
                          attrs={"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": False}, id="no-pad-count"))
    cases.append(Case([f(3, *(6,) * n)], lambda t: fn(t, 2), attrs={"kernel": 2}, id="unbatched"))
    spec(name, "gradcheck", *cases)


_pool("max_pool1d", F.max_pool1d, 1)
_pool("max_pool2d", F.max_pool2d, 2)
_pool("avg_pool1d", F.avg_pool1d, 1)
_pool("avg_pool2d", F.avg_pool2d, 2)


def _avg1d_ref(x, out):
    n = x.shape[-1]
    cols = []
    for k in range(out):
        s, e = (k * n) // out, -(-(k + 1) * n // out)
        cols.append(x[..., s:e].mean(-1))
    return torch.stack(cols, -1)


spec("adaptive_avg_pool1d", "gradcheck", Case([f(2, 3, 7)], lambda x: _avg1d_ref(x, 3), attrs={"output_size": 3}),
     Case([f(4, 3, 8)], lambda x: _avg1d_ref(x, 2), attrs={"output_size": 2}, sym={0: {0: "B", 2: "L"}}))
spec("adaptive_max_pool1d", "gradcheck", Case([f(2, 3, 7)], lambda x: F.adaptive_max_pool1d(x, 3), attrs={"output_size": 3}))
spec("adaptive_avg_pool2d", "gradcheck",
     Case([f(2, 3, 5, 7)], lambda x: _avg1d_ref(_avg1d_ref(x, 3).transpose(-1, -2), 2).transpose(-1, -2),
          attrs={"output_size": [2, 3]}),
     Case([f(2, 3, 5, 5)], lambda x: x.mean((-2, -1), keepdim=True), attrs={"output_size": 1}, id="global"),
     Case([f(4, 3, 6, 6)], lambda x: F.adaptive_avg_pool2d(x, 2), attrs={"output_size": 2}, sym={0: {0: "B", 2: "H", 3: "W"}}))
spec("adaptive_max_pool2d", "gradcheck", Case([f(2, 3, 5, 7)], lambda x: F.adaptive_max_pool2d(x, (2, 3)),
                                              attrs={"output_size": [2, 3]}),
     Case([f(2, 3, 4, 4)], lambda x: x.amax((-2, -1), keepdim=True), attrs={"output_size": 1}, id="global"))
spec("upsample", "gradcheck",
     Case([f(1, 2, 3, 3)], lambda x: x.repeat_interleave(2, -1).repeat_interleave(2, -2), attrs={"scale_factor": 2}),
     Case([f(1, 2, 3, 4)], lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False),
          attrs={"size": [5, 7], "mode": "bilinear", "align_corners": False}, id="bilinear-size"),
     Case([f(1, 2, 3, 4)], lambda x: F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True),
          attrs={"scale_factor": 2, "mode": "bilinear", "align_corners": True}, id="bilinear-ac"),
     Case([f(2, 3, 4)], lambda x: F.interpolate(x, scale_factor=3.0, mode="linear"),
          attrs={"scale_factor": 3, "mode": "linear"}, id="linear-1d"),
     Case([f(2, 2, 3, 3)], lambda x: x.repeat_interleave(2, -1).repeat_interleave(2, -2), attrs={"scale_factor": 2},
          sym={0: {0: "B", 2: "H", 3: "W"}}))


def _bn_ref(training, momentum=0.1, eps=1e-5):
    def ref(x, p):
        return F.batch_norm(x, p["running_mean"], p["running_var"], p.get("weight"), p.get("bias"), training, momentum, eps)
    return ref


spec("batch_norm", "gradcheck",
     Case([f(4, 3)], _bn_ref(False), id="eval-1d"),
     Case([f(4, 3, 5)], _bn_ref(True), training=True, id="train-1d-seq"),
     Case([f(2, 3, 4, 4)], _bn_ref(True), training=True, id="train-2d"),
     Case([f(2, 3, 2, 2, 2)], _bn_ref(False), id="eval-3d"),
     Case([f(3, 2, 3, 3)], _bn_ref(True, 0.2, 1e-3), attrs={"momentum": 0.2, "eps": 1e-3, "affine": False},
          training=True, id="noaffine-train"),
     Case([f(4, 3)], _bn_ref(False), sym="B"))


def _ln_ref(n, eps=1e-5):
    def ref(x, p):
        dims = tuple(range(-n, 0))
        mu = x.mean(dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dims, keepdim=True)
        y = (x - mu) / torch.sqrt(var + eps)
        if "weight" in p:
            y = y * p["weight"]
        if "bias" in p:
            y = y + p["bias"]
        return y
    return ref


spec("layer_norm", "gradcheck", Case([f(2, 3, 4)], _ln_ref(1)),
     Case([f(2, 3, 4)], _ln_ref(2, 1e-3), attrs={"dims": 2, "eps": 1e-3, "bias": False}, id="dims2-nobias"),
     Case([f(2, 4)], _ln_ref(1), attrs={"elementwise_affine": False}, id="noaffine"),
     Case([f(4, 3, 4)], _ln_ref(1), sym="B"))


def _in_ref(training, track=False):
    def ref(x, p):
        use_stats = training or not track
        return F.instance_norm(x, p.get("running_mean"), p.get("running_var"), p.get("weight"), p.get("bias"),
                               use_input_stats=use_stats, momentum=0.1, eps=1e-5)
    return ref


spec("instance_norm", "gradcheck", Case([f(2, 3, 5)], _in_ref(False)),
     Case([f(2, 3, 4, 4)], _in_ref(False), attrs={"affine": True}, id="affine"),
     Case([f(2, 3, 4, 4)], _in_ref(True, True), attrs={"track_running_stats": True}, training=True, id="track-train"),
     Case([f(2, 3, 4, 4)], _in_ref(False, True), attrs={"track_running_stats": True, "affine": True}, id="track-eval"),
     Case([f(4, 3, 5)], _in_ref(False), sym="B"))


def _gn_ref(g, eps=1e-5):
    def ref(x, p):
        n, c = x.shape[:2]
        xs = x.reshape(n, g, -1)
        mu = xs.mean(-1, keepdim=True)
        var = ((xs - mu) ** 2).mean(-1, keepdim=True)
        y = ((xs - mu) / torch.sqrt(var + eps)).reshape(x.shape)
        if "weight" in p:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * p["weight"].reshape(shape) + p["bias"].reshape(shape)
        return y
    return ref


spec("group_norm", "gradcheck", Case([f(2, 6, 4)], _gn_ref(3), attrs={"groups": 3}),
     Case([f(2, 4, 3, 3)], _gn_ref(2, 1e-3), attrs={"groups": 2, "eps": 1e-3, "affine": False}, id="noaffine"),
     Case([f(4, 4, 3)], _gn_ref(4), attrs={"groups": 4}, sym="B"))


def _dropout_check(p, channel=False, alpha=False):
    def check(out, x):
        if alpha:
            _close(out.double().mean(), 0.0, 0.05)
            _close(out.double().std(), 1.0, 0.05)
            return
        zero = out == 0
        if channel:
            per_channel = zero.flatten(2)
            assert bool((per_channel.all(-1) | ~per_channel.any(-1)).all()), "dropout2d zeroes whole channels"
            _close(zero.double().mean(), p, 0.1)
        else:
            _close(zero.double().mean(), p, 0.03)
        torch.testing.assert_close(out[~zero], x[~zero] / (1 - p))
    return check


spec("dropout", "gradcheck", Case([f(2, 5)], lambda x: x, id="eval-identity"),
     Case([f(*_BIG)], None, attrs={"p": 0.3}, training=True, check=_dropout_check(0.3), gradcheck=False, id="train-stats"),
     Case([f(3, 4)], lambda x: F.dropout(x, 0.5, True), training=True, seed=True, id="train-seeded"),
     Case([f(3, 4)], lambda x: x * 0, attrs={"p": 1.0}, training=True, gradcheck=False, id="p1"))
spec("dropout2d", "gradcheck", Case([f(2, 4, 3, 3)], lambda x: x, attrs={"p": 0.3}, id="eval-identity"),
     Case([f(20, 16, 4, 4)], None, attrs={"p": 0.4}, training=True, check=_dropout_check(0.4, channel=True),
          gradcheck=False, id="train-stats"),
     Case([f(2, 3, 2, 2)], lambda x: F.dropout2d(x, 0.5, True), training=True, seed=True, id="train-seeded"))
spec("alpha_dropout", "gradcheck", Case([f(2, 5)], lambda x: x, id="eval-identity"),
     Case([f(*_BIG)], None, attrs={"p": 0.2}, training=True, check=_dropout_check(0.2, alpha=True), gradcheck=False,
          id="train-stats"),
     Case([f(3, 4)], lambda x: F.alpha_dropout(x, 0.5, True), training=True, seed=True, id="train-seeded"))
spec("embedding", "gradcheck",
     Case([i(2, 3, hi=10)], lambda ids, p: p["weight"][ids], attrs={"num": 10, "dim": 4}),
     Case([i(5, hi=6)], lambda ids, p: F.embedding(ids, p["weight"], padding_idx=0), attrs={"num": 6, "dim": 3, "padding_idx": 0},
          id="padding_idx"),
     Case([i(4, 3, hi=10)], lambda ids, p: p["weight"][ids], attrs={"num": 10, "dim": 4}, sym="B"))
spec("prelu", "gradcheck", Case([f(2, 3, 4)], lambda x, p: torch.where(x >= 0, x, p["weight"] * x)),
     Case([f(2, 3, 4)], lambda x, p: torch.where(x >= 0, x, p["weight"][None, :, None] * x),
          attrs={"num_parameters": 3, "init": 0.1}, id="channels"),
     Case([f(2, 3)], lambda x, p: torch.where(x >= 0, x, p["weight"] * x), attrs={"init": 0.1}, id="init"),
     Case([f(4, 3)], lambda x, p: torch.where(x >= 0, x, p["weight"] * x), sym="B"))


# fused forms created by the graph rewrites (compiler/passes/rewrite.py), checked against the spelled-out math
def _attention_ref(q, k, v, mask=None, causal=False, scale=None):
    s = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril().logical_not(), -math.inf)
    if mask is not None:
        s = s.masked_fill(mask.logical_not(), -math.inf) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, -1) @ v


def _lstm_ref(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, batch_first=True):
    xs = x if batch_first else x.transpose(0, 1)
    h, c, outs = h0[0], c0[0], []
    for t in range(xs.shape[1]):
        gates = xs[:, t] @ w_ih.t() + h @ w_hh.t() + (0 if b_ih is None else b_ih + b_hh)
        i_, f_, g_, o_ = gates.chunk(4, 1)
        c = torch.sigmoid(f_) * c + torch.sigmoid(i_) * torch.tanh(g_)
        h = torch.sigmoid(o_) * torch.tanh(c)
        outs.append(h)
    ys = torch.stack(outs, 1)
    return ys if batch_first else ys.transpose(0, 1), h[None], c[None]


spec("scaled_dot_product_attention", "gradcheck",
     Case([f(2, 3, 4, 5), f(2, 3, 6, 5), f(2, 3, 6, 4)], _attention_ref),
     Case([f(2, 2, 4, 3), f(2, 2, 4, 3), f(2, 2, 4, 3)], lambda q, k, v: _attention_ref(q, k, v, causal=True, scale=0.5),
          attrs={"is_causal": True, "scale": 0.5}, id="causal"),
     Case([f(2, 3, 4), f(2, 5, 4), f(2, 5, 2), f(3, 5)], lambda q, k, v, m: _attention_ref(q, k, v, m), id="float-mask"),
     Case([f(2, 3, 4), f(2, 8, 4), f(2, 8, 2), b(3, 8)], lambda q, k, v, m: _attention_ref(q, k, v, m), id="bool-mask"),
     Case([f(3, 2, 4, 5), f(3, 2, 4, 5), f(3, 2, 4, 5)], lambda q, k, v: _attention_ref(q, k, v, causal=True),
          attrs={"is_causal": True}, sym="B"))
def _lce_ref(x, w, y, ignore_index=-100):
    logits = x @ w.t()
    return logits, F.cross_entropy(logits.reshape(-1, w.shape[0]), y.reshape(-1), ignore_index=ignore_index)


spec("linear_cross_entropy", "gradcheck",
     Case([f(4, 3), f(5, 3), i(4, hi=5)], _lce_ref),
     Case([f(2, 3, 4), f(6, 4), i(2, 3, hi=6)], _lce_ref, id="3d"),
     Case([f(4, 3), f(5, 3), In((4,), "i64", ("fixed", [0, -1, 4, 2]))], lambda x, w, y: _lce_ref(x, w, y, -1),
          attrs={"ignore_index": -1}, id="ignore"),
     Case([f(4, 3), f(5, 3), i(4, hi=5)], _lce_ref, sym={0: {0: "B"}, 2: {0: "B"}}))
spec("standard_layout", "gradcheck", Case([f(2, 3, 4, 4)], lambda x: x),
     Case([f(2, 5)], lambda x: x, id="not-4d"), Case([f(3, 2, 3, 3)], lambda x: x, sym="B"))
spec("channels_last", "gradcheck", Case([f(2, 3, 4, 4)], lambda x: x), Case([f(3, 2, 3, 3)], lambda x: x, sym="B"))
spec("lstm", "gradcheck",
     Case([f(2, 3, 4), f(1, 2, 5), f(1, 2, 5), f(20, 4), f(20, 5), f(20), f(20)], _lstm_ref),
     Case([f(3, 2, 2), f(1, 2, 3), f(1, 2, 3), f(12, 2), f(12, 3)],
          lambda *xs: _lstm_ref(*xs, batch_first=False), attrs={"batch_first": False}, id="time-first-nobias"),
     Case([f(3, 4, 2), f(1, 3, 3), f(1, 3, 3), f(12, 2), f(12, 3), f(12), f(12)], _lstm_ref,
          sym={0: {0: "B", 1: "T"}, 1: {1: "B"}, 2: {1: "B"}}))

# =================================================================================== losses


def _red(v, reduction):
    return v.mean() if reduction == "mean" else v.sum() if reduction == "sum" else v


def _loss(name, elementwise, target="n", extra=None):
    extra = extra or {}
    ek = {k: v for k, v in extra.items()}
    spec(name, "gradcheck",
         Case([f(3, 4), f(3, 4, k=target)], lambda x, y: elementwise(x, y).mean()),
         Case([f(3, 4), f(3, 4, k=target)], lambda x, y: elementwise(x, y, **ek).sum(), attrs={**extra, "reduction": "sum"},
              id="sum"),
         Case([f(2, 3, 2), f(2, 3, 2, k=target)], lambda x, y: elementwise(x, y), attrs={"reduction": "none"}, id="none"),
         Case([f(4, 3), f(4, 3, k=target)], lambda x, y: elementwise(x, y), attrs={"reduction": "none"}, sym="B"))


_loss("mse_loss", lambda x, y: (x - y) ** 2)
_loss("l1_loss", lambda x, y: (x - y).abs())
_loss("smooth_l1_loss", lambda x, y, beta=1.0: torch.where((x - y).abs() < beta, 0.5 * (x - y) ** 2 / beta,
                                                            (x - y).abs() - 0.5 * beta), extra={"beta": 0.5})
_loss("huber_loss", lambda x, y, delta=1.0: torch.where((x - y).abs() < delta, 0.5 * (x - y) ** 2,
                                                         delta * ((x - y).abs() - 0.5 * delta)), extra={"delta": 2.0})
_loss("soft_margin_loss", lambda x, y: torch.log1p(torch.exp(-y * x)), target="sign")
spec("bce", "gradcheck",
     Case([f(3, 4, k="prob"), f(3, 4, k="prob")], lambda x, y: (-(y * torch.log(x) + (1 - y) * torch.log(1 - x))).mean()),
     Case([f(3, 4, k="prob"), f(3, 4, k="binary")], lambda x, y: -(y * torch.log(x) + (1 - y) * torch.log(1 - x)),
          attrs={"reduction": "none"}, id="none"),
     Case([f(3, 4, k="prob"), f(3, 4, k="prob")], lambda x, y: (-(y * torch.log(x) + (1 - y) * torch.log(1 - x))).sum(),
          attrs={"reduction": "sum"}, id="sum"),
     Case([f(4, 3, k="prob"), f(4, 3, k="prob")], lambda x, y: -(y * torch.log(x) + (1 - y) * torch.log(1 - x)),
          attrs={"reduction": "none"}, sym="B"))


def _bcel(x, y):
    return -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x))


spec("bce_with_logits", "gradcheck", Case([f(3, 4), f(3, 4, k="prob")], lambda x, y: _bcel(x, y).mean()),
     Case([f(3, 4), f(3, 4, k="binary")], _bcel, attrs={"reduction": "none"}, id="none"))


def _ce(x, y):
    logp = x - torch.logsumexp(x, 1, keepdim=True)
    return -logp.gather(1, y.unsqueeze(1)).squeeze(1)


spec("cross_entropy", "gradcheck",
     Case([f(4, 5), i(4, hi=5)], lambda x, y: _ce(x, y).mean()),
     Case([f(2, 5, 3), i(2, 3, hi=5)], lambda x, y: _ce(x, y), attrs={"reduction": "none"}, id="spatial-none"),
     Case([f(4, 5), f(4, 5, k="simplex")], lambda x, y: -(y * torch.log_softmax(x, 1)).sum(1).mean(), id="probs"),
     Case([f(4, 5), i(4, hi=5)], lambda x, y: F.cross_entropy(x, y, label_smoothing=0.1, reduction="sum"),
          attrs={"label_smoothing": 0.1, "reduction": "sum"}, id="smoothing"),
     Case([f(4, 5), In((4,), "i64", ("fixed", [1, -1, 3, -1]))],
          lambda x, y: torch.where(y == -1, torch.zeros(4, dtype=x.dtype), _ce(x, y.clamp(min=0))),
          attrs={"ignore_index": -1, "reduction": "none"}, id="ignore"),
     Case([f(5), In((), "i64", ("fixed", 2))], lambda x, y: -torch.log_softmax(x, 0)[y], id="unbatched"),
     Case([f(5), f(5, k="simplex")], lambda x, y: -(y * torch.log_softmax(x, 0)).sum(), attrs={"reduction": "none"},
          id="unbatched-probs"),
     Case([f(4, 5), i(4, hi=5)], lambda x, y: _ce(x, y), attrs={"reduction": "none"}, sym="B"))
spec("nll_loss", "gradcheck",
     Case([f(4, 5, k="logp"), i(4, hi=5)], lambda x, y: -x.gather(1, y[:, None]).mean()),
     Case([f(4, 5, k="logp"), i(4, hi=5)], lambda x, y: -x.gather(1, y[:, None]).sum(), attrs={"reduction": "sum"}, id="sum"),
     Case([f(2, 5, 3, k="logp"), i(2, 3, hi=5)], lambda x, y: -x.gather(1, y[:, None]).squeeze(1),
          attrs={"reduction": "none"}, id="spatial"),
     Case([f(5, k="logp"), In((), "i64", ("fixed", 2))], lambda x, y: -x[y], id="unbatched"))
spec("kl_div", "gradcheck",
     Case([f(3, 4, k="logp"), f(3, 4, k="simplex")], lambda x, y: (y * (torch.log(y) - x)).sum() / 3),
     Case([f(3, 4, k="logp"), f(3, 4, k="logp")], lambda x, y: (torch.exp(y) * (y - x)).sum(),
          attrs={"reduction": "sum", "log_target": True}, id="log_target-sum"),
     Case([f(3, 4, k="logp"), f(3, 4, k="simplex")], lambda x, y: (y * (torch.log(y) - x)).mean(),
          attrs={"reduction": "mean"}, id="mean"),
     Case([f(3, 4, k="logp"), f(3, 4, k="simplex")], lambda x, y: y * (torch.log(y) - x), attrs={"reduction": "none"},
          id="none"))
spec("hinge_embedding_loss", "gradcheck",
     Case([f(3, 4), f(3, 4, k="sign")], lambda x, y: torch.where(y == 1, x, (1 - x).clamp(min=0)).mean()),
     Case([f(3, 4), f(3, 4, k="sign")], lambda x, y: torch.where(y == 1, x, (0.5 - x).clamp(min=0)),
          attrs={"margin": 0.5, "reduction": "none"}, id="none"))
spec("margin_ranking_loss", "gradcheck",
     Case([f(5), f(5), f(5, k="sign")], lambda a, b_, y: (-y * (a - b_)).clamp(min=0).mean()),
     Case([f(2, 3), f(2, 3), f(2, 3, k="sign")], lambda a, b_, y: (-y * (a - b_) + 0.2).clamp(min=0),
          attrs={"margin": 0.2, "reduction": "none"}, id="none"))
spec("cosine_embedding_loss", "gradcheck",
     Case([f(4, 3), f(4, 3), f(4, k="sign")],
          lambda a, b_, y: torch.where(y == 1, 1 - _cos(a, b_, 1), (_cos(a, b_, 1)).clamp(min=0)).mean()),
     Case([f(4, 3), f(4, 3), f(4, k="sign")],
          lambda a, b_, y: torch.where(y == 1, 1 - _cos(a, b_, 1), (_cos(a, b_, 1) - 0.1).clamp(min=0)),
          attrs={"margin": 0.1, "reduction": "none"}, id="none"))


def _trip(a, p_, n, margin=1.0, p=2.0):
    d = lambda u, v: ((u - v + 1e-6).abs() ** p).sum(-1) ** (1 / p)  # noqa: E731
    return (d(a, p_) - d(a, n) + margin).clamp(min=0)


spec("triplet_margin_loss", "gradcheck",
     Case([f(4, 3), f(4, 3), f(4, 3)], lambda a, p_, n: _trip(a, p_, n).mean()),
     Case([f(4, 3), f(4, 3), f(4, 3)], lambda a, p_, n: _trip(a, p_, n, 2.0, 1.0),
          attrs={"margin": 2.0, "p": 1.0, "reduction": "none"}, id="p1-none"),
     Case([f(4, 3), f(4, 3), f(4, 3)], lambda a, p_, n: _trip(a, p_, n), attrs={"reduction": "none"}, sym="B"))


def _mm(x, y, p=1, margin=1.0):
    xy = x.gather(-1, y.unsqueeze(-1))
    v = (margin - xy + x).clamp(min=0) ** p
    mask = torch.ones_like(x, dtype=torch.bool).scatter(-1, y.unsqueeze(-1), False)
    return (v * mask).sum(-1) / x.shape[-1]


spec("multi_margin_loss", "gradcheck",
     Case([f(4, 5), i(4, hi=5)], lambda x, y: _mm(x, y).mean()),
     Case([f(4, 5), i(4, hi=5)], lambda x, y: _mm(x, y, 2, 0.5), attrs={"p": 2, "margin": 0.5, "reduction": "none"},
          id="p2-none"),
     Case([f(5), In((), "i64", ("fixed", 3))], lambda x, y: _mm(x, y), id="unbatched"))


# =================================================================================== graph structure
# Nodes the elaborator types itself (their shape rule must not be called) and codegen writes specially.
# Each case's `attrs` are bound and `ref` is the expected lowering (None: codegen emits the op itself).
spec("input", "structural", Case([], "images", attrs={"name": "images"}))
spec("target", "structural", Case([], "labels", attrs={"name": "labels"}))
spec("parameter", "structural", Case([], "m", attrs={"init": "zeros"}))
spec("scan", "structural", Case([], None, attrs={}), Case([], None, attrs={"axis": 0}))
spec("saved", "structural", Case([], "saved['n3']", attrs={"ref": ("n3", 0)}), Case([], "saved['n3:1']", attrs={"ref": ("n3", 1)}))
spec("scan_backward", "structural", Case([], None, attrs={"body_backward": None}))
spec("param_value", "structural", Case([], "m.weight", attrs={"module": "fc", "param": "weight"}))
spec("layer_param", "structural", Case([], "m.weight", attrs={"param": "weight"}))


# =================================================================================== backward graphs
# Ops that only appear in backward graphs. Dedicated backward ops are checked against the vector-Jacobian
# product torch.autograd computes for the forward op, with their attributes packed as the rules in
# compiler/ops/gradients.py pack them.
def derived(fn, *idx):
    """An input computed from earlier inputs (e.g. a reduction's forward output)."""
    return ("derived", fn, idx)


def vjp(fwd, wrt, zeros=(), n=None):
    """Reference: dL/d primals[wrt] of fwd(*primals[:n]) for the upstream gradient g; zeros_like for `zeros`."""
    def ref(g, *primals):
        primals = primals[:n]
        ps = [p.detach().clone().requires_grad_(j in wrt) if p.is_floating_point() else p for j, p in enumerate(primals)]
        gs = list(torch.autograd.grad(fwd(*ps), [ps[j] for j in wrt], g))
        gs += [torch.zeros_like(primals[j]) for j in zeros]
        return gs[0] if len(gs) == 1 else gs
    return ref


def _sorted_attrs(op, **kw):
    return tuple(sorted(bind_attrs(REGISTRY[op], [], kw, None).items()))


spec("accumulate", "backward", Case([f(2, 3), f(2, 3), f(2, 3)], lambda *gs: gs[0] + gs[1] + gs[2]),
     Case([f(2, 3), f(3)], lambda a, b_: a + b_, id="bcast"))
spec("sum_to", "backward", Case([f(2, 3, 4)], lambda x: x.sum(0).sum(-1, keepdim=True), attrs={"shape": [3, 1]}),
     Case([f(2, 3)], lambda x: x.sum(), attrs={"shape": []}, id="scalar"))
spec("expand_to", "backward",
     Case([f(2, 4)], lambda g: g.unsqueeze(1).expand(2, 3, 4), attrs={"shape": [2, 3, 4], "dim": 1}),
     Case([f(2, 1, 4)], lambda g: g.expand(2, 3, 4), attrs={"shape": [2, 3, 4], "dim": 1, "keepdim": True}, id="keep"),
     Case([f()], lambda g: g.expand(2, 3), attrs={"shape": [2, 3]}, id="all"))
spec("zeros_like", "backward", Case([f(2, 3)], lambda x: x * 0))
spec("reduce_grad", "backward",
     *[Case([f(*out), f(3, 4), In(out, "f32", derived(fwd, 1))], vjp(fwd, [0], n=1), attrs={"op": op, "attrs": attrs}, id=op)
       for op, out, fwd, attrs in (
           ("amax", (3,), lambda x: torch.amax(x, 1), _sorted_attrs("amax", dim=1)),
           ("min", (), lambda x: torch.amin(x), _sorted_attrs("min")),
           ("logsumexp", (3, 1), lambda x: torch.logsumexp(x, 1, keepdim=True), _sorted_attrs("logsumexp", dim=1, keepdim=True)),
           ("var", (4,), lambda x: torch.var(x, 0), _sorted_attrs("var", dim=0)),
           ("std", (), lambda x: torch.std(x, correction=0), _sorted_attrs("std", correction=0)),
           ("norm", (3,), lambda x: torch.linalg.vector_norm(x, dim=-1), _sorted_attrs("norm", dim=-1)),
           ("mean", (3,), lambda x: torch.mean(x, 1), (1, False)))],
     Case([f(2), f(2, 3, k="pos"), In((2,), "f32", derived(lambda x: torch.prod(x, 1), 1))],
          vjp(lambda x: torch.prod(x, 1), [0], n=1), attrs={"op": "prod", "attrs": _sorted_attrs("prod", dim=1)}, id="prod"))
def _alpha_kept(x, p=0.5):
    """An alpha-dropout output with a known mask (every other element kept)."""
    alpha = 1.7580993408473766
    a = ((1 - p) * (1 + p * alpha ** 2)) ** -0.5
    mask = (torch.arange(x.numel()).reshape(x.shape) % 2).to(x.dtype)
    return a * mask * x + a * alpha * (mask - 1 + p)


def _alpha_grad(g, x, out, p=0.5):
    alpha = 1.7580993408473766
    a = ((1 - p) * (1 + p * alpha ** 2)) ** -0.5
    return g * a * (torch.arange(x.numel()).reshape(x.shape) % 2).to(g.dtype)


spec("dropout_grad", "backward",
     Case([f(2, 3), f(2, 3), f(2, 3, k=derived(lambda x: x, 1))], lambda g, x, out: g,
          attrs={"op": "dropout", "attrs": 0.5}, id="eval"),
     Case([f(2, 3), f(2, 3), f(2, 3, k=derived(lambda x: x * (torch.arange(6).reshape(2, 3) % 2) * 2.0, 1))],
          lambda g, x, out: g * (torch.arange(6).reshape(2, 3) % 2) * 2.0, attrs={"op": "dropout", "attrs": 0.5},
          id="train"),
     Case([f(2, 3), f(2, 3), f(2, 3, k=derived(lambda x: _alpha_kept(x), 1))], lambda g, x, out: _alpha_grad(g, x, out),
          attrs={"op": "alpha_dropout", "attrs": 0.5}, id="alpha"))
spec("getitem_grad", "backward",
     Case([f(2, 4), f(2, 3, 4)], vjp(lambda x: x[:, -1], [0]), attrs={"op": "getitem", "attrs": (sl(), -1)}),
     Case([f(2, 3, 2), f(2, 3, 4)], vjp(lambda x: x[..., 1:3], [0]), attrs={"op": "getitem", "attrs": ("...", sl(1, 3))},
          id="slice"),
     Case([f(2, 3), f(2, 3, 4)], vjp(lambda x: x.select(2, 1), [0]), attrs={"op": "select", "attrs": ("select", 2, 1)},
          id="select"))
spec("gather_grad", "backward",
     Case([f(3, 2), f(3, 4), i(3, 2, hi=4)], vjp(lambda x, ix: torch.gather(x, 1, ix), [0]), attrs={"op": "gather", "attrs": 1}),
     Case([f(5, 3), f(4, 3), i(5, hi=4)], vjp(lambda x, ix: torch.index_select(x, 0, ix), [0]),
          attrs={"op": "index_select", "attrs": 0}, id="index_select"))
spec("embedding_grad", "backward",
     Case([f(2, 3, 4), i(2, 3, hi=6), f(6, 4)], lambda g, ids, w: vjp(lambda w_: F.embedding(ids, w_), [0])(g, w),
          attrs={"op": "embedding", "attrs": None}),
     Case([f(5, 2), i(5, hi=4), f(4, 2)], lambda g, ids, w: vjp(lambda w_: F.embedding(ids, w_, padding_idx=0), [0])(g, w),
          attrs={"op": "embedding", "attrs": 0}, id="padding_idx"))
spec("conv_backward", "backward",
     Case([f(2, 4, 3, 3), f(2, 3, 6, 6), f(4, 3, 3, 3)], vjp(lambda x, w: F.conv2d(x, w, None, 2, 1), [0, 1]),
          attrs={"op": "conv2d", "attrs": (2, 1, 1, 1, False, 0)}),
     Case([f(2, 2, 9), f(2, 3, 9), f(2, 3, 3)], vjp(lambda x, w: F.conv1d(x, w, None, 1, "same", 2), [0, 1]),
          attrs={"op": "conv1d", "attrs": (1, "same", 2, 1, False, 0)}, id="same"),
     Case([f(2, 3, 6, 6), f(2, 4, 3, 3), f(4, 3, 3, 3)],
          vjp(lambda x, w: F.conv_transpose2d(x, w, None, 2, 1, 1), [0, 1]),
          attrs={"op": "conv_transpose2d", "attrs": (2, 1, 1, 1, True, 1)}, id="transposed"),
     Case([f(4, 3, 3), f(6, 5, 5), f(4, 3, 3, 3)], vjp(lambda x, w: F.conv2d(x, w, None, 1, 0, 1, 2), [0, 1]),
          attrs={"op": "conv2d", "attrs": (1, 0, 1, 2, False, 0)}, id="groups-unbatched"))
spec("max_pool_grad", "backward",
     Case([f(2, 3, 4, 4), f(2, 3, 7, 7)], vjp(lambda x: F.max_pool2d(x, 3, 2, 1), [0]),
          attrs={"op": "max_pool2d", "attrs": (3, 2, 1, 1, False)}),
     Case([f(2, 3, 3), f(2, 3, 7)], vjp(lambda x: F.max_pool1d(x, 2, ceil_mode=False), [0]),
          attrs={"op": "max_pool1d", "attrs": (2, None, 0, 1, False)}, id="1d"))
spec("avg_pool_grad", "backward",
     Case([f(2, 3, 4, 4), f(2, 3, 7, 7)], vjp(lambda x: F.avg_pool2d(x, 3, 2, 1, True, False), [0]),
          attrs={"op": "avg_pool2d", "attrs": (3, 2, 1, True, False)}),
     Case([f(2, 3, 3), f(2, 3, 7)], vjp(lambda x: F.avg_pool1d(x, 2), [0]),
          attrs={"op": "avg_pool1d", "attrs": (2, None, 0, False, True)}, id="1d"))
spec("adaptive_pool_grad", "backward",
     Case([f(2, 3, 2, 3), f(2, 3, 5, 7)], vjp(lambda x: F.adaptive_avg_pool2d(x, (2, 3)), [0]),
          attrs={"op": "adaptive_avg_pool2d", "attrs": (2, 3)}),
     Case([f(2, 3, 3), f(2, 3, 7)], vjp(lambda x: F.adaptive_max_pool1d(x, 3), [0]),
          attrs={"op": "adaptive_max_pool1d", "attrs": 3}, id="max1d"))
spec("upsample_grad", "backward",
     Case([f(1, 2, 6, 6), f(1, 2, 3, 3)], vjp(lambda x: F.interpolate(x, scale_factor=2.0), [0]),
          attrs={"op": "upsample", "attrs": ("nearest", None)}),
     Case([f(1, 2, 6, 8), f(1, 2, 3, 4)], vjp(lambda x: F.interpolate(x, size=(6, 8), mode="bilinear", align_corners=True), [0]),
          attrs={"op": "upsample", "attrs": ("bilinear", True)}, id="bilinear"),
     Case([f(2, 3, 12), f(2, 3, 4)], vjp(lambda x: F.interpolate(x, scale_factor=3.0, mode="linear"), [0]),
          attrs={"op": "upsample", "attrs": ("linear", None)}, id="linear"))


def _norm_vjp(fwd):
    """Reference for the norm backward ops: (dx, dweight, dbias) of fwd(x, weight, bias, module)."""
    def ref(g, x, *rest):
        w, m = (rest[0], rest[1]) if len(rest) == 2 else (None, rest[0])
        if w is None:
            return vjp(lambda x_: fwd(x_, None, None, m), [0])(g, x)
        bias = torch.zeros_like(w)
        return vjp(lambda x_, w_, b_: fwd(x_, w_, b_, m), [0, 1, 2])(g, x, w, bias)
    return ref


_BN = lambda x, w, b_, m: F.batch_norm(x, m["running_mean"].clone(), m["running_var"].clone(), w, b_,  # noqa: E731
                                      m["training"], 0.1, 1e-5)
spec("batch_norm_grad", "backward",
     Case([f(2, 3, 4, 4), f(2, 3, 4, 4), f(3)], _norm_vjp(_BN), attrs={"op": "batch_norm"}, mod=lambda: nn.BatchNorm2d(3),
          training=True, id="train"),
     Case([f(4, 3), f(4, 3), f(3)], _norm_vjp(_BN), attrs={"op": "batch_norm"}, mod=lambda: nn.BatchNorm1d(3), id="eval"),
     Case([f(2, 3, 5), f(2, 3, 5)], _norm_vjp(_BN), attrs={"op": "batch_norm"}, mod=lambda: nn.BatchNorm1d(3, affine=False),
          training=True, id="noaffine"))
spec("layer_norm_grad", "backward",
     Case([f(2, 3, 4), f(2, 3, 4), f(4)], _norm_vjp(lambda x, w, b_, m: F.layer_norm(x, (4,), w, b_, 1e-5)),
          attrs={"op": "layer_norm"}, mod=lambda: nn.LayerNorm(4)),
     Case([f(2, 3, 4), f(2, 3, 4)], _norm_vjp(lambda x, w, b_, m: F.layer_norm(x, (3, 4), None, None, 1e-5)),
          attrs={"op": "layer_norm"}, mod=lambda: nn.LayerNorm((3, 4), elementwise_affine=False), id="noaffine"))
spec("group_norm_grad", "backward",
     Case([f(2, 4, 3), f(2, 4, 3), f(4)], _norm_vjp(lambda x, w, b_, m: F.group_norm(x, 2, w, b_, 1e-5)),
          attrs={"op": "group_norm"}, mod=lambda: nn.GroupNorm(2, 4)),
     Case([f(2, 3, 5), f(2, 3, 5)], _norm_vjp(lambda x, w, b_, m: F.instance_norm(x, eps=1e-5)),
          attrs={"op": "instance_norm"}, mod=lambda: nn.InstanceNorm1d(3), id="instance"))


def _loss_case(op, ins, fwd, wrt=(0,), zeros=(), **attrs):
    return Case(ins, vjp(fwd, list(wrt), zeros), attrs={"op": op, "attrs": _sorted_attrs(op, **attrs)},
                id=op + ("-" + attrs["reduction"] if "reduction" in attrs else ""))


spec("loss_grad", "backward",
     _loss_case("mse_loss", [f(), f(3, 4), f(3, 4)], F.mse_loss),
     _loss_case("l1_loss", [f(), f(3, 4), f(3, 4)], lambda x, y: F.l1_loss(x, y, reduction="sum"), reduction="sum"),
     _loss_case("smooth_l1_loss", [f(3, 4), f(3, 4), f(3, 4)], lambda x, y: F.smooth_l1_loss(x, y, reduction="none", beta=0.5),
                reduction="none", beta=0.5),
     _loss_case("huber_loss", [f(), f(3, 4), f(3, 4, k="n3")], lambda x, y: F.huber_loss(x, y, delta=2.0), delta=2.0),
     _loss_case("soft_margin_loss", [f(), f(3, 4), f(3, 4, k="sign")], F.soft_margin_loss),
     _loss_case("bce", [f(), f(3, 4, k="prob"), f(3, 4, k="prob")], F.binary_cross_entropy),
     _loss_case("bce_with_logits", [f(3, 4), f(3, 4), f(3, 4, k="prob")],
                lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none"), reduction="none"),
     _loss_case("hinge_embedding_loss", [f(), f(3, 4), f(3, 4, k="sign")], F.hinge_embedding_loss),
     _loss_case("kl_div", [f(), f(3, 4, k="logp"), f(3, 4, k="simplex")], lambda x, y: F.kl_div(x, y, reduction="batchmean")),
     _loss_case("cross_entropy", [f(), f(4, 5), i(4, hi=5)], F.cross_entropy),
     _loss_case("cross_entropy", [f(), f(4, 5), i(4, hi=5)],
                lambda x, y: F.cross_entropy(x, y, label_smoothing=0.1, reduction="sum"), label_smoothing=0.1, reduction="sum"),
     _loss_case("cross_entropy", [f(2, 3), f(2, 5, 3), i(2, 3, hi=5)], lambda x, y: F.cross_entropy(x, y, reduction="none"),
                reduction="none"),
     _loss_case("nll_loss", [f(), f(4, 5, k="logp"), i(4, hi=5)], F.nll_loss),
     _loss_case("multi_margin_loss", [f(4), f(4, 5), i(4, hi=5)],
                lambda x, y: F.multi_margin_loss(x, y, p=2, margin=0.5, reduction="none"), p=2, margin=0.5, reduction="none"))
spec("loss_grad3", "backward",
     _loss_case("margin_ranking_loss", [f(), f(5), f(5), f(5, k="sign")], F.margin_ranking_loss, wrt=(0, 1), zeros=(2,)),
     _loss_case("cosine_embedding_loss", [f(4), f(4, 3), f(4, 3), f(4, k="sign")],
                lambda a, b_, y: F.cosine_embedding_loss(a, b_, y, margin=0.1, reduction="none"), wrt=(0, 1), zeros=(2,),
                margin=0.1, reduction="none"),
     _loss_case("triplet_margin_loss", [f(), f(4, 3), f(4, 3), f(4, 3)], F.triplet_margin_loss, wrt=(0, 1, 2)))
spec("pair_grad", "backward",
     Case([f(2, 4), f(2, 3, 4), f(2, 3, 4)], vjp(lambda a, b_: F.cosine_similarity(a, b_, 1), [0, 1]),
          attrs={"op": "cosine_similarity", "attrs": _sorted_attrs("cosine_similarity")}, id="cosine_similarity"),
     Case([f(3), f(3, 5), f(3, 5)], vjp(lambda a, b_: F.pairwise_distance(a, b_, 3.0), [0, 1]),
          attrs={"op": "pairwise_distance", "attrs": _sorted_attrs("pairwise_distance", p=3.0)}, id="pairwise_distance"),
     Case([f(3, 5), f(3, 4), f(5, 4)], vjp(lambda a, b_: torch.cdist(a, b_), [0, 1]),
          attrs={"op": "cdist", "attrs": _sorted_attrs("cdist")}, id="cdist"))
spec("sdpa_backward", "backward",
     Case([f(2, 3, 4, 4), f(2, 3, 4, 5), f(2, 3, 6, 5), f(2, 3, 6, 4)], vjp(F.scaled_dot_product_attention, [0, 1, 2])),
     Case([f(2, 4, 3), f(2, 4, 3), f(2, 4, 3), f(2, 4, 3)],
          vjp(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3), [0, 1, 2]),
          attrs={"is_causal": True, "scale": 0.3}, id="causal"),
     Case([f(2, 3, 2), f(2, 3, 4), f(2, 5, 4), f(2, 5, 2), f(3, 5)],
          vjp(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), [0, 1, 2]), id="float-mask"))


def _lstm_vjp(batch_first=True):
    def ref(g_y, g_h, g_c, *ins):
        leaves = [t.detach().clone().requires_grad_(True) for t in ins]
        return list(torch.autograd.grad(_lstm_ref(*leaves, batch_first=batch_first), leaves, (g_y, g_h, g_c)))
    return ref


def _lce_vjp(ignore_index=-100):
    def ref(g_logits, g_loss, x, w, y):
        xs, ws = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
        return list(torch.autograd.grad(_lce_ref(xs, ws, y, ignore_index), (xs, ws), (g_logits, g_loss)))
    return ref


spec("linear_cross_entropy_backward", "backward",
     Case([f(4, 5), f(), f(4, 3), f(5, 3), i(4, hi=5)], _lce_vjp()),
     Case([f(2, 3, 6), f(), f(2, 3, 4), f(6, 4), In((2, 3), "i64", ("fixed", [[0, -1, 5], [2, 2, -1]]))], _lce_vjp(-1),
          attrs={"ignore_index": -1}, id="ignore"))
spec("lstm_backward", "backward",
     Case([f(2, 3, 5), f(1, 2, 5), f(1, 2, 5), f(2, 3, 4), f(1, 2, 5), f(1, 2, 5), f(20, 4), f(20, 5), f(20), f(20)],
          _lstm_vjp()),
     Case([f(3, 2, 3), f(1, 2, 3), f(1, 2, 3), f(3, 2, 2), f(1, 2, 3), f(1, 2, 3), f(12, 2), f(12, 3)],
          _lstm_vjp(batch_first=False), attrs={"batch_first": False}, id="time-first-nobias"))


# =================================================================================== the harness
def _case_seed(name: str, k: int) -> int:
    return zlib.crc32(f"{name}/{k}".encode())


def _is_derived(inp: In) -> bool:
    return isinstance(inp.kind, tuple) and inp.kind[0] == "derived"


def _draw(inp: In, gen: torch.Generator) -> torch.Tensor:
    shape, kind = inp.shape, inp.kind
    if inp.dtype == "bool":
        return torch.rand(shape, generator=gen, dtype=torch.float64) > 0.5
    if isinstance(kind, tuple) and kind[0] == "int":
        return torch.randint(kind[1], kind[2], shape, generator=gen, dtype=torch.int64)
    if isinstance(kind, tuple) and kind[0] == "fixed":
        return torch.tensor(kind[1], dtype=torch.int64).reshape(shape)
    if isinstance(kind, tuple) and kind[0] == "const":
        return torch.full(shape, kind[1], dtype=torch.float64)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    n = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "n":
        return n
    if kind == "n3":
        return n * 3 + 0.01          # kept off integers and half-integers in practice
    if kind == "n5":
        return n * 5
    if kind == "pos":
        return 0.5 + 1.5 * u
    if kind == "unit":
        return 1.8 * u - 0.9
    if kind == "prob":
        return 0.05 + 0.9 * u
    if kind == "binary":
        return (u > 0.5).double()
    if kind == "sign":
        return torch.where(u > 0.5, 1.0, -1.0).double()
    if kind == "away0":
        return torch.where(n >= 0, 1.0, -1.0).double() * (0.5 + u)
    if kind == "small_int":
        return torch.floor(3 * u)
    if kind == "logp":
        return torch.log_softmax(n, -1)
    if kind == "simplex":
        return torch.softmax(n, -1)
    raise AssertionError(f"unknown input kind {kind!r}")


@dataclass
class Prepared:
    name: str
    op: Any
    case: Case
    attrs: dict
    in_types: list
    out_types: list                # from the shape rule (may hold symbols only for env-bound attrs)
    xs: list                       # float64 / int / bool tensors
    module: Any = None             # float64 module with randomised weights, or None


def _norm_outs(t):
    return list(t) if isinstance(t, (list, tuple)) else [t]


def eval_dim(d, env: dict):
    """The value of a (possibly symbolic) dimension for given symbol values."""
    if is_concrete(d):
        return d
    total = 0
    for mono, coef in d.terms.items():
        v = coef
        for atom in mono:
            v *= env[atom] if atom in env else eval(atom, {"__builtins__": {}}, dict(env))  # opaque atom "(H - 1)//2"
        total += v
    return total


def _randomise(m: nn.Module, gen: torch.Generator):
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5 + (1.0 if name.endswith("weight")
                                                                                       and p.dim() <= 1 else 0.0))
        for name, buf in m.named_buffers():
            if buf.is_floating_point():
                r = torch.rand(buf.shape, generator=gen, dtype=torch.float64)
                buf.copy_(r + 0.5 if "var" in name else r - 0.5)


def prepare(name: str, k: int) -> Prepared:
    op = REGISTRY[name]
    case = SPECS[name].cases[k]
    gen = torch.Generator().manual_seed(_case_seed(name, k))
    attrs = bind_attrs(op, [], dict(case.attrs), None)
    in_types = [TensorType(t.dtype, t.shape) for t in case.ins]
    out = op.shape(OpContext(op, None), in_types, attrs)
    xs = [None if _is_derived(t) else _draw(t, gen) for t in case.ins]
    xs = [t.kind[1](*[xs[j] for j in t.kind[2]]).detach() if _is_derived(t) else x for t, x in zip(case.ins, xs)]
    module = None
    if op.module is not None or case.mod is not None:
        module = (eval(op.module(in_types, attrs), NS) if op.module is not None else case.mod()).double()
        _randomise(module, gen)
    return Prepared(name, op, case, attrs, in_types, _norm_outs(out), xs, module)


def _lower_ctx(pr: Prepared) -> LowerCtx:
    return LowerCtx(module="m", in_types=pr.in_types, out_types=pr.out_types, device="device", dtype="dtype",
                    training="training")


def lower_expr(pr: Prepared) -> str:
    names = [f"x{k}" for k in range(len(pr.xs))]
    return pr.op.lower(names, pr.attrs, _lower_ctx(pr))


def _cast_inputs(xs, float_dtype):
    return [x.to(float_dtype) if x.is_floating_point() else x for x in xs]


@functools.lru_cache(maxsize=None)
def _compiled(expr: str):
    return compile(expr, "<lowered>", "eval")


def run_lowered(pr: Prepared, xs, float_dtype, module=None, expr=None):
    """Evaluate the generated expression (`expr`, default: lower it now) with inputs bound to x0, x1, ..."""
    env = {f"x{k}": x for k, x in enumerate(xs)}
    env.update(pr.case.env)
    env.update(m=module, training=pr.case.training, device=torch.device("cpu"), dtype=float_dtype)
    if pr.case.seed:
        torch.manual_seed(1234)
    out = eval(_compiled(expr or lower_expr(pr)), NS, env)
    if pr.name == "constant":           # written inline as a Python number by codegen: it takes the model's float dtype
        assert isinstance(out, (int, float)) and not isinstance(out, bool)
        out = torch.as_tensor(out, dtype=float_dtype if isinstance(out, float) else torch.int64)
    return out


def _module_copy(pr: Prepared, float_dtype):
    if pr.module is None:
        return None
    m = copy.deepcopy(pr.module).to(float_dtype)
    m.train(pr.case.training)
    return m


def _module_tensors(m) -> dict:
    if m is None:
        return {}
    return {**{n: t.detach().clone() for n, t in m.named_parameters()}, **{n: t.clone() for n, t in m.named_buffers()}}


def _expected_dtype(rule_dtype: str, float_dtype) -> torch.dtype:
    if rule_dtype == "f32":
        return float_dtype              # f32 in a spec is the model's float dtype (float64 after .double())
    return TORCH_DTYPES[rule_dtype]


def _all_cases():
    for name in sorted(n for n in SPECS if SPECS[n].grad != "structural"):
        for k, case in enumerate(SPECS[name].cases):
            yield pytest.param(name, k, id=f"{name}[{case.id or k}]")


ALL_CASES = list(_all_cases())


# =================================================================================== 0. coverage
def test_every_op_has_test_cases():
    missing = sorted(set(REGISTRY) - set(SPECS))
    assert not missing, f"ops without a registry test case (add them to SPECS in {__file__}): {missing}"
    stale = sorted(set(SPECS) - set(REGISTRY))
    assert not stale, f"test cases for ops that are not registered: {stale}"
    for name, s in SPECS.items():
        assert s.cases, f"{name} has no cases"


def test_every_op_in_exactly_one_gradient_category():
    by_cat: dict = {c: set() for c in GRAD_CATEGORIES}
    for name, s in SPECS.items():
        by_cat[s.grad].add(name)
    seen: set = set()
    for c, names in by_cat.items():
        assert not (names & seen)
        seen |= names
    assert seen == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(n for n in SPECS if SPECS[n].grad == "structural"))
def test_structural_ops(name):
    op = REGISTRY[name]
    assert op.category in ("graph", "backward"), f"{name} is tested as a graph-structure node, category {op.category}"
    assert op.params is None and op.module is None and not op.random
    for case in SPECS[name].cases:
        attrs = bind_attrs(op, [], dict(case.attrs), None)
        with pytest.raises(AssertionError, match="typed by"):
            op.shape(OpContext(op, None), [], attrs)
        if case.ref is None:
            assert op.lower is None, f"{name} lowers; give its case the expected expression"
        else:
            assert op.lower([], attrs, LowerCtx(module="m")) == case.ref


def test_some_cases_are_symbolic():
    sym_ops = {name for name, s in SPECS.items() for c in s.cases if c.sym or c.env}
    assert len(sym_ops) >= 20, sym_ops


# =================================================================================== 1 + 2. shapes and lowering
@pytest.mark.parametrize("name,k", ALL_CASES)
def test_shape_rule_and_lowering(name, k):
    pr = prepare(name, k)
    case, op = pr.case, pr.op
    if not op.variadic:
        n_in = len(op.inputs)
        assert n_in - op.optional_inputs <= len(case.ins) <= n_in, "case has the wrong number of inputs"
    for float_dtype, tol in ((torch.float32, dict(rtol=1e-4, atol=1e-5)), (torch.float64, dict(rtol=1e-6, atol=1e-6))):
        xs = _cast_inputs(pr.xs, float_dtype)
        m = _module_copy(pr, float_dtype)
        p_ref = _module_tensors(m)
        outs = _norm_outs(run_lowered(pr, xs, float_dtype, m))
        # shape rule == what torch produced
        assert len(outs) == len(pr.out_types), f"rule gives {len(pr.out_types)} outputs, torch {len(outs)}"
        for t, o in zip(pr.out_types, outs):
            want = tuple(eval_dim(d, case.env) for d in t.shape)
            assert tuple(o.shape) == want, f"shape rule says {t}, torch gives {tuple(o.shape)}"
            want_dt = _expected_dtype(t.dtype, float_dtype)
            if (t.dtype == "f32" and pr.xs and not any(x.is_floating_point() for x in xs) and m is None
                    and "dtype" not in lower_expr(pr)):
                # floats made from integer inputs alone (exp(ids), i / j) take torch's default dtype, not the
                # model's: after .double() they stay float32 (a limitation of implicit promotion)
                want_dt = torch.get_default_dtype()
            assert o.dtype == want_dt, f"shape rule says {t.dtype}, torch gives {o.dtype}"
        # reference
        if case.ref is not None:
            if case.seed:
                torch.manual_seed(1234)
            default = torch.get_default_dtype()
            torch.set_default_dtype(float_dtype)        # references draw/create in the model's dtype
            try:
                if case.mod is not None:          # backward ops read the module itself (eps, mode, statistics)
                    ref = case.ref(*xs, {**p_ref, "training": case.training})
                else:
                    ref = case.ref(*xs, p_ref) if op.module is not None else case.ref(*xs)
            finally:
                torch.set_default_dtype(default)
            refs = _norm_outs(ref)
            assert len(refs) == len(outs)
            for o, r in zip(outs, refs):
                r = torch.as_tensor(r)
                if o.is_floating_point() and r.is_floating_point():
                    r = r.to(o.dtype)
                torch.testing.assert_close(o, r, **tol)
            for bname, buf in (m.named_buffers() if m is not None else ()):   # running statistics
                if buf.is_floating_point():
                    torch.testing.assert_close(buf, p_ref[bname].to(buf.dtype), **tol, msg=f"buffer {bname}")
        else:
            assert case.check is not None or op.random, "a case needs a reference or a check"
        if case.check is not None:
            case.check(outs[0] if len(outs) == 1 else outs, *xs)


@pytest.mark.parametrize("name,k", [c for c in ALL_CASES if SPECS[c.values[0]].cases[c.values[1]].sym])
def test_shape_rule_symbolic(name, k):
    """With symbolic dims the rule stays symbolic and agrees with the concrete rule at the case's sizes."""
    pr = prepare(name, k)
    case, op = pr.case, pr.op
    spec_ = case.sym
    if spec_ == "B":
        spec_ = {j: {0: "B"} for j, t in enumerate(pr.in_types) if t.rank >= 1}
    env: dict = {}
    sym_types = []
    for j, t in enumerate(pr.in_types):
        shape = list(t.shape)
        for axis, sname in spec_.get(j, {}).items():
            assert env.setdefault(sname, shape[axis]) == shape[axis], f"{sname} has two sizes in the case"
            shape[axis] = Sym.var(sname)
        sym_types.append(t.with_shape(shape))
    sym_out = _norm_outs(op.shape(OpContext(op, None), sym_types, pr.attrs))
    assert len(sym_out) == len(pr.out_types)
    assert any(not is_concrete(d) for t in sym_out for d in t.shape), f"symbolic inputs gave a concrete shape: {sym_out}"
    for s, c in zip(sym_out, pr.out_types):
        assert s.dtype == c.dtype
        assert tuple(eval_dim(d, env) for d in s.shape) == tuple(c.shape), f"{s} at {env} is not {c}"
    # the lowering does not depend on the symbols
    sym_pr = dataclasses.replace(pr, in_types=sym_types, out_types=sym_out, case=dataclasses.replace(case, env=env))
    out = _norm_outs(run_lowered(sym_pr, _cast_inputs(pr.xs, torch.float64), torch.float64, _module_copy(pr, torch.float64)))
    for s, o in zip(sym_out, out):
        assert tuple(o.shape) == tuple(eval_dim(d, env) for d in s.shape)


# =================================================================================== module parameters
MODULE_CASES = [c for c in ALL_CASES if REGISTRY[c.values[0]].module is not None]


@pytest.mark.parametrize("name,k", MODULE_CASES)
def test_module_params_match_param_specs(name, k):
    op = REGISTRY[name]
    case = SPECS[name].cases[k]
    attrs = bind_attrs(op, [], dict(case.attrs), None)
    in_types = [TensorType(t.dtype, t.shape) for t in case.ins]
    m = eval(op.module(in_types, attrs), NS)
    assert isinstance(m, nn.Module)
    specs = op.params(in_types, attrs)
    assert all(isinstance(s, ParamSpec) for s in specs)
    want_params = {s.name: tuple(s.shape) for s in specs if s.trainable}
    want_buffers = {s.name: tuple(s.shape) for s in specs if not s.trainable}
    got_params = {n: tuple(p.shape) for n, p in m.named_parameters()}
    got_buffers = {n: tuple(t.shape) for n, t in m.named_buffers()}
    assert got_params == want_params, "trainable parameters differ from op.params"
    assert got_buffers == want_buffers, "buffers differ from op.params (non-trainable specs)"
    assert len({s.name for s in specs}) == len(specs)
    ctx = LowerCtx(module="m", in_types=in_types)
    assert "m(" in op.lower(["x0"], attrs, ctx), "a module op lowers to a call of its module"


# =================================================================================== 3. gradients
def check_ir_gradient_rule(pr: Prepared) -> None:
    """The op's IR gradient rule (compiler/ops/gradients.py), checked against torch.autograd and finite
    differences on this case's float64 inputs.

    A one-op graph is built around the case (its inputs as graph inputs, its module as layer `m`), autodiff
    derives the backward graph from the rule, codegen compiles it, and `backward()` runs on the values that
    `forward_saved()` kept, seeded with a random upstream gradient. Its vector-Jacobian product must equal
    torch.autograd.grad of the same forward run (random ops: the very same draws), and its directional
    derivative along a random direction must equal a central finite difference of the forward (ops without
    randomness).
    """
    s = SPECS[pr.name]
    if s.grad not in ("gradcheck", "zero", "surrogate") or pr.case.env or pr.case.sym:
        return
    if not any(t.dtype in ("f32", "f64") for t in pr.out_types):
        return
    import types

    from nnspec.compiler.autodiff import build_backward
    from nnspec.compiler.codegen.backward import generate_backward
    from nnspec.compiler.ir import Graph, ModuleInfo, Node

    xs = _cast_inputs(pr.xs, torch.float64)
    graph = Graph("rule_check")
    refs = []
    for j, x in enumerate(xs):
        t = TensorType(pr.in_types[j].dtype, tuple(x.shape))
        node = Node(f"x{j}", "input", [], {"name": f"x{j}"}, [t], label=f"x{j}")
        graph.add_node(node)
        graph.inputs.append(node.id)
        refs.append((node.id, 0))
    in_types = [graph.type_of(r) for r in refs]
    outs = _norm_outs(pr.op.shape(OpContext(pr.op, None), in_types, pr.attrs))
    module = None
    if pr.op.module is not None:
        graph.modules["m"] = ModuleInfo("m", pr.name, pr.op.params(in_types, pr.attrs), dict(pr.attrs), list(in_types))
        module = "m"
    graph.add_node(Node("op", pr.name, refs, dict(pr.attrs), outs, module=module, label="y"))
    for k, t in enumerate(outs):
        if t.dtype in ("f32", "f64"):
            graph.outputs[f"y{k}"] = ("op", k)
    bwd, info = build_backward(graph, wrt_inputs=True)
    code = types.ModuleType("rule_check")
    exec(compile(generate_backward(graph, bwd, info), "<rule check>", "exec"), code.__dict__)
    holder = nn.Module()
    if pr.module is not None:
        holder.m = _module_copy(pr, torch.float64)
    holder.train(pr.case.training)
    diff = _grad_inputs(pr)
    leaves = [x.clone().requires_grad_(True) if j in diff else x for j, x in enumerate(xs)]
    params = dict(holder.named_parameters())
    if pr.case.seed:
        torch.manual_seed(1234)
    result, saved = code.forward_saved(holder, *leaves)
    gen = torch.Generator().manual_seed(7)
    seeds = {f"grad_{k}": torch.randn(result[k].shape, generator=gen, dtype=torch.float64) for k in graph.outputs}
    ours = code.backward(holder, saved, **seeds)
    objective = sum((result[k] * seeds[f"grad_{k}"]).sum() for k in graph.outputs)
    wrt = {**{f"x{j}": leaves[j] for j in diff}, **params}
    if objective.requires_grad:
        ref = torch.autograd.grad(objective, list(wrt.values()), allow_unused=True)
    else:
        ref = [None] * len(wrt)
    for (name, leaf), r in zip(wrt.items(), ref):
        r = torch.zeros_like(leaf) if r is None else r
        got = ours.get(name)
        if got is None:
            assert not r.any(), f"{pr.name}: autograd gives d{name}, the IR rule gives none"
            continue
        assert got.shape == leaf.shape, f"{pr.name}: d{name} has shape {tuple(got.shape)}, expected {tuple(leaf.shape)}"
        assert torch.allclose(got, r, rtol=1e-7, atol=1e-9), \
            f"{pr.name}: IR rule's d{name} differs from autograd by {(got - r).abs().max().item():.3g}"
    if pr.op.random or s.grad != "gradcheck" or not diff:
        return
    # finite differences: <ours, v> == (f(x + eps v) - f(x - eps v)) / 2 eps . seed, along a random direction
    eps = 1e-6
    vs = {j: torch.randn(xs[j].shape, generator=gen, dtype=torch.float64) for j in diff}

    def f_at(sign):
        moved = [x + sign * eps * vs[j] if j in vs else x for j, x in enumerate(xs)]
        out, _ = code.forward_saved(holder, *moved)
        return sum((out[k] * seeds[f"grad_{k}"]).sum() for k in graph.outputs).item()

    holder_state = {k: v.clone() for k, v in holder.state_dict().items()}
    numeric = (f_at(1.0) - f_at(-1.0)) / (2 * eps)
    holder.load_state_dict(holder_state)  # batch norm's running statistics moved in those two passes
    analytic = sum((ours[f"x{j}"] * v).sum().item() for j, v in vs.items() if f"x{j}" in ours)
    assert abs(numeric - analytic) <= 1e-4 * max(1.0, abs(numeric)), \
        f"{pr.name}: IR rule's directional derivative {analytic:.8g} vs finite difference {numeric:.8g}"


def _grad_inputs(pr: Prepared):
    """Indices of the float inputs that take a gradient."""
    return [j for j, x in enumerate(pr.xs) if x.is_floating_point() and j not in pr.op.nondiff_inputs]


def _fn_for_grad(pr: Prepared, diff_idx: list, use_params: bool):
    """f(*diff inputs, *trainable params) -> lowered output, float64, reseeding random ops at each call."""
    m = _module_copy(pr, torch.float64)
    pnames = [n for n, _ in m.named_parameters()] if (m is not None and use_params) else []
    base = _cast_inputs(pr.xs, torch.float64)
    expr = lower_expr(pr)

    def fn(*args):
        xs = list(base)
        for j, a in zip(diff_idx, args[:len(diff_idx)]):
            xs[j] = a
        module = m
        if pnames:
            pd = dict(zip(pnames, args[len(diff_idx):]))
            module = lambda *a: torch.func.functional_call(m, pd, a)  # noqa: E731
        out = run_lowered(pr, xs, torch.float64, module, expr)
        return tuple(out) if isinstance(out, (list, tuple)) else out

    params = [p.detach().clone() for _, p in m.named_parameters()] if pnames else []
    return fn, params


def _in_grad_suite(name, k) -> bool:
    # symbolic-shape cases repeat a concrete case's values: their gradients add nothing but time
    c = SPECS[name].cases[k]
    return not (SPECS[name].grad == "gradcheck" and c.sym) and (c.gradcheck or SPECS[name].grad != "gradcheck")


GRAD_CASES = [c for c in ALL_CASES if _in_grad_suite(*c.values)]


@pytest.mark.parametrize("name,k", GRAD_CASES)
def test_gradients(name, k):
    s = SPECS[name]
    pr = prepare(name, k)
    check_ir_gradient_rule(pr)
    float_in = [j for j, x in enumerate(pr.xs) if x.is_floating_point()]
    has_params = pr.module is not None and any(True for _ in pr.module.parameters())
    if s.grad == "backward":
        return  # backward-graph ops: their values are torch.autograd's VJPs (test_shape_rule_and_lowering); no 2nd order
    if s.grad == "none":
        assert not float_in and not has_params, f"{name} is in category 'none' but has float inputs or parameters"
        return
    if s.grad == "zero":
        assert any(t.dtype == "f32" for c in s.cases for t in c.ins), \
            f"{name} is in category 'zero' but no case has a float input"
        xs = [x.clone().requires_grad_(True) if x.is_floating_point() else x for x in _cast_inputs(pr.xs, torch.float64)]
        outs = _norm_outs(run_lowered(pr, xs, torch.float64, _module_copy(pr, torch.float64)))
        outs = [o for o in outs if o.requires_grad]
        if outs:
            grads = torch.autograd.grad(sum(o.sum() for o in outs), [xs[j] for j in float_in], allow_unused=True)
            for g in grads:
                assert g is None or not g.any(), f"{name} should have a zero gradient"
        return
    if s.grad == "surrogate":
        xs = [x.clone().requires_grad_(True) if x.is_floating_point() else x for x in _cast_inputs(pr.xs, torch.float64)]
        out = run_lowered(pr, xs, torch.float64, _module_copy(pr, torch.float64))
        s.surrogate([xs[j] for j in float_in], out)
        return
    # gradcheck
    diff_idx = _grad_inputs(pr)
    if not diff_idx and not has_params:
        out_float = any(t.dtype in ("f16", "bf16", "f32", "f64") for t in pr.out_types)
        assert not out_float or not float_in, "a differentiable op with float inputs but nothing to differentiate"
        pytest.skip("no differentiable input in this case (integer inputs)")
    for t in pr.out_types:
        assert t.dtype in ("f32", "f64"), f"{name} is in 'gradcheck' but outputs {t.dtype}"
    fn, params = _fn_for_grad(pr, diff_idx, use_params=True)
    args = [x.detach().clone().requires_grad_(True) for x in (_cast_inputs(pr.xs, torch.float64)[j] for j in diff_idx)]
    args += [p.requires_grad_(True) for p in params]
    # the full Jacobian for small cases; random projections (fast mode) for larger ones keep the module quick
    small = sum(a.numel() for a in args) <= 12
    assert torch.autograd.gradcheck(fn, tuple(args), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=not small)


def test_every_gradcheck_op_has_a_gradchecked_case():
    missing = []
    for name, s in SPECS.items():
        if s.grad != "gradcheck":
            continue
        ok = False
        for k, c in enumerate(s.cases):
            if not _in_grad_suite(name, k):
                continue
            pr = prepare(name, k)
            if _grad_inputs(pr) or (pr.module is not None and any(True for _ in pr.module.parameters())):
                ok = True
                break
        if not ok:
            missing.append(name)
    assert not missing, f"ops in 'gradcheck' with no case that is gradchecked: {missing}"


# =================================================================================== 4. error paths
def _types(*specs):
    return [TensorType(d, tuple(s)) for d, s in specs]


B_ = Sym.var("B")
ERROR_CASES = [
    ("mse_loss", _types(("f32", (4, 3)), ("f32", (4, 2))), {}, "E0301", None),
    ("matmul", _types(("f32", (2, 3)), ("f32", (4, 5))), {}, "E0301", "last dimension"),
    ("matmul", _types(("f32", (2, Sym.var("K"))), ("f32", (Sym.var("N"), 5))), {}, "E0303", None),
    ("conv2d", _types(("f32", (1, 3, 2, 2))), {"out_channels": 4, "kernel": 5}, "E0309", "too small"),
    ("max_pool2d", _types(("f32", (1, 3, 1, 1))), {"kernel": 2}, "E0309", None),
    ("concat", _types(("f32", (2, 3)), ("f32", (2, 3, 4))), {}, "E0302", None),
    ("concat", _types(("f32", (2, 3)), ("f32", (3, 3))), {}, "E0301", None),
    ("add", _types(("f32", (2, 3)), ("f32", (4, 3))), {}, "E0306", "unsqueeze"),
    ("relu", _types(("i64", (2, 3))), {}, "E0305", "embedding"),
    ("reshape", _types(("f32", (2, 3))), {"shape": [4, -1]}, "E0310", None),
    ("reshape", _types(("f32", (2, 3))), {"shape": [-1, -1]}, "E0310", None),
    ("cross_entropy", _types(("f32", (4, 5)), ("i64", (5,))), {}, "E0301", "dimension 1"),
    ("cross_entropy", _types(("f32", (4, 5)), ("bool", (4,))), {}, "E0305", None),
    ("softmax", _types(("f32", (2, 3))), {"dim": 2}, "E0304", None),
    ("linear", _types(("f32", (2, B_))), {"out_features": 3}, "E0307", None),
    ("group_norm", _types(("f32", (2, 6, 4))), {"groups": 4}, "E0308", None),
    ("conv2d", _types(("f32", (2, 6, 4, 4))), {"out_channels": 4, "kernel": 3, "groups": 4}, "E0308", None),
    ("conv2d", _types(("f32", (2, 3, 4, 4))), {"out_channels": 4, "kernel": 3, "stride": 2, "padding": "same"}, "E0401", None),
    ("where", _types(("f32", (2, 3)), ("f32", (2, 3)), ("f32", (2, 3))), {}, "E0305", None),
    ("masked_fill", _types(("f32", (2, 3)), ("bool", (4, 2, 3))), {"value": 0.0}, "E0306", None),
    ("embedding", _types(("f32", (2, 3))), {"num": 10, "dim": 4}, "E0305", None),
    ("gather", _types(("f32", (3, 4)), ("i64", (3,))), {"dim": 1}, "E0302", None),
    ("stack", _types(("f32", (2, 3)), ("f32", (2, 4))), {}, "E0301", None),
    ("split", _types(("f32", (5, 3))), {"sizes": [2, 2]}, "E0301", None),
    ("chunk", _types(("f32", (5, 3))), {"chunks": 2}, "E0301", None),
    ("squeeze", _types(("f32", (2, 3))), {"dim": 1}, "E0301", None),
    ("permute", _types(("f32", (2, 3, 4))), {"dims": [0, 0, 1]}, "E0304", None),
    ("getitem", _types(("f32", (2, 3))), {"key": (0, 0, 0)}, "E0304", None),
    ("getitem", _types(("f32", (2, 3))), {"key": (sl(), 5)}, "E0304", None),
    ("expand", _types(("f32", (2, 3))), {"shape": [2, 4]}, "E0301", None),
    ("expand", _types(("f32", (2, 3))), {"shape": [3]}, "E0302", None),
    ("layer_norm", _types(("f32", (2, 3))), {"dims": 3}, "E0304", None),
    ("dropout", _types(("f32", (2, 3))), {"p": 1.5}, "E0401", None),
    ("dropout2d", _types(("f32", (2, 3))), {}, "E0302", None),
    ("prelu", _types(("f32", (2, 4, 5))), {"num_parameters": 3}, "E0301", None),
    ("multi_margin_loss", _types(("f32", (4, 5)), ("i64", (5,))), {}, "E0301", None),
    ("triplet_margin_loss", _types(("f32", (4, 3)), ("f32", (4, 3)), ("f32", (4, 2))), {}, "E0301", None),
    ("mse_loss", _types(("f32", (4, 3)), ("i64", (4, 3))), {}, "E0305", None),
    ("upsample", _types(("f32", (1, 2, 4, 4))), {}, "E0407", None),
    ("upsample", _types(("f32", (1, 2, 4, 4))), {"scale_factor": 1.5}, "E0401", None),
    ("einsum", _types(("f32", (2, 3)), ("f32", (4, 5))), {"equation": "ij,jk->ik"}, "E0301", None),
    ("einsum", _types(("f32", (2, 3))), {"equation": "ij"}, "E0401", None),
    ("clamp", _types(("f32", (2, 3))), {}, "E0407", None),
    ("select", _types(("f32", (2, 3))), {"dim": 1, "index": 3}, "E0304", None),
    ("expand", _types(("f32", (2, 3))), {"shape": [-1, 2, 3]}, "E0310", None),
    ("upsample", _types(("f32", (1, 2, 4))), {"scale_factor": 2, "mode": "bilinear"}, "E0302", None),
    ("upsample", _types(("f32", (1, 2, 4, 4))), {"scale_factor": 2, "mode": "linear"}, "E0302", None),
    ("multi_margin_loss", _types(("f32", (4, 5)), ("i64", (4,))), {"p": 3}, "E0401", None),
    ("max_pool1d", _types(("f32", (1, 3, Sym.var("L")))), {"kernel": 2, "stride": 3, "ceil_mode": True}, "E0307", None),
]


@pytest.mark.parametrize("name,in_types,attrs,code,hint", ERROR_CASES,
                         ids=[f"{e[0]}-{e[3]}-{n}" for n, e in enumerate(ERROR_CASES)])
def test_shape_rule_errors(name, in_types, attrs, code, hint):
    op = REGISTRY[name]
    bound = bind_attrs(op, [], dict(attrs), None)
    with pytest.raises(SpecError) as info:
        op.shape(OpContext(op, None), in_types, bound)
    err = info.value
    assert err.code == code, f"expected {code}, got {err.code}: {err.message}"
    assert err.message
    if hint is not None:
        assert hint in (err.hint or "") + " " + err.message, (err.hint, err.message)


ATTR_ERROR_CASES = [
    ("leaky_relu", [], {"negative_slop": 0.1}, "E0402", "did you mean `negative_slope`?"),
    ("linear", [], {"out_feature": 3}, "E0402", "did you mean `out_features`?"),
    ("relu", [], {"inplace": True}, "E0402", "relu takes: no attributes"),
    ("linear", [], {}, "E0407", "out_features="),
    ("threshold", [0.5], {}, "E0407", "value="),
    ("gelu", [], {"approximate": "tanhh"}, "E0403", "did you mean `tanh`?"),
    ("conv2d", [], {"out_channels": 2, "kernel": 3, "padding_mode": "reflct"}, "E0403", "did you mean `reflect`?"),
    ("relu", [1], {}, "E0406", None),
    ("linear", [3], {"out_features": 4}, "E0404", None),
    ("linear", [], {"out_features": 3.5}, "E0401", None),
    ("linear", [], {"out_features": 3, "bias": 1}, "E0401", None),
    ("reshape", [], {"shape": "abc"}, "E0401", None),
    ("dropout", [], {"p": "high"}, "E0401", None),
]


@pytest.mark.parametrize("name,positional,keywords,code,hint", ATTR_ERROR_CASES,
                         ids=[f"{e[0]}-{e[3]}-{n}" for n, e in enumerate(ATTR_ERROR_CASES)])
def test_attribute_errors(name, positional, keywords, code, hint):
    op = REGISTRY[name]
    with pytest.raises(SpecError) as info:
        bind_attrs(op, positional, keywords, None)
    err = info.value
    assert err.code == code, f"expected {code}, got {err.code}: {err.message}"
    if hint is not None:
        assert hint in (err.hint or "") + " " + (err.expected or ""), (err.hint, err.expected)


# =================================================================================== 5. metadata
ATTR_TYPES = {"int", "float", "bool", "str", "number", "ints", "int_or_ints", "dims", "dim", "int_or_none",
              "float_or_none", "any"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_metadata(name):
    op = REGISTRY[name]
    assert op.name == name
    assert op.doc and op.doc.strip(), f"{name} has no doc string"
    assert op.kind in FUSION_KINDS, op.kind
    assert callable(op.shape)
    assert callable(op.lower) or SPECS[name].grad == "structural", f"{name} has no lowering"
    assert isinstance(op.inputs, tuple) and all(isinstance(s, str) and s for s in op.inputs)
    assert sum(1 for s in op.inputs if s.startswith("*")) <= 1 and all(not s.startswith("*") for s in op.inputs[1:])
    assert all(0 <= j < max(len(op.inputs), 1) for j in op.nondiff_inputs), op.nondiff_inputs
    assert 0 <= op.optional_inputs <= len(op.inputs)
    assert (op.module is None) == (op.params is None), "module and params come together"
    names = op.attr_names
    assert len(set(names)) == len(names), "duplicate attribute names"
    for a in op.attrs:
        assert a.type in ATTR_TYPES, f"{name}.{a.name} has unknown type {a.type}"
        if a.default is not REQUIRED and a.default is not None:
            assert coerce_attr(op, a, a.default, None) == a.default, f"{name}.{a.name}'s default fails its own type"
        if a.choices is not None and isinstance(a.default, str):
            assert a.default in a.choices
    if op.train_dependent:
        assert op.module is not None or "training" in op.lower([f"x{j}" for j in range(len(op.inputs))] or ["x0"],
                                                               _bind_first_case(op), LowerCtx(training="training")), \
            "a train-dependent op without a module reads the training flag"
    assert op.signature().startswith(name + "(")


def _bind_first_case(op):
    return bind_attrs(op, [], dict(SPECS[op.name].cases[0].attrs), None) if op.name in SPECS else {}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bind_attrs_fills_defaults(name):
    op = REGISTRY[name]
    required = {a.name for a in op.attrs if a.default is REQUIRED}
    given = {}
    if name in SPECS:
        for c in SPECS[name].cases:
            if required <= set(c.attrs):
                given = {n: c.attrs[n] for n in required}
                break
    assert set(given) == required, f"no case of {name} gives exactly its required attributes"
    bound = bind_attrs(op, [], given, None)
    assert list(bound) == op.attr_names
    for a in op.attrs:
        if a.default is not REQUIRED:
            assert bound[a.name] == a.default
    # positional binding is the same as keyword binding
    assert bind_attrs(op, [given[n] for n in op.attr_names[:len(given)]], {}, None) == bound \
        if list(given) == op.attr_names[:len(given)] else True
