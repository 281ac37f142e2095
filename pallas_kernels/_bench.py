"""Timing harness shared by the kernel benchmarks and ``jaxar bench``.

It lives here, below ``jaxar.bench``, so that a kernel's ``bench.py`` needs only jax,
``jaxar.ops`` and this module; ``jaxar.bench`` imports it from here (never the reverse).

A benchmark module defines ``run(quick: bool) -> list[Result]``. Each result names its
in-run baseline, so ratios (baseline median / candidate median, > 1 = candidate faster)
come from numbers measured in the same process. Interpret-mode Pallas is never timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform as _platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jaxlib

__all__ = [
    "PUBLISHED",
    "Result",
    "Timing",
    "benchmark_platform",
    "environment",
    "format_table",
    "fwd_and_fwd_bwd",
    "main",
    "published_peak",
    "row",
    "timeit",
    "try_timeit",
    "with_ratios",
]

COMPILED_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")

# Published dense bf16 peaks (FLOP/s) and HBM bandwidths (bytes/s) from the vendors' data
# sheets (NVIDIA H100 / H200; Google Cloud TPU v4, v5e, v5p, v6e system architecture pages).
PUBLISHED: dict[str, tuple[float, float]] = {
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "TPU v4": (275e12, 1.2e12),
    "TPU v5 lite": (197e12, 0.82e12),
    "TPU v5e": (197e12, 0.82e12),
    "TPU v5p": (459e12, 2.77e12),
    "TPU v6e": (918e12, 1.64e12),
}


@dataclasses.dataclass
class Timing:
    median_s: float
    min_s: float
    compile_s: float
    repeats: int


def _block(x):
    return jax.tree.map(
        lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x
    )


def timeit(fn, *args, repeats: int = 5, min_time_s: float = 0.0) -> Timing:
    """Times ``fn(*args)`` (usually a jitted function): compile separately, then the median.

    The first call (compile + run) is reported as ``compile_s`` minus one median run.
    Repeats until ``repeats`` runs and at least ``min_time_s`` of measured time.
    """
    t0 = time.perf_counter()
    _block(fn(*args))
    first = time.perf_counter() - t0
    times = []
    while len(times) < repeats or sum(times) < min_time_s:
        t0 = time.perf_counter()
        _block(fn(*args))
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    med = statistics.median(times)
    return Timing(
        median_s=med, min_s=min(times), compile_s=max(first - med, 0.0), repeats=len(times)
    )


def try_timeit(bench: str, label: str, fn, *args, repeats: int = 10) -> Timing | None:
    """:func:`timeit`, or None after printing a one-line reason when the call fails (e.g.
    out of memory at a long length, cuDNN refusing a mask): a benchmark reports and goes on."""
    try:
        return timeit(fn, *args, repeats=repeats)
    except Exception as e:
        print(f"[{bench}] {label}: {type(e).__name__}: {e}"[:400])
        return None


def fwd_and_fwd_bwd(fn, args: tuple, cotangent) -> list[tuple[str, Callable, tuple]]:
    """``[(mode, jitted, args)]`` for the forward ``fn(*args)`` and the forward + backward
    (the VJP of ``cotangent``, with respect to every argument)."""

    def vjp(*a):
        return jax.vjp(fn, *a[:-1])[1](a[-1])

    return [("fwd", jax.jit(fn), tuple(args)), ("fwd+bwd", jax.jit(vjp), (*args, cotangent))]


@dataclasses.dataclass
class Result:
    """One measured row. ``ratio`` = baseline median / this median (> 1: faster)."""

    bench: str  # benchmark name, e.g. "linear_scan"
    case: str  # shape / setting, e.g. "B=4 L=4096 D=256 complex64 fwd+bwd"
    impl: str  # candidate, e.g. "chunked"
    dtype: str
    median_ms: float
    compile_s: float = 0.0
    baseline: str | None = None  # impl name of the in-run baseline for this case
    ratio: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. GB/s, TFLOP/s

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def row(bench: str, case: str, impl: str, t: Timing, *, dtype: str, extra=None) -> Result:
    """The :class:`Result` of one timed ``impl`` on ``case`` (milliseconds from ``t``)."""
    return Result(
        bench=bench, case=case, impl=impl, dtype=dtype, median_ms=1e3 * t.median_s,
        compile_s=t.compile_s, extra=dict(extra or {}),
    )  # fmt: skip


def with_ratios(results: list[Result], baseline: str) -> list[Result]:
    """Fills ``baseline``/``ratio`` of every row against the row of impl ``baseline``
    with the same (bench, case, dtype)."""
    base = {(r.bench, r.case, r.dtype): r.median_ms for r in results if r.impl == baseline}
    for r in results:
        b = base.get((r.bench, r.case, r.dtype))
        if b is not None:
            r.baseline, r.ratio = baseline, b / r.median_ms
    return results


def published_peak(device=None) -> tuple[float, float] | None:
    """(bf16 FLOP/s, HBM bytes/s) published for ``device``'s kind, if known."""
    kind = (device or jax.devices()[0]).device_kind
    for name, peak in PUBLISHED.items():
        if name.lower() in kind.lower():
            return peak
    return None


def benchmark_platform(bench: str) -> str | None:
    """The backend when a compiled kernel can be timed here; else prints why not, None."""
    platform = jax.default_backend()
    if platform not in COMPILED_PLATFORMS:
        print(
            f"[{bench}] skipped on {platform!r}: the kernel runs here only in interpret mode, "
            "which is never timed; run on a GPU or TPU."
        )
        return None
    return platform


def environment() -> dict[str, str]:
    """Device, versions and time: the header of every results table."""
    dev = jax.devices()[0]
    return {
        "device": f"{dev.device_kind} ({dev.platform}) x{jax.device_count()}",
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": _platform.python_version(),
        "host": _platform.machine(),
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


def main(bench: str, run: Callable[[bool], list[Result]], argv: list[str]) -> int:
    """``python -m pallas_kernels.<kernel>.bench [--quick] [--out results.json]``: the one
    benchmark ``bench``, with the same table (and JSON) as ``jaxar bench <bench>``."""
    p = argparse.ArgumentParser(prog=bench)
    p.add_argument("--quick", action="store_true", help="small sizes")
    p.add_argument("--out", help="write the results as JSON to this path")
    args = p.parse_args(argv)
    env = environment()
    print(" | ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    rows = [r.asdict() for r in run(args.quick)]
    print(format_table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": env, "quick": args.quick, "results": rows}, f, indent=1)
        print(f"wrote {args.out}")
    return 0
