"""`torchrun --nproc_per_node 2 -m nnspec train CONFIG` on CPU (gloo): two processes with batch b reach the weights
of one process with batch 2b, for one objective (DistributedDataParallel) and for several (per-step all-reduce)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnspec.runtime.checkpoint import find_checkpoint, load_checkpoint
from nnspec.runtime.config import config_from_text
from nnspec.runtime.data import EpochBatches
from nnspec.runtime.trainer import train

ROOT = Path(__file__).resolve().parents[2]

CONFIG = f"""\
model: {{spec: {ROOT / 'specs' / 'digits_mlp.nn'}, params: {{hidden: 32}}}}
data: {{source: digits, batch_size: BATCH, drop_last: true}}
optimizer: {{name: sgd, lr: 0.2}}
training: {{steps: 30, seed: 7, log_every: 5, threads: 1, test: false}}
output: {{tensorboard: false, plots: false}}
"""

TWO_STEPS = """\
objectives:
  - {name: hidden, loss: ce, params: ['fc1.*']}
  - {name: head, loss: ce, params: ['fc2.*', 'fc3.*'], optimizer: {name: sgd, lr: 0.1}}
"""


def nnspec_env(tmp_path: Path) -> dict:
    """An environment whose `python -m nnspec` is this checkout (the repo root is the package)."""
    link_dir = tmp_path / "pkg"
    link_dir.mkdir(exist_ok=True)
    (link_dir / "nnspec").symlink_to(ROOT, target_is_directory=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(link_dir)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
@pytest.mark.parametrize("objectives", ["", TWO_STEPS], ids=["ddp", "two-objectives"])
def test_two_processes_match_one_process_with_double_batch(tmp_path, objectives):
    two = tmp_path / "two.yaml"
    two.write_text(CONFIG.replace("BATCH", "16") + objectives)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "nnspec", "train", str(two), "--out", str(tmp_path / "two")],
                          env=nnspec_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 processes (gloo)" in proc.stdout
    one = config_from_text(CONFIG.replace("BATCH", "32") + objectives, "one.yaml")
    train(one, out_dir=tmp_path / "one", quiet=True)
    w2, state2, meta2 = load_checkpoint(find_checkpoint(tmp_path / "two"))
    w1, _, meta1 = load_checkpoint(find_checkpoint(tmp_path / "one"))
    assert meta2["world_size"] == 2 and meta1["world_size"] == 1 and meta2["step"] == meta1["step"] == 30
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    history = state2["history"]["steps"]
    assert history[-1]["ce"] < history[0]["ce"]  # the weights compared are trained ones
    # only rank 0 writes: one header, each logged step once
    lines = (tmp_path / "two" / "steps.csv").read_text().splitlines()
    assert lines[0].startswith("step,epoch") and [ln.split(",")[0] for ln in lines[1:]] == ["5", "10", "15", "20",
                                                                                             "25", "30"]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["steps"] == 30
    if objectives:
        assert set(state2["objectives"]) == {"hidden", "head"}


def test_process_parts_partition_each_global_batch():
    for world in (2, 3):
        parts = [EpochBatches(100, 5, seed=2, shuffle=True, drop_last=True, rank=r, world=world) for r in range(world)]
        single = EpochBatches(100, 5 * world, seed=2, shuffle=True, drop_last=True)
        for s in parts + [single]:
            s.set_epoch(1)
        assert [sum((list(p) for p in batch), []) for batch in zip(*(list(s) for s in parts))] == list(single)
