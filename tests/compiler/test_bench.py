"""Smoke test of `nnspec bench` (nnspec/bench.py) on a tiny spec, a few rounds: the machinery, not the targets.

The three contenders run (torch.compile with its "eager" backend: the same code path, no code generation),
the agreement check holds and catches a reference that computes something else, the report has every
measurement, and BENCHMARKS.md / results.json are written with the table and the targets.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

from nnspec import bench
from nnspec.cli import main

TINY = """
model Tiny(hidden: int = 8) {
    input  x: f32[B, 4]
    target y: i64[B]
    h = x |> linear(hidden, name="fc1") |> relu
    logits = h |> linear(3, name="fc2")
    loss ce = cross_entropy(logits, y)
    output logits
}
"""


class TinyRef(nn.Module):
    """The tiny spec by hand."""

    def __init__(self, hidden: int = 8, act=F.relu):
        super().__init__()
        self.fc1 = nn.Linear(4, hidden)
        self.fc2 = nn.Linear(hidden, 3)
        self.act = act

    def forward(self, x, y=None):
        logits = self.fc2(self.act(self.fc1(x)))
        if y is None:
            return logits
        loss = F.cross_entropy(logits, y)
        return {"logits": logits, "ce": loss, "loss": loss}


class WrongRef(TinyRef):
    def __init__(self, hidden: int = 8):
        super().__init__(hidden, act=torch.tanh)


def _batch(torch_, gen):
    return [torch_.randn(6, 4, generator=gen), torch_.randint(0, 3, (6,), generator=gen)]


@pytest.fixture
def tiny_case(tmp_path):
    path = tmp_path / "tiny.nn"
    path.write_text(TINY)
    return bench.BenchCase("tiny", str(path), None, {"hidden": 8}, _batch, TinyRef, "4-8-3, batch 6")


def test_bench_runs_the_three_contenders_and_writes_the_report(tiny_case, tmp_path):
    report = bench.run([tiny_case], rounds=3, warmup=1, min_sample_s=0.001, compile_backend="eager",
                       command="nnspec bench tiny", log=lambda line: None)
    (r,) = report["results"]
    assert r["contenders"] == ["nnspec", "eager", "torch.compile"]
    for kind in ("train", "infer"):
        for name in r["contenders"]:
            row = r[kind][name]
            assert row["samples"] == 3 and 0 < row["q1_s"] <= row["median_s"] <= row["q3_s"]
        assert "ratio" in r[kind]["nnspec"] and "ratio" in r[kind]["torch.compile"] and "ratio" not in r[kind]["eager"]
        assert len(r[f"{kind}_samples_s"]["nnspec"]) == 3
    for name, a in r["agreement"].items():
        assert a["ok"] and a["output_max_abs_diff"] < 1e-5 and a["loss"] == pytest.approx(a["eager_loss"], rel=1e-5)
    assert all(m["train_peak_bytes"] > 0 and m["infer_peak_bytes"] > 0 for m in r["memory"].values())
    assert r["compile"]["nnspec_s"] > 0 and r["compile"]["torch_compile_train_s"] >= 0 and "ratio" in r["compile"]
    assert r["parameters"] == 4 * 8 + 8 + 8 * 3 + 3
    targets = {t["target"] for t in report["targets"]}
    assert any("training step" in t for t in targets) and any("geometric mean" in t for t in targets)
    assert any("peak training memory <= 1.00x" in t for t in targets) and any("compile time" in t for t in targets)
    assert report["machine"]["torch"] == torch.__version__

    md, js = tmp_path / "BENCHMARKS.md", tmp_path / "out" / "results.json"
    assert bench.write_report(report, md, js) == [js, md]
    loaded = json.loads(js.read_text())
    assert loaded["results"][0]["name"] == "tiny" and loaded["command"] == "nnspec bench tiny"
    text = md.read_text()
    for heading in ("## Training step", "## Inference latency", "## Peak memory", "## Compile time", "## Agreement",
                    "## Targets", "## Method"):
        assert heading in text
    assert "`nnspec bench tiny`" in text and "| tiny | 4-8-3, batch 6 |" in text
    assert text.count("| tiny |") >= 5          # one row in each table


def test_a_reference_that_computes_something_else_is_refused(tiny_case):
    tiny_case.reference = WrongRef
    with pytest.raises(AssertionError, match="does not compute what the eager reference computes"):
        bench.run_case(tiny_case, rounds=1, warmup=0, torch_compile=False, log=lambda line: None)


def test_cases_are_found_by_name_or_path():
    assert set(bench.CASES) == {"mlp", "mnist_cnn", "resnet18", "lstm", "gpt2_small"}
    assert bench.case_for("specs/gpt2_small.nn").spec == "specs/gpt2_small.nn"
    assert bench.case_for("lstm").model == "LSTM"
    with pytest.raises(KeyError, match="no hand-written reference"):
        bench.case_for("vgg16")
    refs = bench.load_references().REFERENCES
    assert set(refs) == set(bench.CASES)


def test_cli_refuses_a_spec_without_a_reference():
    result = CliRunner().invoke(main, ["bench", "vgg16"])
    assert result.exit_code == 2 and "no hand-written reference" in result.output


def test_statistics():
    s = bench.summarize_times({"eager": [1.0, 2.0, 3.0], "nnspec": [0.5, 2.0, 1.5]})
    assert s["eager"]["median_s"] == 2.0 and "ratio" not in s["eager"]
    assert s["nnspec"]["ratio"] == 0.5            # median of the per-round ratios 0.5, 1.0, 0.5
    assert bench.geometric_mean([0.5, 2.0]) == pytest.approx(1.0)
    rows = bench.check_targets([{"name": "gpt2_small", "train": {"nnspec": {"ratio": 0.8}},
                                 "memory": {"nnspec": {"train_peak_bytes": 90}, "eager": {"train_peak_bytes": 100}},
                                 "compile": {"ratio": 0.001}}])
    met = {r["target"]: r["met"] for r in rows}
    assert met["gpt2_small: peak training memory <= 0.85x eager"] is False     # 0.90 on the transformer
    assert met["gpt2_small: training step <= 1.00x eager"]
    assert met["gpt2_small: nnspec compile time <= 1% of torch.compile's"]
    # torch.compile that compiles nothing (dynamo leaves nn.LSTM to eager) is no yardstick for compile time
    rows = bench.check_targets([{"name": "lstm", "train": {}, "memory": {},
                                 "compile": {"ratio": 0.9, "torch_compile_graphs": 0}}])
    assert rows == [{"target": "lstm: nnspec compile time <= 1% of torch.compile's "
                               "(n/a: torch.compile compiled no graph)", "value": 0.9, "met": None}]
