"""Linear-scan benchmark: the Pallas kernel vs lax.scan, lax.associative_scan and chunked XLA.

All baselines run in the same process on the same arrays: ``lax.scan`` (sequential),
``lax.associative_scan`` and the chunked XLA form (``jaxar.ops.linear_scan`` impls
"sequential", "associative", "chunked" when present, else the local equivalents below).
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
from jax import lax

from jaxar.bench import harness, roofline
from pallas_kernels import _common
from pallas_kernels.linear_scan.kernel import select_lowering
from pallas_kernels.linear_scan.ops import linear_scan

BENCH = "kernel_linear_scan"


def _sequential(a, x):
    def step(h, ax):
        h = ax[0] * h + ax[1]
        return h, h

    h0 = jnp.zeros(a.shape[:1] + a.shape[2:], jnp.result_type(a, x))
    _, h = lax.scan(step, h0, (jnp.moveaxis(a, 1, 0), jnp.moveaxis(x, 1, 0)))
    return jnp.moveaxis(h, 0, 1)


def _associative(a, x):
    combine = lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1])
    return lax.associative_scan(combine, (a, x), axis=1)[1]


def _chunked(a, x, chunk=64):
    """Associative scan inside chunks of ``chunk`` steps, a sequential carry across them."""
    B, L, *rest = a.shape
    n = L // chunk
    ac = jnp.moveaxis(a.reshape(B, n, chunk, *rest), 1, 0)
    xc = jnp.moveaxis(x.reshape(B, n, chunk, *rest), 1, 0)

    def step(h, axc):
        pa, px = _prefix(axc[0], axc[1])
        out = pa * h[:, None] + px
        return out[:, -1], out

    h0 = jnp.zeros((B, *rest), jnp.result_type(a, x))
    _, h = lax.scan(step, h0, (ac, xc))
    return jnp.moveaxis(h, 0, 1).reshape(B, L, *rest)


def _prefix(a, x):
    combine = lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1])
    return lax.associative_scan(combine, (a, x), axis=1)


def _baselines():
    try:
        from jaxar.ops import linear_scan as ref
    except (ImportError, AttributeError):
        ref = None
    if ref is None:
        return {"lax.scan": _sequential, "associative": _associative, "chunked-xla": _chunked}
    return {
        name: (lambda a, x, impl=impl: ref(a, x, impl=impl)[0])
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


def run(quick: bool) -> list[harness.Result]:
    platform = _common.benchmark_platform(BENCH)
    if platform is None:
        return []
    lowering = select_lowering(False)
    peak = roofline.published_peak()
    rows: list[harness.Result] = []
    for B, L, D, dtype in _cases(quick):
        ks = jax.random.split(jax.random.key(0), 3)
        a = jax.random.uniform(ks[0], (B, L, D), jnp.float32, 0.9, 1.0).astype(dtype)
        x = jax.random.normal(ks[1], (B, L, D), jnp.float32).astype(dtype)
        dh = jax.random.normal(ks[2], (B, L, D), jnp.float32).astype(dtype)
        impls = {f"pallas-{lowering}": lambda a, x: linear_scan(a, x)[0], **_baselines()}
        item = jnp.dtype(dtype).itemsize
        for impl, fn in impls.items():
            for mode, arrays in (("fwd", 3), ("fwd+bwd", 9)):
                if mode == "fwd":
                    f, args = jax.jit(fn), (a, x)
                else:
                    f = jax.jit(lambda a, x, dh, fn=fn: jax.vjp(fn, a, x)[1](dh))
                    args = (a, x, dh)
                try:
                    t = harness.timeit(f, *args, repeats=10)
                except Exception as e:  # report, keep going
                    print(f"[{BENCH}] {impl} {mode}: {type(e).__name__}: {e}"[:400])
                    continue
                gbs = arrays * B * L * D * item / t.median_s / 1e9
                extra = {"GB/s": round(gbs, 1)}
                if peak is not None:
                    extra["% HBM"] = round(100 * gbs * 1e9 / peak[1], 1)
                rows.append(
                    harness.Result(
                        bench=BENCH,
                        case=f"B={B} L={L} D={D} {mode}",
                        impl=impl,
                        dtype=jnp.dtype(dtype).name,
                        median_ms=1e3 * t.median_s,
                        compile_s=t.compile_s,
                        extra=extra,
                    )
                )
    return harness.with_ratios(rows, baseline="lax.scan")


if __name__ == "__main__":
    sys.exit(_common.bench_script("linear_scan", sys.argv[1:]))
