"""`nnspec summary`: a per-layer table (name, op, output shape, parameters, MACs) and totals
(parameters, trainable parameters, estimated activation memory for a batch size).

MACs count multiply-accumulates of linear, convolution, matmul-like ops (elementwise ops count 0, as
in the usual profilers). Activation memory is the sum of every op's output size at the given batch
size (what autograd keeps for the backward pass, as an upper estimate), in the output's dtype.
"""
from __future__ import annotations

import re

from nnspec.compiler.ir import Graph
from nnspec.compiler.ops import REGISTRY
from nnspec.compiler.shapes import Sym, is_concrete, numel, shape_str

DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i32": 4, "i64": 8, "bool": 1}


def evaluate_dim(d, env: dict):
    """A dimension's value with symbols substituted, or None if a symbol is unknown."""
    if is_concrete(d):
        return d
    if isinstance(d, Sym):
        total = 0
        for mono, coef in d.terms.items():
            term = coef
            for atom in mono:
                v = env.get(atom)
                if v is None:
                    v = _eval_atom(atom, env)
                if v is None:
                    return None
                term *= v
            total += term
        return total
    return None


def _eval_atom(atom: str, env: dict):
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", atom))
    if not names <= set(env):
        return None
    try:
        return int(eval(atom, {"__builtins__": {}}, dict(env)))  # atoms are our own (H - 1)//2 forms
    except Exception:
        return None


def rows(graph: Graph, env: dict | None = None, prefix: str = "") -> list[dict]:
    env = env or {}
    out = []
    seen_modules: set[str] = set()
    for nid in graph.topo_order():
        node = graph.nodes[nid]
        if node.op in ("constant", "target"):
            continue
        params = 0
        if node.module and node.module not in seen_modules:
            seen_modules.add(node.module)
            info = graph.modules[node.module]
            params = sum(p.numel for p in info.params if p.init != "buffer")
        macs = 0
        op = REGISTRY.get(node.op)
        if op is not None and op.macs is not None:
            macs = op.macs([graph.type_of(r) for r in node.inputs], node.outputs, node.attrs)
        name = node.module or ".".join(node.path + ((node.label,) if node.label else (nid,)))
        row = {"name": prefix + name, "op": node.op, "shape": [str(d) for d in node.outputs[0].shape],
               "shape_text": ", ".join(shape_str(t.shape) for t in node.outputs), "params": params,
               "macs": str(macs) if isinstance(macs, Sym) else macs,
               "macs_value": evaluate_dim(macs, env), "line": node.span.line if node.span else None,
               "bytes": _bytes(node.outputs, env), "shared": bool(node.module and graph.modules[node.module].calls > 1)}
        out.append(row)
        if node.op == "scan":
            steps = evaluate_dim(node.attrs["length"], env)
            for sub in rows(node.attrs["body"], env, prefix="  "):
                if sub["op"] == "input":
                    continue
                if sub["macs_value"] is not None and steps is not None:
                    sub["macs_value"] *= steps
                    row["macs_value"] = (row["macs_value"] or 0) + sub["macs_value"]
                if sub["bytes"] is not None and steps is not None:
                    sub["bytes"] *= steps
                out.append(sub)
    return out


def _bytes(types, env):
    total = 0
    for t in types:
        n = evaluate_dim(numel(t.shape), env)
        if n is None:
            return None
        total += n * DTYPE_BYTES.get(t.dtype, 4)
    return total


def summarize(graph: Graph, batch: int = 1, dims: dict | None = None) -> dict:
    env = dict(dims or {})
    batch_symbols = _batch_symbols(graph)
    for s in batch_symbols:
        env.setdefault(s, batch)
    table = rows(graph, env)
    unknown = sorted({s for name, (src, ax) in graph.symbols.items() for s in [name] if s not in env})
    act = None if any(r["bytes"] is None for r in table if r["op"] not in ("input",)) else \
        sum(r["bytes"] for r in table if r["op"] not in ("input", "parameter"))
    macs = None if any(r["macs_value"] is None for r in table if not r["name"].startswith("  ")) else \
        sum(r["macs_value"] for r in table if not r["name"].startswith("  "))
    return {
        "model": graph.name, "source": graph.source, "layers": table,
        "total_params": graph.param_count(), "trainable_params": graph.param_count(trainable_only=True),
        "macs": macs, "batch": batch, "dims": env, "unknown_dims": unknown,
        "activation_bytes": act,
        "inputs": {graph.nodes[i].attrs["name"]: str(graph.nodes[i].outputs[0]) for i in graph.inputs},
        "outputs": {k: str(graph.type_of(r)) for k, r in graph.outputs.items()},
        "losses": list(graph.losses),
    }


def _batch_symbols(graph: Graph) -> list[str]:
    """Symbols in the leading dimension of an input: the batch size."""
    out: list[str] = []
    for nid in graph.inputs + graph.targets:
        t = graph.nodes[nid].outputs[0]
        if t.rank and isinstance(t.shape[0], Sym) and len(t.shape[0].symbols()) == 1:
            out.extend(t.shape[0].symbols())
    return sorted(set(out))


def human(n) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def human_bytes(n) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_table(s: dict) -> str:
    headers = ("#", "name", "op", "output shape", "params", "MACs")
    body = []
    for i, r in enumerate(s["layers"]):
        macs = r["macs_value"] if r["macs_value"] is not None else r["macs"]
        body.append((str(i), r["name"] + (" (shared)" if r["shared"] else ""), r["op"], r["shape_text"],
                     f"{r['params']:,}" if r["params"] else "-",
                     human(macs) if isinstance(macs, int) and macs else (str(macs) if macs else "-")))
    widths = [max(len(h), *(len(row[k]) for row in body)) if body else len(h) for k, h in enumerate(headers)]
    widths[1] = min(widths[1], 48)
    line = lambda cells: "  ".join(c.ljust(w) if k < 4 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [f"model {s['model']}  ({s['source']})", line(headers), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in body]
    out.append("")
    out.append(f"total parameters:     {s['total_params']:,}")
    out.append(f"trainable parameters: {s['trainable_params']:,}")
    out.append(f"MACs per batch of {s['batch']}: {human(s['macs'])}")
    mem = human_bytes(s["activation_bytes"])
    note = f" (set sizes with --dim {'=..., '.join(s['unknown_dims'])}=...)" if s["activation_bytes"] is None and s["unknown_dims"] else ""
    out.append(f"activation memory (batch {s['batch']}, estimate): {mem}{note}")
    return "\n".join(out)
