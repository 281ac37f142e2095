"""Linear-scan benchmark: the Pallas kernel vs lax.scan, lax.associative_scan and chunked XLA.

All baselines run in the same process on the same arrays: ``lax.scan`` (sequential),
``lax.associative_scan`` and the chunked XLA form (``jaxar.ops.linear_scan`` impls
"sequential", "associative", "chunked").
The scan is memory bound, so the figure of merit is achieved bytes/s against the
published HBM bandwidth (jaxar/MATHS.md s.8): forward moves a, x in and h out (3 arrays);
forward+backward about 3 + 6 arrays (a, dh, h in and da, dx out, plus the forward).

Interpret-mode Pallas is never timed: on CPU ``run`` prints a note and returns [].

    python -m pallas_kernels.linear_scan.bench [--quick]
    jaxar bench kernel_linear_scan
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from jaxar.ops.scan import linear_scan as reference_scan
from pallas_kernels import _bench
from pallas_kernels.linear_scan.kernel import select_lowering
from pallas_kernels.linear_scan.ops import linear_scan

BENCH = "kernel_linear_scan"


def _baselines():
    return {
        name: (lambda a, x, impl=impl: reference_scan(a, x, impl=impl)[0])
        for name, impl in (
            ("lax.scan", "sequential"),
            ("associative", "associative"),
            ("chunked-xla", "chunked"),
        )
    }


def _cases(quick: bool):
    """(B, L, D, dtype): Griffin-like widths, real and complex."""
    L = 2048 if quick else 8192
    return [(8, L, 1024, jnp.float32), (8, L, 1024, jnp.bfloat16), (8, L, 512, jnp.complex64)]


def run(quick: bool) -> list[_bench.Result]:
    platform = _bench.benchmark_platform(BENCH)
    if platform is None:
        return []
    lowering = select_lowering(False)
    peak = _bench.published_peak()
    rows: list[_bench.Result] = []
    for B, L, D, dtype in _cases(quick):
        ks = jax.random.split(jax.random.key(0), 3)
        a = jax.random.uniform(ks[0], (B, L, D), jnp.float32, 0.9, 1.0).astype(dtype)
        x = jax.random.normal(ks[1], (B, L, D), jnp.float32).astype(dtype)
        dh = jax.random.normal(ks[2], (B, L, D), jnp.float32).astype(dtype)
        impls = {f"pallas-{lowering}": lambda a, x: linear_scan(a, x)[0], **_baselines()}
        item = jnp.dtype(dtype).itemsize
        for impl, fn in impls.items():
            for mode, f, args in _bench.fwd_and_fwd_bwd(fn, (a, x), dh):
                arrays = 3 if mode == "fwd" else 9  # arrays read + written
                t = _bench.try_timeit(BENCH, f"{impl} {mode}", f, *args)
                if t is None:
                    continue
                gbs = arrays * B * L * D * item / t.median_s / 1e9
                extra = {"GB/s": round(gbs, 1)}
                if peak is not None:
                    extra["% HBM"] = round(100 * gbs * 1e9 / peak[1], 1)
                rows.append(
                    _bench.row(
                        BENCH,
                        f"B={B} L={L} D={D} {mode}",
                        impl,
                        t,
                        dtype=jnp.dtype(dtype).name,
                        extra=extra,
                    )
                )
    return _bench.with_ratios(rows, baseline="lax.scan")


if __name__ == "__main__":
    sys.exit(_bench.main(BENCH, run, sys.argv[1:]))
