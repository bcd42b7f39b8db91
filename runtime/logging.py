"""Feedback while training: a progress bar, CSV and TensorBoard logs, and PNG plots at the end.

- Progress: one `rich` bar over the whole run (batches done / total, elapsed, ETA) with the live loss and
  metrics; one line per evaluation above it. It is shown only when stderr is a terminal (or with
  output.progress: always); otherwise each evaluation prints one plain line, so logs stay readable.
- CSV: `steps.csv` (every training.log_every batches: step, epoch, learning rates, each logged loss and
  metric of the batch) and `epochs.csv` (per evaluation: epoch means of the training values, validation
  values, elapsed time). A resumed run first rewrites both from the checkpoint's history, so rows logged
  after the checkpoint by the interrupted run do not appear twice.
- TensorBoard: the same scalars under `tb/` (train/<name>, validation/<name>, lr/<objective>), and the
  sample grids of generative models; a resumed run purges the events after its checkpoint's step.
- Plots (matplotlib, Agg backend): `curves.png`, one panel per logged value (training per step, training
  epoch mean and validation per epoch) plus the learning rates; `samples.png`, a grid of generated samples.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

from nnspec.runtime.checkpoint import write_bytes_atomic


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class CsvLog:
    def __init__(self, path: Path, columns: list, rows: list | None = None):
        self.path, self.columns = Path(path), list(columns)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.columns)
        for row in rows or []:
            w.writerow([_fmt(row.get(c)) for c in self.columns])
        write_bytes_atomic(self.path, buf.getvalue().encode())
        self.file = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)

    def write(self, row: dict) -> None:
        self.writer.writerow([_fmt(row.get(c)) for c in self.columns])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Progress:
    """A rich progress bar with live values, or nothing when stderr is not a terminal."""

    def __init__(self, mode: str = "auto", quiet: bool = False):
        self.enabled = not quiet and (mode == "always" or (mode == "auto" and sys.stderr.isatty()))
        self.bar = None
        self.task = None

    def start(self, total: int, completed: int = 0, description: str = "") -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                TextColumn("{task.fields[values]}"), console=Console(stderr=True),
                                transient=False, refresh_per_second=8)
        self.bar.start()
        self.task = self.bar.add_task(description, total=total, completed=completed, values="")

    def update(self, completed: int, description: str, values: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, description=description, values=values)

    def print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class RunLogger:
    """Everything a run reports, written by rank 0 only (other ranks get `RunLogger(None, ...)`)."""

    def __init__(self, out_dir: Path | None, names: list, objectives: list, *, csv_on=True, tensorboard=True,
                 progress="auto", quiet=False, echo=None, history: dict | None = None, resume_step: int | None = None):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.names, self.objectives = list(names), list(objectives)
        self.quiet = quiet or out_dir is None
        self.echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
        self.history = history or {"steps": [], "epochs": []}
        self.progress = Progress(progress, quiet=self.quiet)
        self.step_cols = ["step", "epoch"] + [f"lr/{o}" for o in self.objectives] + self.names
        self.epoch_cols = (["epoch", "step", "time"] + [f"train/{n}" for n in self.names]
                           + [f"validation/{n}" for n in self.names])
        self.csv_steps = self.csv_epochs = self.tb = None
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if csv_on:
            self.csv_steps = CsvLog(self.out_dir / "steps.csv", self.step_cols, self.history["steps"])
            self.csv_epochs = CsvLog(self.out_dir / "epochs.csv", self.epoch_cols, self.history["epochs"])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.message("note: tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            else:
                kw = {"purge_step": resume_step + 1} if resume_step is not None else {}
                self.tb = SummaryWriter(log_dir=str(self.out_dir / "tb"), **kw)

    # ------------------------------------------------------------------ messages
    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.progress.bar is not None:
            self.progress.print(text)
        else:
            self.echo(text)

    # ------------------------------------------------------------------ rows
    def log_step(self, step: int, epoch: int, values: dict, lrs: dict) -> None:
        row = {"step": step, "epoch": epoch, **{f"lr/{k}": v for k, v in lrs.items()}, **values}
        self.history["steps"].append(row)
        if self.out_dir is None:
            return
        if self.csv_steps:
            self.csv_steps.write(row)
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            for k, v in lrs.items():
                self.tb.add_scalar(f"lr/{k}", v, step)

    def log_epoch(self, epoch: int, step: int, elapsed: float, train: dict, validation: dict | None) -> None:
        row = {"epoch": epoch, "step": step, "time": round(elapsed, 3), **{f"train/{k}": v for k, v in train.items()},
               **{f"validation/{k}": v for k, v in (validation or {}).items()}}
        self.history["epochs"].append(row)
        if self.out_dir is None:
            return
        if self.csv_epochs:
            self.csv_epochs.write(row)
        if self.tb:
            for k, v in train.items():
                self.tb.add_scalar(f"epoch/train/{k}", v, step)
            for k, v in (validation or {}).items():
                self.tb.add_scalar(f"validation/{k}", v, step)
            self.tb.flush()

    def add_image(self, tag: str, image_hwc, step: int) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        self.progress.stop()
        for c in (self.csv_steps, self.csv_epochs):
            if c:
                c.close()
        if self.tb:
            self.tb.close()


def format_values(values: dict, keys=None) -> str:
    keys = keys or list(values)
    return "  ".join(f"{k} {values[k]:.4g}" for k in keys if k in values and values[k] is not None)


# ------------------------------------------------------------------------------------------ plots


def _mpl():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history: dict, names: list, objectives: list, path: Path) -> Path | None:
    """curves.png: for every logged value, training per step (light), training epoch mean and validation."""
    steps, epochs = history.get("steps", []), history.get("epochs", [])
    if not steps and not epochs:
        return None
    plt = _mpl()
    panels = list(names) + (["lr"] if any(f"lr/{o}" in r for r in steps for o in objectives) else [])
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        if name == "lr":
            for o in objectives:
                pts = [(r["step"], r[f"lr/{o}"]) for r in steps if r.get(f"lr/{o}") is not None]
                if pts:
                    ax.plot(*zip(*pts), label=o)
            ax.set_title("learning rate")
        else:
            pts = [(r["step"], r[name]) for r in steps if r.get(name) is not None and math.isfinite(r[name])]
            if pts:
                ax.plot(*zip(*pts), color="tab:blue", alpha=0.3, linewidth=0.8, label="train (batch)")
            tr = [(r["step"], r[f"train/{name}"]) for r in epochs if r.get(f"train/{name}") is not None]
            if tr:
                ax.plot(*zip(*tr), color="tab:blue", marker=".", label="train (epoch mean)")
            va = [(r["step"], r[f"validation/{name}"]) for r in epochs if r.get(f"validation/{name}") is not None]
            if va:
                ax.plot(*zip(*va), color="tab:orange", marker=".", label="validation")
            ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


def sample_grid(samples, shape=None):
    """[N, ...] samples -> an HWC float image in [0, 1] (a grid of ceil(sqrt(N)) columns), and its channels."""
    import numpy as np
    x = samples.detach().float().cpu().numpy()
    n = x.shape[0]
    if shape:
        x = x.reshape(n, -1, shape[0], shape[1]) if x[0].size != shape[0] * shape[1] else x.reshape(n, 1, *shape)
    elif x.ndim == 2:
        side = int(round(math.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(f"samples of {x.shape[1]} values are not square images: set output.samples.shape")
        x = x.reshape(n, 1, side, side)
    elif x.ndim == 3:
        x = x[:, None]
    c, h, w = x.shape[1:]
    if c not in (1, 3):
        x, c = x[:, :1], 1
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:  # outside [0, 1]: scale the whole grid (tanh outputs and the like)
        x = (x - lo) / max(hi - lo, 1e-8)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pad = 1
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32) * 0.5
    for i in range(n):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = \
            x[i].transpose(1, 2, 0)
    return grid


def save_samples(samples, path: Path, shape=None, title: str | None = None) -> tuple:
    """samples.png: the grid, enlarged so that 8x8 digits are visible. Returns (path, grid)."""
    plt = _mpl()
    grid = sample_grid(samples, shape)
    h, w = grid.shape[:2]
    scale = max(4.0, 400.0 / max(h, w)) / 100.0
    fig = plt.figure(figsize=(w * scale, h * scale + (0.3 if title else 0)))
    ax = fig.add_axes([0, 0, 1, h * scale / (h * scale + (0.3 if title else 0))])
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9, y=0.995)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(Path(path), buf.getvalue())
    return Path(path), grid


def now() -> float:
    return time.perf_counter()
