"""Elaboration of tensor types (symbols bind at a model's inputs), of `param` statements and their
initialisers (compiler/initializers.py, kept as data), and the module table: every layer instance, one
entry per name, shared by the calls of a `let` instance."""
from __future__ import annotations

from nnspec.compiler.initializers import INITIALIZERS
from nnspec.compiler.ir import ModuleInfo, Node, ParamSpec, is_identifier
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.shapes import Sym, TensorType, is_concrete, shape_str
from nnspec.dsl import ast
from nnspec.dsl.elaborate.values import (Scope, Tensor, check_reserved, flatten, kind_of, nested_shape,
                                         to_float_nested)
from nnspec.errors import SpecError


class ParametersMixin:
    """The Elaborator's types, parameters and module table (see dsl/elaborate/__init__.py)."""

    def _tensor_type(self, texpr: ast.TensorTypeExpr, scope: Scope, bind_symbols: bool, owner: str) -> TensorType:
        dims = []
        for d in texpr.dims:
            if isinstance(d, ast.Name) and d.id not in scope.vars and bind_symbols:
                if d.id in REGISTRY or d.id in self.program.blocks:
                    raise SpecError("E0206", f"`{d.id}` names an op; choose another symbol name", d.span)
                check_reserved(d.id, d.span, "a dimension")
                sym = Sym.var(d.id)
                scope.vars[d.id] = sym
                dims.append(sym)
                continue
            v = self._const(d, scope, f"a dimension of `{owner}`")
            if isinstance(v, bool) or not isinstance(v, (int, Sym)):
                raise SpecError("E0401", f"a dimension must be an int or a symbol, found {kind_of(v)}", d.span)
            if isinstance(v, int) and v < 0:
                raise SpecError("E0310", f"a dimension cannot be negative ({v})", d.span)
            dims.append(v)
        return TensorType(texpr.dtype or "f32", tuple(dims))

    def _param(self, stmt: ast.ParamStmt, scope: Scope) -> Tensor:
        graph = scope.graph
        ttype = self._tensor_type(stmt.type, scope, bind_symbols=False, owner=stmt.name)
        for d in ttype.shape:
            if not is_concrete(d):
                raise SpecError("E0307", f"parameter `{stmt.name}` needs concrete sizes, found {shape_str(ttype.shape)}",
                                stmt.type.span)
        init = self._init_spec(stmt.init, scope, ttype) if stmt.init is not None else ("normal", 0.0, 1.0)
        path = ".".join(scope.path + (stmt.name,))
        self._register_module(scope, path, "parameter", {}, [], [ParamSpec("", ttype.shape, init)], stmt.span, None)
        node = Node(graph.fresh_id(stmt.name), "parameter", [], {"init": init}, [ttype], module=path, span=stmt.span,
                    path=scope.path, label=stmt.name, scope=scope.call)
        graph.add_node(node)
        return Tensor((node.id, 0), ttype)

    def _init_spec(self, expr, scope: Scope, ttype: TensorType):
        """An initialiser as data: `("normal", mean, std)`, `("constant", v)`, `("values", nested tuple)`."""
        name = expr.func if isinstance(expr, ast.Call) else expr.id if isinstance(expr, ast.Name) else None
        if name in INITIALIZERS:
            init = INITIALIZERS[name]
            args = [self._const(a, scope, "an initialiser argument") for a in getattr(expr, "args", [])]
            kwargs = {k.name: self._const(k.value, scope, "an initialiser argument") for k in getattr(expr, "kwargs", [])}
            keys = [k for k, _ in init.args]
            for k, v in zip(keys, args):
                kwargs.setdefault(k, v)
            for k in kwargs:
                if k not in keys:
                    raise SpecError("E0402", f"initialiser {name} has no argument `{k}`", expr.span,
                                    expected=f"{name}({', '.join(keys)})")
            return (name, *[float(kwargs.get(k, d)) for k, d in init.args])
        value = self._const(expr, scope, "a parameter's initial value")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return ("constant", float(value))
        if isinstance(value, (list, tuple)):
            if nested_shape(value) != tuple(ttype.shape):
                raise SpecError("E0301", f"initial value has shape {list(nested_shape(value))}, the parameter is "
                                f"{shape_str(ttype.shape)}", expr.span)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flatten(value)):
                raise SpecError("E0401", "initial values must be numbers", expr.span)
            return ("values", to_float_nested(value))
        raise SpecError("E0401", "a parameter's initial value must be a number, a list of numbers or an initialiser "
                        f"({', '.join(sorted(INITIALIZERS))})", expr.span)

    def _register_module(self, scope: Scope, path: str, op: str, attrs: dict, in_types: list, params, span,
                         owner) -> None:
        graph = scope.graph
        for part in path.split("."):
            if not (is_identifier(part) or part.isdigit()):
                raise SpecError("E0206", f"`{part}` is not a valid layer name", span,
                                hint="names are identifiers (letters, digits, _) or plain numbers")
        if path.split(".")[0].isdigit():  # the generated module itself cannot be indexed (self[0])
            raise SpecError("E0206", f"`{path.split('.')[0]}` cannot name a layer of the model itself: a number names "
                            "an item of a list inside a block", span,
                            hint='use an identifier (name="layer" + str(i)), or put the repeat inside a block')
        info = ModuleInfo(path, op, list(params), dict(attrs), list(in_types), span, calls=1, owner=owner)
        existing = graph.modules.get(path)
        if existing is None:
            graph.modules[path] = info
            return
        if owner is not None and existing.owner is owner:
            if existing.ctor != info.ctor:   # the weights of a shared instance must fit every call
                raise SpecError("E0311", f"shared instance `{path}` is called with inputs of a different shape",
                                span, found=info.ctor, expected=existing.ctor,
                                notes=[f"first called at {existing.span}"] if existing.span else [],
                                hint="every call of a shared instance must fit the same weights")
            existing.calls += 1
            return
        raise SpecError("E0203", f"two layers are named `{path}`", span,
                        notes=[f"the other one is at {existing.span}"] if existing.span else [],
                        hint="give one of them another name=...")
