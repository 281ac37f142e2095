"""``jaxar bench [NAME ...] [--quick] [--out results.json]``.

Runs the registered benchmarks (``jaxar.bench.BENCHMARKS``), each comparing candidates
with baselines measured in the same run, and prints one table of medians and ratios with
the device, JAX version and dtype; ``--out`` writes the same rows as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import platform
import sys
import time


def environment() -> dict[str, str]:
    import jax
    import jaxlib

    dev = jax.devices()[0]
    return {
        "device": f"{dev.device_kind} ({dev.platform}) x{jax.device_count()}",
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "host": platform.machine(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _fmt(x, nd=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e4 else f"{x:.0f}"
    return str(x)


def format_table(rows: list[dict]) -> str:
    """A fixed-width table: bench, case, impl, dtype, median ms, compile s, ratio, extra."""
    head = ["bench", "case", "impl", "dtype", "median_ms", "compile_s", "vs", "ratio", "extra"]
    body = []
    for r in rows:
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in (r.get("extra") or {}).items())
        body.append(
            [
                r["bench"],
                r["case"],
                r["impl"],
                r["dtype"],
                _fmt(r["median_ms"]),
                _fmt(r.get("compile_s")),
                r.get("baseline") or "-",
                _fmt(r.get("ratio")),
                extra,
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def bench_main(argv: list[str]) -> int:
    from jaxar.bench import BENCHMARKS

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
