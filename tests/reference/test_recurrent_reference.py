"""Recurrent specs (`scan`) against PyTorch's own recurrent layers and against hand-written loops.

  (a) specs/lstm.nn (LSTM, LSTMStacked) vs torch.nn.LSTM(batch_first=True) with the same weights:
      outputs, final h and c, and the gradients of every parameter and of the input, in float64;
  (b) specs/rnn_vanilla.nn (many-to-one, many-to-many; with and without bias; with a learned initial state)
      vs torch.nn.RNN(nonlinearity='tanh') followed by a linear W_hy, the same way (the loss included);
  (c) the one-to-many variant (scan with steps=N, no input sequence): its length follows N, and its values
      are those of the autoregressive loop h_i = tanh(W_xh y_{i-1} + W_hh h_{i-1}), y_i = W_hy h_i;
  (d) reverse=true runs the recurrence from the last step to the first and returns the outputs in the
      original order (manual loop; torch on the flipped sequence), also over axis 0;
  and std/rnn.nn's GRUCell vs torch.nn.GRU.

Every comparison is float64 with max abs difference <= 1e-5 (the actual differences are ~1e-15).
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import nnspec

SPECS = Path(__file__).resolve().parents[2] / "specs"
LSTM_SPEC = str(SPECS / "lstm.nn")
RNN_SPEC = str(SPECS / "rnn_vanilla.nn")
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (tests/conftest.py)


def _close(a, b, what):
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= TOL, f"{what}: max abs diff {diff:.3e} > {TOL}"


def _build(spec, model, params=None):
    torch.manual_seed(0)
    net = nnspec.compile(spec, params=params, model=model)().double()
    return net


def _copy_cell(cell, ref, suffix):
    """Copy torch's weight_ih_<suffix> / weight_hh_<suffix> (and biases) into a spec cell's ih / hh linears."""
    with torch.no_grad():
        cell.ih.weight.copy_(getattr(ref, f"weight_ih_{suffix}"))
        cell.hh.weight.copy_(getattr(ref, f"weight_hh_{suffix}"))
        if ref.bias:
            cell.ih.bias.copy_(getattr(ref, f"bias_ih_{suffix}"))
            cell.hh.bias.copy_(getattr(ref, f"bias_hh_{suffix}"))
        else:
            assert cell.ih.bias is None and cell.hh.bias is None


def _pairs_cell(cell, ref, suffix):
    """(name, spec parameter, torch parameter) for one cell."""
    out = [(f"weight_ih_{suffix}", cell.ih.weight, getattr(ref, f"weight_ih_{suffix}")),
           (f"weight_hh_{suffix}", cell.hh.weight, getattr(ref, f"weight_hh_{suffix}"))]
    if ref.bias:
        out += [(f"bias_ih_{suffix}", cell.ih.bias, getattr(ref, f"bias_ih_{suffix}")),
                (f"bias_hh_{suffix}", cell.hh.bias, getattr(ref, f"bias_hh_{suffix}"))]
    return out


def _weighted_sum(tensors, seed):
    """A scalar that depends on every element differently (a plain sum would hide sign/order mistakes)."""
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for t in tensors:
        total = total + (t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
    return total


def _check_grads(pairs, x_a, x_b):
    for name, p_spec, p_ref in pairs:
        assert p_spec.grad is not None, f"{name}: no gradient in the spec module"
        _close(p_spec.grad, p_ref.grad, f"grad of {name}")
    _close(x_a.grad, x_b.grad, "grad of the input")


# ---------------------------------------------------------------------------------------------- (a) LSTM
@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("B", [1, 4])
def test_lstm_matches_torch(T, B):
    net = _build(LSTM_SPEC, "LSTM")
    n_in, H = net.lstm.ih.in_features, net.lstm.hh.in_features
    assert (n_in, H) == (16, 32)
    ref = torch.nn.LSTM(n_in, H, batch_first=True).double()
    _copy_cell(net.lstm, ref, "l0")
    assert sorted(k for k, _ in net.named_parameters()) == ["lstm.hh.bias", "lstm.hh.weight", "lstm.ih.bias",
                                                             "lstm.ih.weight"]
    x = torch.randn(B, T, n_in, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    hs, h_n, c_n = net(xa)
    out_ref, (h_ref, c_ref) = ref(xb)
    _close(hs, out_ref, "sequence of h")
    _close(h_n, h_ref[0], "final h")
    _close(c_n, c_ref[0], "final c")
    _weighted_sum([hs, h_n, c_n], seed=1).backward()
    _weighted_sum([out_ref, h_ref[0], c_ref[0]], seed=1).backward()
    _check_grads(_pairs_cell(net.lstm, ref, "l0"), xa, xb)


def test_lstm_without_bias_matches_torch():
    net = _build(LSTM_SPEC, "LSTM", {"bias": False, "input_size": 3, "hidden_size": 5})
    ref = torch.nn.LSTM(3, 5, bias=False, batch_first=True).double()
    _copy_cell(net.lstm, ref, "l0")
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    hs, h_n, c_n = net(xa)
    out_ref, (h_ref, c_ref) = ref(xb)
    _close(hs, out_ref, "sequence of h")
    _close(c_n, c_ref[0], "final c")
    _weighted_sum([hs, h_n, c_n], seed=2).backward()
    _weighted_sum([out_ref, h_ref[0], c_ref[0]], seed=2).backward()
    _check_grads(_pairs_cell(net.lstm, ref, "l0"), xa, xb)


@pytest.mark.parametrize("T,B", [(2, 3), (5, 1)])
def test_stacked_lstm_matches_torch(T, B):
    net = _build(LSTM_SPEC, "LSTMStacked")
    ref = torch.nn.LSTM(16, 32, num_layers=2, batch_first=True).double()
    pairs = []
    for k in range(2):
        _copy_cell(getattr(net, f"l{k}"), ref, f"l{k}")
        pairs += _pairs_cell(getattr(net, f"l{k}"), ref, f"l{k}")
    x = torch.randn(B, T, 16, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    hs, h_n, c_n = net(xa)
    out_ref, (h_ref, c_ref) = ref(xb)
    _close(hs, out_ref, "last layer's sequence of h")
    _close(h_n, h_ref, "final h of every layer")
    _close(c_n, c_ref, "final c of every layer")
    _weighted_sum([hs, h_n, c_n], seed=3).backward()
    _weighted_sum([out_ref, h_ref, c_ref], seed=3).backward()
    _check_grads(pairs, xa, xb)


def test_lstm_cell_update_is_not_the_seed_formula():
    """Seed 000:571 writes c_t = o_t * c_{t-1} + i_t * b_ho. With zero weights and gate biases i = f^-1 = g = o = +30
    (b_ho = 0), that formula keeps c at 0 forever; the correct c_t = f * c_{t-1} + i * g is 1 at every step."""
    net = _build(LSTM_SPEC, "LSTM", {"input_size": 2, "hidden_size": 3})
    H = 3
    with torch.no_grad():
        for lin in (net.lstm.ih, net.lstm.hh):
            lin.weight.zero_()
            lin.bias.zero_()
        net.lstm.ih.bias[0:H] = 30.0              # i = 1
        net.lstm.ih.bias[H:2 * H] = -30.0         # f = 0
        net.lstm.ih.bias[2 * H:3 * H] = 30.0      # g = 1
        net.lstm.ih.bias[3 * H:] = 30.0           # o = 1 (and b_ho, the hh part, stays 0)
    _, h_n, c_n = net(torch.randn(2, 3, 2, dtype=torch.float64))
    assert (c_n - 1).abs().max().item() < 1e-9, f"c_T = {c_n}, expected f * c + i * g = 1"
    assert (h_n - math.tanh(1.0)).abs().max().item() < 1e-9, "h_T = o * tanh(c_T)"


# ---------------------------------------------------------------------------------------------- (b) vanilla RNN
def _rnn_ref(net, bias, h_init=None):
    n_in, H = net.rnn.ih.in_features, net.rnn.hh.in_features
    ref = torch.nn.RNN(n_in, H, nonlinearity="tanh", bias=bias, batch_first=True).double()
    hy = torch.nn.Linear(H, net.hy.out_features, bias=bias).double()
    _copy_cell(net.rnn, ref, "l0")
    with torch.no_grad():
        hy.weight.copy_(net.hy.weight)
        if bias:
            hy.bias.copy_(net.hy.bias)
    pairs = _pairs_cell(net.rnn, ref, "l0") + [("W_hy", net.hy.weight, hy.weight)]
    if bias:
        pairs.append(("b_hy", net.hy.bias, hy.bias))
    return ref, hy, pairs


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T,B", [(1, 2), (7, 2), (1, 5), (7, 5)])
def test_rnn_many_to_one_matches_torch(T, B, bias):
    net = _build(RNN_SPEC, "RNNManyToOne", {"bias": bias})
    assert (net.rnn.ih.bias is None) == (not bias)
    ref, hy, pairs = _rnn_ref(net, bias)
    x = torch.randn(B, T, net.rnn.ih.in_features, dtype=torch.float64)
    y = torch.randint(0, net.hy.out_features, (B,))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    res = net(xa, y)
    _, h_ref = ref(xb)
    logits_ref = hy(h_ref[0])
    ce_ref = torch.nn.functional.cross_entropy(logits_ref, y)
    _close(res["logits"], logits_ref, "logits = W_hy h_T")
    _close(res["loss"], ce_ref, "loss")
    (res["loss"] + _weighted_sum([res["logits"]], seed=4)).backward()
    (ce_ref + _weighted_sum([logits_ref], seed=4)).backward()
    _check_grads(pairs, xa, xb)


def test_rnn_learned_initial_state_matches_torch():
    net = _build(RNN_SPEC, "RNNManyToOne", {"learn_h0": True})
    with torch.no_grad():
        net.h_init.normal_()
    ref, hy, pairs = _rnn_ref(net, bias=False)
    h_init = net.h_init.detach().clone().requires_grad_()
    B, T = 3, 4
    x = torch.randn(B, T, net.rnn.ih.in_features, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    logits = net(xa)
    _, h_ref = ref(xb, h_init.expand(1, B, -1).contiguous())
    logits_ref = hy(h_ref[0])
    _close(logits, logits_ref, "logits with a learned h0")
    _weighted_sum([logits], seed=5).backward()
    _weighted_sum([logits_ref], seed=5).backward()
    _check_grads(pairs + [("h0", net.h_init, h_init)], xa, xb)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T,B", [(3, 1), (8, 4)])
def test_rnn_many_to_many_matches_torch(T, B, bias):
    net = _build(RNN_SPEC, "RNNManyToMany", {"bias": bias})
    ref, hy, pairs = _rnn_ref(net, bias)
    C = net.hy.out_features
    x = torch.randn(B, T, net.rnn.ih.in_features, dtype=torch.float64)
    y = torch.randint(0, C, (B, T))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    res = net(xa, y)
    hs_ref, _ = ref(xb)
    logits_ref = hy(hs_ref)
    # the notes' per-step losses L_t (cross-entropy over the batch), averaged over t
    ce_ref = sum(torch.nn.functional.cross_entropy(logits_ref[:, t], y[:, t]) for t in range(T)) / T
    _close(res["logits"], logits_ref, "logits y_t = W_hy h_t")
    _close(res["loss"], ce_ref, "loss")
    (res["loss"] + _weighted_sum([res["logits"]], seed=6)).backward()
    (ce_ref + _weighted_sum([logits_ref], seed=6)).backward()
    _check_grads(pairs, xa, xb)


# ---------------------------------------------------------------------------------------------- (c) one-to-many
@pytest.mark.parametrize("steps", [1, 4, 9])
def test_rnn_one_to_many_length_follows_steps(steps):
    net = _build(RNN_SPEC, "RNNOneToMany", {"steps": steps})
    assert f"range({steps})" in net.source_code
    size, H = net.rnn.ih.in_features, net.rnn.hh.in_features
    for B in (1, 3):
        x = torch.randn(B, size, dtype=torch.float64, requires_grad=True)
        target = torch.randn(B, steps, size, dtype=torch.float64)
        res = net(x, target)
        ys = res["ys"]
        assert ys.shape == (B, steps, size)
        # the autoregressive loop of 002:1605-1609: only the first step sees x
        h = torch.zeros(B, H, dtype=torch.float64)
        y, outs = x, []
        for _ in range(steps):
            h = torch.tanh(y @ net.rnn.ih.weight.T + h @ net.rnn.hh.weight.T)
            y = h @ net.rnn.hy.weight.T
            outs.append(y)
        _close(ys, torch.stack(outs, dim=1), f"one-to-many outputs, steps={steps}, B={B}")
        _close(res["loss"], torch.nn.functional.mse_loss(ys, target), "mse")
        res["loss"].backward()
        assert torch.isfinite(x.grad).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
        net.zero_grad()


# ---------------------------------------------------------------------------------------------- (d) reverse
REVERSE_SPEC = """
import "std/rnn.nn"

model RevLSTM(reverse: bool = true) {
    input x: f32[B, T, 5]
    let cell = LSTMCell(7)
    hs, h_n, c_n = scan(cell, x, zeros([B, 7]), zeros([B, 7]), axis=1, reverse=reverse)
    output hs, h_n, c_n
}

model RevRNNTimeMajor(reverse: bool = true) {
    input x: f32[T, B, 4]
    let cell = RNNCell(6)
    hs, h_n = scan(cell, x, zeros([B, 6]), axis=0, reverse=reverse)
    output hs, h_n
}
"""


@pytest.fixture(scope="module")
def reverse_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("rev") / "rev.nn"
    path.write_text(REVERSE_SPEC)
    return str(path)


def _lstm_step(cell, x_t, h, c):
    gates = x_t @ cell.ih.weight.T + cell.ih.bias + h @ cell.hh.weight.T + cell.hh.bias
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@pytest.mark.parametrize("T,B", [(1, 2), (6, 3)])
def test_reverse_lstm_is_the_reversed_loop(reverse_spec, T, B):
    net = _build(reverse_spec, "RevLSTM")
    assert "reversed(range(" in net.source_code
    ref = torch.nn.LSTM(5, 7, batch_first=True).double()
    _copy_cell(net.cell, ref, "l0")
    x = torch.randn(B, T, 5, dtype=torch.float64)
    hs, h_n, c_n = net(x)
    # manual loop from the last step to the first; outputs stay at their own time index
    h = c = torch.zeros(B, 7, dtype=torch.float64)
    outs = [None] * T
    for t in reversed(range(T)):
        h, c = _lstm_step(net.cell, x[:, t], h, c)
        outs[t] = h
    _close(hs, torch.stack(outs, dim=1), "reversed sequence of h")
    _close(h_n, h, "final h (after step 0)")
    _close(c_n, c, "final c (after step 0)")
    # the same as torch's LSTM run on the flipped sequence, flipped back
    out_ref, (h_ref, _) = ref(x.flip(1))
    _close(hs, out_ref.flip(1), "torch LSTM on the flipped sequence")
    _close(h_n, h_ref[0], "torch final h")
    # and reverse=false is the forward loop, which differs when T > 1
    fwd = _build(reverse_spec, "RevLSTM", {"reverse": False})
    fwd.load_state_dict(net.state_dict())
    hs_f, _, _ = fwd(x)
    _close(hs_f, ref(x)[0], "forward scan")
    if T > 1:
        assert (hs_f - hs).abs().max().item() > 1e-3


def test_reverse_rnn_over_axis_0(reverse_spec):
    net = _build(reverse_spec, "RevRNNTimeMajor")
    T, B = 5, 2
    x = torch.randn(T, B, 4, dtype=torch.float64, requires_grad=True)
    hs, h_n = net(x)
    assert hs.shape == (T, B, 6)
    h = torch.zeros(B, 6, dtype=torch.float64)
    outs = [None] * T
    xm = x.detach().clone().requires_grad_()
    for t in reversed(range(T)):
        h = torch.tanh(xm[t] @ net.cell.ih.weight.T + net.cell.ih.bias + h @ net.cell.hh.weight.T + net.cell.hh.bias)
        outs[t] = h
    ref = torch.stack(outs, dim=0)
    _close(hs, ref, "reversed time-major RNN")
    _close(h_n, h, "final h")
    _weighted_sum([hs], seed=7).backward()
    _weighted_sum([ref], seed=7).backward()
    _close(x.grad, xm.grad, "grad of the input")


# ---------------------------------------------------------------------------------------------- GRUCell
GRU_SPEC = """
import "std/rnn.nn"

model GRU(bias: bool = true) {
    input x: f32[B, T, 6]
    let gru = GRUCell(9, bias=bias)
    hs, h_n = scan(gru, x, zeros([B, 9]), axis=1)
    output hs, h_n
}
"""


@pytest.mark.parametrize("bias", [True, False])
def test_std_gru_cell_matches_torch(tmp_path, bias):
    path = tmp_path / "gru.nn"
    path.write_text(GRU_SPEC)
    net = _build(str(path), "GRU", {"bias": bias})
    ref = torch.nn.GRU(6, 9, bias=bias, batch_first=True).double()
    _copy_cell(net.gru, ref, "l0")
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    hs, h_n = net(xa)
    out_ref, h_ref = ref(xb)
    _close(hs, out_ref, "GRU sequence of h")
    _close(h_n, h_ref[0], "GRU final h")
    _weighted_sum([hs, h_n], seed=8).backward()
    _weighted_sum([out_ref, h_ref[0]], seed=8).backward()
    _check_grads(_pairs_cell(net.gru, ref, "l0"), xa, xb)
