"""Flash-attention benchmark: the Pallas kernel vs ``jax.nn.dot_product_attention``.

Baselines measured in the same run: ``jax.nn.dot_product_attention`` (cuDNN on GPU,
XLA elsewhere) and the XLA reference (``jaxar.ops.dot_product_attention``, impl "xla").
Reports forward and forward+backward time and FLOP/s against the published bf16 peak
(jaxar/MATHS.md s.8): forward 4*B*H*Lq*Lk*K, halved when causal (and scaled by the mask's
density for block-sparse masks); backward about 2.5x forward.

Interpret-mode Pallas is never timed: on CPU ``run`` prints a note and returns [].

    python -m pallas_kernels.flash_attention.bench [--quick]
    jaxar bench kernel_flash_attention
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp

from jaxar.ops.attention import dot_product_attention
from pallas_kernels import _bench
from pallas_kernels.flash_attention import masks
from pallas_kernels.flash_attention.kernel import select_lowering
from pallas_kernels.flash_attention.ops import flash_attention

BENCH = "kernel_flash_attention"


def _cases(quick: bool):
    """(name, B, L, H, G, K, causal, block_mask) cases; the issue's target is causal L=4096."""
    L = 1024 if quick else 4096
    B = 16384 // L
    cases = [
        (f"causal L={L}", B, L, 16, 16, 128, True, None),
        (f"full L={L}", B, L, 16, 16, 128, False, None),
        (f"causal GQA 16/4 L={L}", B, L, 16, 4, 128, True, None),
    ]
    if not quick:
        cases += [
            (f"local 512 L={L}", B, L, 16, 16, 128, False, masks.mask(masks.Local(512))),
            (
                f"block-diffusion 2x{L // 2} blocks 128",
                B,
                L,
                16,
                16,
                128,
                False,
                masks.mask(masks.BlockDiffusion(128, L // 2)),
            ),
        ]
    return cases


def _density(L: int, causal: bool, spec) -> float:
    if spec is None:
        return 0.5 if causal else 1.0
    return float(spec.dense(L, L).mean())


def _xla_reference(q, k, v, causal, mask):
    """``jaxar.ops.dot_product_attention`` with impl "xla" (the in-run XLA baseline)."""
    return dot_product_attention(q, k, v, mask=mask, causal=causal, impl="xla")


def run(quick: bool) -> list[_bench.Result]:
    platform = _bench.benchmark_platform(BENCH)
    if platform is None:
        return []
    lowering = select_lowering(False)
    peak = _bench.published_peak()
    nn_impl = "cudnn" if platform in ("gpu", "cuda") else None
    rows: list[_bench.Result] = []
    for name, B, L, H, G, K, causal, spec in _cases(quick):
        ks = jax.random.split(jax.random.key(0), 4)
        q = jax.random.normal(ks[0], (B, L, H, K), jnp.bfloat16)
        k = jax.random.normal(ks[1], (B, L, G, K), jnp.bfloat16)
        v = jax.random.normal(ks[2], (B, L, G, K), jnp.bfloat16)
        do = jax.random.normal(ks[3], (B, L, H, K), jnp.bfloat16)
        dense = None if spec is None else jnp.asarray(spec.dense(L, L))[None, None]
        impls = {
            f"pallas-{lowering}": functools.partial(
                flash_attention, causal=causal, block_mask=spec
            ),
            "xla-reference": lambda q, k, v, c=causal, m=dense: _xla_reference(q, k, v, c, m),
        }
        impls[f"jax.nn({nn_impl or 'xla'})"] = lambda q, k, v, c=causal, m=dense, i=nn_impl: (
            jax.nn.dot_product_attention(q, k, v, mask=m, is_causal=c, implementation=i)
        )
        flops = 4 * B * H * L * L * K * _density(L, causal, spec)
        for impl, fn in impls.items():
            for mode, f, args in _bench.fwd_and_fwd_bwd(fn, (q, k, v), do):
                mult = 1.0 if mode == "fwd" else 3.5
                # a failure (e.g. cuDNN refusing a mask) is reported and skipped
                t = _bench.try_timeit(BENCH, f"{impl} {name} {mode}", f, *args)
                if t is None:
                    continue
                tflops = mult * flops / t.median_s / 1e12
                extra = {"TFLOP/s": round(tflops, 1)}
                if peak is not None:
                    extra["% bf16 peak"] = round(100 * tflops * 1e12 / peak[0], 1)
                rows.append(
                    _bench.row(
                        BENCH,
                        f"{name} B={B} H={H} G={G} K={K} {mode}",
                        impl,
                        t,
                        dtype="bfloat16",
                        extra=extra,
                    )
                )
    return _bench.with_ratios(rows, baseline=f"jax.nn({'cudnn' if nn_impl else 'xla'})")


if __name__ == "__main__":
    sys.exit(_bench.main(BENCH, run, sys.argv[1:]))
