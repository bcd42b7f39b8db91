"""Learning-rate schedules (runtime/schedules.py): the lr of every optimizer step against the formula.

Notes 001:637-672 name step decay (a factor every N epochs), time-based decay (a linear or exponential
function of the epoch), decrease on plateaus and cyclic learning rates, without formulas (the figures are
missing); the formulas below are the usual ones (Keras' time-based decay, Smith 2017's triangular CLR,
Loshchilov & Hutter's cosine annealing, torch's ReduceLROnPlateau rule). t counts the optimizer steps
taken: lr(t) is the lr of step t+1; e = t // steps_per_epoch.
"""
import copy
import io
import math

import pytest
import torch

from nnspec.runtime.schedules import SCHEDULES, build_schedule

BASE = 0.1


def lrs(cfg, n, spe=4, total=None, metrics=None, bases=(BASE,)):
    """The lr of each of n optimizer steps (one list per group when there are several groups)."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in bases]
    opt = torch.optim.SGD([{"params": [p], "lr": b} for p, b in zip(params, bases)], lr=BASE)
    sched = build_schedule(opt, cfg, spe, total or n)
    out = []
    for t in range(n):
        now = [g["lr"] for g in opt.param_groups]
        assert sched.last_lr == now
        out.append(now if len(bases) > 1 else now[0])
        opt.step()
        sched.step((metrics or {}).get(t))
    return out


def close(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == pytest.approx(y, rel=1e-12, abs=1e-15), f"step {i}: {x} != {y}"


def test_constant_and_none():
    close(lrs(None, 10), [BASE] * 10)
    close(lrs({"name": "constant"}, 10), [BASE] * 10)


def test_step_decay_every_n_epochs():
    """001:658-659: drop the lr by a factor every N epochs: b * gamma^floor(e / N)."""
    close(lrs({"name": "step", "step_size": 2, "gamma": 0.5}, 26, spe=4),
          [BASE * 0.5 ** ((t // 4) // 2) for t in range(26)])
    close(lrs({"name": "step", "step_size": 3, "gamma": 0.5, "unit": "step"}, 10),
          [BASE * 0.5 ** (t // 3) for t in range(10)])
    close(lrs({"name": "step", "milestones": [1, 3], "gamma": 0.1}, 20, spe=4),
          [BASE * 0.1 ** ((t // 4 >= 1) + (t // 4 >= 3)) for t in range(20)])


def test_exponential_and_time_based_decay():
    """001:660-663, a function of the epoch: exponential b * gamma^e; time-based (Keras) b / (1 + decay * e)."""
    close(lrs({"name": "exponential", "gamma": 0.9}, 17, spe=4), [BASE * 0.9 ** (t // 4) for t in range(17)])
    close(lrs({"name": "exponential", "gamma": 0.9, "unit": "step"}, 6), [BASE * 0.9 ** t for t in range(6)])
    close(lrs({"name": "time_based", "decay": 0.5}, 17, spe=4), [BASE / (1 + 0.5 * (t // 4)) for t in range(17)])


def test_linear_decay():
    """Linear annealing (001:660-663): from b to min_lr over the run, b + (min_lr - b) t / T."""
    close(lrs({"name": "linear_decay", "min_lr": 0.01}, 10, total=10),
          [BASE + (0.01 - BASE) * t / 10 for t in range(10)])


def test_cosine_and_warmup_cosine():
    """Cosine annealing: min_lr + (b - min_lr)(1 + cos(pi t / T)) / 2 (Loshchilov & Hutter 2017, one cycle).
    With W warm-up steps: (t+1)/W * b for t < W, then the cosine over the remaining T - W steps."""
    mn = 0.001
    close(lrs({"name": "cosine", "min_lr": mn}, 12),
          [mn + (BASE - mn) * (1 + math.cos(math.pi * t / 12)) / 2 for t in range(12)])
    want = [BASE * (t + 1) / 3 if t < 3 else mn + (BASE - mn) * (1 + math.cos(math.pi * (t - 3) / 10)) / 2
            for t in range(13)]
    close(lrs({"name": "warmup_cosine", "min_lr": mn, "warmup_steps": 3}, 13), want)
    close(lrs({"name": "cosine", "min_lr": mn, "warmup_steps": 3}, 13), want)
    got = lrs({"name": "warmup_cosine"}, 100)  # default warm-up: 5% of the steps
    close(got[:6], [BASE * (t + 1) / 5 for t in range(5)] + [BASE])
    assert got[-1] < 1e-3 * BASE


def test_linear_warmup_and_warmup_on_other_schedules():
    """Linear warm-up: (t+1)/W * b for the first W steps, then the schedule's own lr (its clock from step 0)."""
    close(lrs({"name": "linear_warmup", "warmup_steps": 4}, 8), [BASE * min(1, (t + 1) / 4) for t in range(8)])
    close(lrs({"name": "step", "step_size": 1, "gamma": 0.5, "warmup_steps": 6}, 12, spe=4),
          [min(1, (t + 1) / 6) * BASE * 0.5 ** (t // 4) for t in range(12)])


def test_cyclic_triangular_smith():
    """001:670-672 (figure missing); Smith 2017, "Cyclical Learning Rates": cycle = floor(1 + t / 2s),
    x = |t/s - 2 cycle + 1|, lr = b + (max_lr - b) max(0, 1 - x) * scale, scale 1 (triangular),
    1/2^(cycle-1) (triangular2), gamma^t (exp_range)."""
    s, mx = 3, 1.0

    def smith(t, scale, s=s):
        cycle = math.floor(1 + t / (2 * s))
        x = abs(t / s - 2 * cycle + 1)
        return BASE + (mx - BASE) * max(0.0, 1 - x) * scale(cycle, t)

    cfg = {"name": "cyclic", "max_lr": mx, "step_size_up": s}
    close(lrs(cfg, 20), [smith(t, lambda c, t: 1.0) for t in range(20)])
    close(lrs(cfg | {"mode": "triangular2"}, 20), [smith(t, lambda c, t: 0.5 ** (c - 1)) for t in range(20)])
    close(lrs(cfg | {"mode": "exp_range", "gamma": 0.9}, 20), [smith(t, lambda c, t: 0.9 ** t) for t in range(20)])
    # the default half cycle is two epochs; an asymmetric cycle: 2 steps up, 4 down
    close(lrs({"name": "cyclic", "max_lr": mx}, 9, spe=2), [smith(t, lambda c, t: 1.0, s=4) for t in range(9)])
    up = [BASE + (mx - BASE) * a for a in (0, 0.5, 1, 0.75, 0.5, 0.25)]
    close(lrs({"name": "cyclic", "max_lr": mx, "step_size_up": 2, "step_size_down": 4}, 12), up + up)


def test_reduce_on_plateau():
    """001:664-668: keep the lr while the metric improves, reduce it on a plateau. A metric is given at each
    epoch's end (spe = 2: after steps 2, 4, ...). patience 1, factor 0.5: the epoch metrics
    1.0, 0.9 (better), 0.95 (1 bad), 0.96 (2 bad > patience: lr / 2), 0.8 (better), 0.85, 0.86 (lr / 2), 0.87."""
    metrics = dict(zip(range(1, 16, 2), [1.0, 0.9, 0.95, 0.96, 0.8, 0.85, 0.86, 0.87]))
    got = lrs({"name": "plateau", "patience": 1, "factor": 0.5}, 16, spe=2, metrics=metrics)
    close(got, [BASE] * 8 + [BASE / 2] * 6 + [BASE / 4] * 2)
    # steps without a metric never count as evaluations
    close(lrs({"name": "plateau", "patience": 0}, 10), [BASE] * 10)


def test_reduce_on_plateau_max_mode_cooldown_and_floor():
    """mode max, patience 0, factor 0.5, cooldown 1, min_lr 0.03, one metric per step:
    1 (best), 0.5 (bad: lr 0.05, cooldown), 0.4 (ignored in the cooldown), 0.3 (bad: 0.025 -> floor 0.03)."""
    metrics = dict(enumerate([1.0, 0.5, 0.4, 0.3, 0.2]))
    got = lrs({"name": "plateau", "mode": "max", "patience": 0, "factor": 0.5, "cooldown": 1, "min_lr": 0.03},
              6, spe=1, metrics=metrics)
    close(got, [0.1, 0.1, 0.05, 0.05, 0.03, 0.03])
    # abs threshold: an improvement smaller than the threshold is not one
    metrics = dict(enumerate([1.0, 0.95, 0.91]))
    got = lrs({"name": "plateau", "patience": 0, "factor": 0.5, "threshold": 0.1, "threshold_mode": "abs"},
              4, spe=1, metrics=metrics)
    close(got, [0.1, 0.1, 0.05, 0.025])


def test_observe_reads_a_metric_without_a_step():
    """observe(metric) is an evaluation between steps: plateau reacts at once, t does not advance (a
    step-based schedule is unaffected)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched = build_schedule(opt, {"name": "plateau", "patience": 0, "factor": 0.5}, 2, 10)
    sched.observe(1.0)
    sched.observe(1.5)
    assert sched.t == 0 and opt.param_groups[0]["lr"] == pytest.approx(BASE / 2)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched = build_schedule(opt, {"name": "step", "step_size": 1, "gamma": 0.5}, 1, 10)
    sched.observe(3.0)
    assert sched.t == 0 and sched.last_lr == [BASE]


def test_groups_follow_their_own_base_lr():
    got = lrs({"name": "cosine", "min_lr": 0.0}, 8, bases=(0.1, 0.01))
    for t, (a, b) in enumerate(got):
        assert a == pytest.approx(0.1 * (1 + math.cos(math.pi * t / 8)) / 2)
        assert b == pytest.approx(a / 10)


ROUND_TRIP = [
    {"name": "constant", "warmup_steps": 3},
    {"name": "step", "step_size": 1, "gamma": 0.5},
    {"name": "exponential", "gamma": 0.8, "warmup_steps": 5},
    {"name": "time_based", "decay": 0.3},
    {"name": "linear_decay"},
    {"name": "plateau", "patience": 0, "factor": 0.5, "cooldown": 1},
    {"name": "cyclic", "max_lr": 1.0, "step_size_up": 3, "mode": "triangular2"},
    {"name": "cosine", "min_lr": 0.01},
    {"name": "warmup_cosine", "warmup_steps": 4},
    {"name": "linear_warmup", "warmup_steps": 12},
]


@pytest.mark.parametrize("cfg", ROUND_TRIP, ids=[c["name"] for c in ROUND_TRIP])
def test_state_dict_round_trip_mid_schedule(cfg):
    """Save after 9 steps (through torch.save), rebuild the optimizer and schedule from scratch, load both:
    the next steps' lrs are those of the uninterrupted run."""
    n, k, spe = 20, 9, 3
    metrics = {t: 1.0 + 0.1 * ((t * 7) % 5) for t in range(2, n, spe)}
    full = lrs(cfg, n, spe=spe, metrics=metrics)

    def make():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=BASE)
        return opt, build_schedule(opt, cfg, spe, n)

    opt, sched = make()
    for t in range(k):
        opt.step()
        sched.step(metrics.get(t))
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    opt2, sched2 = make()
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    rest = []
    for t in range(k, n):
        rest.append(opt2.param_groups[0]["lr"])
        opt2.step()
        sched2.step(metrics.get(t))
    close(rest, full[k:])
    assert sched2.t == n


def test_load_into_another_schedule_fails():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    state = build_schedule(opt, {"name": "cosine"}, 2, 10).state_dict()
    other = build_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE), None, 2, 10)
    with pytest.raises(ValueError, match="cosine"):
        other.load_state_dict(copy.deepcopy(state))


def test_table_lists_the_schedules_and_warmup_everywhere():
    wanted = {"constant", "step", "exponential", "time_based", "plateau", "cyclic", "cosine", "warmup_cosine",
              "linear_warmup"}
    assert wanted <= set(SCHEDULES)
    for name, keys in SCHEDULES.items():
        assert "warmup_steps" in keys, name
        assert all(isinstance(v, tuple) and len(v) == 2 for v in keys.values())


@pytest.mark.parametrize("cfg, match", [
    ({"name": "step", "step_size": 2, "gama": 0.5}, r"`gama`.*allowed: step_size, milestones, gamma"),
    ({"name": "cosinus"}, r"unknown schedule 'cosinus'"),
    ({"name": "exponential"}, r"needs `gamma`"),
    ({"name": "cyclic"}, r"needs `max_lr`"),
    ({"name": "step"}, r"step_size.*milestones"),
    ({"name": "step", "step_size": 2, "milestones": [3]}, r"not both"),
    ({"name": "step", "step_size": 1.5}, r"whole number"),
    ({"name": "step", "milestones": [3, 2]}, r"increasing"),
    ({"name": "exponential", "gamma": 0.9, "unit": "week"}, r"`unit`"),
    ({"name": "plateau", "factor": 1.5}, r"factor"),
    ({"name": "plateau", "mode": "lowest"}, r"`mode`"),
    ({"name": "cyclic", "max_lr": 1.0, "mode": "sine"}, r"`mode`"),
    ({"name": "cosine", "warmup_steps": -1}, r"warmup_steps"),
])
def test_bad_configs_are_value_errors(cfg, match):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    with pytest.raises(ValueError, match=match):
        build_schedule(opt, cfg, 4, 100)
