"""The initialisers a spec's `param` statement may name, defined once: their arguments and defaults.

    param w: f32[64, 3] = xavier_uniform(gain=2.0)
    param b: f32[64] = zeros
    param t: f32[2] = [3.0, -2.0]          # literal values

Elaboration checks a call against this table and stores the initialiser as data on the parameter
(`ParamSpec.init`: `("normal", mean, std)`, `("values", nested tuple)`); codegen writes the torch
expression (compiler/codegen/constructors.py). Layers' own parameters use torch's default initialisation
(`ParamSpec.init` "kaiming_uniform", "fan_in_uniform", "ones", "zeros", "buffer" describe it).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Initializer:
    name: str
    args: tuple = ()        # (argument, default) pairs, in positional order
    doc: str = ""


_GAIN = (("gain", 1.0),)
INITIALIZERS: dict[str, Initializer] = {i.name: i for i in (
    Initializer("zeros", doc="0"),
    Initializer("ones", doc="1"),
    Initializer("constant", (("value", 0.0),), "every element `value`"),
    Initializer("normal", (("mean", 0.0), ("std", 1.0)), "N(mean, std^2)"),
    Initializer("uniform", (("low", 0.0), ("high", 1.0)), "U(low, high)"),
    Initializer("xavier_uniform", _GAIN, "Glorot uniform (torch.nn.init.xavier_uniform_)"),
    Initializer("xavier_normal", _GAIN, "Glorot normal (torch.nn.init.xavier_normal_)"),
    Initializer("kaiming_uniform", (), "He uniform (torch.nn.init.kaiming_uniform_)"),
    Initializer("kaiming_normal", (), "He normal (torch.nn.init.kaiming_normal_)"),
    Initializer("orthogonal", _GAIN, "an orthogonal matrix (torch.nn.init.orthogonal_)"),
    Initializer("eye", (), "the identity matrix"),
)}
