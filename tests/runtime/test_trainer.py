"""The training loop: objectives (one step, several alternating steps), regularisation, early stopping, logs and
plots, non-finite losses, and the example configs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nnspec.cli import main as cli
from nnspec.runtime.checkpoint import find_checkpoint, load_checkpoint
from nnspec.runtime.config import config_from_text, load_config
from nnspec.runtime.trainer import Trainer, TrainingError, train

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MLP = ROOT / "specs" / "digits_mlp.nn"


def config(text: str, base_dir: Path = ROOT, overrides=()):
    return config_from_text(text, "cfg.yaml", base_dir=base_dir, overrides=overrides)


def mlp_config(extra: str = "", overrides=()):
    return config(f"""\
model: {{spec: {MLP}, params: {{hidden: 64}}}}
data: {{source: digits, batch_size: 32}}
optimizer: {{name: adam, lr: 0.003}}
training: {{epochs: 3, seed: 1, threads: 1}}
output: {{tensorboard: true}}
{extra}""", overrides=overrides)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_digits_mlp_trains_and_writes_its_outputs(tmp_path):
    out = tmp_path / "run"
    results = train(mlp_config(), out_dir=out, quiet=True)
    assert results["stopped"] == "completed" and results["steps"] == 3 * 40 and results["epochs"] == 3
    assert results["test"]["accuracy"] > 0.85 and results["validation"]["ce"] < 0.6
    steps, epochs = rows(out / "steps.csv"), rows(out / "epochs.csv")
    assert list(steps[0]) == ["step", "epoch", "lr/train", "ce", "accuracy"]
    assert [int(r["step"]) for r in steps] == list(range(10, 121, 10))
    assert len(epochs) == 3 and float(epochs[-1]["validation/accuracy"]) > 0.85
    assert float(epochs[-1]["train/ce"]) < float(epochs[0]["train/ce"])
    assert list((out / "tb").glob("events.out.tfevents.*"))
    for png in ("curves.png",):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["test"] == results["test"] and saved["monitor"] == "validation.accuracy"
    best = find_checkpoint(out, "best")
    assert best is not None and int(best.name.split("-")[1]) == results["best_step"]
    assert find_checkpoint(out).name == "step-00000120"


def test_builtin_accuracy_and_steps_limit(tmp_path):
    spec = tmp_path / "lin.nn"
    spec.write_text("model Lin() {\n    input x: f32[B, 64]\n    target y: i64[B]\n    logits = x |> linear(10)\n"
                    "    loss ce = cross_entropy(logits, y)\n    output logits\n}\n")
    cfg = config(f"model: {{spec: {spec}}}\ndata: {{source: digits, batch_size: 16}}\nmetrics: [ce, accuracy]\n"
                 "training: {steps: 7, log_every: 1, test: false}\noutput: {tensorboard: false, plots: false}\n")
    results = train(cfg, out_dir=tmp_path / "run", quiet=True)
    assert results["steps"] == 7 and results["stopped"] == "step limit" and "test" not in results
    assert 0.0 <= results["validation"]["accuracy"] <= 1.0
    assert len(rows(tmp_path / "run" / "steps.csv")) == 7
    assert load_checkpoint(find_checkpoint(tmp_path / "run"))[2]["step"] == 7


def test_evaluation_does_not_change_the_training_run(tmp_path):
    spec = tmp_path / "drop.nn"
    spec.write_text("model D() {\n    input x: f32[B, 64]\n    target y: i64[B]\n"
                    "    logits = x |> linear(32) |> relu |> dropout(0.5) |> linear(10)\n"
                    "    loss ce = cross_entropy(logits, y)\n}\n")
    base = (f"model: {{spec: {spec}}}\ndata: {{source: digits, batch_size: 64}}\n"
            "training: {epochs: 2, seed: 4}\noutput: {tensorboard: false, plots: false, csv: false}\n")
    train(config(base), out_dir=tmp_path / "a", quiet=True)
    train(config(base, overrides=["training.eval_every=5", "training.test=false"]), out_dir=tmp_path / "b", quiet=True)
    a = load_checkpoint(find_checkpoint(tmp_path / "a"))[0]
    b = load_checkpoint(find_checkpoint(tmp_path / "b"))[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_objectives_update_only_their_parameters(tmp_path):
    text = (EXAMPLES / "gan_digits.yaml").read_text()
    cfg = config(text, EXAMPLES, overrides=["model.params={hidden: 32}", "data.batch_size=32",
                                            "objectives.1.every=2", "training.threads=1"])
    tr = Trainer(cfg, out_dir=tmp_path / "run", quiet=True)
    d_obj, g_obj = tr.objectives
    assert [n for n, _ in d_obj.params] == [n for n, _ in tr.model.named_parameters() if n.startswith("discriminator.")]
    assert all(n.startswith("generator.") for n, _ in g_obj.params)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    fields = tr.bundle.splits["train"].fetch(range(32))
    tr.step = 1  # the generator runs on even steps only: this batch updates the discriminator alone
    tr._train_batch(fields, 0, 1)
    for n, p in tr.model.named_parameters():
        assert torch.equal(p, before[n]) == n.startswith("generator."), n
    tr.step = 2
    mid = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    values = tr._train_batch(fields, 0, 2)
    assert set(values) >= {"d_loss", "g_loss", "d_real", "d_fake"}
    assert all(not torch.equal(p, mid[n]) for n, p in tr.model.named_parameters())
    assert (d_obj.steps, g_obj.steps) == (2, 1)
    assert all(p.requires_grad for p in tr.model.parameters())
    tr.close()


def test_gan_example_logs_both_losses_and_draws_samples(tmp_path):
    cfg = load_config(EXAMPLES / "gan_digits.yaml", ["training.epochs=2", "model.params={hidden: 32}",
                                                      "output.samples.every=1", "training.threads=1"])
    out = tmp_path / "gan"
    results = train(cfg, out_dir=out, quiet=True)
    steps = rows(out / "steps.csv")
    assert list(steps[0])[:4] == ["step", "epoch", "lr/discriminator", "lr/generator"]
    assert all(r["d_loss"] and r["g_loss"] for r in steps)
    assert float(steps[0]["lr/generator"]) == 0.0005
    epochs = rows(out / "epochs.csv")
    assert {"train/d_loss", "train/g_loss", "validation/d_loss", "validation/g_loss"} <= set(epochs[0])
    for png in ("samples.png", "samples/epoch-0001.png", "samples/epoch-0002.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
    assert results["samples"] == str(out / "samples.png")


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    x = np.random.default_rng(0).random((40, 64)).astype(np.float32)
    x[9, 3] = np.nan                         # one sample with a NaN feature: its batch's loss is NaN
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 10)
    cfg_path = tmp_path / "nan.yaml"
    cfg_path.write_text(f"model: {{spec: {MLP}}}\n"
                        "data: {source: numpy, path: d.npz, batch_size: 4, shuffle: false,\n"
                        "       split: {train: 1.0, validation: 0.0, test: 0.0}}\n"
                        "training: {epochs: 2, checkpoint_every: 1, log_every: 1}\noutput: {tensorboard: false}\n")
    with pytest.raises(TrainingError) as e:
        train(cfg_path, out_dir=tmp_path / "run", quiet=True, overrides=["data.split_seed=0"])
    msg = str(e.value)
    assert "non-finite loss: `ce` = nan at step" in msg and "(epoch 1, batch" in msg and "objective `train`" in msg
    bad_step = int(msg.split(" at step ")[1].split(" ")[0])
    kept = find_checkpoint(tmp_path / "run")
    assert f"the last good checkpoint is kept: {kept} (step {bad_step - 1})" in msg
    assert load_checkpoint(kept)[2]["step"] == bad_step - 1
    weights = load_checkpoint(kept)[0]
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert len(rows(tmp_path / "run" / "steps.csv")) == bad_step - 1
    assert (tmp_path / "run" / "curves.png").exists()                # the curves up to the failure
    result = CliRunner().invoke(cli, ["train", str(cfg_path), "--out", str(tmp_path / "cli"), "-q"])
    assert result.exit_code == 1 and "non-finite loss" in result.output and "Traceback" not in result.output


def test_early_stopping_on_a_stalled_metric(tmp_path):
    cfg = mlp_config("regularization: {early_stopping: {metric: validation.ce, patience: 2}}\n",
                     ["optimizer={name: sgd, lr: 0.0}", "training.epochs=10"])
    results = train(cfg, out_dir=tmp_path / "run", quiet=True)
    assert results["stopped"] == "early stopping" and results["epochs"] == 3
    assert results["best_step"] == 40


def test_gradient_clipping_by_value_and_by_norm(tmp_path):
    for key, limit in (("clip_grad_value", 1e-4), ("clip_grad_norm", 1e-3)):
        cfg = mlp_config(f"regularization: {{{key}: {limit}}}\n", ["optimizer={name: sgd, lr: 1.0}"])
        tr = Trainer(cfg, out_dir=tmp_path / key, quiet=True)
        before = [p.detach().clone() for p in tr.model.parameters()]
        tr._train_batch(tr.bundle.splits["train"].fetch(range(32)), 0, 0)
        deltas = [p.detach() - b for p, b in zip(tr.model.parameters(), before)]
        if key == "clip_grad_value":
            assert max(d.abs().max().item() for d in deltas) <= limit + 1e-7  # float32 rounding of w - lr g
        else:
            total = torch.sqrt(sum((d ** 2).sum() for d in deltas)).item()
            assert total == pytest.approx(limit, rel=1e-4)
        tr.close()


def test_weight_decay_exemptions_and_frozen_parameters(tmp_path):
    cfg = mlp_config("regularization: {no_decay: ['*.bias']}\nobjectives:\n"
                     "  - {name: head, params: ['fc2.*', 'fc3.*'], optimizer: {name: adamw, lr: 0.01}}\n")
    tr = Trainer(cfg, out_dir=tmp_path / "run", quiet=True)
    groups = tr.objectives[0].optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert len(groups[1]["params"]) == 2 and all(p.dim() == 1 for p in groups[1]["params"])
    assert any("fc1.weight" in n for n in tr.notes)   # in no objective: frozen
    fc1 = tr.model.fc1.weight.detach().clone()
    tr.run()
    assert torch.equal(tr.model.fc1.weight.detach(), fc1) and not tr.model.fc1.weight.requires_grad


def test_sequence_example_with_the_lstm(tmp_path):
    cfg = load_config(EXAMPLES / "seq_lstm.yaml", ["data.samples=3000", "data.length=6", "data.batch_size=32",
                                                    "training.epochs=4",
                                                    "output.tensorboard=false", "training.threads=1"])
    results = train(cfg, out_dir=tmp_path / "lstm", quiet=True)
    first = float(rows(tmp_path / "lstm" / "epochs.csv")[0]["train/mse"])
    assert results["validation"]["mse"] < first and results["test"]["mse"] < 0.1  # the mean predictor: 1/6


def test_full_batch_graph_node_classification(tmp_path):
    spec = tmp_path / "gcn.nn"
    spec.write_text("""\
model GCN(hidden: int = 16, classes: int = 3) {
    input x: f32[N, 16]
    input adj: f32[N, N]
    target y: i64[N]
    input mask: f32[N]
    h = (adj @ x) |> linear(hidden) |> relu
    logits = (adj @ h) |> linear(classes)
    loss ce = cross_entropy(logits, y)
    metric acc = sum(cast(argmax(logits, dim=1) == y, "f32") * mask) / sum(mask)
    output logits
}
""")
    cfg = config(f"model: {{spec: {spec}}}\ndata: {{source: graph, nodes: 150, noise: 1.5}}\n"
                 "optimizer: {name: adam, lr: 0.02}\ntraining: {epochs: 60, log_every: 20}\n"
                 "output: {tensorboard: false, plots: false}\n")
    results = train(cfg, out_dir=tmp_path / "gcn", quiet=True)
    assert results["steps"] == 60 and results["test"]["acc"] > 0.8


def test_cli_check_builds_everything_and_writes_nothing(tmp_path):
    out = tmp_path / "never"
    result = CliRunner().invoke(cli, ["train", str(EXAMPLES / "digits_cnn.yaml"), "--check", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ok:" in result.output and "DigitsCNN" in result.output and "ce, acc" in result.output
    assert not out.exists()
    result = CliRunner().invoke(cli, ["train", "--schema"])
    assert result.exit_code == 0 and "checkpoint_every" in result.output


def test_training_compiles_with_the_rewrites_unless_told_not_to(tmp_path):
    """`nnspec train` runs the module `nnspec compile` writes (layouts, fused cross-entropy, in-place activations);
    `model: {optimize: false}` trains the spec as written. Both give the same first loss from the same seed."""
    base = (EXAMPLES / "digits_cnn.yaml").read_text()
    losses = {}
    for optimize in (True, False):
        cfg = config(base, base_dir=EXAMPLES, overrides=[f"model.optimize={str(optimize).lower()}",
                                                          "training.steps=1", "training.threads=1"])
        tr = Trainer(cfg, out_dir=tmp_path / str(optimize), quiet=True, dry_run=True)
        assert ("_channels_last(" in type(tr.model).source_code) == optimize
        assert ("inplace=True" in type(tr.model).source_code) == optimize
        torch.manual_seed(0)
        x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
        tr.model.load_state_dict(torch.load(tmp_path / "w.pt") if (tmp_path / "w.pt").exists() else tr.model.state_dict())
        torch.save(tr.model.state_dict(), tmp_path / "w.pt")
        losses[optimize] = tr.model(x, y)["loss"].item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
