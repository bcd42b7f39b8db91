"""Elaboration of calls: an op (a node; a layer also gets its module), a block (instantiated inline under a
name), a shared instance (`let`), built-ins and `fail`; automatic layer names; the notes that say where an
input came from when a shape rule fails."""
from __future__ import annotations

from nnspec.compiler.ir import Node
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.ops.registry import OpContext, bind_attrs
from nnspec.compiler.shapes import is_concrete, shape_str
from nnspec.dsl import ast
from nnspec.dsl.elaborate.expressions import BUILTINS, TENSOR_BUILTINS, builtin
from nnspec.dsl.elaborate.values import MAX_NODES, Instance, Scope, Tensor, kind_of, name_of, snake
from nnspec.errors import SpecError, suggest


class CallsMixin:
    """The Elaborator's calls (see dsl/elaborate/__init__.py)."""

    def _call(self, call: ast.Call, scope: Scope, piped=None):
        if self.node_count > MAX_NODES:
            raise SpecError("E0502", f"the model has more than {MAX_NODES} operations", call.span,
                            hint="check the repeat counts")
        args = [] if piped is None else [piped]
        args += [self._expr(a, scope) for a in call.args]
        kwargs = {}
        kw_spans = {}
        for k in call.kwargs:
            kwargs[k.name] = self._expr(k.value, scope)
            kw_spans[k.name] = k.span
        name = call.func
        target = scope.vars.get(name)
        if isinstance(target, Instance):
            if kwargs or any(not isinstance(a, Tensor) for a in args):
                raise SpecError("E0406", f"`{name}` is a layer instance: call it with tensors only", call.span)
            return self._call_instance(target, args, scope, call.span)
        if name in scope.vars and not isinstance(target, Instance) and not (
                name in REGISTRY or name in self.program.blocks or name in BUILTINS or name in ("scan", "fail")):
            # a value never hides an op: `dropout: float` as a parameter and dropout(p=dropout) both work
            raise SpecError("E0414", f"`{name}` is {kind_of(target)}, not an op or block", call.span)
        if name == "scan":
            return self._scan(call, args, kwargs, scope)
        if name == "fail" and name not in scope.vars:
            message = args[0] if len(args) == 1 and isinstance(args[0], str) and not kwargs else None
            if message is None:
                raise SpecError("E0406", "fail() takes one string: fail(\"what went wrong\")", call.span)
            raise SpecError("E0510", message, call.span,
                            notes=[f"in block `{scope.block.name}`"] if scope.block else [])
        if name in BUILTINS and not any(isinstance(a, Tensor) for a in args):
            return builtin(name, args, kwargs, call.span)
        if name in TENSOR_BUILTINS and any(isinstance(a, Tensor) for a in args):
            name = TENSOR_BUILTINS[name]
        if name in self.program.blocks:
            return self._call_block(self.program.blocks[name], args, kwargs, scope, call.span, kw_spans)
        op = REGISTRY.get(name)
        if op is not None and (op.category in ("graph", "backward") or op.name == "getitem"):
            raise SpecError("E0204", f"`{name}` is internal to the compiler and cannot be called in a spec", call.span,
                            hint="index with x[...]" if name == "getitem" else "run `nnspec ops` for the list of ops")
        if op is None:
            hint = suggest(name, list(REGISTRY) + list(self.program.blocks) + [v for v, x in scope.vars.items()
                                                                                  if isinstance(x, Instance)])
            raise SpecError("E0204", f"unknown op or block `{name}`", call.span,
                            hint=hint or "run `nnspec ops` for the list of ops")
        return self._call_op(op, args, kwargs, scope, call.span, kw_spans)

    def _split_args(self, args, span, what: str):
        tensors, consts = [], []
        for a in args:
            if isinstance(a, Tensor):
                if consts:
                    raise SpecError("E0408", f"{what}: a tensor argument comes after a non-tensor argument", span,
                                    hint="tensor inputs come first: op(x, y, attributes...)")
                tensors.append(a)
            elif isinstance(a, list) and a and all(isinstance(t, Tensor) for t in a) and not consts and not tensors:
                tensors.extend(a)
            elif isinstance(a, tuple) and a and all(isinstance(t, Tensor) for t in a) and not consts:
                tensors.extend(a)
            elif isinstance(a, Instance):
                raise SpecError("E0412", f"{what}: the layer `{a.target}` is passed as an argument", span)
            else:
                consts.append(a)
        return tensors, consts

    def _call_op(self, op, args, kwargs, scope: Scope, span, kw_spans, instance: Instance | None = None):
        name_arg = kwargs.pop("name", None)
        tensors, consts = self._split_args(args, span, op.name)
        n_in = len(op.inputs)
        if not tensors and n_in and not op.variadic and instance is None:
            # a layer without its input yet: `let fc = linear(10)`, or a stage in a scan cell
            bind_attrs(op, consts, kwargs, span, kw_spans)  # validate now
            return Instance("op", op.name, consts, kwargs, name_of(name_arg, span), span, shared=False)
        if op.variadic:
            if not tensors:
                raise SpecError("E0407", f"{op.name} needs at least one tensor input", span, expected=op.signature())
        elif not (n_in - op.optional_inputs <= len(tensors) <= n_in):
            raise SpecError("E0406", f"{op.name} takes {n_in} tensor input(s), {len(tensors)} given", span,
                            expected=op.signature(), found=f"{len(tensors)} tensor(s)")
        attrs = bind_attrs(op, consts, kwargs, span, kw_spans)
        module = None
        if op.module is not None:
            in_types = [t.type for t in tensors]
            ctx = OpContext(op, span, self._input_notes(scope, tensors))
            pre_check(op, ctx, in_types, attrs)
            op.shape(ctx, in_types, attrs)  # shape errors before the module is made
            if instance is not None:
                mname = instance.name
                owner = instance.token if instance.shared else None
            else:
                mname = name_of(name_arg, span) or self._auto_name(scope, op.name)
                owner = scope.owner
            self._claim(scope, mname, span, owner)
            module = ".".join(scope.path + (mname,))
            try:
                self._register_module(scope, module, op.name, attrs, in_types, op.params(in_types, attrs),
                                      span, owner if owner is not None else (instance.token if instance else None))
            except SpecError as err:
                if err.code == "E0311":  # a shared layer called again: show what it is given this time
                    err.notes.extend(ctx.input_notes)
                raise
        elif name_arg is not None:
            pass  # a name on a parameter-free op only labels the value
        outs = self._emit(scope, op.name, tensors, attrs, span, module=module)
        if name_arg is not None and module is None:
            scope.graph.nodes[outs[0].ref[0]].label = str(name_arg)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _claim(self, scope: Scope, name: str, span, owner) -> None:
        if owner is None and name in scope.names_used and scope.names_used[name] > 0:
            path = ".".join(scope.path + (name,))
            existing = scope.graph.modules.get(path)
            if existing is not None and existing.owner is None:
                raise SpecError("E0203", f"two layers are named `{path}`", span,
                                notes=[f"the other one is at {existing.span}"] if existing.span else [],
                                hint="give one of them another name=...")
        scope.names_used[name] = scope.names_used.get(name, 0) + 1

    def _auto_name(self, scope: Scope, base: str) -> str:
        n = scope.names_used.get(base, 0)
        name = base if n == 0 else f"{base}_{n}"
        while name in scope.names_used:
            n += 1
            name = f"{base}_{n}"
        scope.names_used.setdefault(base, 0)
        return name

    def _input_notes(self, scope: Scope, tensors) -> list[str]:
        notes = []
        graph = scope.graph
        for k, t in enumerate(tensors):
            node = graph.nodes.get(t.ref[0])
            if node is None or node.op == "constant":
                continue
            trail = []
            cur = node
            while cur is not None and len(trail) < 3 and cur.op not in ("input", "target", "parameter"):
                if cur.span is not None:
                    trail.append(f"{cur.op} at line {cur.span.line}")
                cur = graph.nodes.get(cur.inputs[0][0]) if cur.inputs else None
            ordinal = ("first", "second", "third")[k] if len(tensors) > 1 and k < 3 else None
            name = f"`{node.label}`" if node.label else f"the {ordinal} input" if ordinal else "the input"
            where = f" ({', '.join(reversed(trail))})" if trail else ""
            notes.append(f"{name} is {t.type} here{where}")
        return notes

    def _emit(self, scope: Scope, op_name: str, inputs: list, attrs: dict, span, module=None) -> list:
        op = REGISTRY[op_name]
        in_types = [t.type for t in inputs]
        ctx = OpContext(op, span, self._input_notes(scope, inputs) if inputs else [])
        pre_check(op, ctx, in_types, attrs)
        outs = op.shape(ctx, in_types, attrs)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        for t in outs:
            if any(is_concrete(d) and d < 0 for d in t.shape):
                ctx.fail("E0310", f"{op_name} would produce a negative size: {shape_str(t.shape)}", found=str(t),
                         hint="check the sizes, strides and paddings given to this op")
        graph = scope.graph
        node = Node(graph.fresh_id(op_name), op_name, [t.ref for t in inputs], dict(attrs), outs, module=module,
                    span=span, path=scope.path, scope=scope.call)
        graph.add_node(node)
        self.node_count += 1
        return [Tensor((node.id, k), t) for k, t in enumerate(outs)]

    # ------------------------------------------------------------------ instances and blocks
    def _instance(self, expr, scope: Scope, let_name: str) -> Instance:
        if not isinstance(expr, ast.Call):
            raise SpecError("E0410", "`let` binds a shared layer or block instance, e.g. `let enc = Encoder(64)`",
                            expr.span, hint=f"for a value, write `{let_name} = ...`")
        value = self._call(expr, scope)
        if not isinstance(value, Instance):
            raise SpecError("E0410", "`let` binds a layer or block without its inputs; this call already computed a value",
                            expr.span, hint=f"write `{let_name} = ...` for a value")
        value.shared = True
        value.name = value.name or let_name
        self._claim(scope, value.name, expr.span, value.token)
        return value

    def _call_instance(self, inst: Instance, tensors, scope: Scope, span):
        if inst.kind == "op":
            op = REGISTRY[inst.target]
            name = inst.name or self._auto_name(scope, op.name)
            live = Instance(inst.kind, inst.target, inst.args, inst.kwargs, name, inst.span, inst.shared, inst.token) \
                if not inst.shared else inst
            if not inst.shared:
                live.token = object()
            return self._call_op(op, list(tensors) + list(inst.args), dict(inst.kwargs), scope, span, {}, instance=live)
        block = self.program.blocks[inst.target]
        return self._instantiate(block, inst.args, inst.kwargs, tensors, scope, span,
                                 inst.name or self._auto_name(scope, snake(block.name)),
                                 inst.token if inst.shared else None)

    def _call_block(self, block: ast.BlockDef, args, kwargs, scope: Scope, span, kw_spans):
        name_arg = kwargs.pop("name", None)
        tensors, consts = self._split_args(args, span, block.name)
        if not tensors and block.inputs:
            return Instance("block", block.name, consts, kwargs, name_of(name_arg, span), span, shared=False)
        name = name_of(name_arg, span) or self._auto_name(scope, snake(block.name))
        self._claim(scope, name, span, scope.owner)
        return self._instantiate(block, consts, kwargs, tensors, scope, span, name, scope.owner)



def pre_check(op, ctx, in_types, attrs) -> None:
    """Checks shared by layers: an explicit in_features/in_channels must match the input."""
    for key, axis, what in (("in_features", -1, "features"), ("in_channels", 1, "channels")):
        want = attrs.get(key)
        if want is not None and in_types:
            got = in_types[0].shape[axis] if in_types[0].rank else None
            if got != want:
                ctx.fail("E0301", f"shape mismatch in {op.name}: input has {got} {what}, the weight expects {want}",
                         found=f"{got} {what}", expected=f"{want} {what}")


