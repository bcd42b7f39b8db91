"""`nnspec train CONFIG.yaml`: train a compiled spec as its config says.

    from nnspec.runtime.trainer import train
    results = train("examples/digits_cnn.yaml")            # == `nnspec train examples/digits_cnn.yaml`

Everything is built and checked before the first batch: the config (runtime.config), the spec (compiled
with its parameters), the names the config uses in the spec (losses, metrics, inputs, outputs, parameter
patterns), the data and its fit to the model's inputs, the optimizers and schedules. A mistake in any of
them is a SpecError pointing at the config line; no training step runs.

Objectives. An ordinary model has one objective: the spec's total loss (`loss`, the sum of its losses)
over every parameter. `objectives:` lists named steps instead, run in order on each batch, each with a
loss of the spec, the parameters it updates (glob patterns on parameter names: 'discriminator.*'), its
optimizer and schedule, and how often it runs (`every: n`: on every n-th batch). Each step runs its own
forward pass (so a generator step sees the discriminator just updated, as in the usual GAN loop), zeroes
the model's gradients, backpropagates its loss and updates only its parameters; while it runs, the other
parameters do not require gradients (they are not updated, and no time goes into their gradients; the
gradient still flows through them to earlier layers). Parameters that no objective names are frozen.
Detaching the fake samples for the discriminator's loss is the spec's business (`stop_gradient`).

Logged values: every loss and metric of the spec (or the `metrics:` list; `accuracy` is argmax of the
first output against the first target). For each step, an objective's own loss comes from its own forward
pass and the other values from the first forward pass that computed them. Training values are per batch
(steps.csv) and size-weighted epoch means (epochs.csv); validation values are exact means over the split.

Evaluation and samples run under a forked random state seeded from training.seed: they never change the
training trajectory (evaluating more often gives the same weights), and a generative model's sample grids
use the same noise every time.

Exact resume: the batch order, the augmentation noise and the dropout/noise of the model are functions of
the seed and of the position, and a checkpoint holds every RNG state, the optimizers' and schedules'
states and the position (epoch, batch). On CPU a run killed at any point and resumed from its last
checkpoint ends with bit-identical weights (tests/runtime/test_checkpoint.py kills one with SIGKILL).

Resuming after the config or the spec changed: the differences are printed (`optimizer.lr: 0.01 -> 0.001`)
and the NEW config and spec are used. A changed optimizer keeps the checkpoint's optimizer state (moments)
when its kind is the same, with the new hyper-parameters; a changed schedule (or optimizer) is rebuilt and
advanced to the current step as if it had been used from the start; weights whose shapes no longer fit
are an error naming them.

A non-finite loss stops training at once, with the step, epoch, batch, objective and value; nothing is
written after it, so the last checkpoint is the last good state.
"""
from __future__ import annotations

import datetime as _dt
import difflib
import fnmatch
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import nnspec
from nnspec.errors import SpecError, suggest
from nnspec.runtime import distributed as D
from nnspec.runtime.checkpoint import (CHECKPOINTS, describe_weight_mismatch, find_checkpoint, load_checkpoint,
                                       rng_state, save_checkpoint, set_rng_state)
from nnspec.runtime.config import Config, canonical, diff_configs, load_config
from nnspec.runtime.data import Binding, EpochBatches, Loader, derive_seed, eval_batches, load_data
from nnspec.runtime.logging import RunLogger, format_values, plot_curves, save_samples

LOSSY = ("loss", "err", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "bpc", "distance")
RUN_FILES = ("steps.csv", "epochs.csv", "curves.png", "samples.png", "results.json", "tb", "samples", CHECKPOINTS)


class TrainingError(Exception):
    """A run that had to stop (a non-finite loss, ...): the message says why and what was kept."""


@dataclass
class Objective:
    name: str
    loss: str
    path: tuple                      # key path in the config, for messages
    params: list                     # [(name, Parameter)]
    every: int
    clip_norm: float | None
    clip_value: float | None
    opt_cfg: dict
    opt_path: tuple
    sched_cfg: dict | None
    optimizer: torch.optim.Optimizer | None = None
    schedule: object = None
    fresh_groups: list = field(default_factory=list)
    steps: int = 0
    steps_per_epoch: int = 1
    total_steps: int = 1


def _is_lossy(name: str, losses) -> bool:
    return name in losses or name == "loss" or any(w in name.lower() for w in LOSSY)


def spec_digest(graph) -> tuple[str, dict]:
    texts = dict(sorted(graph.program.sources.texts.items())) if getattr(graph, "program", None) else {}
    blob = json.dumps({"sources": texts, "params": graph.params, "model": graph.name}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), texts


def diff_sources(old: dict, new: dict) -> list[str]:
    rows = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        if a is None:
            rows.append(f"{name}: a new file")
            continue
        if b is None:
            rows.append(f"{name}: no longer read")
            continue
        for line in difflib.unified_diff(a.splitlines(), b.splitlines(), fromfile=f"{name} (checkpoint)",
                                         tofile=f"{name} (now)", lineterm="", n=0):
            rows.append(line)
    return rows


def _scalar(out: dict, name: str, graph, inputs: dict, targets: dict):
    if name == "accuracy" and "accuracy" not in out:
        logits = out[next(iter(graph.outputs))]
        y = targets[graph.nodes[graph.targets[0]].attrs["name"]]
        return (logits.argmax(dim=1) == y).float().mean()
    v = out[name]
    return v if v.dim() == 0 else v.float().mean()


class Trainer:
    def __init__(self, cfg: Config, *, out_dir=None, resume: bool = False, resume_from=None, overwrite: bool = False,
                 quiet: bool = False, echo=None, dry_run: bool = False):
        self.cfg = cfg
        self.dry_run = dry_run   # build and check everything; touch no file
        self.v = cfg.values
        self.quiet = quiet
        self.echo = echo or (lambda text: print(text, flush=True))
        self.notes: list[str] = []
        self._fork_devices: list = []
        self.t = self.v["training"]
        # process-wide torch settings a run may change, given back by close(): training is a library call too
        self._globals = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                         torch.is_deterministic_algorithms_warn_only_enabled())
        self.dist = D.setup(self.t["device"])
        try:
            self._setup(out_dir, resume or bool(resume_from), resume_from, overwrite, dry_run)
        except BaseException:
            self.close()
            raise

    # ================================================================== set-up (everything checked here)
    def say(self, text: str) -> None:
        if self.dist.is_main and not self.quiet:
            if getattr(self, "logger", None) is not None:
                self.logger.message(text)
            else:
                self.echo(text)

    def _setup(self, out_dir, resume, resume_from, overwrite, dry_run):
        t, v, cfg = self.t, self.v, self.cfg
        try:
            self.device = D.device_for(self.dist, t["device"])
        except RuntimeError as e:
            raise cfg.error(("training", "device"), str(e), expected="cpu or auto") from None
        if self.device.type == "cuda":
            self._fork_devices = [self.device.index or 0]
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        if t["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.seed = t["seed"]
        self._seed_all(self.seed)

        # ---- the model
        self.graph, cls = self._compile()
        self.spec_hash, self.spec_sources = spec_digest(self.graph)
        if not self.graph.losses:
            raise cfg.error(("model", "spec"), f"the spec `{self.graph.name}` declares no loss: nothing to train",
                            code="E0705", hint="add `loss name = ...` to the model")
        self.model = cls()
        self.param_names = [n for n, _ in self.model.named_parameters()]
        if v["init"]:
            self._apply_init()
        self.model.to(self.device)

        # ---- data
        self.bundle = load_data(cfg)
        self.binding = Binding(cfg, self.graph, self.bundle)
        d = v["data"]
        drop_last = d["drop_last"] if d["drop_last"] is not None else self.dist.enabled
        if self.dist.enabled and not drop_last:
            self.notes.append("data.drop_last is false under torchrun: the last, smaller global batch is split "
                              "unevenly between processes")
        train_split = self.bundle.splits["train"]
        self.sampler = EpochBatches(len(train_split), d["batch_size"], self.seed, d["shuffle"], drop_last,
                                    self.dist.rank, self.dist.world)
        self.loader = Loader(train_split, self.sampler, d["num_workers"])
        self.bpe = len(self.loader)
        if self.bpe == 0:
            raise cfg.error(("data", "batch_size"), f"the training split has {len(train_split)} samples, fewer than "
                            f"one global batch of {self.sampler.global_batch}", code="E0706",
                            expected=f"a batch size <= {len(train_split) // self.dist.world}")
        epochs, steps = t["epochs"], t["steps"]
        if epochs is None:
            epochs = -(-steps // self.bpe) if steps else 10
        self.epochs = epochs
        self.total_steps = min(steps, epochs * self.bpe) if steps else epochs * self.bpe

        # ---- what to log and watch
        self._setup_names()
        self._setup_monitor()

        # ---- objectives, optimizers, schedules
        self._setup_objectives()

        # ---- output folder, resume
        out_cfg = v["output"]
        self.out_dir = Path(out_dir or out_cfg["dir"] or Path("runs") / Path(cfg.path).stem)
        self.samples_cfg = out_cfg["samples"]
        if self.samples_cfg and self.samples_cfg["output"] not in self.graph.outputs:
            outs = list(self.graph.outputs)
            raise cfg.error(("output", "samples", "output"), f"the spec has no output `{self.samples_cfg['output']}`",
                            code="E0705", expected=f"one of {', '.join(outs)}",
                            hint=suggest(self.samples_cfg["output"], outs))
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.elapsed = 0.0
        self.history = {"steps": [], "epochs": []}
        self.best = None          # best monitored value
        self.best_step = None
        self.bad_evals = 0
        self.es_best = None
        self.last_metric = None
        self.last_eval: dict = {}
        self.epoch_sums: dict = {}
        self.epoch_count = 0
        self.last_ckpt = None
        self.resumed_from = None
        self._rng_to_restore = None
        if resume:
            self._resume(resume_from)
        elif dry_run:
            pass
        else:
            existing = find_checkpoint(self.out_dir) if self.out_dir.exists() else None
            if existing is not None and not overwrite:
                raise cfg.error(("output", "dir"), f"`{self.out_dir}` already holds a run (last checkpoint: "
                                f"{existing.name})", code="E0707",
                                hint="pass --resume to continue it, or --overwrite to start again")
            if self.dist.is_main and self.out_dir.exists():
                for name in RUN_FILES:
                    p = self.out_dir / name
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)
                    elif p.exists() or p.is_symlink():
                        p.unlink()
            D.barrier(self.dist)

        writes = self.dist.is_main and not dry_run
        self.logger = RunLogger(self.out_dir if writes else None, self.names, [ob.name for ob in self.objectives],
                                csv_on=out_cfg["csv"], tensorboard=out_cfg["tensorboard"], progress=out_cfg["progress"],
                                quiet=self.quiet, echo=self.echo, history=self.history,
                                resume_step=self.step if self.resumed_from else None)
        self.history = self.logger.history

        # ---- distributed wrapping (after loading weights: every rank starts from rank 0's)
        self.net = self.model
        self.manual_sync = False
        if self.dist.enabled:
            D.broadcast_parameters(self.model, self.dist)
            if len(self.objectives) == 1:
                self.net = D.wrap_ddp(self.model, self.dist, self.device)
            else:
                self.manual_sync = True
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
        elif self.dist.enabled:
            torch.manual_seed(derive_seed(self.seed, "rank", self.dist.rank))  # different dropout per rank

    def _seed_all(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _compile(self):
        cfg, m = self.cfg, self.v["model"]
        ref = m["spec"]
        candidate = cfg.resolve_path(ref)
        if candidate.exists():
            ref = str(candidate)
            try:
                ref = str(candidate.resolve().relative_to(Path.cwd().resolve()))
            except ValueError:
                pass
        else:
            from nnspec.dsl.loader import builtin_specs
            names = builtin_specs()
            if ref not in names:
                raise cfg.error(("model", "spec"), f"spec `{ref}` not found", code="E0706",
                                found=str(candidate), expected="a spec file (relative to the config's folder) or a "
                                "built-in name (nnspec list)", hint=suggest(Path(ref).stem, names))
        self.spec_ref = ref
        try:
            from nnspec.compiler.pipeline import build
            graph = build(ref, m["params"] or None, m["name"], optimize=m["optimize"])
        except SpecError as e:
            e.notes.append(f"while compiling the model of the training config {cfg.path} (model.spec: {m['spec']})")
            if m["params"] and e.code.startswith("E04"):
                e.notes.append(f"the parameters given to it are at {cfg.span(('model', 'params'))}: "
                               + ", ".join(f"{k}={v!r}" for k, v in m["params"].items()))
            raise
        from nnspec.compiler.codegen.loader import materialize
        return graph, materialize(graph)

    def _match(self, pattern: str) -> list[str]:
        return [n for n in self.param_names if fnmatch.fnmatchcase(n, pattern)]

    def _apply_init(self):
        from nnspec.runtime.init import apply_init
        rules = self.v["init"]
        for i, rule in enumerate(rules):
            if not self._match(rule["match"]):
                raise self.cfg.error(("init", i, "match"), f"`{rule['match']}` matches no parameter of the model",
                                     code="E0705", expected="a glob pattern on parameter names, e.g. "
                                     + ", ".join(self.param_names[:6]))
        try:
            apply_init(self.model, [dict(r) for r in rules], self.seed)
        except (ValueError, TypeError, KeyError) as e:
            raise self.cfg.error(("init",), f"cannot apply the initialisation rules: {e}", code="E0703") from None

    def _setup_names(self):
        g, cfg = self.graph, self.cfg
        scalars = list(g.losses) + list(g.metrics)
        if self.v["metrics"] is None:
            names = list(scalars)
        else:
            names = []
            allowed = scalars + ["loss", "accuracy"]
            for i, n in enumerate(self.v["metrics"]):
                if n not in allowed:
                    raise cfg.error(("metrics", i), f"`{n}` is not a loss or metric of the spec", code="E0705",
                                    expected=f"one of {', '.join(allowed)}", hint=suggest(n, allowed))
                if n == "accuracy" and "accuracy" not in scalars and (not g.outputs or not g.targets):
                    raise cfg.error(("metrics", i), "`accuracy` needs an output (logits) and a target", code="E0705")
                names.append(n)
        objs = self.v["objectives"] or [{"loss": "loss"}]
        for o in objs:
            if o["loss"] == "loss" and len(g.losses) > 1 and "loss" not in names:
                names.append("loss")
            elif o["loss"] != "loss" and o["loss"] not in names:
                names.append(o["loss"])
        if len(g.losses) == 1 and "loss" in names and list(g.losses)[0] in names:
            names.remove("loss")  # the same number twice
        self.names = list(dict.fromkeys(names))

    def _resolve_watch(self, text: str | None, path: tuple, default_split: str) -> tuple[str, str]:
        if text is None:
            metric = next(iter(self.graph.metrics), None) if self.graph.metrics else None
            if metric is None or metric not in self.names:
                metric = next((n for n in self.names if n in self.graph.losses or n == "loss"), self.names[0])
            return default_split, metric
        split, _, name = text.partition(".")
        if not name:
            split, name = default_split, split
        if split not in ("train", "validation"):
            raise self.cfg.error(path, f"`{text}`: the split must be train or validation", code="E0705",
                                 expected="train.<name> or validation.<name>")
        if split == "validation" and "validation" not in self.bundle.splits:
            raise self.cfg.error(path, f"`{text}` watches the validation split, which is empty", code="E0705",
                                 expected="a data.split.validation fraction > 0, or train.<name>")
        if name not in self.names:
            raise self.cfg.error(path, f"`{name}` is not a logged value", code="E0705",
                                 expected=f"one of {', '.join(self.names)}", hint=suggest(name, self.names))
        return split, name

    def _setup_monitor(self):
        t = self.t
        default_split = "validation" if "validation" in self.bundle.splits else "train"
        if t["monitor"] == "none":  # no best checkpoint (e.g. a GAN: no validation number says which is better)
            self.monitor, self.monitor_max = None, False
        else:
            self.monitor = self._resolve_watch(t["monitor"], ("training", "monitor"), default_split)
            mode = t["monitor_mode"]
            self.monitor_max = (mode == "max") if mode != "auto" else not _is_lossy(self.monitor[1], self.graph.losses)
        es = self.v["regularization"]["early_stopping"]
        self.early = None
        if es:
            if es["metric"]:
                split, name = self._resolve_watch(es["metric"], ("regularization", "early_stopping", "metric"),
                                                  default_split)
            else:
                split, name = self.monitor or (None, None)
            if split is None:
                raise self.cfg.error(("regularization", "early_stopping"), "early stopping needs a metric when "
                                     "training.monitor is none", code="E0705", expected="metric: validation.<name>")
            mx = (es["mode"] == "max") if es["mode"] != "auto" else not _is_lossy(name, self.graph.losses)
            self.early = {"split": split, "name": name, "max": mx, "patience": es["patience"],
                          "min_delta": es["min_delta"]}

    def _setup_objectives(self):
        from nnspec.runtime.optim import build_optimizer
        from nnspec.runtime.schedules import build_schedule
        v, cfg, g = self.v, self.cfg, self.graph
        reg = v["regularization"]
        named = dict(self.model.named_parameters())
        only_loss = next(iter(g.losses)) if len(g.losses) == 1 else "loss"  # name the number the logs show
        listed = v["objectives"] or [{"name": "train", "loss": only_loss, "params": ["*"], "optimizer": None,
                                      "schedule": None, "every": 1, "clip_grad_norm": None, "clip_grad_value": None}]
        self.objectives: list[Objective] = []
        covered: set = set()
        for i, o in enumerate(listed):
            base = ("objectives", i) if v["objectives"] else ()
            if o["loss"] != "loss" and o["loss"] not in g.losses:
                losses = list(g.losses) + ["loss"]
                raise cfg.error(base + ("loss",), f"the spec has no loss `{o['loss']}`", code="E0705",
                                expected=f"one of {', '.join(losses)}", hint=suggest(o["loss"], losses))
            chosen: list = []
            for j, pat in enumerate(o["params"]):
                hits = self._match(pat)
                if not hits:
                    raise cfg.error(base + ("params", j), f"`{pat}` matches no parameter of the model", code="E0705",
                                    expected="a glob on parameter names, e.g. " + ", ".join(self.param_names[:6]))
                chosen.extend(h for h in hits if h not in chosen)
            chosen = [n for n in self.param_names if n in chosen]  # model order
            covered.update(chosen)
            own_opt = o["optimizer"] is not None
            opt_cfg = dict(o["optimizer"] if own_opt else v["optimizer"])
            opt_path = base + ("optimizer",) if own_opt else ("optimizer",)
            sched_cfg = o["schedule"] if o["schedule"] is not None else v["schedule"]
            obj = Objective(o.get("name", "train"), o["loss"], base, [(n, named[n]) for n in chosen], o["every"],
                            o["clip_grad_norm"] if o["clip_grad_norm"] is not None else reg["clip_grad_norm"],
                            o["clip_grad_value"] if o["clip_grad_value"] is not None else reg["clip_grad_value"],
                            opt_cfg, opt_path, dict(sched_cfg) if sched_cfg else None)
            obj.steps_per_epoch = max(-(-self.bpe // obj.every), 1)
            obj.total_steps = max(-(-self.total_steps // obj.every), 1)
            groups = self._param_groups(obj, reg["no_decay"])
            try:
                obj.optimizer = build_optimizer(groups, dict(opt_cfg))
            except (ValueError, TypeError, KeyError) as e:
                raise cfg.error(opt_path, f"bad optimizer settings: {e}", code="E0703") from None
            obj.fresh_groups = [{k: val for k, val in grp.items() if k != "params"}
                                for grp in obj.optimizer.param_groups]
            obj.schedule = self._build_schedule(obj, build_schedule)
            self.objectives.append(obj)
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise cfg.error(("objectives",), f"two objectives are named `{dup}`", code="E0703",
                            expected="a different name for each objective")
        for i, obj in enumerate(self.objectives):
            sc = obj.sched_cfg
            if sc and sc.get("name") == "plateau":
                mode = sc.get("mode", "min")
                path = ("objectives", i, "schedule") if self.v["objectives"] and \
                    self.v["objectives"][i]["schedule"] is not None else ("schedule",)
                if self.monitor is None:
                    raise cfg.error(path, "the plateau schedule watches training.monitor, which is none", code="E0705",
                                    expected="training.monitor: validation.<name>")
                if (mode == "max") != self.monitor_max:
                    raise cfg.error(path, f"the plateau schedule watches {'.'.join(self.monitor)} (training.monitor), "
                                    f"which is {'maximised' if self.monitor_max else 'minimised'}, but its mode is "
                                    f"{mode}", code="E0705",
                                    expected=f"mode: {'max' if self.monitor_max else 'min'}")
        frozen = [n for n in self.param_names if n not in covered]
        if frozen:
            self.notes.append(f"{len(frozen)} parameter(s) are in no objective and stay frozen: "
                              f"{', '.join(frozen[:5])}{', ...' if len(frozen) > 5 else ''}")
        for n, p in self.model.named_parameters():
            p.requires_grad_(n in covered)
        if len(self.objectives) == 1:
            only = {id(p) for _, p in self.objectives[0].params}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in only)

    def _param_groups(self, obj: Objective, no_decay: list):
        params = [p for _, p in obj.params]
        from nnspec.runtime.optim import OPTIMIZERS
        keys = OPTIMIZERS[obj.opt_cfg["name"]][1]
        wd = obj.opt_cfg.get("weight_decay", keys["weight_decay"][1] if "weight_decay" in keys else 0.0)
        if not no_decay or not wd:
            return params
        exempt = {n for n, _ in obj.params if any(fnmatch.fnmatchcase(n, pat) for pat in no_decay)}
        decay = [p for n, p in obj.params if n not in exempt]
        keep = [p for n, p in obj.params if n in exempt]
        groups = [g for g in ({"params": decay}, {"params": keep, "weight_decay": 0.0}) if g["params"]]
        return groups

    def _build_schedule(self, obj: Objective, build_schedule=None):
        if build_schedule is None:
            from nnspec.runtime.schedules import build_schedule
        path = obj.path + ("schedule",) if obj.path and self.v["objectives"] and \
            self.v["objectives"][obj.path[1]]["schedule"] is not None else ("schedule",)
        try:
            return build_schedule(obj.optimizer, dict(obj.sched_cfg) if obj.sched_cfg else None, obj.steps_per_epoch,
                                  obj.total_steps)
        except (ValueError, TypeError, KeyError) as e:
            raise self.cfg.error(path, f"bad schedule settings: {e}", code="E0703") from None

    @property
    def monitor_name(self) -> str:
        return ".".join(self.monitor) if self.monitor else "none"

    # ================================================================== resume
    def _resume(self, resume_from):
        cfg = self.cfg
        where = Path(resume_from) if resume_from else self.out_dir
        ckpt = find_checkpoint(where)
        if ckpt is None:
            raise cfg.error(("output", "dir"), f"no checkpoint to resume from in `{where}`", code="E0707",
                            hint="start the run without --resume (a run writes a checkpoint at the end of each "
                                 "epoch and every training.checkpoint_every steps)")
        weights, state, meta = load_checkpoint(ckpt)
        mismatch = describe_weight_mismatch(self.model.state_dict(), weights)
        if mismatch:
            raise SpecError("E0707", f"the checkpoint's weights do not fit the model any more ({ckpt})", None,
                            notes=mismatch[:12] + ([f"... and {len(mismatch) - 12} more"] if len(mismatch) > 12
                                                   else []),
                            hint="resume with the spec and model.params the checkpoint was written with, or start "
                                 "again")
        self.model.load_state_dict(weights)
        self.resumed_from = ckpt
        pos = state["position"]
        self.step, self.epoch, self.batch = int(pos["step"]), int(pos["epoch"]), int(pos["batch"])
        self.say(f"resuming from {ckpt} (step {self.step}, epoch {self.epoch + 1}, batch {self.batch})")
        changes = diff_configs(meta.get("config", {}), self.v)
        if meta.get("config_hash") != cfg.digest() and changes:
            self.say("note: the config changed since this checkpoint; the new config's values are used:")
            for row in changes:
                self.say(f"    {row}")
        if meta.get("spec_hash") != self.spec_hash:
            self.say(f"note: the spec changed since this checkpoint (hash {str(meta.get('spec_hash'))[:12]} -> "
                     f"{self.spec_hash[:12]}); the new spec is used (its weights fit):")
            for row in diff_sources(meta.get("spec_sources", {}), self.spec_sources) or ["(only its parameters)"]:
                self.say(f"    {row}")
        saved = state.get("objectives", {})
        for obj in self.objectives:
            s = saved.get(obj.name)
            if s is None:
                self.say(f"note: objective `{obj.name}` is not in the checkpoint: its optimizer starts fresh")
                continue
            obj.steps = int(s["steps"])
            old_opt, old_sched = json.loads(s["optimizer_cfg"]), json.loads(s["schedule_cfg"])
            same_kind = old_opt.get("name") == obj.opt_cfg.get("name")
            opt_changed = canonical(old_opt) != canonical(obj.opt_cfg)
            sched_changed = canonical(old_sched) != canonical(obj.sched_cfg)
            if same_kind:
                obj.optimizer.load_state_dict(s["optimizer"])
            else:
                self.say(f"note: objective `{obj.name}`: the optimizer changed from {old_opt.get('name')} to "
                         f"{obj.opt_cfg.get('name')}; its state starts fresh")
            if opt_changed or sched_changed:
                for grp, fresh in zip(obj.optimizer.param_groups, obj.fresh_groups):
                    grp.pop("initial_lr", None)
                    grp.update(fresh)
                obj.schedule = self._build_schedule(obj)
                for _ in range(obj.steps):
                    obj.schedule.step()
                if sched_changed:
                    self.say(f"note: objective `{obj.name}`: the schedule is rebuilt from the new config and advanced "
                             f"to its step {obj.steps}")
            elif s.get("schedule") is not None:
                obj.schedule.load_state_dict(s["schedule"])
        self.history = state["history"]
        self.history["steps"] = [r for r in self.history["steps"] if r["step"] <= self.step]
        self.history["epochs"] = [r for r in self.history["epochs"] if r["step"] <= self.step]
        track = state["tracking"]
        self.best, self.best_step = track["best"], track["best_step"]
        self.bad_evals, self.es_best = track["bad_evals"], track["es_best"]
        self.last_metric, self.last_eval = track["last_metric"], track["last_eval"]
        self.epoch_sums, self.epoch_count = track["epoch_sums"], track["epoch_count"]
        self.elapsed = float(track["elapsed"])
        self.last_ckpt = (ckpt, self.step)
        self._rng_to_restore = state["rng"]

    # ================================================================== checkpoints
    def _state(self) -> dict:
        return {
            "position": {"step": self.step, "epoch": self.epoch, "batch": self.batch},
            "objectives": {o.name: {"optimizer": o.optimizer.state_dict(),
                                    "schedule": o.schedule.state_dict() if o.schedule is not None else None,
                                    "steps": o.steps, "optimizer_cfg": canonical(o.opt_cfg),
                                    "schedule_cfg": canonical(o.sched_cfg)} for o in self.objectives},
            "rng": rng_state(),
            "history": self.history,
            "tracking": {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals,
                         "es_best": self.es_best, "last_metric": self.last_metric, "last_eval": self.last_eval,
                         "epoch_sums": self.epoch_sums, "epoch_count": self.epoch_count, "elapsed": self.elapsed},
            "world_size": self.dist.world,
        }

    def save(self, best: bool = False) -> None:
        if not self.dist.is_main:
            return
        meta = {"step": self.step, "epoch": self.epoch, "batch": self.batch, "written": _dt.datetime.now().isoformat(),
                "spec": self.spec_ref, "model": self.graph.name, "spec_params": self.graph.params,
                "spec_hash": self.spec_hash, "spec_sources": self.spec_sources, "config_path": self.cfg.path,
                "config_hash": self.cfg.digest(), "config": self.v, "metrics": self.last_eval,
                "monitor": {"name": self.monitor_name, "best": self.best, "best_step": self.best_step},
                "nnspec_version": nnspec.__version__, "torch_version": torch.__version__,
                "world_size": self.dist.world}
        path = save_checkpoint(self.out_dir, self.step, self.model.state_dict(), self._state(), meta, best=best)
        self.last_ckpt = (path, self.step)

    # ================================================================== training
    def _forked(self, purpose: str):
        ctx = torch.random.fork_rng(devices=self._fork_devices)
        return _Seeded(ctx, derive_seed(self.seed, purpose))

    def evaluate(self, split_name: str) -> dict:
        split = self.bundle.splits[split_name]
        sums: dict = {}
        count = 0
        self.model.eval()
        with self._forked("eval:" + split_name), torch.no_grad():
            for fields in eval_batches(split, self.v["data"]["eval_batch_size"], self.v["data"]["num_workers"]):
                inputs, targets = self.binding(fields, self.device)
                out = self.model(**inputs, **targets, return_losses=True)
                n = 1 if split.full_batch else next(iter(inputs.values())).shape[0]
                for name in self.names:
                    sums[name] = sums.get(name, 0.0) + float(_scalar(out, name, self.graph, inputs, targets)) * n
                count += n
        self.model.train()
        return {k: s / max(count, 1) for k, s in sums.items()}

    def _train_batch(self, fields: dict, epoch: int, b: int) -> dict:
        aug = self.v["data"]["augment"]
        gen = None
        if aug["shift"] or aug["noise"]:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "augment", epoch, b, self.dist.rank))
        inputs, targets = self.binding(fields, self.device, train=True, gen=gen)
        values: dict = {}
        multi = len(self.objectives) > 1
        for obj in self.objectives:
            if self.step % obj.every:
                continue
            if multi:
                mine = {id(p) for _, p in obj.params}
                for p in self.model.parameters():
                    p.requires_grad_(id(p) in mine)
            out = self.net(**inputs, **targets, return_losses=True)
            loss = out[obj.loss]
            value = float(loss.detach())
            bad = D.any_true(not math.isfinite(value), self.dist, self.device)
            if bad:
                self._non_finite(obj, value, epoch, b)
            self.model.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for _, p in obj.params]
            if self.manual_sync:
                D.average_gradients(params, self.dist)
            if obj.clip_value is not None:
                torch.nn.utils.clip_grad_value_(params, obj.clip_value)
            if obj.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, obj.clip_norm)
            obj.optimizer.step()
            if obj.schedule is not None:
                obj.schedule.step()
            obj.steps += 1
            for name in self.names:
                if name == obj.loss:
                    values[name] = value
                elif name not in values and (name in out or name == "accuracy"):
                    values[name] = float(_scalar(out, name, self.graph, inputs, targets).detach())
        if multi:
            for obj in self.objectives:
                for _, p in obj.params:
                    p.requires_grad_(True)
        return values

    def _non_finite(self, obj: Objective, value: float, epoch: int, b: int):
        where = f"step {self.step + 1} (epoch {epoch + 1}, batch {b + 1} of {self.bpe})"
        kept = (f"the last good checkpoint is kept: {self.last_ckpt[0]} (step {self.last_ckpt[1]})" if self.last_ckpt
                else "no checkpoint had been written yet")
        raise TrainingError(f"error: non-finite loss: `{obj.loss}` = {value} at {where}, in the objective "
                            f"`{obj.name}`; training stopped and nothing was written after it; {kept}.\n"
                            "  = help: lower the learning rate, clip gradients (regularization.clip_grad_norm), or "
                            "check the data for NaN/inf")

    def _lrs(self) -> dict:
        return {o.name: float(o.optimizer.param_groups[0]["lr"]) for o in self.objectives}

    def _improved(self, value, best, maximize, min_delta=0.0) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best + min_delta if maximize else value < best - min_delta

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.close()

    def close(self) -> None:
        """Close the logs, leave the process group, give back the torch settings the run changed."""
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        D.cleanup(self.dist)
        threads, deterministic, warn_only = self._globals
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)

    def _run(self) -> dict:
        for note in self.notes:
            self.say(f"note: {note}")
        splits = ", ".join(f"{k} {len(s)}" for k, s in self.bundle.splits.items())
        n_params = sum(p.numel() for p in self.model.parameters())
        self.say(f"model {self.graph.name} ({self.spec_ref}): {n_params:,} parameters; data {self.bundle.description}"
                 f" (split: {splits}); {self.epochs} epoch(s) of {self.bpe} batch(es)"
                 + (f" on {self.dist.world} processes ({self.dist.backend})" if self.dist.enabled else "")
                 + f"; device {self.device}; output {self.out_dir}")
        log_every, ckpt_every = self.t["log_every"], self.t["checkpoint_every"]
        stop_reason = "completed"
        start_step = self.step
        self.logger.progress.start(self.total_steps, self.step, f"epoch {self.epoch + 1}/{self.epochs}")
        t_run = time.perf_counter()
        t_last = t_run
        try:
            while self.step < self.total_steps and self.epoch < self.epochs:
                epoch = self.epoch
                for b, fields in self.loader.epoch(epoch, self.batch):
                    values = self._train_batch(fields, epoch, b)
                    self.step += 1
                    self.batch = b + 1
                    n = 1 if self.binding.full_batch else len(next(iter(fields.values())))
                    for k, val in values.items():
                        s = self.epoch_sums.setdefault(k, [0.0, 0])
                        s[0] += val * n
                        s[1] += n
                    now = time.perf_counter()
                    self.elapsed += now - t_last
                    t_last = now
                    if self.step % log_every == 0:
                        self.logger.log_step(self.step, epoch + 1, values, self._lrs())
                    self.logger.progress.update(self.step, f"epoch {epoch + 1}/{self.epochs}",
                                                format_values(values))
                    if self.step >= self.total_steps:
                        break
                    if ckpt_every and self.step % ckpt_every == 0 and self.batch < self.bpe:
                        self.save()
                if self.batch >= self.bpe:
                    self.epoch, self.batch = epoch + 1, 0
                finished = self.step >= self.total_steps or self.epoch >= self.epochs
                stop = self._end_of_epoch(epoch, finished)
                now = time.perf_counter()
                self.elapsed += now - t_last
                t_last = now
                if stop:
                    stop_reason = "early stopping"
                    break
            if self.step >= self.total_steps and self.t["steps"] and self.step < self.epochs * self.bpe:
                stop_reason = "step limit"
        except TrainingError:
            self._finish_outputs()
            raise
        self.logger.progress.stop()
        train_time = time.perf_counter() - t_run
        return self._finish(stop_reason, train_time, self.step - start_step)

    def _end_of_epoch(self, epoch: int, finished: bool) -> bool:
        train_means = {k: s[0] / max(s[1], 1) for k, s in self.epoch_sums.items()}
        if self.dist.enabled and train_means:  # the mean over every process's batches: one decision on all ranks
            keys = [k for k in self.names if k in train_means] + sorted(set(train_means) - set(self.names))
            t = torch.tensor([train_means[k] for k in keys], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            train_means = {k: float(x) / self.dist.world for k, x in zip(keys, t.tolist())}
        self.epoch_sums, self.epoch_count = {}, 0
        evaluate = "validation" in self.bundle.splits and (finished or (epoch + 1) % self.t["eval_every"] == 0)
        validation = self.evaluate("validation") if evaluate else None
        if validation is not None:
            self.last_eval = validation
        self.logger.log_epoch(epoch + 1, self.step, self.elapsed, train_means, validation)
        pools = {"train": train_means, "validation": validation}
        best = False
        split, name = self.monitor or (None, None)
        value = (pools.get(split) or {}).get(name)
        if value is not None:
            self.last_metric = value
            if self._improved(value, self.best, self.monitor_max):
                self.best, self.best_step, best = value, self.step, True
            for obj in self.objectives:  # reduce-on-plateau reads the monitored value (t does not advance)
                if obj.schedule is not None and math.isfinite(value):
                    obj.schedule.observe(value)
        stop = False
        if self.early:
            e = self.early
            ev = (pools.get(e["split"]) or {}).get(e["name"])
            if ev is not None:
                if self._improved(ev, self.es_best, e["max"], e["min_delta"]):
                    self.es_best, self.bad_evals = ev, 0
                else:
                    self.bad_evals += 1
                    if self.bad_evals >= e["patience"]:
                        stop = True
        line = f"epoch {epoch + 1}/{self.epochs}  step {self.step}  train: {format_values(train_means)}"
        if validation is not None:
            line += f"  | validation: {format_values(validation)}"
        line += f"  | {self.elapsed:.1f} s" + ("  *" if best else "")
        self.say(line)
        if stop:
            self.say(f"early stopping: {self.early['split']}.{self.early['name']} did not improve for "
                     f"{self.bad_evals} evaluation(s) (best {self.es_best:.4g})")
        every = (self.samples_cfg or {}).get("every") or 0
        if self.samples_cfg and every and (epoch + 1) % every == 0 and self.dist.is_main:
            self._samples(self.out_dir / "samples" / f"epoch-{epoch + 1:04d}.png", f"epoch {epoch + 1}")
        self.save(best=best)
        return stop

    def _samples(self, path: Path, title: str):
        s = self.samples_cfg
        split = self.bundle.splits.get("validation") or self.bundle.splits["train"]
        count = min(s["count"], len(split)) if not split.full_batch else s["count"]
        batch = next(eval_batches(split, count))
        self.model.eval()
        with self._forked("samples"), torch.no_grad():
            inputs, targets = self.binding(batch, self.device)
            out = self.model(**inputs, **targets, return_losses=True)
        self.model.train()
        samples = out[s["output"]][:count]
        _, grid = save_samples(samples, path, s["shape"], title=f"{self.graph.name}: {title}")
        self.logger.add_image(f"samples/{s['output']}", grid, self.step)
        return path

    def _finish_outputs(self):
        if not self.dist.is_main:
            return
        self.logger.progress.stop()
        if self.v["output"]["plots"]:
            plot_curves(self.history, self.names, [o.name for o in self.objectives], self.out_dir / "curves.png")

    def _finish(self, stop_reason: str, train_time: float, steps_run: int) -> dict:
        results = {"stopped": stop_reason, "steps": self.step, "epochs": self.epoch if self.batch == 0 else
                   self.epoch + self.batch / self.bpe, "train_time_s": round(self.elapsed, 3),
                   "this_run_time_s": round(train_time, 3), "steps_this_run": steps_run,
                   "validation": self.last_eval, "monitor": self.monitor_name, "best": self.best,
                   "best_step": self.best_step, "out_dir": str(self.out_dir)}
        if self.dist.is_main:
            if self.samples_cfg:
                results["samples"] = str(self._samples(self.out_dir / "samples.png", f"step {self.step}"))
            if self.t["test"] and "test" in self.bundle.splits:
                best_dir = find_checkpoint(self.out_dir, "best")
                if best_dir is not None:
                    weights, _, _ = load_checkpoint(best_dir)
                    self.model.load_state_dict(weights)
                results["test"] = self.evaluate("test")
                results["test_checkpoint"] = str(best_dir) if best_dir else "final weights"
            if self.v["output"]["plots"]:
                path = plot_curves(self.history, self.names, [o.name for o in self.objectives],
                                   self.out_dir / "curves.png")
                results["curves"] = str(path) if path else None
            from nnspec.runtime.checkpoint import write_bytes_atomic
            write_bytes_atomic(self.out_dir / "results.json", json.dumps(results, indent=2, default=str).encode())
            self.say(f"done ({stop_reason}): {self.step} steps, {results['epochs']:.4g} epochs, "
                     f"{self.elapsed:.1f} s of training")
            if self.best is not None:
                self.say(f"best {self.monitor_name} = {self.best:.4f} at step {self.best_step}")
            if "test" in results:
                self.say(f"test: {format_values(results['test'])}  ({results['test_checkpoint']})")
            self.say(f"wrote {self.out_dir}/: checkpoints/, "
                     + ", ".join(f for f in ("steps.csv", "epochs.csv", "tb/", "curves.png", "samples.png",
                                             "results.json") if (self.out_dir / f.rstrip("/")).exists()))
        return results


class _Seeded:
    """fork_rng, then seed: randomness inside does not touch (or depend on) the training RNG."""

    def __init__(self, ctx, seed: int):
        self.ctx, self.seed = ctx, seed

    def __enter__(self):
        self.ctx.__enter__()
        torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc)


def train(config, *, overrides=(), out_dir=None, resume=False, resume_from=None, overwrite=False, quiet=False,
          echo=None) -> dict:
    """Train from a config file (or a Config); returns the results (also written to OUT/results.json)."""
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    trainer = Trainer(cfg, out_dir=out_dir, resume=resume, resume_from=resume_from, overwrite=overwrite, quiet=quiet,
                      echo=echo)
    return trainer.run()
