"""Initialisation by name pattern (runtime/init.py): statistics against the formulas, identity exactness,
rule precedence, and the errors.

Statistics use 512x512 (262144 values): the sample std is within ~0.3% of the true one with overwhelming
probability, so a 2% tolerance leaves no room for a wrong formula (e.g. a missing sqrt(3) or gain).
"""
import math

import pytest
import torch
from torch import nn

from nnspec.runtime.init import INITS, apply_init


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(512, 512)
        self.wide = nn.Linear(1024, 256)  # weight [256, 1024]: fan_in 1024, fan_out 256
        self.conv = nn.Conv2d(64, 128, 3)  # weight [128, 64, 3, 3]: fan_in 576, fan_out 1152


def stats(t):
    t = t.detach().double()
    return float(t.mean()), float(t.std())


def init_one(rule, attr="fc", seed=0):
    net = Net()
    apply_init(net, [dict(rule, match=f"{attr}.weight")], seed=seed)
    return getattr(net, attr).weight.detach()


def check_std(w, want, mean=0.0):
    m, s = stats(w)
    assert abs(m - mean) < 6 * want / math.sqrt(w.numel()) + 1e-12
    assert s == pytest.approx(want, rel=0.02)


def test_xavier_uniform_and_normal():
    """001:698-713: Xavier uniform U(-a, a), a = gain sqrt(6 / (n_in + n_out)) (std a / sqrt(3) =
    gain sqrt(2 / (n_in + n_out))); Xavier normal sigma = gain sqrt(2 / (n_in + n_out))."""
    for attr, (fi, fo) in (("fc", (512, 512)), ("wide", (1024, 256)), ("conv", (576, 1152))):
        for gain in (1.0, 2.0):
            w = init_one({"init": "xavier_uniform", "gain": gain}, attr)
            a = gain * math.sqrt(6 / (fi + fo))
            assert float(w.abs().max()) <= a and float(w.abs().max()) > 0.99 * a
            check_std(w, gain * math.sqrt(2 / (fi + fo)))
            check_std(init_one({"init": "xavier_normal", "gain": gain}, attr), gain * math.sqrt(2 / (fi + fo)))


def test_kaiming_normal_and_uniform():
    """001:716-722: Kaiming/He normal sigma = gain sqrt(2 / n_l) (n_l = fan-in), for ReLU; the notes' gain is a
    tunable multiplier (default 1). Here sigma = gain * g(nonlinearity) / sqrt(fan) with g(relu) = sqrt(2),
    g(leaky_relu, a) = sqrt(2 / (1 + a^2)), g(tanh) = 5/3; uniform: bound sqrt(3) sigma; mode fan_out
    uses the fan-out (told apart by the non-square `wide` layer and the conv layer)."""
    check_std(init_one({"init": "kaiming_normal"}), math.sqrt(2 / 512))
    check_std(init_one({"init": "kaiming_normal", "gain": 0.5}), 0.5 * math.sqrt(2 / 512))
    check_std(init_one({"init": "kaiming_normal"}, "wide"), math.sqrt(2 / 1024))
    check_std(init_one({"init": "kaiming_normal", "mode": "fan_out"}, "wide"), math.sqrt(2 / 256))
    check_std(init_one({"init": "kaiming_normal", "mode": "fan_out"}, "conv"), math.sqrt(2 / 1152))
    check_std(init_one({"init": "kaiming_normal", "nonlinearity": "leaky_relu", "a": 0.2}),
              math.sqrt(2 / (1 + 0.04)) / math.sqrt(512))
    check_std(init_one({"init": "kaiming_normal", "nonlinearity": "tanh"}, "conv"), 5 / 3 / math.sqrt(576))
    w = init_one({"init": "kaiming_uniform"}, "conv")
    bound = math.sqrt(3) * math.sqrt(2 / 576)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    check_std(w, math.sqrt(2 / 576))


def test_normal_uniform_orthogonal_zeros_constant():
    """normal(mean, std) (004:231; DCGAN N(0, 0.02) and BatchNorm weights N(1, 0.02), 000:1186-1187),
    uniform(low, high) (mean (l+h)/2, std (h-l)/sqrt(12)), orthogonal (W W^T = gain^2 I), zeros, constant."""
    check_std(init_one({"init": "normal", "std": 0.02}), 0.02)
    check_std(init_one({"init": "normal", "mean": 1.0, "std": 0.02}), 0.02, mean=1.0)
    w = init_one({"init": "uniform", "low": -0.1, "high": 0.3})
    assert float(w.min()) >= -0.1 and float(w.max()) <= 0.3
    check_std(w, 0.4 / math.sqrt(12), mean=0.1)
    w = init_one({"init": "orthogonal", "gain": 2.0}).double()
    assert torch.allclose(w @ w.T, 4 * torch.eye(512, dtype=torch.float64), atol=1e-4)
    w = init_one({"init": "orthogonal"}, "wide").double()  # [256, 1024]: orthonormal rows
    assert torch.allclose(w @ w.T, torch.eye(256, dtype=torch.float64), atol=1e-4)
    assert torch.count_nonzero(init_one({"init": "zeros"})) == 0
    assert torch.all(init_one({"init": "constant", "value": 0.25}) == 0.25)


def test_identity_for_square_and_stacked_recurrent_weights():
    """004:642-650: initialise the (recurrent) weights to the identity and the biases to zero. For the gate
    matrices stacked in one hidden->hidden weight ([k*H, H]: LSTM k=4, GRU k=3) every H x H block is I."""
    for cell, k in ((nn.RNN, 1), (nn.GRU, 3), (nn.LSTM, 4)):
        net = cell(3, 5, num_layers=2)
        done = apply_init(net, [{"match": "weight_hh_*", "init": "identity"}, {"match": "bias_*", "init": "zeros"}])
        for layer in (0, 1):
            w = getattr(net, f"weight_hh_l{layer}").detach()
            assert w.shape == (5 * k, 5)
            assert torch.equal(w, torch.eye(5).repeat(k, 1))
            assert done[f"weight_hh_l{layer}"] == "identity (rule 0: 'weight_hh_*')"
        assert all(torch.count_nonzero(p) == 0 for n, p in net.named_parameters() if n.startswith("bias"))
    lin = nn.Linear(4, 4)
    apply_init(lin, [{"match": "weight", "init": "identity", "gain": 0.5}])
    assert torch.equal(lin.weight.detach(), 0.5 * torch.eye(4))
    with pytest.raises(ValueError, match=r"identity.*`weight`.*\[3, 4\]"):
        apply_init(nn.Linear(4, 3), [{"match": "weight", "init": "identity"}])
    with pytest.raises(ValueError, match=r"identity.*`bias`"):
        apply_init(nn.Linear(4, 4), [{"match": "bias", "init": "identity"}])


def test_first_matching_rule_wins_and_others_are_untouched():
    """Rules are tried in order and the first whose pattern matches a parameter sets it; the returned dict
    says which rule set which parameter."""
    net = Net()
    done = apply_init(net, [
        {"match": "fc.weight", "init": "zeros"},
        {"match": "*.weight", "init": "constant", "value": 1.0},
        {"match": "fc.bias", "init": "constant", "value": 2.0},
        {"match": "*.bias", "init": "constant", "value": 3.0},
    ])
    assert torch.count_nonzero(net.fc.weight) == 0
    assert torch.all(net.wide.weight == 1.0) and torch.all(net.conv.weight == 1.0)
    assert torch.all(net.fc.bias == 2.0) and torch.all(net.wide.bias == 3.0) and torch.all(net.conv.bias == 3.0)
    assert done == {"fc.weight": "zeros (rule 0: 'fc.weight')", "fc.bias": "constant (rule 2: 'fc.bias')",
                    "wide.weight": "constant (rule 1: '*.weight')", "wide.bias": "constant (rule 3: '*.bias')",
                    "conv.weight": "constant (rule 1: '*.weight')", "conv.bias": "constant (rule 3: '*.bias')"}
    net = Net()
    bias_before = net.conv.bias.detach().clone()
    done = apply_init(net, [{"match": "*.weight", "init": "zeros"}])
    assert set(done) == {"fc.weight", "wide.weight", "conv.weight"}
    assert torch.equal(net.conv.bias.detach(), bias_before)


def test_a_pattern_matching_nothing_is_an_error_and_nothing_changes():
    net = Net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with pytest.raises(ValueError, match=r"rule 1.*`fc.weigth` matches no parameter.*fc\.weight"):
        apply_init(net, [{"match": "*.bias", "init": "zeros"}, {"match": "fc.weigth", "init": "zeros"}])
    assert all(torch.equal(p.detach(), before[n]) for n, p in net.named_parameters())


def test_a_rule_shadowed_by_earlier_rules_is_an_error():
    with pytest.raises(ValueError, match=r"rule 1.*already set by rule\(s\) 0.*first matching rule wins"):
        apply_init(Net(), [{"match": "*", "init": "zeros"}, {"match": "*.bias", "init": "constant", "value": 1.0}])


def test_seed_gives_per_parameter_reproducible_values():
    """The same seed gives the same values; a parameter's values do not depend on the other rules."""
    a, b, c = Net(), Net(), Net()
    apply_init(a, [{"match": "*.weight", "init": "xavier_normal"}], seed=7)
    apply_init(b, [{"match": "conv.weight", "init": "zeros"}, {"match": "*.weight", "init": "xavier_normal"}], seed=7)
    apply_init(c, [{"match": "*.weight", "init": "xavier_normal"}], seed=8)
    assert torch.equal(a.fc.weight, b.fc.weight) and torch.equal(a.wide.weight, b.wide.weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)
    assert not torch.equal(a.fc.weight[:256, :256], a.wide.weight[:, :256])


def test_float64_parameters_and_shapes_without_fans():
    lin = nn.Linear(512, 512).double()
    apply_init(lin, [{"match": "weight", "init": "kaiming_normal"}], seed=0)
    assert lin.weight.dtype == torch.float64
    check_std(lin.weight, math.sqrt(2 / 512))
    with pytest.raises(ValueError, match=r"xavier_uniform.*2 dimensions.*`bias`"):
        apply_init(nn.Linear(3, 3), [{"match": "bias", "init": "xavier_uniform"}])


@pytest.mark.parametrize("rule, match", [
    ({"match": "*", "init": "he_normal"}, r"unknown initialiser 'he_normal'.*kaiming_normal"),
    ({"match": "*", "init": "normal", "sigma": 0.1}, r"`sigma`.*allowed: match, init, mean, std"),
    ({"match": "*", "init": "constant"}, r"needs `value`"),
    ({"match": "*", "init": "kaiming_normal", "mode": "fan_avg"}, r"`mode`"),
    ({"match": "*", "init": "kaiming_normal", "nonlinearity": "gelu"}, r"`nonlinearity`"),
    ({"match": "*", "init": "kaiming_normal", "a": 0.1}, r"leaky_relu"),
    ({"match": "*", "init": "normal", "std": "big"}, r"`std`.*number"),
    ({"match": "*", "init": "uniform", "low": 1.0, "high": 0.0}, r"`low`"),
    ({"init": "zeros"}, r"no `match`"),
])
def test_bad_rules_are_value_errors(rule, match):
    with pytest.raises(ValueError, match=match):
        apply_init(nn.Linear(2, 2), [rule])


def test_table():
    wanted = {"xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "normal", "uniform",
              "identity", "orthogonal", "zeros", "constant"}
    assert wanted == set(INITS)
    for keys in INITS.values():
        assert "match" not in keys and "init" not in keys
        assert all(isinstance(v, tuple) and len(v) == 2 for v in keys.values())
