"""Optimizers against hand computations of their update rules (runtime/optim.py).

Each test runs 3 steps on a 3-element float64 tensor with known gradients and compares every iterate
with the formula written out here from the notes (001 = seeds/001_*.txt) or the paper, never by calling
torch's implementation. Where the notes are wrong, the docstring says so and the test uses the correct
formula (and, where useful, shows that the notes' version gives something else).
"""
import copy
import io
import math

import numpy as np
import pytest
import torch

from nnspec.runtime.optim import OPTIMIZERS, build_optimizer

W0 = [1.0, -2.0, 0.5]
GRADS = [[0.5, -1.0, 2.0], [0.3, 0.4, -1.5], [-0.2, 0.8, 1.0]]


def run(cfg, grads=GRADS, w0=W0):
    """Iterates of the optimizer `cfg` fed the gradients `grads` (one step each)."""
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = build_optimizer([p], cfg)
    out = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out), opt


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_sgd_delta_rule_and_weight_decay():
    """w <- w - eta dL/dw: 004:232-235 (GD), 004:344-351 (mini-batch SGD), 000:9 (the delta rule).
    weight_decay adds lambda*w to the gradient (L2 penalty lambda/2 |w|^2, 001:1507-1510)."""
    eta, lam = 0.1, 0.01
    got, _ = run({"name": "sgd", "lr": eta})
    w, want = np.array(W0), []
    for g in GRADS:
        w = w - eta * np.array(g)
        want.append(w)
    close(got, want)
    got, _ = run({"name": "sgd", "lr": eta, "weight_decay": lam})
    w, want = np.array(W0), []
    for g in GRADS:
        w = w - eta * (np.array(g) + lam * w)
        want.append(w)
    close(got, want)


def test_momentum_notes_formula_with_the_sign_corrected():
    """001:760-777: p_{k+1} = beta p_k + eta grad L(w_k);  w_{k+1} = w_k + gamma p_{k+1}.
    Mistakes of the notes: the update must SUBTRACT gamma p (as written it climbs the loss, checked
    below), and eta and gamma are both called "the learning rate" although they multiply (gamma = 1 here);
    beta is also called the "dampening" factor, which in torch names a different knob (not exposed).
    Implemented by torch.optim.SGD(momentum=beta): p <- beta p + g, w <- w - eta p, which is the notes'
    recursion with p scaled by eta (identical while eta is constant)."""
    eta, beta = 0.1, 0.9
    got, _ = run({"name": "momentum", "lr": eta, "momentum": beta})
    w, p, want = np.array(W0), np.zeros(3), []
    for g in GRADS:
        p = beta * p + eta * np.array(g)
        w = w - p
        want.append(w)
    close(got, want)
    # the notes' literal sign on L(w) = |w|^2 / 2 (gradient w): the loss grows; the corrected rule shrinks it
    for sign, grows in ((+1, True), (-1, False)):
        w, p = np.array(W0), np.zeros(3)
        for _ in range(3):
            p = beta * p + eta * w
            w = w + sign * p
        assert (w @ w > np.array(W0) @ np.array(W0)) == grows
    # `sgd` with a momentum key is the same optimizer
    close(run({"name": "sgd", "lr": eta, "momentum": beta})[0], want)


def test_heavy_ball_polyak_form():
    """001:786-794: w_{k+1} = w_k - gamma grad L(w_k) + beta (w_k - w_{k-1}), 0 <= beta < 1 (w_{-1} = w_0).
    With a constant gamma its iterates equal momentum's; after an lr change they differ (the heavy ball
    keeps the size of past steps, torch's momentum rescales the whole velocity)."""
    gamma, beta = 0.1, 0.8
    got, _ = run({"name": "heavy_ball", "lr": gamma, "momentum": beta})
    w, w_prev, want = np.array(W0), np.array(W0), []
    for g in GRADS:
        w, w_prev = w - gamma * np.array(g) + beta * (w - w_prev), w
        want.append(w)
    close(got, want)
    close(run({"name": "momentum", "lr": gamma, "momentum": beta})[0], want)

    def with_lr_drop(name):
        p = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
        opt = build_optimizer([p], {"name": name, "lr": gamma, "momentum": beta})
        for k, g in enumerate(GRADS):
            opt.param_groups[0]["lr"] = gamma if k < 2 else gamma / 10
            p.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        return p.detach().numpy()

    w, w_prev = np.array(W0), np.array(W0)
    for k, g in enumerate(GRADS):
        lr = gamma if k < 2 else gamma / 10
        w, w_prev = w - lr * np.array(g) + beta * (w - w_prev), w
    close(with_lr_drop("heavy_ball"), w)
    assert not np.allclose(with_lr_drop("momentum"), w)


def test_nesterov_notes_formula_in_the_look_ahead_variable():
    """001:803-825 (NAG): w^_k = w_k - beta p_k;  p_{k+1} = beta p_k + eta grad L(w^_k);  w_{k+1} = w_k - p_{k+1}
    (gamma = 1). The gradient is taken at the look-ahead point, so the test uses a real loss
    L(w) = sum(a w^2 / 2 + c w) with grad a w + c. torch.optim.SGD(nesterov=True) keeps the look-ahead
    point theta_k = w_k - beta p_k as the parameter (Sutskever et al. 2013's reformulation): its iterates
    must equal w_k - beta p_k of the notes' recursion."""
    eta, beta = 0.05, 0.9
    a, c = np.array([1.0, 4.0, 0.5]), np.array([0.3, -0.2, 1.0])
    p_t = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = build_optimizer([p_t], {"name": "nesterov", "lr": eta, "momentum": beta})
    w, p = np.array(W0), np.zeros(3)
    for _ in range(3):
        loss = (torch.tensor(a) * p_t ** 2 / 2 + torch.tensor(c) * p_t).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        w_hat = w - beta * p
        p = beta * p + eta * (a * w_hat + c)
        w = w - p
        close(p_t.detach().numpy(), w - beta * p)


def test_local_gains_adaptive_learning_rates():
    """001:833-865: delta w_ij = -eps g_ij dE/dw_ij; gains start at 1; g_ij(t) = g_ij(t-1) + 0.05 if
    dE/dw(t) dE/dw(t-1) > 0 else g_ij(t-1) * 0.95; limit the gains to a range such as [0.1, 10].
    Gradient signs (+,+,-), (-,+,+), (+,-,+): the gains go 1 -> (1.05, .95, .95) -> (.9975, 1.0, .9025)."""
    eps = 0.1

    def hand(lo, hi, mu=0.0):
        w, gains, prev, v, out = np.array(W0), np.ones(3), None, np.zeros(3), []
        for g in map(np.array, GRADS):
            if prev is not None:
                gains = np.clip(np.where(g * prev > 0, gains + 0.05, gains * 0.95), lo, hi)
            v = mu * v - eps * gains * g
            w = w + v
            prev = g
            out.append(w)
        return np.array(out), gains

    got, opt = run({"name": "local_gains", "lr": eps})
    want, gains = hand(0.1, 10.0)
    close(got, want)
    close(gains, [1.05 * 0.95, 0.95 + 0.05, 0.95 * 0.95])
    close(next(iter(opt.state.values()))["gains"].numpy(), gains)
    got, opt = run({"name": "local_gains", "lr": eps, "gain_min": 0.96, "gain_max": 1.02})
    want, gains = hand(0.96, 1.02)
    close(got, want)
    close(gains, [1.02 * 0.95, 0.96 + 0.05, 0.96])
    got, _ = run({"name": "local_gains", "lr": eps, "momentum": 0.5})  # "combine it with momentum"
    close(got, hand(0.1, 10.0, 0.5)[0])


def test_rprop_sign_based_steps():
    """001:869-892 (algorithm figure missing; Riedmiller & Braun 1993, the iRprop- variant of torch):
    per weight, same gradient sign as last step -> step *= eta+ (at most Gamma_max); sign flip ->
    step *= eta- (at least Gamma_min) and the gradient is set to 0 (no move now, and the next step takes
    the third branch: product 0, step unchanged); then w -= sign(g) * step. lr is the initial step."""
    lr, etas, sizes = 0.01, (0.5, 1.2), (1e-3, 0.0125)
    grads = [[0.5, -1.0, 2.0], [0.3, 0.4, -1.5], [0.2, 0.8, 1.0]]
    got, _ = run({"name": "rprop", "lr": lr, "etas": list(etas), "step_sizes": list(sizes)}, grads)
    w, step, prev, want = list(W0), [lr] * 3, [0.0] * 3, []
    for g in grads:
        g = list(g)
        for i in range(3):
            if g[i] * prev[i] > 0:
                step[i] = min(step[i] * etas[1], sizes[1])
            elif g[i] * prev[i] < 0:
                step[i] = max(step[i] * etas[0], sizes[0])
                g[i] = 0.0
            w[i] -= math.copysign(step[i], g[i]) if g[i] != 0 else 0.0
            prev[i] = g[i]
        want.append(list(w))
    close(got, want)
    # the same three steps by hand: weight 0 grows its step up to the cap, weights 1 and 2 flip once
    close(got[-1], [1 - 0.01 - 0.012 - 0.0125, -2 + 0.01 + 0 - 0.005, 0.5 - 0.01 + 0 - 0.005])


def test_rprop_minibatch_counterexample_of_the_notes():
    """001:887-892: nine mini-batches give +0.1, the tenth -0.9: the weight should stay where it is
    (the gradients sum to 0, so SGD comes back exactly) but rprop moves it far in one direction."""
    grads = [[0.1]] * 9 + [[-0.9]]
    sgd, _ = run({"name": "sgd", "lr": 0.01}, grads, [0.0])
    rprop, _ = run({"name": "rprop", "lr": 0.01}, grads, [0.0])
    assert abs(sgd[-1][0]) < 1e-12
    assert rprop[-1][0] < -0.1  # nine growing steps down, one step back up


def test_rmsprop():
    """001:893-907 (the torch algorithm figure is missing): v_t = alpha v_{t-1} + (1 - alpha) g_t^2 (alpha = 0.99
    gives v_t = 0.99 v_{t-1} + 0.01 g_t^2); w <- w - eta g_t / (sqrt(v_t) + eps). A large eps pins its place."""
    eta, alpha, eps = 0.01, 0.9, 1e-2
    got, _ = run({"name": "rmsprop", "lr": eta, "alpha": alpha, "eps": eps})
    w, v, want = np.array(W0), np.zeros(3), []
    for g in map(np.array, GRADS):
        v = alpha * v + (1 - alpha) * g ** 2
        w = w - eta * g / (np.sqrt(v) + eps)
        want.append(w)
    close(got, want)


def test_adagrad():
    """001:932-950: theta_{t+1} = theta_t - eta / sqrt(G_t + eps) g_t, G_t the sum of the squared gradients.
    The notes (after Ruder's overview) put eps inside the root; torch and Duchi et al. 2011 add it to the
    root: g / (sqrt(G) + eps). We keep torch's rule; the difference only shows when G ~ eps, so a large
    eps here tells the two apart. lr_decay: eta_t = eta / (1 + (t - 1) lr_decay)."""
    eta, eps = 0.1, 0.1
    got, _ = run({"name": "adagrad", "lr": eta, "eps": eps})
    w, G, want, notes = np.array(W0), np.zeros(3), [], np.array(W0)
    for g in map(np.array, GRADS):
        G = G + g ** 2
        w = w - eta * g / (np.sqrt(G) + eps)
        notes = notes - eta * g / np.sqrt(G + eps)
        want.append(w)
    close(got, want)
    assert not np.allclose(got[-1], notes, rtol=1e-6, atol=1e-6)
    got, _ = run({"name": "adagrad", "lr": eta, "eps": eps, "lr_decay": 0.5})
    w, G, want = np.array(W0), np.zeros(3), []
    for t, g in enumerate(map(np.array, GRADS), start=1):
        G = G + g ** 2
        w = w - eta / (1 + (t - 1) * 0.5) * g / (np.sqrt(G) + eps)
        want.append(w)
    close(got, want)


def test_adadelta():
    """001:951-979: E[g^2]_t = gamma E[g^2]_{t-1} + (1 - gamma) g_t^2;  E[dtheta^2]_t likewise with the update;
    theta_{t+1} = theta_t - RMS[dtheta]_{t-1} / RMS[g]_t * g_t, RMS[x] = sqrt(E[x^2] + eps) (Zeiler 2012).
    The notes leave their subscripts unsettled (a to-do note at 001:977 says so): the update uses the
    E[dtheta^2] of the PREVIOUS step, then accumulates its own square. torch scales the step by lr
    (1.0 = Zeiler's rule, the default); lr 0.5 is checked too."""
    for eta in (1.0, 0.5):
        rho, eps = 0.9, 1e-6
        cfg = {"name": "adadelta", "rho": rho, "eps": eps} | ({} if eta == 1.0 else {"lr": eta})
        got, _ = run(cfg)
        w, Eg, Ed, want = np.array(W0), np.zeros(3), np.zeros(3), []
        for g in map(np.array, GRADS):
            Eg = rho * Eg + (1 - rho) * g ** 2
            d = np.sqrt(Ed + eps) / np.sqrt(Eg + eps) * g
            Ed = rho * Ed + (1 - rho) * d ** 2
            w = w - eta * d
            want.append(w)
        close(got, want)


def _adam_hand(eta, b1, b2, eps, lam=0.0, decoupled=False, v_coef=None):
    """Kingma & Ba's Adam (+ L2 inside the gradient, or AdamW's decoupled decay)."""
    w, m, v, out = np.array(W0), np.zeros(3), np.zeros(3), []
    for t, g in enumerate(map(np.array, GRADS), start=1):
        if lam and not decoupled:
            g = g + lam * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2 if v_coef is None else v_coef) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        w = w - (eta * lam * w if decoupled else 0.0) - eta * m_hat / (np.sqrt(v_hat) + eps)
        out.append(w)
    return np.array(out)


def test_adam_with_the_second_moment_corrected():
    """001:980-1026: m_t = b1 m_{t-1} + (1 - b1) g_t;  v_t = b2 v_{t-1} + (1 - b1) g_t^2  <- MISTAKE of the
    notes (001:988): the second moment's weight is (1 - b2) (Kingma & Ba 2015, Algorithm 1), used here;
    m^ = m / (1 - b1^t), v^ = v / (1 - b2^t);  theta <- theta - eta m^ / (sqrt(v^) + eps) (001:1010; 001:1013
    then writes sqrt(v^ + eps), another placement). 001:1014-1015 also say v^ -> 0 for both stable and
    changing gradients (changing gradients make v^ large, hence smaller steps). The notes' (1 - b1) would
    give other iterates, checked below. weight_decay adds lambda w to g (the "Adam + L2" of 001:1036-1042)."""
    eta, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    got, _ = run({"name": "adam", "lr": eta, "betas": [b1, b2], "eps": eps})
    close(got, _adam_hand(eta, b1, b2, eps))
    assert not np.allclose(got, _adam_hand(eta, b1, b2, eps, v_coef=1 - b1), rtol=1e-4, atol=1e-6)
    got, _ = run({"name": "adam", "lr": eta, "betas": [0.8, 0.9], "eps": 1e-3, "weight_decay": 0.1})
    close(got, _adam_hand(eta, 0.8, 0.9, 1e-3, lam=0.1))


def test_adamw_decoupled_weight_decay():
    """001:1027-1054: AdamW takes the decay out of the adaptive step:
    theta_t = theta_{t-1} - (alpha m^_t / (sqrt(v^_t) + eps) + w theta_{t-1}) (Loshchilov & Hutter 2019,
    Algorithm 2 with schedule multiplier 1), whereas Adam + L2 puts w theta inside the gradient and divides
    it by sqrt(v). torch (and this runtime) scale the decay by the lr: the notes' w is lr * weight_decay.
    The notes' expansion also drops the bias corrections of m and v (the paper has m^ and v^)."""
    eta, b1, b2, eps, lam = 0.01, 0.9, 0.999, 1e-8, 0.1
    got, _ = run({"name": "adamw", "lr": eta, "betas": [b1, b2], "eps": eps, "weight_decay": lam})
    close(got, _adam_hand(eta, b1, b2, eps, lam=lam, decoupled=True))
    assert not np.allclose(got, _adam_hand(eta, b1, b2, eps, lam=lam), rtol=1e-6, atol=1e-8)
    # without decay AdamW is Adam
    close(run({"name": "adamw", "lr": eta, "weight_decay": 0.0})[0], _adam_hand(eta, 0.9, 0.999, 1e-8))


def test_lion():
    """Lion (Chen et al. 2023, arXiv:2302.06675, Algorithm 2); the notes (001:1055-1072) describe its discovery
    but give no rule: c = b1 m + (1 - b1) g;  theta <- theta - eta (sign(c) + lambda theta);
    m <- b2 m + (1 - b2) g. Without decay every coordinate moves by exactly eta ("the same magnitude for
    each parameter", 001:1059)."""
    eta, b1, b2 = 0.01, 0.9, 0.99
    for lam in (0.0, 0.5):
        got, _ = run({"name": "lion", "lr": eta, "betas": [b1, b2], "weight_decay": lam})
        w, m, want = np.array(W0), np.zeros(3), []
        for g in map(np.array, GRADS):
            c = b1 * m + (1 - b1) * g
            w = w - eta * (np.sign(c) + lam * w)
            m = b2 * m + (1 - b2) * g
            want.append(w)
        close(got, want)
        if lam == 0.0:
            close(np.abs(np.diff(np.vstack([W0, got]), axis=0)), np.full((3, 3), eta))


ACTIVE = {  # options that give every optimizer some state to carry
    "sgd": {"momentum": 0.9, "weight_decay": 0.01}, "momentum": {}, "nesterov": {}, "heavy_ball": {},
    "local_gains": {"momentum": 0.5}, "adagrad": {"lr_decay": 0.1}, "rmsprop": {"momentum": 0.5, "centered": True},
    "adadelta": {}, "adam": {"amsgrad": True}, "adamw": {}, "rprop": {}, "lion": {"weight_decay": 0.1},
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_round_trip_continues_identically(name):
    """Two steps, save (through torch.save), load into a fresh optimizer on a copy of the weights, one more
    step: the same weights as three uninterrupted steps."""
    cfg = {"name": name, **ACTIVE[name]}
    full, _ = run(cfg)
    p = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = build_optimizer([p], cfg)
    for g in GRADS[:2]:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    q = torch.nn.Parameter(p.detach().clone())
    fresh = build_optimizer([q], cfg)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    q.grad = torch.tensor(GRADS[2], dtype=torch.float64)
    fresh.step()
    close(q.detach().numpy(), full[-1])


def test_the_table_has_the_issue_optimizers_and_valid_defaults():
    wanted = {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "rprop", "lion"}
    assert wanted <= set(OPTIMIZERS)
    for name, (factory, allowed) in OPTIMIZERS.items():
        assert callable(factory) and "lr" in allowed
        for key, (typ, default) in allowed.items():
            assert typ in (float, bool, tuple), (name, key)
            assert isinstance(default, typ), (name, key)
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], {"name": name})
        assert isinstance(opt, torch.optim.Optimizer)
        assert opt.param_groups[0]["lr"] == allowed["lr"][1]


def test_unknown_key_names_the_key_and_the_allowed_ones():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"`beta1`.*`adam`.*allowed: lr, betas, eps, weight_decay, amsgrad"):
        build_optimizer(p, {"name": "adam", "lr": 1e-3, "beta1": 0.9})
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamm'.*adamw"):
        build_optimizer(p, {"name": "adamm"})
    with pytest.raises(ValueError, match="momentum"):
        build_optimizer(p, {"name": "adagrad", "momentum": 0.9})


@pytest.mark.parametrize("cfg, match", [
    ({"name": "adam", "betas": 0.9}, "betas"),
    ({"name": "adam", "betas": [0.9, 0.99, 0.5]}, "betas"),
    ({"name": "sgd", "lr": "fast"}, "lr"),
    ({"name": "sgd", "lr": True}, "lr"),
    ({"name": "sgd", "nesterov": 1}, "nesterov"),
    ({"name": "nesterov", "momentum": 0.0}, "momentum"),
    ({"name": "lion", "betas": [1.5, 0.9]}, "betas"),
    ({"name": "heavy_ball", "momentum": 1.0}, "momentum"),
    ({"name": "local_gains", "gain_min": 2.0}, "gain"),
    ({"name": "rprop", "etas": [1.2, 0.5]}, "etas"),
    ({"name": "adam", "lr": float("nan")}, "finite"),
])
def test_bad_values_are_value_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)


@pytest.mark.parametrize("name", ["adamw", "lion", "heavy_ball", "local_gains", "sgd"])
def test_a_group_without_weight_decay(name):
    """The trainer exempts some parameters from decay with a group {"params": [...], "weight_decay": 0.0}:
    with a zero gradient a decayed weight shrinks, the exempt one stays."""
    a = torch.nn.Parameter(torch.ones(2))
    b = torch.nn.Parameter(torch.ones(2))
    opt = build_optimizer([{"params": [a]}, {"params": [b], "weight_decay": 0.0}],
                          {"name": name, "lr": 0.1, "weight_decay": 0.5})
    a.grad, b.grad = torch.zeros(2), torch.zeros(2)
    opt.step()
    assert torch.all(a < 1.0)
    assert torch.equal(b.detach(), torch.ones(2))


@pytest.mark.parametrize("name", ["heavy_ball", "local_gains", "lion"])
def test_own_optimizers_skip_gradless_params_and_run_closures(name):
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([3.0]))
    opt = build_optimizer([a, b], {"name": name, "lr": 0.1})

    def closure():
        opt.zero_grad()
        loss = (a ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == pytest.approx(5.0)
    assert b.grad is None and float(b.detach()) == 3.0
    assert torch.all(a.detach() < torch.tensor([1.0, 2.0]))
    before = copy.deepcopy(opt.state_dict())
    assert before["state"]  # state is kept for the updated parameter only
    assert len(before["state"]) == 1
