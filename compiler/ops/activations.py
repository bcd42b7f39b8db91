"""Activation functions (seed 001:161-384): one registration each, formula in the doc string.

CELU follows PyTorch's definition max(0,x) + min(0, a*(exp(x/a) - 1)); the notes' formula at
001:246 (a*exp(x/a - 1)) is a known mistake (catalog section 3.1).
"""
from __future__ import annotations

from nnspec.compiler.ops.common import unary_float
from nnspec.compiler.ops.registry import Attr, kwargs_text, register


def _act(name, torch_fn, attrs=(), doc="", kind="elementwise", **kw):
    names = [a.name for a in attrs]

    def lower(i, a, c, _name=name, _fn=torch_fn):
        op = REG[_name]
        extra = kwargs_text(op, a, names)
        return f"{_fn}({i[0]}{', ' + extra if extra else ''})"

    REG[name] = register(name, inputs=("x",), attrs=tuple(attrs), shape=unary_float, lower=kw.pop("lower", lower),
                         kind=kind, category="activation", doc=doc, **kw)


REG: dict = {}

_act("relu", "F.relu", doc="max(0, x)")
_act("leaky_relu", "F.leaky_relu", (Attr("negative_slope", "float", 0.01),), "x if x >= 0 else negative_slope * x")
_act("rrelu", "F.rrelu", (Attr("lower", "float", 1.0 / 8), Attr("upper", "float", 1.0 / 3)),
     "x if x >= 0 else a * x, a ~ U(lower, upper) in training, (lower + upper) / 2 in eval",
     lower=lambda i, a, c: f"F.rrelu({i[0]}, {a['lower']!r}, {a['upper']!r}, training={c.training})",
     random=True, train_dependent=True)
_act("elu", "F.elu", (Attr("alpha", "float", 1.0),), "x if x > 0 else alpha * (exp(x) - 1)")
_act("softplus", "F.softplus", (Attr("beta", "float", 1.0), Attr("threshold", "float", 20.0)),
     "1/beta * log(1 + exp(beta * x)); linear where beta * x > threshold")
_act("celu", "F.celu", (Attr("alpha", "float", 1.0),), "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))")
_act("selu", "F.selu", (), "scale * (max(0, x) + min(0, alpha * (exp(x) - 1))), alpha=1.6732632423543772, "
     "scale=1.0507009873554805")
_act("gelu", "F.gelu", (Attr("approximate", "str", "none", ("none", "tanh")),), "x * Phi(x), Phi the Gaussian CDF")
_act("relu6", "F.relu6", (), "min(max(0, x), 6)")
_act("sigmoid", "torch.sigmoid", (), "1 / (1 + exp(-x))")
_act("tanh", "torch.tanh", (), "(exp(x) - exp(-x)) / (exp(x) + exp(-x))")
_act("softsign", "F.softsign", (), "x / (1 + |x|)")
_act("hardtanh", "F.hardtanh", (Attr("min_val", "float", -1.0), Attr("max_val", "float", 1.0)),
     "max_val if x > max_val, min_val if x < min_val, else x")
_act("threshold", "F.threshold", (Attr("threshold", "float"), Attr("value", "float")),
     "x if x > threshold else value",
     lower=lambda i, a, c: f"F.threshold({i[0]}, {a['threshold']!r}, {a['value']!r})")
_act("tanhshrink", "F.tanhshrink", (), "x - tanh(x)")
_act("softshrink", "F.softshrink", (Attr("lambd", "float", 0.5),), "x - lambd if x > lambd, x + lambd if x < -lambd, else 0")
_act("hardshrink", "F.hardshrink", (Attr("lambd", "float", 0.5),), "x if |x| > lambd else 0")
_act("logsigmoid", "F.logsigmoid", (), "log(1 / (1 + exp(-x)))")
_act("silu", "F.silu", (), "x * sigmoid(x)")
_act("mish", "F.mish", (), "x * tanh(softplus(x))")
_act("hardsigmoid", "F.hardsigmoid", (), "relu6(x + 3) / 6")
_act("hardswish", "F.hardswish", (), "x * relu6(x + 3) / 6")
_act("identity", "", (), "x", lower=lambda i, a, c: i[0])

# softmax, log_softmax and softmin normalise along a dimension: reductions in the fusion lattice
for _name, _fn, _doc in (("softmax", "F.softmax", "exp(x_i) / sum_j exp(x_j)"),
                         ("log_softmax", "F.log_softmax", "x_i - log(sum_j exp(x_j))"),
                         ("softmin", "F.softmin", "exp(-x_i) / sum_j exp(-x_j)")):
    def _check(ctx, ins, a):
        t = unary_float(ctx, ins, a)
        ctx.axis(a["dim"], max(t.rank, 1))
        return t

    REG[_name] = register(_name, inputs=("x",), attrs=(Attr("dim", "int", -1),), shape=_check,
                          lower=lambda i, a, c, _fn=_fn: f"{_fn}({i[0]}, dim={a['dim']!r})",
                          kind="reduction", category="activation", doc=_doc)
