"""``jaxar bench [NAME ...] [--quick] [--out results.json]``.

Runs the registered benchmarks (``jaxar.bench.BENCHMARKS``), each comparing candidates
with baselines measured in the same run, and prints one table of medians and ratios with
the device, JAX version and dtype; ``--out`` writes the same rows as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from jaxar.bench import BENCHMARKS
from pallas_kernels._bench import environment, format_table

__all__ = ["bench_main", "environment", "format_table"]


def bench_main(argv: list[str]) -> int:
    names = ["roofline", *BENCHMARKS]
    p = argparse.ArgumentParser(prog="jaxar bench", description=__doc__.split("\n\n")[1])
    p.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {names}"
    )
    p.add_argument("--quick", action="store_true", help="small sizes (about a minute each on CPU)")
    p.add_argument("--out", help="write the results as JSON to this path")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(names))
        return 0
    unknown = [n for n in args.names if n not in names]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; known: {names}")
    selected = args.names or names
    env = environment()
    print(" | ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    rows, failed = [], []
    for name in selected:
        module = "jaxar.bench.roofline" if name == "roofline" else BENCHMARKS[name]
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        try:
            results = importlib.import_module(module).run(args.quick)
        except Exception as e:  # one broken benchmark must not hide the others
            print(f"[bench] {name} FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
            continue
        rows += [r.asdict() for r in results]
        print(f"[bench] {name}: {len(results)} rows in {time.perf_counter() - t0:.1f}s", flush=True)
    print(format_table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "quick": args.quick, "results": rows}, f, indent=1)
        print(f"wrote {args.out}")
    return 1 if failed else 0
