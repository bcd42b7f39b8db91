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
    for w in getattr(graph, "warnings", []):
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
@handles_errors
def compile_cmd(spec, out_dir, params, model, stdout):
    """Compile SPEC to a standalone PyTorch module (OUT/<spec>.py)."""
    from nnspec.compiler.codegen.pytorch import generate
    from nnspec.compiler.pipeline import build
    graph = build(spec, parse_params(params), model)
    source = generate(graph)
    if stdout:
        click.echo(source, nl=False)
        return
    stem = Path(graph.source or "model").stem
    if stem.startswith("<"):
        stem = graph.name.lower()
    path = Path(out_dir) / f"{stem}.py"
    write_atomic(path, source)
    click.echo(f"wrote {path} ({graph.name}: {len(graph)} ops, {graph.param_count():,} parameters)")


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


if __name__ == "__main__":
    main()
