"""The op registry. Importing this package registers every op (see registry.py for OpDef)."""
from nnspec.compiler.ops import activations, backward_ops, losses, math, nn, tensor  # noqa: F401  (registration)
from nnspec.compiler.ops import scalar  # noqa: F401,E402  (attaches the Triton scalar expressions: after registration)
from nnspec.compiler.ops.registry import REGISTRY, Attr, OpDef, get

__all__ = ["REGISTRY", "Attr", "OpDef", "get"]
