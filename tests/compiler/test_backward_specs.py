"""The backward graph of every spec runs and gives the gradients torch.autograd gives.

For each model of each spec in specs/: autodiff builds the backward graph, codegen compiles it, and
`backward()` runs on the values `forward_saved()` kept; the same forward run is then differentiated by
torch.autograd, in float64, and every trainable parameter's gradient must agree (tight tolerance).
Inputs, sizes and the objective follow tests/test_specs.py (its helpers are reused): the total loss
when the model has losses, else the sum of its float outputs (seeded with ones).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import nnspec
from nnspec.compiler.execute import backward_module

_spec = importlib.util.spec_from_file_location("_nnspec_test_specs", Path(__file__).resolve().parents[1] / "test_specs.py")
specs_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(specs_helpers)


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (tests/conftest.py)


@pytest.mark.parametrize("path,model", specs_helpers.CASES)
def test_backward_graph_matches_autograd(path, model):
    h = specs_helpers
    params = h._run_params(path, model)
    cls = nnspec.compile(str(path), params=params or None, model=model)
    graph = cls.graph
    mod, bwd, info = backward_module(graph)
    torch.manual_seed(0)
    net = cls().double()
    dims = h._choose_dims(graph, h._lookup(h.DIMS, path, model))
    env = {**dims, **{s: 2 for s in h._batch_symbols(graph)}}
    gen = torch.Generator().manual_seed(0)
    values = []
    for nid in graph.inputs + graph.targets:
        v = h._make_value(graph, nid, env, gen)
        values.append(v.double() if v.is_floating_point() else v)
    result, saved = mod.forward_saved(net, *values)
    seeds = {}
    objective = torch.zeros((), dtype=torch.float64)
    for nid in bwd.inputs:
        name = bwd.nodes[nid].attrs["name"]
        if name == "grad_loss":
            seeds[name] = 1.0
            objective = objective + result["loss"]
        else:
            out = result[name[len("grad_"):]]
            seeds[name] = torch.ones_like(out)
            objective = objective + out.sum()
    ours = mod.backward(net, saved, **seeds)
    named = dict(net.named_parameters())
    assert set(ours) <= set(named), f"gradients for unknown parameters: {sorted(set(ours) - set(named))}"
    if objective.requires_grad:
        objective.backward()
    checked = 0
    for name, p in named.items():
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        got = ours.get(name)
        if got is None:
            assert torch.count_nonzero(ref) == 0, f"{name}: autograd gives a gradient, the backward graph none"
            continue
        assert got.shape == p.shape, f"{name}: gradient shape {tuple(got.shape)} for a {tuple(p.shape)} parameter"
        err = (got - ref).abs().max().item()
        scale = max(1.0, ref.abs().max().item())
        assert err <= 1e-9 * scale, f"{name}: backward graph differs from autograd by {err:.3g}"
        checked += 1
    assert checked == len(ours)
