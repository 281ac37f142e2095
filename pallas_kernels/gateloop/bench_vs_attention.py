"""Linear attention against softmax attention at long context (compiled kernels only).

The question a researcher asks of the linear-attention family: from what length does the
O(L) chunked form beat the O(L^2) attention it replaces, and by how much? Cases: causal,
B=1, H=16, head dim 128, bfloat16 inputs, L = 2k, 8k and 32k (quick: 2k), forward and
forward + backward. Candidates, each on the same q, k, v:

  * ``pallas-gla``: ``pallas_kernels.gateloop.linear_attention``, real diagonal gates;
  * ``pallas-ssd``: the same kernel with a scalar gate per head (Mamba-2 SSD / RetNet);
  * ``pallas-gated-delta``: ``pallas_kernels.delta_rule.delta_rule`` with L2-normalised
    keys, write strengths and a scalar gate (Gated DeltaNet);
  * ``chunked-xla-gla``: ``jaxar.ops.linear_attention(impl="chunked")``, the XLA core;

against the in-run baseline ``jax.nn.dot_product_attention(is_causal=True)`` with
``implementation="cudnn"`` on GPU (XLA's on TPU). Ratios are baseline / candidate (> 1:
the candidate is faster). flash-linear-attention reports its chunked linear attention
several times faster than FlashAttention-2 at 8k; this measures ours on the device at hand.

Interpret-mode Pallas is never timed: off GPU / TPU ``run`` prints a note and returns [].

    python -m pallas_kernels.gateloop.bench_vs_attention [--quick]
    jaxar bench kernel_linear_attention
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from jaxar.ops.linear_attention import linear_attention as xla_linear_attention
from pallas_kernels import _bench
from pallas_kernels.delta_rule.ops import delta_rule
from pallas_kernels.gateloop.ops import linear_attention

BENCH = "kernel_linear_attention"
LENGTHS = (2048, 8192, 32768)


def _cases(quick: bool):
    """(B, L, H, D)."""
    return [(1, n, 16, 128) for n in (LENGTHS[:1] if quick else LENGTHS)]


def inputs(key, B, L, H, D, dtype=jnp.bfloat16):
    """q, k, v (B, L, H, D) in ``dtype``; float32 log-gates (diagonal (B, L, H, D), scalar
    (B, L, H)) and write strengths (B, L, H); the output cotangent dy."""
    ks = jax.random.split(key, 7)
    q, k, v, dy = (jax.random.normal(ks[i], (B, L, H, D), dtype) for i in range(4))
    la_diag = jax.nn.log_sigmoid(4.0 + jax.random.normal(ks[4], (B, L, H, D)))
    la_scalar = jax.nn.log_sigmoid(4.0 + jax.random.normal(ks[5], (B, L, H)))
    beta = jax.nn.sigmoid(jax.random.normal(ks[6], (B, L, H)))
    return q, k, v, la_diag, la_scalar, beta, dy


def xla_gla(q, k, v, la_diag):
    """The XLA chunked core with the same gates (``jaxar.ops.linear_attention``)."""
    return xla_linear_attention(q, k, v, la_diag, impl="chunked")[0]


def impls(la_diag, la_scalar, beta, *, platform: str, interpret=False):
    """name -> fn(q, k, v) -> (B, L, H, D): the candidates and the attention baseline (the
    gates and write strengths are held fixed: gradients flow to q, k, v, as for attention)."""
    nn_impl = "cudnn" if platform in ("gpu", "cuda") else None

    def unit(x):  # DeltaNet's L2-normalised keys (computed in float32)
        f = x.astype(jnp.float32)
        return (f * jax.lax.rsqrt(jnp.sum(f * f, -1, keepdims=True) + 1e-6)).astype(x.dtype)

    return {
        f"jax.nn({nn_impl or 'xla'})": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=nn_impl
        ),
        "pallas-gla": lambda q, k, v: linear_attention(
            q, k, v, la_diag, gate="diag", interpret=interpret
        )[0],
        "pallas-ssd": lambda q, k, v: linear_attention(
            q, k, v, la_scalar, gate="scalar", interpret=interpret
        )[0],
        "pallas-gated-delta": lambda q, k, v: delta_rule(
            q, unit(k), v, beta.astype(q.dtype), log_gate=la_scalar, interpret=interpret
        )[0],
        "chunked-xla-gla": lambda q, k, v: xla_gla(q, k, v, la_diag),
    }


def run(quick: bool) -> list[_bench.Result]:
    platform = _bench.benchmark_platform(BENCH)
    if platform is None:
        return []
    rows: list[_bench.Result] = []
    baseline = None
    for B, L, H, D in _cases(quick):
        q, k, v, la_diag, la_scalar, beta, dy = inputs(jax.random.key(0), B, L, H, D)
        cands = impls(la_diag, la_scalar, beta, platform=platform)
        baseline = next(iter(cands))
        for impl, fn in cands.items():
            for mode, f, args in _bench.fwd_and_fwd_bwd(fn, (q, k, v), dy):
                t = _bench.try_timeit(BENCH, f"{impl} L={L} {mode}", f, *args)
                if t is None:  # e.g. out of memory at 32k: reported, skipped
                    continue
                rows.append(
                    _bench.row(
                        BENCH,
                        f"causal B={B} L={L} H={H} D={D} {mode}",
                        impl,
                        t,
                        dtype="bfloat16",
                        extra={"tokens/s": round(B * L / t.median_s)},
                    )
                )
    return _bench.with_ratios(rows, baseline=baseline) if baseline else rows


if __name__ == "__main__":
    sys.exit(_bench.main(BENCH, run, sys.argv[1:]))
