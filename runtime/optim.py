"""Optimizers of the training runtime, with the update rules of the course notes.

    from nnspec.runtime.optim import build_optimizer
    opt = build_optimizer(model.parameters(), {"name": "adam", "lr": 3e-3})

`build_optimizer(params_or_groups, cfg)` takes the `optimizer:` section of a training config
({name, lr, hyper-parameters}) and returns a `torch.optim.Optimizer`. `OPTIMIZERS` maps each name to
`(factory, allowed keys)`, the allowed keys being `{key: (type, default)}`; the config validator reads it,
and `build_optimizer` rejects an unknown key with a ValueError naming the key and the allowed ones.
Types: `float`, `bool`, and `tuple` (a pair of numbers, given as a list or a tuple, e.g. `betas: [0.9, 0.99]`).

The rules (g = gradient, w = parameter, eta = lr; line numbers are the notes' 001 unless said otherwise):

  sgd          w <- w - eta g                                           (004:232-235, 000:9); `momentum`
               and `nesterov` keys make it torch's SGD with those options
  momentum     p <- beta p + g;  w <- w - eta p                         (001:760-777, torch.optim.SGD)
               == the notes' p <- beta p + eta g; w <- w - p while eta is constant. The notes write
               `w + gamma p` (the sign must be minus) and name both eta and gamma "the learning rate"
               (they multiply: one of them is 1 here).
  heavy_ball   w <- w - eta g + beta (w - w_prev)                        (001:786-794, class HeavyBall)
               == momentum while eta is constant; after an lr change the old steps keep their size.
  nesterov     torch's SGD(nesterov=True): b <- beta b + g; w <- w - eta (g + beta b), evaluated at the
               look-ahead point; it is the notes' w^ = w - beta p; p <- beta p + eta grad(w^);
               w <- w - p (001:803-825) written in the look-ahead variable w^ (identical iterates).
  local_gains  gain <- gain + 0.05 when the gradient keeps its sign, gain * 0.95 otherwise, clamped to
               [gain_min, gain_max]; w <- w - eta gain g, optionally with momentum (001:833-865,
               class LocalGains; Hinton's "adaptive learning rates" / delta-bar-delta)
  adagrad      G <- G + g^2;  w <- w - eta g / (sqrt(G) + eps)          (001:932-950, torch.optim.Adagrad)
               The notes (after Ruder's overview) put eps inside the square root; torch and Duchi et al.
               add it to the root. Same result unless G ~ eps.
  rmsprop      v <- alpha v + (1 - alpha) g^2;  w <- w - eta g / (sqrt(v) + eps)   (001:893-922, alpha 0.99)
  adadelta     E[g2] <- rho E[g2] + (1-rho) g^2;  d = sqrt(E[dw2] + eps) / sqrt(E[g2] + eps) g;
               E[dw2] <- rho E[dw2] + (1-rho) d^2;  w <- w - eta d        (001:951-979; Zeiler: eta = 1)
  adam         m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  w <- w - eta m^ / (sqrt(v^) + eps)
               with m^ = m/(1-b1^t), v^ = v/(1-b2^t)                    (001:980-1026). The notes write
               (1-b1) in v's update (001:988): a mistake, Kingma & Ba use (1-b2). weight_decay adds
               wd*w to g (the "Adam + L2" of 001:1036-1042).
  adamw        w <- w - eta wd w - eta m^ / (sqrt(v^) + eps)              (001:1027-1054, torch.optim.AdamW)
               the decay is decoupled from the adaptive step; the notes' w (not scaled by the lr) is
               eta * weight_decay here, as in torch and in Loshchilov & Hutter with a fixed schedule.
  rprop        per-weight step sizes: x eta+ while the gradient keeps its sign (up to step_sizes[1]),
               x eta- and the gradient set to 0 when it flips (down to step_sizes[0]); w <- w - sign(g) step
               (001:869-892, torch.optim.Rprop; `lr` is the initial step size)
  lion         c = b1 m + (1-b1) g;  w <- w - eta (sign(c) + wd w);  m <- b2 m + (1-b2) g
               (Chen et al. 2023, Algorithm 2; the notes describe Lion at 001:1055-1072 but give no rule;
               class Lion)

The classes written here (HeavyBall, LocalGains, Lion) are `torch.optim.Optimizer` subclasses: they
take parameter groups, and their state goes through `state_dict()` / `load_state_dict()` like torch's.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch.optim import Optimizer

__all__ = ["OPTIMIZERS", "build_optimizer", "HeavyBall", "LocalGains", "Lion"]


def _check_range(name: str, value: float, low: float, high: float | None = None, *, high_open=True) -> None:
    if value < low or (high is not None and (value >= high if high_open else value > high)):
        upper = "" if high is None else (f" and < {high}" if high_open else f" and <= {high}")
        raise ValueError(f"`{name}` must be >= {low}{upper}, got {value}")


class _PerParameter(Optimizer):
    """The step loop our optimizers share: the closure, the parameters with a gradient (dense only), and
    `update(p, grad, group, state)` with each optimizer's own rule."""

    coupled_weight_decay = True   # g = grad + weight_decay * w (Lion decays the weights itself)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                g = p.grad if wd == 0 or not self.coupled_weight_decay else p.grad.add(p, alpha=wd)
                self.update(p, g, group, self.state[p])
        return loss

    def update(self, p, g, group, state) -> None:
        raise AssertionError(f"{type(self).__name__} must define update()")


class HeavyBall(_PerParameter):
    """Polyak's stochastic heavy-ball method (001:786-794):

        w_{k+1} = w_k - lr * g_k + momentum * (w_k - w_{k-1}),      0 <= momentum < 1

    g_k = grad + weight_decay * w_k. The first step has no previous point (w_{-1} = w_0). With a constant
    lr the iterates equal SGD with momentum; when the lr changes (a schedule), only the new gradient step
    uses the new lr and the momentum term keeps the size of the steps already taken.
    """

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0):
        _check_range("lr", lr, 0.0)
        _check_range("momentum", momentum, 0.0, 1.0)
        _check_range("weight_decay", weight_decay, 0.0)
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def update(self, p, g, group, state) -> None:
        if "previous" not in state:
            state["previous"] = p.detach().clone(memory_format=torch.preserve_format)
        prev = state["previous"]
        delta = p - prev  # w_k - w_{k-1}
        prev.copy_(p)
        p.add_(g, alpha=-group["lr"]).add_(delta, alpha=group["momentum"])


class LocalGains(_PerParameter):
    """Adaptive learning rates with a local gain per weight (001:833-865):

        gain_ij(t) = gain_ij(t-1) + increase     if g_ij(t) * g_ij(t-1) > 0
                   = gain_ij(t-1) * decrease     otherwise
        gain clamped to [gain_min, gain_max];   delta w_ij = -lr * gain_ij(t) * g_ij(t)

    Gains start at 1 and are first updated at the second step (the first has no previous gradient).
    The notes suggest combining it with momentum: with `momentum` > 0 the step is
    v <- momentum * v - lr * gain * g; w <- w + v. g includes weight_decay * w.
    """

    def __init__(self, params, lr: float = 0.01, increase: float = 0.05, decrease: float = 0.95,
                 gain_min: float = 0.1, gain_max: float = 10.0, momentum: float = 0.0, weight_decay: float = 0.0):
        _check_range("lr", lr, 0.0)
        _check_range("increase", increase, 0.0)
        _check_range("decrease", decrease, 0.0, 1.0, high_open=False)
        _check_range("gain_min", gain_min, 0.0)
        if gain_max < gain_min or not gain_min <= 1.0 <= gain_max:
            raise ValueError(f"need gain_min <= 1 <= gain_max (gains start at 1), got [{gain_min}, {gain_max}]")
        _check_range("momentum", momentum, 0.0, 1.0)
        _check_range("weight_decay", weight_decay, 0.0)
        super().__init__(params, {"lr": lr, "increase": increase, "decrease": decrease, "gain_min": gain_min,
                                  "gain_max": gain_max, "momentum": momentum, "weight_decay": weight_decay})

    def update(self, p, g, group, state) -> None:
        lr, mu = group["lr"], group["momentum"]
        if not state:
            state["step"] = 0
            state["gains"] = torch.ones_like(p, memory_format=torch.preserve_format)
            state["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        gains = state["gains"]
        if state["step"] > 1:
            same = (g * state["prev_grad"]) > 0
            gains.copy_(torch.where(same, gains + group["increase"], gains * group["decrease"]))
            gains.clamp_(group["gain_min"], group["gain_max"])
        state["prev_grad"].copy_(g)
        update = gains * g
        if mu:
            if "velocity" not in state:
                state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            v = state["velocity"]
            v.mul_(mu).add_(update, alpha=-lr)
            p.add_(v)
        else:
            p.add_(update, alpha=-lr)


class Lion(_PerParameter):
    """Lion, "EvoLved Sign Momentum" (Chen et al. 2023, arXiv:2302.06675, Algorithm 2):

        c = beta1 * m + (1 - beta1) * g
        w <- w - lr * (sign(c) + weight_decay * w)
        m <- beta2 * m + (1 - beta2) * g

    Every coordinate moves by exactly lr (plus the decay): the same magnitude for every parameter, as the
    notes say (001:1055-1072, which give no formula). Use a lr 3-10x smaller than AdamW's and a weight
    decay 3-10x larger (the paper's advice).
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        _check_range("lr", lr, 0.0)
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"`betas` must be a pair, got {betas}")
        _check_range("betas[0]", betas[0], 0.0, 1.0)
        _check_range("betas[1]", betas[1], 0.0, 1.0)
        _check_range("weight_decay", weight_decay, 0.0)
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    coupled_weight_decay = False  # decoupled: w <- w - lr * (sign(c) + weight_decay * w)

    def update(self, p, g, group, state) -> None:
        lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        m = state["exp_avg"]
        c = m.mul(b1).add_(g, alpha=1 - b1)
        if wd:
            p.mul_(1 - lr * wd)
        p.add_(c.sign_(), alpha=-lr)
        m.mul_(b2).add_(g, alpha=1 - b2)


# ------------------------------------------------------------------------------------------ the table


def _sgd(params, lr, momentum, nesterov, weight_decay):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def _momentum(params, lr, momentum, weight_decay):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _nesterov(params, lr, momentum, weight_decay):
    if momentum <= 0:
        raise ValueError(f"nesterov needs `momentum` > 0, got {momentum}")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def _adagrad(params, lr, lr_decay, eps, weight_decay, initial_accumulator_value):
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                               initial_accumulator_value=initial_accumulator_value)


def _rmsprop(params, lr, alpha, eps, momentum, centered, weight_decay):
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum, centered=centered,
                               weight_decay=weight_decay)


def _adadelta(params, lr, rho, eps, weight_decay):
    return torch.optim.Adadelta(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


def _adam(params, lr, betas, eps, weight_decay, amsgrad):
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def _adamw(params, lr, betas, eps, weight_decay, amsgrad):
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def _rprop(params, lr, etas, step_sizes):
    if not 0.0 < etas[0] < 1.0 < etas[1]:
        raise ValueError(f"`etas` must be (eta-, eta+) with 0 < eta- < 1 < eta+, got {list(etas)}")
    if not 0.0 <= step_sizes[0] <= step_sizes[1]:
        raise ValueError(f"`step_sizes` must be (min, max) with 0 <= min <= max, got {list(step_sizes)}")
    return torch.optim.Rprop(params, lr=lr, etas=etas, step_sizes=step_sizes)


OPTIMIZERS: dict = {
    "sgd": (_sgd, {"lr": (float, 0.01), "momentum": (float, 0.0), "nesterov": (bool, False),
                   "weight_decay": (float, 0.0)}),
    "momentum": (_momentum, {"lr": (float, 0.01), "momentum": (float, 0.9), "weight_decay": (float, 0.0)}),
    "nesterov": (_nesterov, {"lr": (float, 0.01), "momentum": (float, 0.9), "weight_decay": (float, 0.0)}),
    "heavy_ball": (HeavyBall, {"lr": (float, 0.01), "momentum": (float, 0.9), "weight_decay": (float, 0.0)}),
    "local_gains": (LocalGains, {"lr": (float, 0.01), "increase": (float, 0.05), "decrease": (float, 0.95),
                                 "gain_min": (float, 0.1), "gain_max": (float, 10.0), "momentum": (float, 0.0),
                                 "weight_decay": (float, 0.0)}),
    "adagrad": (_adagrad, {"lr": (float, 0.01), "lr_decay": (float, 0.0), "eps": (float, 1e-10),
                           "weight_decay": (float, 0.0), "initial_accumulator_value": (float, 0.0)}),
    "rmsprop": (_rmsprop, {"lr": (float, 0.01), "alpha": (float, 0.99), "eps": (float, 1e-8),
                           "momentum": (float, 0.0), "centered": (bool, False), "weight_decay": (float, 0.0)}),
    "adadelta": (_adadelta, {"lr": (float, 1.0), "rho": (float, 0.9), "eps": (float, 1e-6),
                             "weight_decay": (float, 0.0)}),
    "adam": (_adam, {"lr": (float, 1e-3), "betas": (tuple, (0.9, 0.999)), "eps": (float, 1e-8),
                     "weight_decay": (float, 0.0), "amsgrad": (bool, False)}),
    "adamw": (_adamw, {"lr": (float, 1e-3), "betas": (tuple, (0.9, 0.999)), "eps": (float, 1e-8),
                       "weight_decay": (float, 0.01), "amsgrad": (bool, False)}),
    "rprop": (_rprop, {"lr": (float, 0.01), "etas": (tuple, (0.5, 1.2)), "step_sizes": (tuple, (1e-6, 50.0))}),
    "lion": (Lion, {"lr": (float, 1e-4), "betas": (tuple, (0.9, 0.99)), "weight_decay": (float, 0.0)}),
}


def coerce_value(owner: str, key: str, value, typ, default):
    """Check and convert one hyper-parameter to its declared type (shared with the schedules and inits)."""
    where = f"`{key}` of {owner}"
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or float(value) != int(value):
            raise ValueError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if typ is tuple:
        n = len(default) if isinstance(default, tuple) else 2
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f"{where} must be a list of {n} numbers, got {value!r}")
        return tuple(coerce_value(owner, f"{key}[{i}]", v, float, None) for i, v in enumerate(value))
    if typ is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        return list(value)
    raise TypeError(f"unsupported hyper-parameter type {typ!r} for {where}")


def build_optimizer(params_or_groups, cfg: dict) -> Optimizer:
    """An optimizer from a config {name, lr, ...}: missing keys take the defaults of `OPTIMIZERS`.

    `params_or_groups` is what torch.optim takes: an iterable of tensors, or of parameter-group dicts whose
    own keys (e.g. `weight_decay: 0.0` for biases) override the config's for that group.
    """
    cfg = dict(cfg or {})
    name = cfg.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    factory, allowed = OPTIMIZERS[name]
    for key in cfg:
        if key not in allowed:
            raise ValueError(f"unknown key `{key}` for the optimizer `{name}`; allowed: {', '.join(allowed)}")
    kwargs = {}
    for key, (typ, default) in allowed.items():
        value = cfg.get(key, default)
        kwargs[key] = coerce_value(f"the optimizer `{name}`", key, value, typ, default)
    return factory(params_or_groups, **kwargs)
