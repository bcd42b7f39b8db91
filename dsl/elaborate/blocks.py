"""Elaboration of block instances (a block's body runs in a scope of its own, under the instance's name,
recorded as a BlockCall of the graph's block tree) and of `scan`, whose cell becomes a body graph of its own."""
from __future__ import annotations

from nnspec.compiler.ir import BlockCall, Graph, Node
from nnspec.compiler.shapes import Sym, TensorType, is_concrete, shape_str
from nnspec.dsl import ast
from nnspec.dsl.elaborate.values import (MAX_BLOCK_DEPTH, Instance, Scope, Tensor, dim_text, is_value, kind_of,
                                         show, snake)
from nnspec.errors import SpecError, suggest


class BlocksMixin:
    """The Elaborator's block instances and scans (see dsl/elaborate/__init__.py)."""

    def _instantiate(self, block: ast.BlockDef, consts, kwargs, tensors, scope: Scope, span, name: str, owner):
        self._step(span)
        if len(self.depth) >= MAX_BLOCK_DEPTH:
            chain = " -> ".join(self.depth[-4:] + [block.name])
            raise SpecError("E0504", f"block `{block.name}` calls itself without end (nesting deeper than "
                            f"{MAX_BLOCK_DEPTH}: {chain})", span,
                            hint="a recursive block needs a compile-time `if` that stops the recursion")
        if len(tensors) != len(block.inputs):
            raise SpecError("E0406", f"block `{block.name}` takes {len(block.inputs)} tensor input(s), "
                            f"{len(tensors)} given", span,
                            expected=f"{block.name}({', '.join(i.name for i in block.inputs)})")
        blocks = scope.graph.blocks
        call = BlockCall(len(blocks), scope.call, ".".join(scope.path + (name,)), block.name, span=span,
                         shared=owner is not None, inputs=[t.ref for t in tensors])
        blocks[call.id] = call
        inner = Scope(scope.graph, scope.path + (name,), block=block, owner=owner, call=call.id)
        call.args = dict(self._bind_params(block.params, consts, kwargs, span, inner, block.name))
        for bin_, t in zip(block.inputs, tensors):
            if bin_.name in inner.vars:
                raise SpecError("E0203", f"`{bin_.name}` is both a parameter and an input of `{block.name}`", bin_.span)
            if bin_.type is not None:
                call.dims.update(self._match_type(bin_, t, inner, span, block))
            inner.vars[bin_.name] = t
        self.depth.append(block.name)
        try:
            self._run_body(block.body, inner, in_model=False)
        finally:
            self.depth.pop()
        if inner.returned is None:
            raise SpecError("E0507", f"block `{block.name}` has no `return`", block.span,
                            hint="end the block with `return value`")
        values = inner.returned
        call.outputs = [v.ref for v in values if isinstance(v, Tensor)]
        call.values = {k: v for k, v in inner.vars.items() if is_value(v) and k not in call.args
                       and k not in call.dims and inner.assigned.get(k) == 1}
        return values[0] if len(values) == 1 else tuple(values)

    def _match_type(self, bin_: ast.BlockInput, t: Tensor, inner: Scope, span, block) -> dict:
        """Check a block input against its pattern; bind the pattern's new names (returned)."""
        texpr = bin_.type
        if texpr.dtype is not None and texpr.dtype != t.type.dtype:
            raise SpecError("E0305", f"block `{block.name}` expects `{bin_.name}` as {texpr.dtype}, found {t.type.dtype}",
                            span, found=str(t.type), expected=texpr.dtype)
        pattern = texpr.dims
        has_ellipsis = any(isinstance(d, ast.EllipsisExpr) for d in pattern)
        if not has_ellipsis and len(pattern) != t.type.rank:
            raise SpecError("E0302", f"rank mismatch: block `{block.name}` expects `{bin_.name}` of rank {len(pattern)}, "
                            f"found {t.type}", span, found=shape_str(t.type.shape),
                            expected="[" + ", ".join(dim_text(d) for d in pattern) + "]",
                            notes=[f"`{bin_.name}` is declared at {bin_.span or block.span}"])
        bound = {}
        for axis, (d, actual) in enumerate(zip(pattern, t.type.shape)):
            if isinstance(d, ast.Name) and d.id == "_":
                continue
            if isinstance(d, ast.Name) and d.id not in inner.vars:
                inner.vars[d.id] = actual
                bound[d.id] = actual
                continue
            want = self._const(d, inner, "a dimension")
            if want != actual:
                kind = "E0301" if is_concrete(want) and is_concrete(actual) else "E0303"
                what = f"size {want}" if isinstance(d, ast.Num) else f"{dim_text(d)} = {want}"
                raise SpecError(kind, f"block `{block.name}` expects `{bin_.name}` to have {what} at dimension {axis}, "
                                f"found {actual}", span, found=shape_str(t.type.shape),
                                expected="[" + ", ".join(dim_text(x) for x in pattern) + "]",
                                notes=[f"`{bin_.name}` is declared at {bin_.span or block.span}"]
                                + ([f"`{dim_text(d)}` = {want} was bound by an earlier input or parameter"]
                                   if isinstance(d, ast.Name) else []))
        return bound

    # ------------------------------------------------------------------ scan
    def _scan(self, call: ast.Call, args, kwargs, scope: Scope):
        cell, tensors, axis, steps, reverse = self._scan_arguments(call, args, kwargs)
        if steps is None:
            if not tensors:
                raise SpecError("E0415", "scan needs a sequence to scan over, or steps=N", call.span)
            xs, inits = tensors[0], tensors[1:]
            if not -xs.type.rank <= axis < xs.type.rank:
                raise SpecError("E0304", f"scan axis {axis} is out of range for {xs.type}", call.span)
            axis = axis % xs.type.rank
            length = xs.type.shape[axis]
            step_in = [TensorType(xs.type.dtype, xs.type.shape[:axis] + xs.type.shape[axis + 1:])]
        else:
            if isinstance(steps, bool) or not isinstance(steps, (int, Sym)):
                raise SpecError("E0401", "scan's steps must be an int or a dimension", call.span)
            xs, inits, length = None, tensors, steps
            step_in = []
        if not inits:
            raise SpecError("E0415", "scan needs at least one initial state (the carried value)", call.span)
        body, y, name = self._scan_body(call, cell, xs, inits, step_in, scope)
        out_axis = axis if xs is not None else 1
        ys_shape = y.type.shape[:out_axis] + (length,) + y.type.shape[out_axis:]
        if out_axis > y.type.rank:
            ys_shape = y.type.shape + (length,)
        outs = [TensorType(y.type.dtype, ys_shape)] + [t.type for t in inits]
        graph = scope.graph
        node = Node(graph.fresh_id("scan"), "scan", [t.ref for t in tensors],
                    {"axis": out_axis, "steps": steps, "reverse": reverse, "n_carries": len(inits),
                     "has_xs": xs is not None, "body": body, "length": length},
                    outs, span=call.span, path=scope.path + (name,), scope=scope.call)
        graph.add_node(node)
        self.node_count += len(body.nodes)
        return tuple(Tensor((node.id, k), t) for k, t in enumerate(outs))

    def _scan_arguments(self, call: ast.Call, args, kwargs):
        """scan(cell, tensors..., axis=1, steps=None, reverse=false), checked."""
        if not args or not isinstance(args[0], Instance):
            raise SpecError("E0415", "scan's first argument is the step block or layer, e.g. scan(cell, x, h0)",
                            call.span, hint="define the cell with `let cell = RNNCell(hidden=32)`")
        tensors = args[1:]
        if any(not isinstance(t, Tensor) for t in tensors):
            raise SpecError("E0415", "scan takes the cell, then the sequence, then the initial states", call.span)
        unknown = set(kwargs) - {"axis", "steps", "reverse"}
        if unknown:
            key = sorted(unknown)[0]
            raise SpecError("E0402", f"scan has no argument `{key}`", call.span,
                            expected="scan(cell, xs, init..., axis=1, steps=None, reverse=false)",
                            hint=suggest(key, ["axis", "steps", "reverse"]))
        axis = kwargs.get("axis", 1)
        steps = kwargs.get("steps")
        reverse = kwargs.get("reverse", False)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise SpecError("E0401", f"scan's axis must be an int, found {kind_of(axis)}", call.span,
                            found=show(axis), expected="an int, e.g. axis=1")
        if not isinstance(reverse, bool):
            raise SpecError("E0401", f"scan's reverse must be true or false, found {kind_of(reverse)}", call.span,
                            found=show(reverse), expected="true or false")
        if isinstance(steps, int) and not isinstance(steps, bool) and steps < 1:
            raise SpecError("E0401", f"scan's steps must be at least 1, found {steps}", call.span,
                            found=str(steps), expected="an int >= 1")
        return args[0], tensors, axis, steps, reverse

    def _scan_body(self, call: ast.Call, cell: Instance, xs, inits, step_in, scope: Scope):
        """The cell, called once on step inputs, as a body graph: inputs x_t and the carries, outputs
        carry0.. (the new states) and y (the step's output). Returns (body, y, the cell's name)."""
        body = Graph(f"scan:{cell.name or cell.target}")
        body.modules = scope.graph.modules
        body.blocks = scope.graph.blocks
        body_scope = Scope(body, scope.path, owner=scope.owner, call=scope.call)
        body_scope.names_used = scope.names_used
        body_inputs = []
        names = (["x_t"] if xs is not None else []) + [f"carry{i}" for i in range(len(inits))]
        if cell.kind == "block":
            declared = [b.name for b in self.program.blocks[cell.target].inputs]
            if len(declared) == len(names):
                names = (["x_t"] if xs is not None else []) + declared[len(names) - len(inits):]
        for nm, tt in zip(names, step_in + [t.type for t in inits]):
            node = Node(body.fresh_id(nm), "input", [], {"name": nm}, [tt], label=nm, span=call.span, path=scope.path,
                        scope=scope.call)
            body.add_node(node)
            body.inputs.append(node.id)
            body_inputs.append(Tensor((node.id, 0), tt))
        shared = Instance(cell.kind, cell.target, cell.args, cell.kwargs,
                          cell.name or self._auto_name(scope, snake(cell.target)), cell.span, True,
                          cell.token if cell.shared else object())
        if not cell.shared:
            scope.names_used[shared.name] = scope.names_used.get(shared.name, 0) + 1
        result = self._call_instance(shared, body_inputs, body_scope, call.span)
        results = list(result) if isinstance(result, tuple) else [result]
        n = len(inits)
        if len(results) not in (n, n + 1):
            raise SpecError("E0416", f"the scan cell returns {len(results)} value(s); with {n} carried state(s) it must "
                            f"return {n} (new states) or {n + 1} (new states, then the step's output)", call.span)
        for k, (r, init) in enumerate(zip(results, inits)):
            t = self._tensor(r, call, f"scan state {k}", body_scope)
            if t.type.shape != init.type.shape:
                raise SpecError("E0312", f"scan state {k} changes shape in one step: {init.type} -> {t.type}", call.span,
                                found=str(t.type), expected=str(init.type),
                                hint="the cell must return each state with the shape it received")
            body.outputs[f"carry{k}"] = t.ref
        y = self._tensor(results[-1] if len(results) == n + 1 else results[0], call, "scan output", body_scope)
        body.outputs["y"] = y.ref
        return body, y, shared.name
