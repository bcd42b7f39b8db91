"""Compile-speed benchmark: in-process parse-to-source time of a spec (default: resnet50).

    python benchmarks/compile_speed.py [SPEC ...] [--repeat 30]

Measures, per spec, the median and spread of: load+parse, elaborate+passes, codegen, and the total
(parse-to-source), after one warm-up run (imports and the grammar are loaded once per process, as in a
long-running tool). Prints a table; it checks nothing and is not a test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def measure(spec: str, repeat: int) -> dict:
    from nnspec.compiler.codegen.pytorch import generate
    from nnspec.compiler.pipeline import build
    from nnspec.dsl.loader import load

    generate(build(spec))  # warm-up: grammar, imports, templates
    parse, passes, codegen, total = [], [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        program = load(spec)
        t1 = time.perf_counter()
        graph = build(program)
        t2 = time.perf_counter()
        generate(graph)
        t3 = time.perf_counter()
        parse.append(t1 - t0)
        passes.append(t2 - t1)
        codegen.append(t3 - t2)
        total.append(t3 - t0)
    return {"spec": spec, "nodes": len(graph), "parse": parse, "elaborate": passes, "codegen": codegen, "total": total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*", default=["resnet50"])
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {args.repeat} runs each, times in ms (median [min-max])")
    print(f"{'spec':<16}{'nodes':>7}  {'parse':>16}  {'elaborate+passes':>18}  {'codegen':>16}  {'total':>16}")
    for spec in args.specs:
        r = measure(spec, args.repeat)

        def fmt(xs):
            ms = [x * 1000 for x in xs]
            return f"{statistics.median(ms):6.1f} [{min(ms):.0f}-{max(ms):.0f}]"
        print(f"{spec:<16}{r['nodes']:>7}  {fmt(r['parse']):>16}  {fmt(r['elaborate']):>18}  {fmt(r['codegen']):>16}  "
              f"{fmt(r['total']):>16}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
