"""GateLoop benchmark: the Pallas kernel vs lax.scan, lax.associative_scan and chunked XLA.

Baselines measured in the same run on the same arrays: the recurrent form (``lax.scan``
over tokens), the parallel form (``lax.associative_scan`` over (a, k v^T) pairs; skipped
above 2^24 state elements: it materialises a K x E state per token), and the chunked XLA
form (``jaxar.ops.gateloop`` impls "recurrent", "parallel" and "chunked"). The kernel reads q, k, v, a and writes y, so the figure of merit
is bytes/s against the published HBM bandwidth (jaxar/MATHS.md s.8), with the matmul
FLOP/s beside it (about 4 L K E per head for the state terms).

Interpret-mode Pallas is never timed: on CPU ``run`` prints a note and returns [].

    python -m pallas_kernels.gateloop.bench [--quick]
    jaxar bench kernel_gateloop
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from jaxar.ops.gateloop import gateloop as reference_gateloop
from pallas_kernels import _bench
from pallas_kernels.gateloop.kernel import select_lowering
from pallas_kernels.gateloop.ops import gateloop

BENCH = "kernel_gateloop"


def _baselines(state_elems: int):
    out = {
        name: (lambda q, k, v, a, impl=impl: reference_gateloop(q, k, v, a, impl=impl)[0])
        for name, impl in (
            ("lax.scan", "recurrent"),
            ("associative", "parallel"),
            ("chunked-xla", "chunked"),
        )
    }
    if state_elems > 2**24:
        out.pop("associative")
    return out


def _cases(quick: bool):
    """(B, L, H, K, E, gate dtype)."""
    L = 1024 if quick else 4096
    return [(4, L, 8, 64, 64, jnp.float32), (4, L, 8, 64, 64, jnp.complex64)]


def run(quick: bool) -> list[_bench.Result]:
    platform = _bench.benchmark_platform(BENCH)
    if platform is None:
        return []
    lowering = select_lowering(False)
    peak = _bench.published_peak()
    rows: list[_bench.Result] = []
    for B, L, H, K, E, gdt in _cases(quick):
        ks = jax.random.split(jax.random.key(0), 6)
        q = jax.random.normal(ks[0], (B, L, H, K), jnp.bfloat16)
        k = jax.random.normal(ks[1], (B, L, H, K), jnp.bfloat16)
        v = jax.random.normal(ks[2], (B, L, H, E), jnp.bfloat16)
        a = jax.random.uniform(ks[3], (B, L, H, K), jnp.float32, 0.9, 1.0)
        if gdt == jnp.complex64:
            a = a * jnp.exp(1j * jax.random.uniform(ks[4], a.shape, jnp.float32, -0.1, 0.1))
        dy = jax.random.normal(ks[5], (B, L, H, E), jnp.bfloat16)
        impls = {
            f"pallas-{lowering}": lambda q, k, v, a: gateloop(q, k, v, a)[0],
            **_baselines(B * L * H * K * E),
        }
        nbytes = (2 * B * L * H * K + 2 * B * L * H * E) * 2 + a.size * a.dtype.itemsize
        flops = 4 * B * H * L * K * E * (2 if gdt == jnp.complex64 else 1)
        for impl, fn in impls.items():
            for mode, f, args in _bench.fwd_and_fwd_bwd(fn, (q, k, v, a), dy):
                t = _bench.try_timeit(BENCH, f"{impl} {mode}", f, *args)
                if t is None:
                    continue
                mult = 1.0 if mode == "fwd" else 3.0
                gbs = mult * nbytes / t.median_s / 1e9
                extra = {
                    "GB/s": round(gbs, 1),
                    "TFLOP/s": round(mult * flops / t.median_s / 1e12, 2),
                }
                if peak is not None:
                    extra["% HBM"] = round(100 * gbs * 1e9 / peak[1], 1)
                rows.append(
                    _bench.row(
                        BENCH,
                        f"B={B} L={L} H={H} K={K} E={E} gates {jnp.dtype(gdt).name} {mode}",
                        impl,
                        t,
                        dtype="bfloat16",
                        extra=extra,
                    )
                )
    return _bench.with_ratios(rows, baseline="lax.scan")


if __name__ == "__main__":
    sys.exit(_bench.main(BENCH, run, sys.argv[1:]))
