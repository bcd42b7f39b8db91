"""Learning-rate schedules (001:637-672; 004:277-289).

    from nnspec.runtime.schedules import build_schedule
    sched = build_schedule(opt, {"name": "step", "step_size": 10, "gamma": 0.5}, steps_per_epoch, total_steps)
    for batch in ...:
        ...; opt.step(); sched.step()           # once per optimizer step
    sched.step(val_loss)                        # a metric, at the end of an epoch (reduce-on-plateau)
    sched.observe(val_loss)                     # or: an evaluation between steps (t does not advance)

A `Schedule` is stepped once per optimizer step and knows by itself whether it acts per step or per
epoch. t counts the optimizer steps taken; the lr of step t+1 is lr(t), set on the optimizer's parameter
groups when the schedule is built and after every `step()`. Every group follows the formula from its own
base lr (the lr it had when the schedule was built, kept as the group's `initial_lr` as in torch), so
groups with different lrs keep their ratio. e = t // steps_per_epoch is the epoch (with `unit: step`,
e = t). b is a group's base lr, W the warm-up steps, T = total_steps.

  constant       b                                                            (the default, `schedule: null`)
  step           b * gamma^floor(e / step_size), or gamma^(milestones passed)  (step decay, 001:658-659)
  exponential    b * gamma^e                                                  (time-based, 001:660-663)
  time_based     b / (1 + decay * e)                                          (time-based, 001:660-663)
  linear_decay   b + (min_lr - b) * s / S,  s = t - W, S = T - W              (linear annealing, 001:660-663)
  plateau        b * factor^k, k = reductions so far: when a metric given to step() has not improved
                 (by `threshold`) for more than `patience` evaluations, k += 1, then `cooldown`
                 evaluations are ignored; never below min_lr                    (001:664-668)
  cyclic         Smith's triangular CLR: b + (max_lr - b) * max(0, 1 - x) * scale, x the distance from the
                 peak in half cycles (`step_size_up` steps up, `step_size_down` down; default 2 epochs
                 each); scale 1 (triangular), 1/2^cycle (triangular2), gamma^t (exp_range)  (001:670-672)
  cosine         min_lr + (b - min_lr) * (1 + cos(pi s / S)) / 2,  s = t - W, S = T - W
  warmup_cosine  cosine with a warm-up (default W: 5% of T)
  linear_warmup  constant with a warm-up (default W: 5% of T)

`warmup_steps: W` combines with every schedule: for t < W the lr is (t+1)/W times the schedule's lr (the
first step uses b/W, step W the full lr). Cosine and linear decay run their horizon from the end of the
warm-up to T; the others keep their clock from step 0. The notes' momentum warm-up (0.5 -> 0.9, 001:800)
is not a learning-rate schedule and is not here.

`SCHEDULES` maps each name to its allowed keys `{key: (type, default)}` (`REQUIRED` marks a key without
default; None means "derived", see above); an unknown key is a ValueError naming it and the allowed ones.
`state_dict()` / `load_state_dict()` carry t, the base lrs and the plateau's state: a schedule restored
mid-run continues exactly as the uninterrupted one.
"""
from __future__ import annotations

import math

from nnspec.runtime.optim import coerce_value

__all__ = ["REQUIRED", "SCHEDULES", "Schedule", "build_schedule"]


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()

_W = {"warmup_steps": (int, 0)}
_UNITS = ("epoch", "step")

SCHEDULES: dict = {
    "constant": {**_W},
    "step": {"step_size": (int, None), "milestones": (list, None), "gamma": (float, 0.1), "unit": (str, "epoch"),
             **_W},
    "exponential": {"gamma": (float, REQUIRED), "unit": (str, "epoch"), **_W},
    "time_based": {"decay": (float, REQUIRED), "unit": (str, "epoch"), **_W},
    "linear_decay": {"min_lr": (float, 0.0), **_W},
    "plateau": {"mode": (str, "min"), "factor": (float, 0.1), "patience": (int, 10), "threshold": (float, 1e-4),
                "threshold_mode": (str, "rel"), "cooldown": (int, 0), "min_lr": (float, 0.0), **_W},
    "cyclic": {"max_lr": (float, REQUIRED), "step_size_up": (int, None), "step_size_down": (int, None),
               "mode": (str, "triangular"), "gamma": (float, 1.0), **_W},
    "cosine": {"min_lr": (float, 0.0), **_W},
    "warmup_cosine": {"min_lr": (float, 0.0), "warmup_steps": (int, None)},
    "linear_warmup": {"warmup_steps": (int, None)},
}


def _choice(name: str, key: str, value: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"`{key}` of the schedule `{name}` must be one of {', '.join(choices)}, got {value!r}")
    return value


class Schedule:
    """Base class: lr(t) per group = warm(t) * self._lr(base, t') (see the module docstring)."""

    horizon = False  # True: the schedule runs from the end of the warm-up to total_steps

    def __init__(self, optimizer, name: str, opts: dict, steps_per_epoch: int, total_steps: int):
        self.optimizer = optimizer
        self.name = name
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.total_steps = max(int(total_steps), 1)
        w = opts.get("warmup_steps")
        self.warmup_steps = max(1, round(0.05 * self.total_steps)) if w is None else w
        if self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {self.warmup_steps}")
        self.t = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self._last_lr: list = []
        self._configure(opts)
        self._apply()

    # ---- subclasses
    def _configure(self, opts: dict) -> None:
        pass

    def _lr(self, base: float, t: int) -> float:
        return base

    def _observe(self, metric: float) -> None:
        pass

    def _extra_state(self) -> dict:
        return {}

    def _load_extra(self, state: dict) -> None:
        pass

    # ---- common
    def _epoch(self, t: int, unit: str = "epoch") -> int:
        return t if unit == "step" else t // self.steps_per_epoch

    def lrs_at(self, t: int) -> list:
        w = self.warmup_steps
        warm = (t + 1) / w if t < w else 1.0
        clock = max(t - w, 0) if self.horizon else t
        return [warm * self._lr(b, clock) for b in self.base_lrs]

    def _apply(self) -> None:
        lrs = self.lrs_at(self.t)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def step(self, metric: float | None = None) -> None:
        """Called once after every optimizer step; `metric` (an evaluation, at an epoch's end) is only read
        by reduce-on-plateau."""
        self.t += 1
        if metric is not None:
            self._observe(float(metric))
        self._apply()

    def observe(self, metric: float) -> None:
        """Give an evaluation without an optimizer step (t does not advance): for a caller that evaluates
        after the epoch's last step() instead of passing the metric to the next one."""
        self._observe(float(metric))
        self._apply()

    @property
    def last_lr(self) -> list:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {"name": self.name, "t": self.t, "base_lrs": list(self.base_lrs), **self._extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"the saved schedule is `{state.get('name')}`, this one is `{self.name}`")
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"the saved schedule has {len(state['base_lrs'])} parameter groups, the optimizer "
                             f"{len(self.optimizer.param_groups)}")
        self.t = int(state["t"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        for group, b in zip(self.optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = b
        self._load_extra(state)
        self._apply()

    def __repr__(self):
        return f"<Schedule {self.name} t={self.t} lr={self._last_lr}>"


class Constant(Schedule):
    pass


class StepDecay(Schedule):
    def _configure(self, o):
        self.gamma, self.unit = o["gamma"], _choice(self.name, "unit", o["unit"], _UNITS)
        self.step_size, self.milestones = o["step_size"], o["milestones"]
        if (self.step_size is None) == (self.milestones is None):
            raise ValueError("the schedule `step` needs either `step_size` (decay every n epochs) or `milestones` "
                             "(a list of epochs), not both")
        if self.step_size is not None and self.step_size < 1:
            raise ValueError(f"`step_size` must be >= 1, got {self.step_size}")
        if self.milestones is not None:
            ms = [coerce_value("the schedule `step`", f"milestones[{i}]", m, int, None)
                  for i, m in enumerate(self.milestones)]
            if any(m < 1 for m in ms) or ms != sorted(set(ms)):
                raise ValueError(f"`milestones` must be increasing epochs >= 1, got {self.milestones}")
            self.milestones = ms
        if self.gamma <= 0:
            raise ValueError(f"`gamma` must be > 0, got {self.gamma}")

    def _lr(self, base, t):
        e = self._epoch(t, self.unit)
        k = e // self.step_size if self.step_size is not None else sum(1 for m in self.milestones if e >= m)
        return base * self.gamma ** k


class Exponential(Schedule):
    def _configure(self, o):
        self.gamma, self.unit = o["gamma"], _choice(self.name, "unit", o["unit"], _UNITS)
        if self.gamma <= 0:
            raise ValueError(f"`gamma` must be > 0, got {self.gamma}")

    def _lr(self, base, t):
        return base * self.gamma ** self._epoch(t, self.unit)


class TimeBased(Schedule):
    def _configure(self, o):
        self.decay, self.unit = o["decay"], _choice(self.name, "unit", o["unit"], _UNITS)
        if self.decay < 0:
            raise ValueError(f"`decay` must be >= 0, got {self.decay}")

    def _lr(self, base, t):
        return base / (1.0 + self.decay * self._epoch(t, self.unit))


class _Horizon(Schedule):
    horizon = True

    def _configure(self, o):
        self.min_lr = o["min_lr"]
        if self.min_lr < 0:
            raise ValueError(f"`min_lr` must be >= 0, got {self.min_lr}")
        self.length = max(self.total_steps - self.warmup_steps, 1)


class LinearDecay(_Horizon):
    def _lr(self, base, t):
        return base + (self.min_lr - base) * min(t, self.length) / self.length


class Cosine(_Horizon):
    def _lr(self, base, t):
        return self.min_lr + (base - self.min_lr) * (1 + math.cos(math.pi * min(t, self.length) / self.length)) / 2


class Cyclic(Schedule):
    def _configure(self, o):
        self.max_lr = o["max_lr"]
        self.mode = _choice(self.name, "mode", o["mode"], ("triangular", "triangular2", "exp_range"))
        self.gamma = o["gamma"]
        self.up = o["step_size_up"] if o["step_size_up"] is not None else 2 * self.steps_per_epoch
        self.down = o["step_size_down"] if o["step_size_down"] is not None else self.up
        if self.up < 1 or self.down < 1:
            raise ValueError(f"`step_size_up` and `step_size_down` must be >= 1, got {self.up}, {self.down}")
        if self.max_lr < 0 or not 0 < self.gamma <= 1:
            raise ValueError(f"need max_lr >= 0 and 0 < gamma <= 1, got {self.max_lr}, {self.gamma}")

    def _lr(self, base, t):
        length = self.up + self.down
        cycle, pos = divmod(t, length)
        amp = pos / self.up if pos < self.up else 1.0 - (pos - self.up) / self.down
        scale = {"triangular": 1.0, "triangular2": 0.5 ** cycle, "exp_range": self.gamma ** t}[self.mode]
        return base + (self.max_lr - base) * amp * scale


class Plateau(Schedule):
    def _configure(self, o):
        self.mode = _choice(self.name, "mode", o["mode"], ("min", "max"))
        self.threshold_mode = _choice(self.name, "threshold_mode", o["threshold_mode"], ("rel", "abs"))
        self.factor, self.patience, self.threshold = o["factor"], o["patience"], o["threshold"]
        self.cooldown, self.min_lr = o["cooldown"], o["min_lr"]
        if not 0 < self.factor < 1:
            raise ValueError(f"`factor` must be in (0, 1), got {self.factor}")
        if self.patience < 0 or self.cooldown < 0 or self.threshold < 0 or self.min_lr < 0:
            raise ValueError("`patience`, `cooldown`, `threshold` and `min_lr` must be >= 0")
        self.scale = 1.0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_left = 0

    def _better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            bound = best * (1 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold
            return a < bound
        bound = best * (1 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold
        return a > bound

    def _observe(self, metric):
        if self._better(metric, self.best):
            self.best, self.num_bad = metric, 0
        else:
            self.num_bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.num_bad = 0
        if self.num_bad > self.patience:
            self.scale *= self.factor
            self.cooldown_left, self.num_bad = self.cooldown, 0

    def _lr(self, base, t):
        return max(base * self.scale, self.min_lr)

    def _extra_state(self):
        return {"scale": self.scale, "best": self.best, "num_bad": self.num_bad, "cooldown_left": self.cooldown_left}

    def _load_extra(self, state):
        self.scale, self.best = float(state["scale"]), float(state["best"])
        self.num_bad, self.cooldown_left = int(state["num_bad"]), int(state["cooldown_left"])


_CLASSES = {"constant": Constant, "step": StepDecay, "exponential": Exponential, "time_based": TimeBased,
            "linear_decay": LinearDecay, "plateau": Plateau, "cyclic": Cyclic, "cosine": Cosine,
            "warmup_cosine": Cosine, "linear_warmup": Constant}


def build_schedule(optimizer, cfg: dict | None, steps_per_epoch: int, total_steps: int) -> Schedule:
    """The schedule of a config {name, ...} (None: constant) on `optimizer`; it sets the lr of the first step."""
    cfg = dict(cfg or {"name": "constant"})
    name = cfg.pop("name", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    allowed = SCHEDULES[name]
    for key in cfg:
        if key not in allowed:
            raise ValueError(f"unknown key `{key}` for the schedule `{name}`; allowed: {', '.join(allowed)}")
    opts = {}
    for key, (typ, default) in allowed.items():
        value = cfg.get(key)
        if value is None:
            value = default
        if value is REQUIRED:
            raise ValueError(f"the schedule `{name}` needs `{key}`")
        opts[key] = None if value is None else coerce_value(f"the schedule `{name}`", key, value, typ, default)
    return _CLASSES[name](optimizer, name, opts, steps_per_epoch, total_steps)
