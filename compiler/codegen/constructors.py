"""The constructor expressions of a generated module's layers and parameters (`nn.Linear(784, 128)`,
`nn.Parameter(torch.randn(64, 3) * 0.02)`), from the IR's data: a layer's op, attributes and input types
(the op registry's `module`), a parameter's shape and initialiser (compiler/initializers.py).

Sizes may be symbols (`channels`): a class shared by several block instances takes them as constructor
arguments, and they print as their names.
"""
from __future__ import annotations

from nnspec.compiler.ops import REGISTRY


def constructor(info) -> str:
    """The constructor of a ModuleInfo."""
    return layer_constructor(info.op, info.attrs, info.in_types, info.params)


def layer_constructor(op: str, attrs: dict, in_types: list, params: list) -> str:
    if op == "parameter":
        return parameter_constructor(params[0].shape, params[0].init)
    make = REGISTRY[op].module
    assert make is not None, op
    return make(in_types, attrs)


def parameter_constructor(shape: tuple, init) -> str:
    """`nn.Parameter(...)` for a spec's `param`, from its initialiser as data (`("normal", mean, std)`)."""
    dims = ", ".join(str(d) for d in shape)
    kind = init[0]
    if kind == "values":
        return f"nn.Parameter(torch.tensor({_nested_list(init[1])!r}))"
    if kind == "constant":
        return f"nn.Parameter(torch.full(({dims}{',' if len(shape) == 1 else ''}), {init[1]!r}))"
    if kind in ("zeros", "ones", "eye"):
        return f"nn.Parameter(torch.{kind}({dims}))"
    if kind == "normal":
        mean, std = init[1], init[2]
        text = f"torch.randn({dims})"
        if std != 1.0:
            text += f" * {std!r}"
        if mean != 0.0:
            text += f" + {mean!r}"
        return f"nn.Parameter({text})"
    if kind == "uniform":
        return f"nn.Parameter(torch.empty({dims}).uniform_({init[1]!r}, {init[2]!r}))"
    gain = init[1] if len(init) > 1 else 1.0
    arg = f", gain={gain!r}" if kind in ("xavier_uniform", "xavier_normal", "orthogonal") and gain != 1.0 else ""
    return f"nn.Parameter(nn.init.{kind}_(torch.empty({dims}){arg}))"


def _nested_list(v):
    if isinstance(v, tuple):
        return [_nested_list(x) for x in v]
    return v
