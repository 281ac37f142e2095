"""Timing primitives shared by every benchmark (``jaxar bench``).

A benchmark module ``jaxar/bench/<name>.py`` defines ``run(quick: bool) -> list[Result]``
and is listed in ``jaxar.bench.BENCHMARKS``. Each result names its in-run baseline so
that ratios (baseline time / candidate time, > 1 = candidate faster) are computed from
numbers measured in the same process. Interpret-mode Pallas is never timed.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax


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


def with_ratios(results: list[Result], baseline: str) -> list[Result]:
    """Fills ``baseline``/``ratio`` of every row against the row of impl ``baseline``
    with the same (bench, case, dtype)."""
    base = {(r.bench, r.case, r.dtype): r.median_ms for r in results if r.impl == baseline}
    for r in results:
        b = base.get((r.bench, r.case, r.dtype))
        if b is not None:
            r.baseline, r.ratio = baseline, b / r.median_ms
    return results
