"""Parameter initialisation chosen per parameter by name pattern (001:674-722; 004:231, 004:642-650;
000:1186-1187).

    from nnspec.runtime.init import apply_init
    apply_init(model, [
        {"match": "rnn.weight_hh*", "init": "identity"},          # IRNN: recurrent weights = I (004:642-650)
        {"match": "*.weight", "init": "kaiming_normal"},          # ReLU layers (001:716-720)
        {"match": "*.bias", "init": "zeros"},
    ], seed=0)

Each rule is {match: a glob on the names of `module.named_parameters()` (fnmatch, case-sensitive; `*`
crosses dots), init: one of INITS, its keys}. The FIRST rule that matches a parameter sets it; parameters
no rule matches keep the values they have. A rule that matches no parameter is a ValueError (a typo must
not pass silently), and so is a rule whose every match is taken by earlier rules (it could never act).
All rules are checked, and all values drawn, before any parameter changes.

The initialisers (fan_in = size(1) * receptive field, fan_out = size(0) * receptive field, torch's
convention; `gain` defaults to 1):

  xavier_uniform   U(-a, a),  a = gain * sqrt(6 / (fan_in + fan_out))        (Glorot & Bengio, 001:698-705)
  xavier_normal    N(0, s^2), s = gain * sqrt(2 / (fan_in + fan_out))        (001:706-713)
  kaiming_normal   N(0, s^2), s = gain * g(nonlinearity, a) / sqrt(fan)      (He et al., 001:716-720)
  kaiming_uniform  U(-a, a),  a = sqrt(3) * gain * g(nonlinearity, a) / sqrt(fan)
                   fan = fan_in (mode fan_in, the default) or fan_out; g = torch's calculate_gain: sqrt(2)
                   for relu (the default), sqrt(2 / (1 + a^2)) for leaky_relu with slope a, 5/3 tanh, 1
                   linear/sigmoid, 3/4 selu. With the defaults s = sqrt(2 / fan_in), the notes' formula
                   with gain 1; `gain` multiplies on top, as the notes' tunable per-layer gain (001:722).
  normal           N(mean, std^2)      (004:231; DCGAN: std 0.02, BatchNorm weights mean 1, 000:1186-1187)
  uniform          U(low, high)
  identity         gain * I for a square matrix; for the stacked gate matrices of a recurrent hidden->hidden
                   weight ([k*H, H]: RNN k=1, GRU k=3, LSTM k=4) gain * I in every H x H block
                   (Le et al. 2015's IRNN; 004:642-650 "initialise the weights to the identity, the
                   biases to zero")
  orthogonal       gain * Q, Q orthogonal (Saxe et al.; torch.nn.init.orthogonal_)
  zeros            0
  constant         value

With `seed`, every parameter draws from its own generator seeded by (seed, parameter name): the values do
not depend on the other rules or on the order of the parameters, and they are the same on CPU and GPU
(drawn on the CPU). Without a seed the global torch RNG is used.
"""
from __future__ import annotations

import fnmatch
import hashlib
import math

import torch

from nnspec.runtime.optim import coerce_value

__all__ = ["INITS", "apply_init"]


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()

_KAIMING = {"gain": (float, 1.0), "a": (float, 0.0), "mode": (str, "fan_in"), "nonlinearity": (str, "relu")}

INITS: dict = {
    "xavier_uniform": {"gain": (float, 1.0)},
    "xavier_normal": {"gain": (float, 1.0)},
    "kaiming_uniform": dict(_KAIMING),
    "kaiming_normal": dict(_KAIMING),
    "normal": {"mean": (float, 0.0), "std": (float, 0.01)},
    "uniform": {"low": (float, -0.05), "high": (float, 0.05)},
    "identity": {"gain": (float, 1.0)},
    "orthogonal": {"gain": (float, 1.0)},
    "zeros": {},
    "constant": {"value": (float, REQUIRED)},
}

_NONLINEARITIES = ("relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu")


def _fans(shape, init: str, pname: str) -> tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(f"{init} needs a weight of at least 2 dimensions (its fans); `{pname}` has shape "
                         f"{list(shape)} (use zeros, constant, normal or uniform for it)")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _draw(init: str, o: dict, shape, dtype, gen, pname: str) -> torch.Tensor:
    """The values of one parameter, drawn on the CPU."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty(shape, dtype=work)
    if init in ("xavier_uniform", "xavier_normal"):
        fan_in, fan_out = _fans(shape, init, pname)
        std = o["gain"] * math.sqrt(2.0 / (fan_in + fan_out))
        if init == "xavier_normal":
            return out.normal_(0.0, std, generator=gen)
        bound = math.sqrt(3.0) * std  # = gain * sqrt(6 / (fan_in + fan_out))
        return out.uniform_(-bound, bound, generator=gen)
    if init in ("kaiming_uniform", "kaiming_normal"):
        fan_in, fan_out = _fans(shape, init, pname)
        fan = fan_in if o["mode"] == "fan_in" else fan_out
        std = o["gain"] * torch.nn.init.calculate_gain(o["nonlinearity"], o["a"]) / math.sqrt(fan)
        if init == "kaiming_normal":
            return out.normal_(0.0, std, generator=gen)
        bound = math.sqrt(3.0) * std
        return out.uniform_(-bound, bound, generator=gen)
    if init == "normal":
        return out.normal_(o["mean"], o["std"], generator=gen)
    if init == "uniform":
        return out.uniform_(o["low"], o["high"], generator=gen)
    if init == "identity":
        if len(shape) != 2 or shape[0] % shape[1] != 0:
            raise ValueError(f"identity needs a square matrix or stacked square blocks [k*H, H]; `{pname}` has "
                             f"shape {list(shape)}")
        rows, cols = shape
        return torch.eye(cols, dtype=work).repeat(rows // cols, 1).mul_(o["gain"])
    if init == "orthogonal":
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a weight of at least 2 dimensions; `{pname}` has shape "
                             f"{list(shape)}")
        return torch.nn.init.orthogonal_(out, gain=o["gain"], generator=gen)
    if init == "zeros":
        return out.zero_()
    if init == "constant":
        return out.fill_(o["value"])
    raise ValueError(f"unknown initialiser {init!r}")


def _check_rule(i: int, rule) -> tuple[str, str, dict]:
    where = f"init rule {i}"
    if not isinstance(rule, dict):
        raise ValueError(f"{where} must be a mapping {{match: pattern, init: name, ...}}, got {rule!r}")
    for req in ("match", "init"):
        if req not in rule:
            raise ValueError(f"{where} has no `{req}` (a rule is {{match: pattern, init: name, ...}})")
    pattern, init = rule["match"], rule["init"]
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"`match` of {where} must be a glob pattern such as '*.weight', got {pattern!r}")
    if init not in INITS:
        raise ValueError(f"unknown initialiser {init!r} in {where}; known: {', '.join(INITS)}")
    allowed = INITS[init]
    for key in rule:
        if key not in ("match", "init") and key not in allowed:
            keys = ["match", "init", *allowed]
            raise ValueError(f"unknown key `{key}` for the initialiser `{init}` ({where}); allowed: {', '.join(keys)}")
    opts = {}
    for key, (typ, default) in allowed.items():
        value = rule.get(key, default)
        if value is REQUIRED:
            raise ValueError(f"the initialiser `{init}` ({where}) needs `{key}`")
        opts[key] = coerce_value(f"the initialiser `{init}` ({where})", key, value, typ, default)
    if "mode" in opts and opts["mode"] not in ("fan_in", "fan_out"):
        raise ValueError(f"`mode` of {where} must be fan_in or fan_out, got {opts['mode']!r}")
    if "nonlinearity" in opts:
        if opts["nonlinearity"] not in _NONLINEARITIES:
            raise ValueError(f"`nonlinearity` of {where} must be one of {', '.join(_NONLINEARITIES)}, "
                             f"got {opts['nonlinearity']!r}")
        if opts["a"] != 0.0 and opts["nonlinearity"] != "leaky_relu":
            raise ValueError(f"`a` of {where} is the negative slope of leaky_relu; the nonlinearity is "
                             f"{opts['nonlinearity']}")
    if init == "normal" and opts["std"] < 0:
        raise ValueError(f"`std` of {where} must be >= 0, got {opts['std']}")
    if init == "uniform" and opts["low"] > opts["high"]:
        raise ValueError(f"{where}: `low` ({opts['low']}) is above `high` ({opts['high']})")
    return pattern, init, opts


def _generator(seed: int | None, pname: str) -> torch.Generator | None:
    if seed is None:
        return None
    digest = hashlib.sha256(f"nnspec.init/{int(seed)}/{pname}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))


def apply_init(module: torch.nn.Module, rules: list, seed: int | None = None) -> dict:
    """Initialise `module`'s parameters by the rules; returns {parameter name: "init (rule i: 'pattern')"}
    for every parameter a rule set, in the module's order."""
    checked = [_check_rule(i, r) for i, r in enumerate(rules or [])]
    params = list(module.named_parameters())
    names = [n for n, _ in params]
    owner: dict = {}
    for i, (pattern, init, _) in enumerate(checked):
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"init rule {i} ({init}): `{pattern}` matches no parameter; the parameters are: "
                             f"{shown or 'none'}")
        fresh = [n for n in hits if n not in owner]
        if not fresh:
            firsts = sorted({owner[n] for n in hits})
            raise ValueError(f"init rule {i} ({init}): every parameter `{pattern}` matches is already set by "
                             f"rule(s) {', '.join(map(str, firsts))} (the first matching rule wins); put the "
                             f"more specific rule first")
        for n in fresh:
            owner[n] = i
    values = {}
    for n, p in params:
        if n in owner:
            _, init, opts = checked[owner[n]]
            values[n] = _draw(init, opts, tuple(p.shape), p.dtype, _generator(seed, n), n)
    with torch.no_grad():
        for n, p in params:
            if n in values:
                p.copy_(values[n].to(device=p.device, dtype=p.dtype))
    return {n: f"{checked[owner[n]][1]} (rule {owner[n]}: '{checked[owner[n]][0]}')" for n in names if n in owner}
