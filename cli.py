"""The `nnspec` command line (click). Each command is a thin layer over the library.

Errors in a spec print like a compiler's and exit with status 1; nothing is written then. No command
prints a Python traceback for bad input (set NNSPEC_DEBUG=1 to see one for an internal error).
`check`, `summary`, `compile` and `convert` never import torch.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from pathlib import Path

import click

from nnspec import __version__
from nnspec.errors import SpecError


def _fail(message: str, code: int = 1):
    click.echo(message, err=True)
    sys.exit(code)


def handles_errors(fn):
    """Turn SpecError into a compiler-style message and exit 1; never show a traceback for bad input."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecError as e:
            _fail(e.format(getattr(e, "sources", None)))
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:  # output piped into `head`: stop quietly, like any Unix tool
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        except (OSError, MemoryError, RecursionError) as e:
            _fail(f"error: {type(e).__name__}: {e}")
        except Exception as e:  # an internal error: still no traceback unless asked
            if os.environ.get("NNSPEC_DEBUG"):
                raise
            _fail(f"internal error: {type(e).__name__}: {e}\n(this is a bug in nnspec; run with NNSPEC_DEBUG=1 "
                  "for the traceback)", 2)
    return wrapper


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader never sees half of it (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def parse_params(items) -> dict:
    """`-p hidden=128 -p act=relu` -> {'hidden': 128, 'act': 'relu'} (numbers, bools, lists understood)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--param")
        k, v = item.split("=", 1)
        out[k.strip()] = _value(v.strip())
    return out


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.startswith("[") and text.endswith("]"):
        return [_value(t.strip()) for t in text[1:-1].split(",") if t.strip()]
    return text


_param_option = click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
                             help="set a model parameter (repeatable)")
_model_option = click.option("--model", default=None, help="which model of the file (default: the first)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nnspec")
def main():
    """nnspec: write a model once as a short spec; check it, compile it to PyTorch, draw it, train it.

    SPEC is a .nn or .yaml file, or the name of a built-in spec (see `nnspec list`).
    """


@main.command()
@click.argument("spec")
@_param_option
@_model_option
@click.option("--quiet", "-q", is_flag=True, help="print nothing on success")
@handles_errors
def check(spec, params, model, quiet):
    """Parse and validate SPEC; report errors like a compiler (exit 1 on error)."""
    from nnspec.compiler.pipeline import build
    graph = build(spec, parse_params(params), model)
    from nnspec.compiler.passes.gradient_lint import gradient_warnings
    for w in list(getattr(graph, "warnings", [])) + gradient_warnings(graph):
        click.echo(w.format(), err=True)
    if not quiet:
        ins = ", ".join(f"{graph.nodes[i].attrs['name']}: {graph.nodes[i].outputs[0]}" for i in graph.inputs)
        outs = ", ".join(f"{k}: {graph.type_of(r)}" for k, r in graph.outputs.items())
        losses = f"; losses: {', '.join(graph.losses)}" if graph.losses else ""
        click.echo(f"ok: {graph.name} ({graph.source}) — {len(graph)} ops, {graph.param_count():,} parameters")
        click.echo(f"    inputs: {ins}")
        click.echo(f"    outputs: {outs or '-'}{losses}")


@main.command()
@click.argument("spec")
@_param_option
@_model_option
@click.option("--batch", "-b", default=1, show_default=True, help="batch size for MACs and activation memory")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="size of another symbolic dimension (e.g. T=128)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@handles_errors
def summary(spec, params, model, batch, dims, as_json):
    """Per-layer table of SPEC: op, output shape, parameters, MACs; totals."""
    from nnspec.compiler.pipeline import build
    from nnspec.compiler.summary import format_table, summarize
    graph = build(spec, parse_params(params), model)
    dim_values = {}
    for k, v in parse_params(dims).items():
        if not isinstance(v, int) or v < 0:
            raise click.BadParameter(f"{k} must be a non-negative integer", param_hint="--dim")
        dim_values[k] = v
    s = summarize(graph, batch=batch, dims=dim_values)
    if as_json:
        click.echo(json.dumps(s, indent=2, default=str))
    else:
        click.echo(format_table(s))


@main.command("compile")
@click.argument("spec")
@click.option("-o", "--out", "out_dir", default="build", show_default=True, type=click.Path(file_okay=False),
              help="output folder")
@_param_option
@_model_option
@click.option("--stdout", is_flag=True, help="print the module instead of writing it")
@click.option("--explain", is_flag=True,
              help="also print the fusion plans of the forward and the backward graph: groups, their ops, the memory "
                   "traffic each saves, and why every other edge was not fused (to stderr with --stdout)")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
              help="size of a symbolic dimension for --explain's byte counts (default 1: per sample)")
@click.option("--no-optimize", is_flag=True, help="compile the spec as written: no graph rewrites (fused attention "
              "and LSTM, channels-last convolutions, conv + batch norm folded in inference)")
@handles_errors
def compile_cmd(spec, out_dir, params, model, stdout, explain, dims, no_optimize):
    """Compile SPEC to a standalone PyTorch module (OUT/<spec>.py), with a Triton kernel per fusion group."""
    from nnspec.compiler.codegen.pytorch import generate
    from nnspec.compiler.pipeline import build
    graph = build(spec, parse_params(params), model, optimize=not no_optimize)
    source = generate(graph)
    if stdout:
        click.echo(source, nl=False)
    else:
        stem = Path(graph.source or "model").stem
        if stem.startswith("<"):
            stem = graph.name.lower()
        path = Path(out_dir) / f"{stem}.py"
        write_atomic(path, source)
        click.echo(f"wrote {path} ({graph.name}: {len(graph)} ops, {graph.param_count():,} parameters)")
    if explain:
        sizes = parse_params(dims)
        for k, v in sizes.items():
            if not isinstance(v, int) or v < 1:
                raise click.BadParameter(f"{k} must be a positive integer", param_hint="--dim")
        click.echo(_explain_fusion(graph, sizes), err=stdout)


def _explain_fusion(graph, sizes: dict) -> str:
    """The rewrites' choices, the forward graph's fusion plan, then the backward graph's (the pass runs on both)."""
    from nnspec.compiler.autodiff import NoGradientRule, build_backward
    from nnspec.compiler.passes.fuse import explain, fuse
    from nnspec.compiler.passes.rewrite import explain_rewrites
    parts = [explain_rewrites(graph), explain(graph, fuse(graph), sizes)]
    try:
        backward, _ = build_backward(graph)
    except (NoGradientRule, NotImplementedError) as e:
        parts.append(f"no backward graph: {e}")
    else:
        parts.append(explain(backward, fuse(backward), sizes))
    return "\n\n".join(parts)


@main.command()
@click.argument("spec")
@click.option("-o", "--out", "out_dir", default="build", show_default=True, type=click.Path(file_okay=False),
              help="output folder")
@click.option("-f", "--format", "fmt", type=click.Choice(["svg", "png", "pdf", "dot"]), default="svg",
              show_default=True)
@click.option("--graph", "which", type=click.Choice(["both", "forward", "backward"]), default="both", show_default=True,
              help="which graph to draw")
@click.option("--depth", default="auto", show_default=True, metavar="N|auto|all",
              help="fold blocks nested deeper than N into one node; 'all' draws every op; 'auto' folds big graphs")
@click.option("--unroll", type=click.IntRange(1, 64), default=None, metavar="T",
              help="draw each scan as T steps: backpropagation through time")
@click.option("--values", is_flag=True,
              help="run the model: forward values on forward edges, gradients on backward edges")
@click.option("--input", "inputs", multiple=True, metavar="NAME=VALUE",
              help="an input for --values (a number or a list; repeatable); the others are random, with --seed")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
              help="size of a symbolic dimension for --values (default: 2 for the batch, 3 for the others)")
@click.option("--seed", default=0, show_default=True, help="seed of the random inputs and weights of --values")
@click.option("--rankdir", type=click.Choice(["TB", "LR"]), default="TB", show_default=True,
              help="top to bottom, or left to right")
@click.option("--weights", type=click.Choice(["auto", "nodes", "label"]), default="auto", show_default=True,
              help="draw layer weights as nodes, or in their op's label (auto: nodes for small graphs)")
@click.option("--input-grads", is_flag=True, help="also draw the gradients with respect to the inputs")
@_param_option
@_model_option
@handles_errors
def render(spec, out_dir, fmt, which, depth, unroll, values, inputs, dims, seed, rankdir, weights, input_grads,
           params, model):
    """Draw the forward and backward graphs of SPEC: OUT/<spec>.forward.svg and OUT/<spec>.backward.svg.

    Without graphviz's `dot` program, the .dot files are written instead, with a note on installing
    graphviz. If the backward graph cannot be built (an op without a gradient rule), the forward file is
    kept and the command exits with status 1, naming what is missing.
    """
    from nnspec.compiler.pipeline import build
    from nnspec.compiler.render import BackwardUnavailable, RenderError, draw, run_values, write_rendered
    graph = build(spec, parse_params(params), model)
    if depth not in ("auto", "all"):
        try:
            depth = int(depth)
        except ValueError:
            raise click.BadParameter(f"expected a number, 'auto' or 'all', got {depth!r}",
                                     param_hint="--depth") from None
        if depth < 0:
            raise click.BadParameter("must be 0 or more", param_hint="--depth")
    given = parse_params(inputs)
    trace = None
    try:
        if values or given:
            sizes = parse_params(dims)
            for k, v in sizes.items():
                if not isinstance(v, int) or v < 1:
                    raise click.BadParameter(f"{k} must be a positive integer", param_hint="--dim")
            trace = run_values(graph, given, sizes, seed)
    except RenderError as e:
        raise click.BadParameter(str(e), param_hint="--input") from None
    except BackwardUnavailable as e:
        _fail(f"error: {e}")
    stem = Path(graph.source or "model").stem
    if stem.startswith("<"):
        stem = graph.name.lower()
    if model:
        stem = f"{stem}.{model}"
    told, written = False, None
    for kind in (["forward", "backward"] if which == "both" else [which]):
        try:
            picture = draw(graph, kind, depth=depth, unroll=unroll, values=trace, rankdir=rankdir, weights=weights,
                           input_grads=True if input_grads else None)
        except BackwardUnavailable as e:
            kept = f"; the forward graph is in {written}" if which == "both" else ""
            _fail(f"error: {e}{kept}")
        result = write_rendered(picture.dot, Path(out_dir) / f"{stem}.{kind}", fmt)
        written = result.path
        folded = "every op" if picture.depth is None else f"blocks folded below depth {picture.depth}"
        click.echo(f"wrote {result.path} ({kind} graph of {graph.name}: {picture.nodes} nodes, {folded})")
        if result.dot_only and not told:
            click.echo("note: " + " ".join(result.notes), err=True)
            told = True


@main.command()
@click.option("-o", "--out", "out_dir", default="build/gallery", show_default=True, type=click.Path(file_okay=False),
              help="output folder")
@click.option("-f", "--format", "fmt", type=click.Choice(["svg", "png"]), default="svg", show_default=True,
              help="image format of the graphs")
@click.option("--spec", "specs", multiple=True, metavar="SPEC",
              help="only this spec (a built-in name or a path; repeatable); default: every spec in specs/")
@handles_errors
def gallery(out_dir, fmt, specs):
    """Build a static HTML gallery of the specs: OUT/index.html and a page per spec (graphs, summary, source)."""
    from nnspec.compiler.gallery import build_gallery
    from nnspec.compiler.render import INSTALL_HINT, dot_available
    if not dot_available():
        _fail(f"error: the gallery draws its graphs with graphviz's `dot` program, which was not found; {INSTALL_HINT}")
    report = build_gallery(Path(out_dir), specs=list(specs) or None, fmt=fmt,
                           log=lambda message: click.echo(message, err=True))
    click.echo(f"wrote {report.index}: {len(report.pages)} pages, {report.images} images, "
               f"{report.size_bytes / 2**20:.1f} MiB, in {report.seconds:.1f} s")
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)
    if report.failures:
        _fail("error: " + "; ".join(report.failures))


@main.command()
@click.argument("spec")
@click.option("--to", "fmt", type=click.Choice(["yaml", "nn"]), default=None,
              help="target form (default: the other one)")
@click.option("-o", "--out", "out_path", default=None, type=click.Path(dir_okay=False), help="output file (default: stdout)")
@handles_errors
def convert(spec, fmt, out_path):
    """Convert SPEC between the text DSL (.nn) and YAML, without loss."""
    from nnspec.dsl.loader import display_path, parse_source, read_text, resolve_spec
    path = resolve_spec(spec)
    shown = display_path(path)
    module = parse_source(read_text(path, shown), shown)
    fmt = fmt or ("nn" if path.suffix in (".yaml", ".yml") else "yaml")
    if fmt == "yaml":
        from nnspec.dsl.yaml_front import dump_yaml
        text = dump_yaml(module)
    else:
        from nnspec.dsl.printer import print_module
        text = print_module(module)
    if out_path:
        write_atomic(Path(out_path), text)
        click.echo(f"wrote {out_path}", err=True)
    else:
        click.echo(text, nl=False)


@main.command("list")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def list_cmd(as_json):
    """The built-in specs (usable by name)."""
    from nnspec.dsl.loader import builtin_specs
    specs = builtin_specs()
    rows = []
    for name, path in specs.items():
        header = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip() if path.stat().st_size else ""
        rows.append({"name": name, "path": str(path), "title": header})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['name']:<28} {r['title']}")


@main.command()
@click.argument("name", required=False)
@handles_errors
def ops(name):
    """The op registry: every op, or one op's signature and documentation."""
    from nnspec.compiler.ops import REGISTRY
    from nnspec.errors import suggest
    if name:
        op = REGISTRY.get(name)
        if op is None:
            raise SpecError("E0204", f"unknown op `{name}`", None, hint=suggest(name, REGISTRY))
        click.echo(op.signature())
        click.echo(f"  {op.doc}")
        click.echo(f"  category: {op.category}; fusion kind: {op.kind}")
        return
    by_cat: dict = {}
    for op in REGISTRY.values():
        by_cat.setdefault(op.category, []).append(op.name)
    for cat in sorted(by_cat):
        click.echo(f"{cat}: {', '.join(sorted(by_cat[cat]))}")


@main.command()
@click.argument("specs", nargs=-1)
@click.option("--quick", is_flag=True, help="5 interleaved rounds instead of 15 (a rougher, shorter run)")
@click.option("--rounds", type=click.IntRange(1, 1000), default=None, help="interleaved rounds per measurement")
@click.option("--no-torch-compile", is_flag=True, help="leave torch.compile out (it compiles for 20 s or more per model)")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="torch threads (default: torch's own)")
@click.option("--markdown", "md_path", default=None, type=click.Path(dir_okay=False),
              help="where to write the report (default: BENCHMARKS.md in the package root)")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False),
              help="where to write the results (default: benchmarks/results.json in the package root)")
@handles_errors
def bench(specs, quick, rounds, no_torch_compile, threads, md_path, json_path):
    """Time SPEC's compiled module against a hand-written eager PyTorch module and torch.compile of it.

    Training step, inference latency, peak memory and compile time, as ratios measured in one run. Without
    SPEC: every benchmark model (mlp, mnist_cnn, resnet18, lstm, gpt2_small). Writes BENCHMARKS.md and
    benchmarks/results.json (see nnspec/bench.py for the protocol).
    """
    from nnspec import bench as bench_mod
    for s in specs:
        try:
            bench_mod.case_for(s)
        except KeyError as e:
            raise click.BadParameter(str(e.args[0]), param_hint="SPEC") from None
    report = bench_mod.run(list(specs) or None, quick=quick, rounds=rounds, torch_compile=not no_torch_compile,
                           threads=threads, command=bench_mod.command_line(), log=click.echo)
    written = bench_mod.write_report(report, Path(md_path) if md_path else bench_mod.DEFAULT_MARKDOWN,
                                     Path(json_path) if json_path else bench_mod.DEFAULT_JSON)
    for t in report["targets"]:
        click.echo(f"{'n/a   ' if t['met'] is None else 'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']:.3f}")
    click.echo("wrote " + ", ".join(str(p) for p in written))



@main.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="continue the run in the output folder from its last checkpoint")
@click.option("--from", "resume_from", default=None, type=click.Path(), metavar="CHECKPOINT",
              help="resume from this checkpoint (a run folder or a checkpoint folder); implies --resume")
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="output folder (default: output.dir of the config, else runs/<config name>)")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="override a config key, e.g. --set optimizer.lr=0.01 (repeatable; the value is read as YAML)")
@click.option("--overwrite", is_flag=True, help="start again in an output folder that already holds a run")
@click.option("--check", "check_only", is_flag=True,
              help="validate the config against the spec and the data, build everything, train nothing")
@click.option("--schema", is_flag=True, help="print every config key with its type, default and meaning")
@click.option("--quiet", "-q", is_flag=True, help="print nothing but errors")
@handles_errors
def train(config, resume, resume_from, out_dir, overrides, overwrite, check_only, schema, quiet):
    """Train the model of a training CONFIG (YAML): data, objectives, optimizer, schedule, checkpoints, logs.

    Under torchrun (`torchrun --nproc_per_node N -m nnspec train CONFIG`) it trains with
    DistributedDataParallel; only rank 0 writes. See nnspec/runtime/config.py for the format.
    """
    from nnspec.runtime.config import describe_schema, load_config
    if schema:
        click.echo(describe_schema())
        return
    if not config:
        raise click.UsageError("missing argument CONFIG (or --schema)")
    cfg = load_config(config, overrides)
    from nnspec.runtime.trainer import Trainer, TrainingError
    echo = (lambda text: None) if quiet else click.echo
    trainer = Trainer(cfg, out_dir=out_dir, resume=resume, resume_from=resume_from, overwrite=overwrite,
                      quiet=quiet, echo=echo, dry_run=check_only)
    if check_only:
        trainer.close()
        click.echo(f"ok: {cfg.path}: model {trainer.graph.name}, {len(trainer.objectives)} objective(s), "
                   f"{trainer.epochs} epoch(s) of {trainer.bpe} batch(es); logged: {', '.join(trainer.names)}")
        return
    try:
        trainer.run()
    except TrainingError as e:
        _fail(str(e))

if __name__ == "__main__":
    main()
