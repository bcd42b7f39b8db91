"""The training config: schema validation with YAML locations, overrides, diffs, and the checks against the spec
that run before any training step."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nnspec.errors import SpecError
from nnspec.runtime.config import config_from_text, describe_schema, diff_configs, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MLP = str(ROOT / "specs" / "digits_mlp.nn")

BASE = f"""\
model:
  spec: {MLP}
data:
  source: digits
  batch_size: 32
optimizer: {{name: adam, lr: 0.001}}
training: {{epochs: 1}}
"""


def load(text: str, overrides=()):
    return config_from_text(text, "cfg.yaml", base_dir=ROOT, overrides=overrides)


def fails(text: str, overrides=()) -> SpecError:
    with pytest.raises(SpecError) as info:
        load(text, overrides)
    return info.value


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "seq_lstm", "gan_digits"])
def test_example_configs_are_valid(name):
    cfg = load_config(EXAMPLES / f"{name}.yaml")
    assert cfg["model"]["spec"]
    assert cfg["data"]["batch_size"] >= 1
    assert len(cfg.digest()) == 64


def test_defaults_are_filled():
    cfg = load(BASE)
    assert cfg["data"]["split"] == {"train": 0.7, "validation": 0.15, "test": 0.15}
    assert cfg["training"]["seed"] == 0 and cfg["training"]["log_every"] == 10
    assert cfg["output"]["csv"] is True and cfg["objectives"] is None
    assert cfg["regularization"] == {"clip_grad_norm": None, "clip_grad_value": None, "no_decay": [],
                                     "early_stopping": None}
    assert cfg["data"]["augment"] == {"shift": 0, "noise": 0.0}


def test_unknown_top_level_key_points_at_it():
    e = fails(BASE + "optimiser: {name: sgd}\n")
    assert e.code == "E0702"
    assert "unknown key `optimiser`" in e.message
    assert (e.span.file, e.span.line, e.span.col) == ("cfg.yaml", 8, 1)
    assert e.hint == "did you mean `optimizer`?"
    assert "model, data" in e.expected


def test_unknown_optimizer_key_names_the_path_and_allowed_keys():
    e = fails(BASE.replace("{name: adam, lr: 0.001}", "{name: adam, lrr: 0.001}"))
    assert e.code == "E0702" and "optimizer.lrr" in e.message and "adam" in e.message
    assert e.span.line == 6 and e.span.col == 25
    assert "betas" in e.expected and e.hint == "did you mean `lr`?"
    text = e.format(e.sources)
    assert "cfg.yaml:6:25" in text and "lrr: 0.001" in text and "^^^" in text


def test_wrong_type_reports_found_and_expected():
    e = fails(BASE.replace("batch_size: 32", "batch_size: big"))
    assert e.code == "E0703" and "data.batch_size" in e.message
    assert e.expected == "an integer >= 1" and "'big'" in e.found
    assert (e.span.line, e.span.col) == (5, 15)
    e = fails(BASE.replace("batch_size: 32", "batch_size: 0"))
    assert "out of range" in e.message
    e = fails(BASE.replace("training: {epochs: 1}", "training: {epochs: 1, deterministic: 1}"))
    assert e.expected == "true or false"


def test_missing_required_key():
    e = fails("data: {source: digits}\n")
    assert e.code == "E0704" and "`model`" in e.message
    e = fails(BASE.replace("  source: digits\n", ""))
    assert e.code == "E0704" and "data.source" in e.message


def test_unknown_names_get_suggestions():
    e = fails(BASE.replace("name: adam", "name: adamm"))
    assert "unknown optimizer `adamm`" in e.message and e.hint == "did you mean `adam`?"
    e = fails(BASE + "schedule: {name: cosine, warmup: 3}\n")
    assert e.code == "E0702" and "schedule.warmup" in e.message and "warmup_steps" in e.expected
    e = fails(BASE + "init: [{match: '*.weight', init: xavier}]\n")
    assert "unknown initialiser `xavier`" in e.message and e.span.line == 8
    e = fails(BASE + "init: [{match: '*.weight', init: normal, std: [1]}]\n")
    assert "init[0].std" in e.message and e.expected == "a number"
    e = fails(BASE.replace("lr: 0.001", "lr: 0.001, betas: [0.9]"))
    assert "optimizer.betas" in e.message and "list of 2" in e.expected
    e = fails(BASE + "init: [{match: '*.weight', init: normal, sd: 0.1}]\n")
    assert e.code == "E0702" and "init[0].sd" in e.message and e.hint == "did you mean `std`?"
    e = fails(BASE.replace("source: digits", "source: digitz"))
    assert e.hint == "did you mean `digits`?"


def test_source_specific_keys():
    e = fails(BASE.replace("source: digits", "source: digits\n  task: adding"))
    assert e.code == "E0702" and "data.task" in e.message
    assert any("digits" in n for n in e.notes)
    cfg = load(BASE.replace("source: digits", "source: sequence\n  task: parity\n  length: 12"))
    assert cfg["data"]["task"] == "parity" and cfg["data"]["symbols"] == 8
    e = fails(BASE.replace("source: digits", "source: sequence"))
    assert e.code == "E0704" and "data.task" in e.message
    e = fails(BASE.replace("source: digits", "source: csv\n  target: label"))
    assert "exactly one of path, paths" in e.message


def test_split_must_add_up():
    e = fails(BASE.replace("batch_size: 32", "batch_size: 32\n  split: {train: 0.8, validation: 0.3, test: 0.1}"))
    assert "add up to 1.2" in e.message and e.span.line == 6


def test_yaml_1_1_exponent_strings_are_numbers():
    cfg = load(BASE.replace("lr: 0.001", "lr: 1e-3"))
    assert cfg["optimizer"]["lr"] == 0.001
    cfg = load(BASE + "regularization: {clip_grad_norm: 1e0}\n")
    assert cfg["regularization"]["clip_grad_norm"] == 1.0


def test_yaml_syntax_error_and_non_mapping():
    e = fails("model: {spec: x\ndata: [\n")
    assert e.code == "E0701" and e.span.file == "cfg.yaml"
    e = fails("- a\n- b\n")
    assert "must be a mapping" in e.message
    e = fails(BASE + "model: {spec: y}\n")
    assert "given twice" in e.message and e.span.line == 8


def test_overrides_apply_and_point_at_the_command_line():
    cfg = load(BASE, ["optimizer.lr=0.01", "training.epochs=3", "data.augment={shift: 1}"])
    assert cfg["optimizer"]["lr"] == 0.01 and cfg["training"]["epochs"] == 3
    assert cfg["data"]["augment"] == {"shift": 1, "noise": 0.0}
    e = fails(BASE, ["optimizer.lr=0.01", "data.batch_size=-4"])
    assert e.span.file == "--set" and e.span.line == 2 and e.span.col == 17
    assert "data.batch_size=-4" in e.format(e.sources)
    e = fails(BASE, ["nonsense"])
    assert "KEY.PATH=VALUE" in e.message
    cfg = load(BASE + "objectives:\n  - {name: a, loss: ce}\n", ["objectives.0.every=2"])
    assert cfg["objectives"][0]["every"] == 2


def test_diff_configs_says_what_changed():
    a = load(BASE).values
    b = load(BASE, ["optimizer.lr=0.0001", "regularization.clip_grad_norm=1.0"]).values
    rows = diff_configs(a, b)
    assert "optimizer.lr: 0.001 -> 0.0001" in rows
    assert "regularization.clip_grad_norm: null -> 1.0" in rows
    assert diff_configs(a, a) == []
    assert load(BASE).digest() == load(BASE.replace("lr: 0.001", "lr: 1.0e-3")).digest()


def test_schema_description_lists_every_section():
    text = describe_schema()
    for key in ("model:", "data:", "objectives:", "optimizer:", "schedule:", "init:", "regularization:",
                "early_stopping:", "training:", "checkpoint_every:", "output:", "samples:", "# source: sequence"):
        assert key in text


# ------------------------------------------------------------------ checks against the spec, before training


def trainer_error(text: str, tmp_path, overrides=()) -> SpecError:
    from nnspec.runtime.trainer import Trainer
    cfg = load(text, overrides)
    with pytest.raises(SpecError) as info:
        Trainer(cfg, out_dir=tmp_path / "run", quiet=True, dry_run=True)
    assert not (tmp_path / "run").exists()  # nothing was written
    return info.value


def test_unknown_loss_of_an_objective(tmp_path):
    e = trainer_error(BASE + "objectives:\n  - name: main\n    loss: cee\n", tmp_path)
    assert e.code == "E0705" and "no loss `cee`" in e.message
    assert (e.span.line, e.span.col) == (10, 11) and e.hint == "did you mean `ce`?"


def test_parameter_pattern_that_matches_nothing(tmp_path):
    e = trainer_error(BASE + "objectives:\n  - name: main\n    params: ['fc1.*', 'encoder.*']\n", tmp_path)
    assert "`encoder.*` matches no parameter" in e.message and "fc1.weight" in e.expected
    assert e.span.line == 10
    e = trainer_error(BASE + "init: [{match: 'conv*.weight', init: zeros}]\n", tmp_path)
    assert "matches no parameter" in e.message and e.span.line == 8


def test_unknown_metric_monitor_and_mapping(tmp_path):
    e = trainer_error(BASE + "metrics: [accuracy, f1]\n", tmp_path)
    assert "`f1` is not a loss or metric" in e.message and e.span.line == 8
    e = trainer_error(BASE, tmp_path, ["training.monitor=validation.acc"])
    assert "`acc` is not a logged value" in e.message and "accuracy" in e.expected
    assert e.span.file == "--set"
    e = trainer_error(BASE.replace("batch_size: 32", "batch_size: 32\n  inputs: {image: x}"), tmp_path)
    assert "no input `image`" in e.message and e.span.line == 6
    e = trainer_error(BASE.replace("batch_size: 32", "batch_size: 32\n  inputs: {x: pixels}"), tmp_path)
    assert "no field `pixels`" in e.message


def test_data_that_does_not_fit_the_input(tmp_path):
    e = trainer_error(BASE.replace("source: digits", "source: iris"), tmp_path)
    assert e.code == "E0706" and "does not fit the input `x: f32[B, 64]`" in e.message


def test_plateau_schedule_direction_is_checked(tmp_path):
    e = trainer_error(BASE + "schedule: {name: plateau}\n", tmp_path, ["training.monitor=validation.accuracy"])
    assert "mode: max" in e.expected and e.span.line == 8


def test_a_spec_without_loss_is_rejected(tmp_path):
    spec = tmp_path / "noloss.nn"
    spec.write_text("model M() {\n    input x: f32[B, 64]\n    output y = x |> linear(3)\n}\n")
    e = trainer_error(BASE.replace(MLP, str(spec)), tmp_path)
    assert "declares no loss" in e.message and e.span.line == 2


def test_missing_spec_and_existing_run(tmp_path):
    e = trainer_error(BASE.replace(MLP, "specs/nope.nn"), tmp_path)
    assert e.code == "E0706" and "not found" in e.message and e.span.line == 2


def test_cli_reports_config_errors_without_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(BASE.replace("lr: 0.001", "lr: fast"))
    env_root = ROOT.parent
    code = ("import sys, importlib.util; from pathlib import Path; root = Path(sys.argv[1]);"
            "spec = importlib.util.spec_from_file_location('nnspec', root / '__init__.py', "
            "submodule_search_locations=[str(root)]); m = importlib.util.module_from_spec(spec); "
            "sys.modules['nnspec'] = m; spec.loader.exec_module(m); from nnspec.cli import main; "
            "sys.argv = ['nnspec', 'train', sys.argv[2]]; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(cfg)], capture_output=True, text=True,
                          cwd=env_root, timeout=120)
    assert proc.returncode == 1
    assert "error[E0703]: `optimizer.lr` must be a number" in proc.stderr
    assert "bad.yaml:6:29" in proc.stderr and "Traceback" not in proc.stderr
