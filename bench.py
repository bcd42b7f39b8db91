"""`nnspec bench`: a compiled spec against a hand-written eager PyTorch module and torch.compile of that module.

For each benchmark model (mlp, mnist_cnn, resnet18, lstm, gpt2_small; or the ones named on the command line)
three contenders run the same architecture with the same weights on the same batch:

    nnspec          the module nnspec compiles from the spec (nnspec.compile, optimisations on)
    eager           the independent hand-written reference in benchmarks/references.py, loaded with the
                    compiled module's state_dict
    torch.compile   torch.compile of a copy of that reference (default inductor backend, caches off)

and the script measures, in one process and one run:
  - the training step time: zero_grad + forward + loss + backward + SGD step. Each sample runs `inner` steps
    (enough for ~100 ms; 30 ms with --quick); the contenders take turns sample by sample (interleaved, the
    order rotating each round), so a change of machine load hits all three alike. Reported: median and
    inter-quartile range per contender, and the ratio to eager as the median of the per-round ratios (paired).
  - the inference latency: the forward pass in eval mode under torch.no_grad(), measured the same way.
  - the peak memory of a training step and of an inference call: torch.profiler's allocator events
    (profile_memory=True) summed in time order; the peak of that running sum is the most memory the step
    held above what was allocated before it (parameters and the batch are allocated before it, gradients
    are freed before it with zero_grad(set_to_none=True)). Allocator-level and deterministic, unlike the
    resident set size, which counts freed pages that malloc keeps.
  - compile time: nnspec.compile (parse, elaborate, passes, codegen, exec; median of 3 with a cleared cache)
    and torch.compile's first training call (forward, loss, backward) and first inference call, each minus the
    median eager call.
Before timing, the outputs (eval mode), the loss and the gradient norm of the three contenders are compared:
a benchmark of a model that computes something else would mean nothing.

It writes BENCHMARKS.md (machine, versions, command, tables, targets) and benchmarks/results.json. Every number
in them comes from this script.
"""
from __future__ import annotations

import copy
import gc
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent
REFERENCES_FILE = ROOT / "benchmarks" / "references.py"
DEFAULT_MARKDOWN = ROOT / "BENCHMARKS.md"
DEFAULT_JSON = ROOT / "benchmarks" / "results.json"
CONTENDERS = ("nnspec", "eager", "torch.compile")
MIB = 2 ** 20


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class BenchCase:
    """One benchmark model: a spec (path or built-in name), its compile-time parameters, a batch, a reference."""

    name: str
    spec: str
    model: str | None
    params: dict
    make_batch: Callable            # (torch, generator) -> list of tensors: the inputs then the targets, in order
    reference: Any                  # a key of REFERENCES in benchmarks/references.py, or an nn.Module class
    config: str                     # what the batch is, for the table
    objective: str = "loss"         # "loss": the model's own loss; "mse": MSE of the first output to a fixed target
    tolerance: float = 1e-4         # relative agreement required between the contenders' outputs


def _images(batch: int, shape: tuple, classes: int):
    def make(torch, gen):
        return [torch.randn((batch,) + shape, generator=gen), torch.randint(0, classes, (batch,), generator=gen)]
    return make


def _sequence(batch: int, steps: int, features: int):
    def make(torch, gen):
        return [torch.randn(batch, steps, features, generator=gen)]
    return make


def _tokens(batch: int, steps: int, vocab: int):
    def make(torch, gen):
        return [torch.randint(0, vocab, (batch, steps), generator=gen),
                torch.randint(0, vocab, (batch, steps), generator=gen)]
    return make


GPT2_BENCH = {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128, "vocab_size": 50257}
CASES = {
    "mlp": BenchCase("mlp", "mlp", None, {}, _images(64, (1, 28, 28), 10), "mlp", "784-300-300-10, batch 64"),
    "mnist_cnn": BenchCase("mnist_cnn", "mnist_cnn", None, {}, _images(64, (1, 28, 28), 10), "mnist_cnn",
                           "28x28, batch 64"),
    "resnet18": BenchCase("resnet18", "resnet18", None, {"classes": 10, "size": 64}, _images(16, (3, 64, 64), 10),
                          "resnet18", "64x64, 10 classes, batch 16"),
    "lstm": BenchCase("lstm", "lstm", "LSTM", {"input_size": 64, "hidden_size": 256}, _sequence(32, 32, 64), "lstm",
                      "in 64, hidden 256, seq 32, batch 32", objective="mse"),
    "gpt2_small": BenchCase("gpt2_small", "gpt2_small", "GPT2Small", dict(GPT2_BENCH),
                            _tokens(8, 128, GPT2_BENCH["vocab_size"]), "gpt2_small",
                            "4 layers, 4 heads, 256 wide, vocab 50257, 128 tokens, batch 8"),
}


def load_references():
    """benchmarks/references.py as a module (it is a plain file next to the package, importing only torch)."""
    spec = importlib.util.spec_from_file_location("nnspec_bench_references", REFERENCES_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def case_for(spec: str) -> BenchCase:
    """The benchmark case of a spec given by path or name (`specs/gpt2_small.nn`, `gpt2_small`)."""
    stem = Path(spec).stem if spec.endswith((".nn", ".yaml")) else spec
    if stem not in CASES:
        raise KeyError(f"no hand-written reference for {spec!r}: the benchmark has {', '.join(CASES)}")
    case = CASES[stem]
    if spec.endswith((".nn", ".yaml")):  # the file given, not the built-in copy
        case = copy.copy(case)
        case.spec = spec
    return case


# ------------------------------------------------------------------------------------------------ statistics
def _quartiles(xs: list) -> tuple:
    if len(xs) < 2:
        return (xs[0], xs[0]) if xs else (math.nan, math.nan)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarize_times(samples: dict, reference: str = "eager") -> dict:
    """Per contender: median, quartiles (seconds per step); ratios to `reference` as medians of per-round ratios."""
    out = {}
    for name, xs in samples.items():
        lo, hi = _quartiles(xs)
        row = {"median_s": statistics.median(xs), "q1_s": lo, "q3_s": hi, "samples": len(xs)}
        if reference in samples and name != reference:
            ratios = [a / b for a, b in zip(xs, samples[reference])]
            row["ratio"] = statistics.median(ratios)
            row["ratio_q1"], row["ratio_q3"] = _quartiles(ratios)
        out[name] = row
    return out


def geometric_mean(xs: list) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else math.nan


# ------------------------------------------------------------------------------------------------ contenders
@dataclass
class Contender:
    name: str
    module: Any
    optimizer: Any = None
    train_calls: int = 0
    first_train_s: float | None = None   # wall time of the first training call (compilation, for torch.compile)
    first_infer_s: float | None = None


def _first(out):
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0] if isinstance(out, (tuple, list)) else out


def _outputs(out) -> list:
    if isinstance(out, dict):
        return [v for k, v in out.items() if k != "loss"]
    return list(out) if isinstance(out, (tuple, list)) else [out]


class Runner:
    """Runs training steps and inference calls of one contender on one batch."""

    def __init__(self, torch, case: BenchCase, batch: list, n_inputs: int, mse_target=None):
        self.torch = torch
        self.case = case
        self.inputs = batch[:n_inputs]
        self.all = batch
        self.mse_target = mse_target

    def loss(self, module):
        F = self.torch.nn.functional
        if self.case.objective == "loss":
            return module(*self.all)["loss"]
        return F.mse_loss(_first(module(*self.inputs)), self.mse_target)

    def train_step(self, c: Contender) -> None:
        c.optimizer.zero_grad(set_to_none=True)
        self.loss(c.module).backward()
        c.optimizer.step()

    def infer(self, c: Contender):
        with self.torch.no_grad():
            return c.module(*self.inputs)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _native_stderr_silenced:
    """Kineto (the profiler's C++ side) logs each start and stop to file descriptor 2; keep the report readable."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        return False


def peak_memory(torch, fn) -> int:
    """Bytes: the peak of the allocator's running total during fn(), relative to its start (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    gc.collect()
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    total = peak = 0
    for e in events:
        total += e.nbytes()
        peak = max(peak, total)
    return peak


# ------------------------------------------------------------------------------------------------ one case
def run_case(case: BenchCase, rounds: int = 15, warmup: int = 3, min_sample_s: float = 0.03,
             torch_compile: bool = True, compile_backend: str = "inductor", log=print) -> dict:
    """Measure one benchmark case (see the module docstring); returns a JSON-ready dict."""
    import torch

    import nnspec
    refs = load_references()
    reference_cls = refs.REFERENCES[case.reference] if isinstance(case.reference, str) else case.reference

    # nnspec's compile time: the whole path from the spec to a class, with a cleared cache (median of 3)
    compile_times = []
    for _ in range(3):
        nnspec._CACHE.clear()
        t0 = time.perf_counter()
        cls = nnspec.compile(case.spec, params=case.params or None, model=case.model)
        compile_times.append(time.perf_counter() - t0)
    graph = cls.graph
    n_inputs = len(graph.inputs)
    torch.manual_seed(0)
    net = cls()
    ref = reference_cls(**cls.spec_params)
    ref.load_state_dict(net.state_dict())
    contenders = [Contender("nnspec", net), Contender("eager", ref)]
    if torch_compile:
        import torch._dynamo.utils as dynamo_utils
        torch._dynamo.reset()
        dynamo_utils.counters.clear()
        contenders.append(Contender("torch.compile", torch.compile(copy.deepcopy(ref), backend=compile_backend)))
    gen = torch.Generator().manual_seed(1)
    batch = case.make_batch(torch, gen)
    runner = Runner(torch, case, batch, n_inputs)
    by_name = {c.name: c for c in contenders}

    # torch.compile compiles on its first calls: time them (training first, as a training run would)
    for c in contenders:
        c.optimizer = torch.optim.SGD(c.module.parameters(), lr=1e-4)
    if case.objective == "mse":
        with torch.no_grad():
            shape = _first(ref.eval()(*runner.inputs)).shape
        runner.mse_target = torch.randn(shape, generator=gen)
    checks = _agreement(torch, runner, contenders, case.tolerance)  # torch.compile compiles here: timed

    train_samples, inner_train = _interleave(contenders, lambda c: runner.train_step(c), "train", rounds, warmup,
                                             min_sample_s)
    infer_samples, inner_infer = _interleave(contenders, lambda c: runner.infer(c), "eval", rounds, warmup,
                                             min_sample_s)
    memory = {}
    for c in contenders:
        c.module.train()
        c.optimizer.zero_grad(set_to_none=True)
        train_peak = peak_memory(torch, lambda: runner.train_step(c))
        c.module.eval()
        runner.infer(c)  # one call first: what a module keeps between calls (folded weights) is not per call
        infer_peak = peak_memory(torch, lambda: runner.infer(c))
        memory[c.name] = {"train_peak_bytes": train_peak, "infer_peak_bytes": infer_peak}
    eager_step = statistics.median(train_samples["eager"])
    eager_infer = statistics.median(infer_samples["eager"])
    compile_info = {"nnspec_s": statistics.median(compile_times), "nnspec_runs_s": compile_times}
    if "torch.compile" in by_name:
        tc = by_name["torch.compile"]
        import torch._dynamo.utils as dynamo_utils
        compile_info["torch_compile_train_s"] = max(tc.first_train_s - eager_step, 0.0)
        compile_info["torch_compile_infer_s"] = max(tc.first_infer_s - eager_infer, 0.0)
        compile_info["torch_compile_first_train_call_s"] = tc.first_train_s
        compile_info["torch_compile_graphs"] = int(dynamo_utils.counters["stats"]["unique_graphs"])
        # a model dynamo leaves to eager (nn.LSTM: dynamo does not trace RNN modules) compiles nothing: its first
        # call costs about one eager step; the ratio is then taken to that first call, and the table says so
        compile_info["ratio"] = compile_info["nnspec_s"] / max(compile_info["torch_compile_train_s"], tc.first_train_s
                                                                if compile_info["torch_compile_graphs"] == 0 else 1e-9)
    result = {
        "name": case.name, "spec": case.spec, "model": graph.name, "params": dict(cls.spec_params),
        "config": case.config, "parameters": graph.param_count(), "objective": case.objective,
        "contenders": [c.name for c in contenders], "agreement": checks,
        "train": summarize_times(train_samples), "train_inner_steps": inner_train,
        "infer": summarize_times(infer_samples), "infer_inner_steps": inner_infer,
        "memory": memory, "compile": compile_info,
        "train_samples_s": train_samples, "infer_samples_s": infer_samples,
    }
    log(_one_line(result))
    return result


def _agreement(torch, runner: Runner, contenders: list, tol: float) -> dict:
    """Outputs (eval), loss and gradient norm of every contender against eager, before any training step."""
    out: dict = {}
    values = {}
    for c in contenders:  # the first calls: torch.compile compiles for inference, then for training
        t0 = time.perf_counter()
        got = [o.detach() for o in _outputs(runner.infer(_set_mode(c, False)))]
        c.first_infer_s = time.perf_counter() - t0
        _set_mode(c, True)
        t0 = time.perf_counter()
        loss, gnorm = _loss_and_grad_norm(torch, runner, c)
        c.first_train_s = time.perf_counter() - t0
        values[c.name] = (got, loss, gnorm)
    base_out, base_loss, base_gnorm = values["eager"]
    for c in contenders:
        if c.name == "eager":
            continue
        got, loss, gnorm = values[c.name]
        diff = max(float((a - b).abs().max()) for a, b in zip(got, base_out))
        scale = max(float(b.abs().max()) for b in base_out) or 1.0
        row = {"output_max_abs_diff": diff, "output_scale": scale, "loss": loss, "eager_loss": base_loss,
               "grad_norm": gnorm, "eager_grad_norm": base_gnorm}
        ok = (diff <= tol * max(scale, 1.0) and abs(loss - base_loss) <= tol * max(abs(base_loss), 1.0)
              and abs(gnorm - base_gnorm) <= 10 * tol * max(base_gnorm, 1.0) and len(got) == len(base_out))
        row["ok"] = ok
        out[c.name] = row
        if not ok:
            raise AssertionError(f"{c.name} does not compute what the eager reference computes: {row}")
    return out


def _set_mode(c: Contender, train: bool) -> Contender:
    c.module.train(train)
    return c


def _loss_and_grad_norm(torch, runner: Runner, c: Contender) -> tuple:
    c.optimizer.zero_grad(set_to_none=True)
    loss = runner.loss(c.module)
    loss.backward()
    sq = sum(float(p.grad.double().pow(2).sum()) for p in c.module.parameters() if p.grad is not None)
    c.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), math.sqrt(sq)


# a pause before each sample: the thread pools of the contender that ran before it (torch's, and the OpenMP
# runtime of torch.compile's generated C++) stop spinning, so that no contender is timed in another one's wake
SETTLE_S = 0.02


def _interleave(contenders: list, fn: Callable, mode: str, rounds: int, warmup: int, min_sample_s: float):
    """Per contender, `rounds` samples of `inner` calls each, taken in turn (rotating order); seconds per call."""
    for c in contenders:
        c.module.train(mode == "train")
        for _ in range(warmup):
            fn(c)
    eager = next(c for c in contenders if c.name == "eager")
    one = min(_timed(lambda: fn(eager)) for _ in range(3))
    inner = max(1, min(200, round(min_sample_s / max(one, 1e-6))))
    samples: dict = {c.name: [] for c in contenders}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for c in order:
                time.sleep(SETTLE_S)
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn(c)
                samples[c.name].append((time.perf_counter() - t0) / inner)
    finally:
        gc.enable()
    return samples, inner


def _one_line(r: dict) -> str:
    t = r["train"]
    parts = [f"{r['name']:<11} train " + "  ".join(f"{k} {v['median_s'] * 1e3:.2f} ms" for k, v in t.items())]
    if "ratio" in t.get("nnspec", {}):
        parts.append(f"nnspec/eager {t['nnspec']['ratio']:.3f}")
    m = r["memory"]
    if "eager" in m and m["eager"]["train_peak_bytes"]:
        parts.append(f"memory {m['nnspec']['train_peak_bytes'] / m['eager']['train_peak_bytes']:.3f}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------ the run
def machine() -> dict:
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from nnspec import __version__
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "nnspec": __version__,
            "mkldnn": bool(torch.backends.mkldnn.is_available())}


TARGETS = {"train_ratio_max": 1.0, "train_geomean_max": 0.9, "memory_ratio_max": 1.0,
           "transformer_memory_ratio_max": 0.85,
           "compile_ratio_max": 0.01}
TRANSFORMERS = {"gpt2_small"}


def check_targets(results: list) -> list:
    """The performance targets of the issue, each with the measured value and whether it is met."""
    rows = []
    ratios = []
    for r in results:
        t = r["train"].get("nnspec", {})
        if "ratio" in t:
            ratios.append(t["ratio"])
            rows.append({"target": f"{r['name']}: training step <= {TARGETS['train_ratio_max']:.2f}x eager",
                         "value": t["ratio"], "met": t["ratio"] <= TARGETS["train_ratio_max"]})
    if ratios:
        g = geometric_mean(ratios)
        rows.append({"target": f"geometric mean of the training ratios <= {TARGETS['train_geomean_max']:.2f}",
                     "value": g, "met": g <= TARGETS["train_geomean_max"]})
    for r in results:
        m = r["memory"]
        if "eager" not in m or not m["eager"]["train_peak_bytes"]:
            continue
        ratio = m["nnspec"]["train_peak_bytes"] / m["eager"]["train_peak_bytes"]
        limit = TARGETS["transformer_memory_ratio_max"] if r["name"] in TRANSFORMERS else TARGETS["memory_ratio_max"]
        rows.append({"target": f"{r['name']}: peak training memory <= {limit:.2f}x eager", "value": ratio,
                     "met": ratio <= limit})
    for r in results:
        c = r["compile"]
        if "ratio" in c:
            row = {"target": f"{r['name']}: nnspec compile time <= 1% of torch.compile's", "value": c["ratio"],
                   "met": c["ratio"] <= TARGETS["compile_ratio_max"]}
            if c.get("torch_compile_graphs") == 0:   # torch.compile left the model to eager: nothing to compare
                row["met"] = None
                row["target"] += " (n/a: torch.compile compiled no graph)"
            rows.append(row)
    return rows


def _quiet_torch_compile_warnings() -> None:
    import warnings
    warnings.filterwarnings("ignore", message=".*force disabled by torch.compiler.config.force_disable_caches.*")


def run(specs: list | None = None, quick: bool = False, rounds: int | None = None, torch_compile: bool = True,
        threads: int | None = None, command: str | None = None, log=print, compile_backend: str = "inductor",
        min_sample_s: float | None = None, warmup: int | None = None) -> dict:
    """Run the benchmark cases (all of CASES by default; `specs` may name them or be BenchCase objects);
    returns the report as a dict."""
    import torch
    if threads:
        torch.set_num_threads(threads)
    cases = [s if isinstance(s, BenchCase) else case_for(s) for s in specs] if specs else list(CASES.values())
    rounds = rounds or (5 if quick else 21)
    warmup = warmup if warmup is not None else (2 if quick else 3)
    if min_sample_s is None:
        min_sample_s = 0.03 if quick else 0.1
    saved_env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    results = []
    inductor_config, saved_flag = None, None
    with tempfile.TemporaryDirectory(prefix="nnspec-bench-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a fresh cache: torch.compile's time is a cold compile
        try:
            if torch_compile:
                _quiet_torch_compile_warnings()
                import torch._dynamo  # noqa: F401  (imported before the clock starts, like nnspec's modules)
                import torch._inductor.config as inductor_config
                saved_flag = getattr(inductor_config, "force_disable_caches", None)
                if saved_flag is not None:
                    inductor_config.force_disable_caches = True
            import nnspec
            nnspec.compile("mlp")  # warm nnspec's parser and templates, as torch's imports are warm
            for case in cases:
                results.append(run_case(case, rounds=rounds, warmup=warmup, min_sample_s=min_sample_s,
                                        torch_compile=torch_compile, compile_backend=compile_backend, log=log))
        finally:
            if inductor_config is not None and saved_flag is not None:
                inductor_config.force_disable_caches = saved_flag
            if saved_env is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved_env
    report = {"command": command or "nnspec bench", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "machine": machine(), "quick": quick, "rounds": rounds, "warmup": warmup, "results": results}
    report["targets"] = check_targets(results)
    ratios = [r["train"]["nnspec"]["ratio"] for r in results if "ratio" in r["train"].get("nnspec", {})]
    report["train_ratio_geomean"] = geometric_mean(ratios) if ratios else None
    return report


# ------------------------------------------------------------------------------------------------ writing
def _ms(s: float) -> str:
    return f"{s * 1e3:.2f}" if s < 10 else f"{s * 1e3:.0f}"


def _cell(row: dict) -> str:
    return f"{_ms(row['median_s'])} [{_ms(row['q1_s'])}-{_ms(row['q3_s'])}]"


def _ratio(row: dict) -> str:
    if "ratio" not in row:
        return "-"
    return f"{row['ratio']:.3f} [{row['ratio_q1']:.3f}-{row['ratio_q3']:.3f}]"


def markdown(report: dict) -> str:
    m = report["machine"]
    res = report["results"]
    names = [c for c in CONTENDERS if any(c in r["contenders"] for r in res)]
    lines = ["# Benchmarks", "",
             "Written by `nnspec bench` (nnspec/bench.py); every number below comes from that run. Do not edit by "
             "hand: run the command again.", "",
             f"- command: `{report['command']}`",
             f"- date: {report['date']}",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; torch threads: {m['torch_threads']}",
             f"- versions: python {m['python']}, torch {m['torch']}, nnspec {m['nnspec']}",
             f"- protocol: {report['rounds']} interleaved rounds per measurement after {report['warmup']} "
             "warm-up calls; each sample times `inner` consecutive calls (about 100 ms, 30 ms with --quick) after a "
             "20 ms pause; ratios are medians of the per-round ratios (paired samples), [brackets] are "
             "inter-quartile ranges.", ""]
    lines += ["## Training step", "",
              "zero_grad + forward + loss + backward + SGD step, milliseconds per step, median [IQR].", "",
              "| model | config | " + " | ".join(names) + " | nnspec / eager | torch.compile / eager |",
              "|---|---|" + "---:|" * len(names) + "---:|---:|"]
    for r in res:
        t = r["train"]
        lines.append(f"| {r['name']} | {r['config']} | " + " | ".join(_cell(t[n]) if n in t else "-" for n in names)
                     + f" | {_ratio(t.get('nnspec', {}))} | {_ratio(t.get('torch.compile', {}))} |")
    if report.get("train_ratio_geomean") is not None:
        lines += ["", f"Geometric mean of nnspec / eager over the models: **{report['train_ratio_geomean']:.3f}**"]
    lines += ["", "## Inference latency", "",
              "Forward pass in eval mode under torch.no_grad(), milliseconds, median [IQR].", "",
              "| model | " + " | ".join(names) + " | nnspec / eager | torch.compile / eager |",
              "|---|" + "---:|" * len(names) + "---:|---:|"]
    for r in res:
        t = r["infer"]
        lines.append(f"| {r['name']} | " + " | ".join(_cell(t[n]) if n in t else "-" for n in names)
                     + f" | {_ratio(t.get('nnspec', {}))} | {_ratio(t.get('torch.compile', {}))} |")
    lines += ["", "## Peak memory", "",
              "MiB allocated above the start of the call, at its peak (torch.profiler allocator events, summed in time "
              "order). Training: one step as timed above, gradients freed before it; inference: one eval forward "
              "under no_grad, after a first one (state a module keeps between calls, such as folded weights, is not "
              "counted per call).", "",
              "| model | " + " | ".join(f"{n} train" for n in names) + " | nnspec / eager (train) | "
              + " | ".join(f"{n} inference" for n in names) + " | nnspec / eager (inference) |",
              "|---|" + "---:|" * (2 * len(names) + 2)]
    for r in res:
        mem = r["memory"]

        def cells(key):
            return " | ".join(f"{mem[n][key] / MIB:.2f}" if n in mem else "-" for n in names)

        def ratio(key):
            if "eager" not in mem or not mem["eager"][key]:
                return "-"
            return f"{mem['nnspec'][key] / mem['eager'][key]:.3f}"
        lines.append(f"| {r['name']} | {cells('train_peak_bytes')} | {ratio('train_peak_bytes')} | "
                     f"{cells('infer_peak_bytes')} | {ratio('infer_peak_bytes')} |")
    lines += ["", "## Compile time", "",
              "nnspec: spec file to module class (parse, elaborate, passes, optimisations, codegen, exec), median of 3 "
              "with a cleared cache, parser already loaded. torch.compile: its first training call and its first "
              "inference call (eval, no_grad: a second compilation), each minus one eager call; caches disabled.", "",
              "| model | nnspec (ms) | torch.compile, training (s) | torch.compile, inference (s) | graphs compiled "
              "| nnspec / torch.compile |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in res:
        c = r["compile"]
        tc_train = f"{c['torch_compile_train_s']:.2f}" if "torch_compile_train_s" in c else "-"
        tc_infer = f"{c['torch_compile_infer_s']:.2f}" if "torch_compile_infer_s" in c else "-"
        graphs = str(c.get("torch_compile_graphs", "-"))
        if c.get("torch_compile_graphs") == 0:
            graphs += " (left to eager: the ratio is to its first call)"
        ratio = f"{100 * c['ratio']:.2f}%" if "ratio" in c else "-"
        lines.append(f"| {r['name']} | {c['nnspec_s'] * 1e3:.1f} | {tc_train} | {tc_infer} | {graphs} | {ratio} |")
    lines += ["", "## Agreement", "",
              "Before timing, each contender's outputs (eval), loss and gradient norm (training mode) are compared "
              "with the eager reference on the benchmark batch.", "",
              "| model | contender | max abs output diff | loss | eager loss | grad norm | eager grad norm |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in res:
        for name, a in r["agreement"].items():
            lines.append(f"| {r['name']} | {name} | {a['output_max_abs_diff']:.2e} | {a['loss']:.6g} | "
                         f"{a['eager_loss']:.6g} | {a['grad_norm']:.6g} | {a['eager_grad_norm']:.6g} |")
    if report["targets"]:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
        for t in report["targets"]:
            value = f"{100 * t['value']:.2f}%" if "compile time" in t["target"] else f"{t['value']:.3f}"
            met = "n/a" if t["met"] is None else "yes" if t["met"] else "**no**"
            lines.append(f"| {t['target']} | {value} | {met} |")
    lines += ["", "## Method", "",
              "- Contenders share the weights (the reference loads the compiled module's state_dict; torch.compile "
              "wraps a deep copy of the reference) and the batch; each has its own SGD optimizer (lr 1e-4).",
              "- Peak memory is measured at the allocator (torch.profiler with profile_memory=True: every allocation "
              "and free of the step, summed in time order): it is the same measurement for the three contenders, "
              "deterministic, and counts what the step itself allocates (activations saved for backward, gradients, "
              "temporaries). The resident set size (ru_maxrss) was not used: it keeps freed pages that malloc holds "
              "on to and the high-water mark of everything before the step, so it cannot separate the step's memory.",
              "- Models without a loss in their spec (lstm) are trained on the mean squared error of their first "
              "output against a fixed random target, for all three contenders.",
              "- torch.compile uses the default inductor backend with its caches disabled and a fresh cache folder, "
              "so its compile time is a cold compile; nnspec's parser and templates are loaded before its clock "
              "starts, as torch's compiler modules are imported before torch.compile's.", ""]
    return "\n".join(lines)


def write_report(report: dict, markdown_path: Path | None = DEFAULT_MARKDOWN,
                 json_path: Path | None = DEFAULT_JSON) -> list:
    written = []
    if json_path is not None:
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
        written.append(json_path)
    if markdown_path is not None:
        markdown_path = Path(markdown_path)
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(markdown(report))
        written.append(markdown_path)
    return written


def command_line(argv: list | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    return "nnspec " + " ".join(shlex.quote(a) for a in argv)
