"""nnspec: a declarative model specification compiler for deep learning.

    import nnspec
    Model = nnspec.compile("specs/mlp.nn")     # or a built-in name: nnspec.compile("resnet18")
    net = Model()                              # the spec's defaults
    net = Model(hidden=128)                    # other parameters: compiled again, on the fly

Importing nnspec is light: torch is imported only when a module is materialised.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["compile", "build", "generate_source", "SpecError", "__version__"]

from nnspec.errors import SpecError  # noqa: E402


def build(spec, params: dict | None = None, model: str | None = None):
    """Spec -> checked IR graph (see nnspec.compiler.pipeline)."""
    from nnspec.compiler.pipeline import build as _build
    return _build(spec, params=params, model=model)


def generate_source(spec, params: dict | None = None, model: str | None = None) -> str:
    """Spec -> the Python source of its standalone nn.Module."""
    from nnspec.compiler.codegen.pytorch import generate
    return generate(build(spec, params, model))


_CACHE: dict = {}


def compile(spec, params: dict | None = None, model: str | None = None, optimize: bool = True):  # noqa: A001
    """Compile a spec to an nn.Module class whose constructor takes the spec's parameters as keywords.

    With `optimize` (the default) the graph rewrites of nnspec.compiler.pipeline.OPTIMIZATIONS run first (fused
    attention and LSTM, channels-last convolutions, conv + batch norm folded in inference): same outputs and
    gradients, less time and memory."""
    from nnspec.compiler.codegen.loader import materialize
    from nnspec.compiler.pipeline import build as _build
    key = (str(spec), tuple(sorted((k, repr(v)) for k, v in (params or {}).items())), model,  # list values: repr
           optimize)
    if key in _CACHE:
        return _CACHE[key]
    graph = _build(spec, params=params, model=model, optimize=optimize)
    cls = materialize(graph)
    base_params = dict(graph.params)

    def __new__(klass, *args, **kwargs):
        if args:
            raise TypeError(f"{klass.__name__}() takes the spec's parameters as keywords: {list(base_params)}")
        wanted = {**base_params, **kwargs}
        unknown = set(kwargs) - set(base_params)
        if unknown:
            raise TypeError(f"{klass.__name__}() got unknown parameter(s) {sorted(unknown)}; "
                            f"the spec's parameters are {list(base_params)}")
        if wanted != base_params:
            other = compile(spec, wanted, model, optimize)
            return other(**wanted)
        return super(wrapper, klass).__new__(klass)

    def __init__(self, **kwargs):
        cls.__init__(self, **{**base_params, **kwargs})

    def _repr_svg_(self):  # Jupyter draws an instance as its model's forward graph
        return type(self).graph._repr_svg_()

    wrapper = type(cls.__name__, (cls,), {"__new__": __new__, "__init__": __init__, "__module__": cls.__module__,
                                          "__doc__": cls.__doc__, "graph": graph, "_repr_svg_": _repr_svg_})
    wrapper.__qualname__ = cls.__qualname__
    _CACHE[key] = wrapper
    return wrapper
