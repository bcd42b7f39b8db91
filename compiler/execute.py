"""Run a compiled model and its compiled backward graph, keeping every value (imports torch).

`trace(graph, inputs)` returns the forward value of every node output and the backward value of every
backward node: what `nnspec render --values` writes on the edges, and what the tests compare with
torch.autograd.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

from nnspec.compiler.autodiff import BackwardInfo, build_backward
from nnspec.compiler.codegen.backward import generate_backward
from nnspec.compiler.codegen.loader import materialize
from nnspec.compiler.ir import Graph


@dataclass
class Trace:
    forward: dict          # "node" or "node:k" -> tensor
    backward: dict         # backward "node" or "node:k" -> tensor
    grads: dict            # "module.param" -> dL/dparam from the backward graph
    result: dict           # outputs and losses
    backward_graph: Graph
    info: BackwardInfo
    module: object         # the nn.Module instance that ran


def backward_module(graph: Graph, keep_all: bool = False, wrt_inputs: bool = False):
    bwd, info = build_backward(graph, wrt_inputs=wrt_inputs)
    source = generate_backward(graph, bwd, info, keep_all=keep_all)
    mod = types.ModuleType(f"nnspec_backward_{graph.name}")
    exec(compile(source, f"<nnspec backward {graph.name}>", "exec"), mod.__dict__)  # noqa: S102 - our own code
    setattr(mod, "source_code", source)  # a module's own attribute, for the debugger and the tests
    return mod, bwd, info


def trace(graph: Graph, inputs: dict, module=None, dtype=None) -> Trace:
    """Run forward and backward on named inputs/targets (tensors or numbers)."""
    import torch

    if module is None:
        module = materialize(graph)()
    if dtype is not None:
        module = module.to(dtype)
    mod, bwd, info = backward_module(graph, keep_all=True, wrt_inputs=True)
    args = []
    for nid in graph.inputs + graph.targets:
        name = graph.nodes[nid].attrs["name"]
        t = graph.nodes[nid].outputs[0]
        v = inputs[name]
        if not torch.is_tensor(v):
            v = torch.tensor(v, dtype=dtype or torch.get_default_dtype() if t.is_float else torch.long)
        if tuple(v.shape) != tuple(int(d) if isinstance(d, int) else v.shape[i] for i, d in enumerate(t.shape)) \
                and v.dim() == 0 and t.rank:
            v = v.reshape([1] * t.rank)
        args.append(v)
    result, saved = mod.forward_saved(module, *args)
    seeds = {bwd.nodes[i].attrs["name"]: 1.0 if bwd.nodes[i].outputs[0].rank == 0 else
             torch.ones_like(result[bwd.nodes[i].attrs["name"][5:]]) for i in bwd.inputs}
    grads = mod.backward(module, saved, **seeds)
    fwd_values = {k: v for k, v in saved.items() if not k.startswith("__")}
    return Trace(fwd_values, saved.get("__backward__", {}), grads, result, bwd, info, module)
