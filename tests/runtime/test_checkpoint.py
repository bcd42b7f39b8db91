"""Checkpoints: atomic writes, last/best retention, RNG state, exact resume after SIGKILL, and resuming after the
config or the spec changed."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnspec.errors import SpecError
from nnspec.runtime import checkpoint as ck
from nnspec.runtime.config import config_from_text
from nnspec.runtime.trainer import train

ROOT = Path(__file__).resolve().parents[2]

DROPOUT_SPEC = """\
# an MLP with dropout: its training draws random numbers at every step
model DropMLP() {
    input x: f32[B, 64]
    target y: i64[B]
    h = x |> linear(256, name="fc1") |> relu |> dropout(0.3)
    h = h |> linear(256, name="fc2") |> relu |> dropout(0.3)
    logits = h |> linear(10, name="fc3")
    loss ce = cross_entropy(logits, y)
    metric acc = mean(cast(argmax(logits, dim=1) == y, "f32"))
    output logits
}
"""

CONFIG = """\
model: {spec: drop.nn}
data:
  source: digits
  batch_size: 16
  augment: {noise: 0.05}
optimizer: {name: adam, lr: 0.002}
schedule: {name: cosine}
training: {epochs: EPOCHS, seed: 3, checkpoint_every: 25, log_every: 5, threads: 1}
output: {tensorboard: false, plots: false}
"""


def nnspec_env(tmp_path: Path) -> dict:
    """An environment whose `python -m nnspec` is this checkout (the repo root is the package)."""
    link_dir = tmp_path / "pkg"
    link_dir.mkdir(exist_ok=True)
    if not (link_dir / "nnspec").exists():
        (link_dir / "nnspec").symlink_to(ROOT, target_is_directory=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(link_dir)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_run(tmp_path: Path, epochs: int) -> Path:
    (tmp_path / "drop.nn").write_text(DROPOUT_SPEC)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.replace("EPOCHS", str(epochs)))
    return cfg


def weights(run: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(ck.find_checkpoint(run) / "model.safetensors"))


# ------------------------------------------------------------------ atomic writes and retention


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    ck.write_bytes_atomic(target, b"old")
    real_replace = os.replace

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        ck.write_bytes_atomic(target, b"new content")
    monkeypatch.setattr(os, "replace", real_replace)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temp file left


def _state():
    return {"position": {"step": 0}, "rng": ck.rng_state(), "n": torch.arange(3)}


def test_save_checkpoint_keeps_last_and_best(tmp_path):
    w = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3)}
    ck.save_checkpoint(tmp_path, 10, w, _state(), {"step": 10}, best=True)
    ck.save_checkpoint(tmp_path, 20, w, _state(), {"step": 20})
    ck.save_checkpoint(tmp_path, 30, {k: v + 1 for k, v in w.items()}, _state(), {"step": 30})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("step-")) == ["step-00000010", "step-00000030"]
    assert json.loads((root / "last.json").read_text()) == {"step": 30, "dir": "step-00000030"}
    assert ck.find_checkpoint(tmp_path, "best").name == "step-00000010"
    assert (root / "last").resolve().name == "step-00000030"          # the convenience symlink
    loaded, state, meta = ck.load_checkpoint(ck.find_checkpoint(tmp_path))
    assert torch.equal(loaded["a.weight"], w["a.weight"] + 1) and meta["step"] == 30
    assert torch.equal(state["n"], torch.arange(3))
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    w = {"w": torch.ones(4)}
    ck.save_checkpoint(tmp_path, 5, w, _state(), {"step": 5})

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        ck.save_checkpoint(tmp_path, 6, {"w": torch.zeros(4)}, _state(), {"step": 6})
    root = tmp_path / "checkpoints"
    assert ck.find_checkpoint(tmp_path).name == "step-00000005"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    assert torch.equal(ck.load_checkpoint(ck.find_checkpoint(tmp_path))[0]["w"], torch.ones(4))


def test_shared_tensors_are_saved(tmp_path):
    base = torch.randn(4, 4)
    w = {"enc.weight": base, "dec.weight": base, "view": base[1]}
    ck.save_checkpoint(tmp_path, 1, w, _state(), {})
    loaded = ck.load_checkpoint(ck.find_checkpoint(tmp_path))[0]
    assert torch.equal(loaded["dec.weight"], base) and torch.equal(loaded["view"], base[1])


def test_rng_state_round_trip():
    state = ck.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    ck.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    loaded = torch.load(_roundtrip(state), weights_only=True)  # plain data: loads without pickled code
    ck.set_rng_state(loaded)
    assert random.random() == a[0]


def _roundtrip(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# ------------------------------------------------------------------ exact resume after SIGKILL


@pytest.mark.slow
def test_sigkill_and_resume_ends_bit_identical(tmp_path):
    cfg = write_run(tmp_path, epochs=6)
    env = nnspec_env(tmp_path)
    cmd = [sys.executable, "-m", "nnspec", "train", str(cfg)]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    ref = subprocess.Popen(cmd + ["--out", str(whole)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    log = open(tmp_path / "killed.log", "w")
    victim = subprocess.Popen(cmd + ["--out", str(killed)], env=env, cwd=tmp_path, stdout=log, stderr=log)
    pointer = killed / "checkpoints" / "last.json"
    deadline = time.time() + 180
    step = 0
    while time.time() < deadline and victim.poll() is None:
        try:
            step = json.loads(pointer.read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = 0
        if step >= 100:
            break
        time.sleep(0.002)
    assert victim.poll() is None, (tmp_path / "killed.log").read_text()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()   # it really stopped before the end
    at = json.loads(pointer.read_text())["step"]
    assert at >= 100 and at % 25 == 0
    resumed = subprocess.run(cmd + ["--out", str(killed), "--resume"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert f"resuming from {killed / 'checkpoints' / f'step-{at:08d}'} (step {at}," in resumed.stdout
    batch = int(resumed.stdout.split(f"(step {at}, epoch ")[1].split("batch ")[1].split(")")[0])
    assert batch > 0                                  # mid-epoch: the data order had to be restored
    assert "config changed" not in resumed.stdout and "spec changed" not in resumed.stdout
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    a, b = weights(killed), weights(whole)
    assert a.keys() == b.keys() and len(a) == 6
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the logs of the resumed run hold each step once, with the very same values
    assert (killed / "steps.csv").read_text() == (whole / "steps.csv").read_text()
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (killed, whole))
    assert ra["test"] == rb["test"] and ra["steps"] == rb["steps"] == 6 * 79


# ------------------------------------------------------------------ resuming after a change


def test_resume_after_config_and_spec_changes(tmp_path):
    cfg_path = write_run(tmp_path, epochs=1)
    out = tmp_path / "run"
    train(cfg_path, out_dir=out, quiet=True, overrides=["training.checkpoint_every=0"])
    with pytest.raises(SpecError) as e:
        train(cfg_path, out_dir=out, quiet=True)
    assert e.value.code == "E0707" and "already holds a run" in e.value.message and "--resume" in e.value.hint
    spec = tmp_path / "drop.nn"
    spec.write_text(spec.read_text().replace("dropout(0.3)\n    logits", "dropout(0.2)\n    logits"))
    said: list = []
    train(cfg_path, out_dir=out, resume=True, echo=said.append,
          overrides=["training.epochs=2", "optimizer.lr=0.001", "training.checkpoint_every=0"])
    text = "\n".join(said)
    assert "the config changed since this checkpoint; the new config's values are used:" in text
    assert "    optimizer.lr: 0.002 -> 0.001" in text and "    training.epochs: 1 -> 2" in text
    assert "the spec changed since this checkpoint" in text
    assert "-    h = h |> linear(256, name=\"fc2\") |> relu |> dropout(0.3)" in text
    assert "+    h = h |> linear(256, name=\"fc2\") |> relu |> dropout(0.2)" in text
    _, state, meta = ck.load_checkpoint(ck.find_checkpoint(out))
    assert meta["epoch"] == 2 and meta["config"]["optimizer"]["lr"] == 0.001
    group = state["objectives"]["train"]["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 0.001                       # the new lr drives the schedule
    spec.write_text(spec.read_text().replace("linear(256, name=\"fc2\")", "linear(128, name=\"fc2\")"))
    with pytest.raises(SpecError) as e:
        train(cfg_path, out_dir=out, resume=True, quiet=True, overrides=["training.epochs=3"])
    assert e.value.code == "E0707"
    assert "fc2.weight: [256, 256] in the checkpoint, [128, 256] in the model" in e.value.notes


def test_resume_without_checkpoint_is_an_error(tmp_path):
    cfg = config_from_text(f"model: {{spec: {ROOT / 'specs' / 'digits_mlp.nn'}}}\ndata: {{source: digits}}\n",
                           "cfg.yaml")
    with pytest.raises(SpecError) as e:
        train(cfg, out_dir=tmp_path / "none", resume=True, quiet=True)
    assert "no checkpoint to resume from" in e.value.message
