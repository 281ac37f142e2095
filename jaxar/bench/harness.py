"""Timing primitives shared by every benchmark (``jaxar bench``).

A benchmark module ``jaxar/bench/<name>.py`` defines ``run(quick: bool) -> list[Result]``
and is listed in ``jaxar.bench.BENCHMARKS``. Each result names its in-run baseline so
that ratios (baseline time / candidate time, > 1 = candidate faster) are computed from
numbers measured in the same process. Interpret-mode Pallas is never timed.

The harness itself lives in ``pallas_kernels._bench`` (the kernels' benchmarks sit below
``jaxar.bench`` and use it directly); this module re-exports it.
"""

from __future__ import annotations

from pallas_kernels._bench import Result, Timing, timeit, with_ratios

__all__ = ["Result", "Timing", "timeit", "with_ratios"]
