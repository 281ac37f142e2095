"""Attention benchmarks (jaxar/MATHS.md s.4): axial vs full, sampling, ours vs jax.nn.

``jaxar bench attention [--quick]``. Three groups, each with in-run ratios (baseline
median / row median; > 1: the row is faster):

* ``grid`` cases: self-attention over an S x S grid (B=1, H=4, K=32, float32): full
  attention over all S^2 positions (baseline ``full``) vs one row plus one column axial
  attention (``axial``), forward and forward+backward. Cost O(S^4) vs O(S^3).
* ``impl`` cases: ``jaxar.ops.dot_product_attention`` implementations (``xla``,
  ``reference``) vs ``jax.nn.dot_product_attention`` (baseline ``jax``), causal, L=1024.
* ``sample`` cases: Axial Transformer sampling, ``semi_parallel`` vs ``naive`` (baseline),
  tiny 8x8x1 model, 4 images per call.

``--quick``: grids 32x32 (fwd, fwd+bwd) and 64x64 (fwd); full: also 64x64 fwd+bwd.

References:
  Ho et al. 2019, "Axial Attention in Multidimensional Transformers", arXiv:1912.12180.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.bench import harness
from jaxar.models import axial
from jaxar.ops.attention import axial_attention, dot_product_attention
from jaxar.sampling import axial as axial_sampling

_HEADS, _K = 4, 32


def _grid_rows(side: int, grads: bool, repeats: int):
    keys = jax.random.split(jax.random.key(0), 3)
    shape = (1, side, side, _HEADS, _K)
    q, k, v = (jax.random.normal(kk, shape) for kk in keys)

    def full(q, k, v):
        flat = [x.reshape(1, side * side, _HEADS, _K) for x in (q, k, v)]
        return dot_product_attention(*flat, impl="xla").reshape(shape)

    def ax(q, k, v):
        o = axial_attention(q, k, v, axis=2, impl="xla")  # rows
        return axial_attention(o, k, v, axis=1, impl="xla")  # columns

    rows = []
    mode = "fwd+bwd" if grads else "fwd"
    for name, fn in (("full", full), ("axial", ax)):
        f = (
            jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v)), (0, 1, 2)))
            if grads
            else (jax.jit(fn))
        )
        t = harness.timeit(f, q, k, v, repeats=repeats)
        rows.append(
            harness.Result(
                "attention",
                f"grid {side}x{side} B=1 H={_HEADS} K={_K} {mode}",
                name,
                "float32",
                t.median_s * 1e3,
                t.compile_s,
            )
        )
    return rows


def _impl_rows(length: int, repeats: int):
    keys = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(kk, (2, length, _HEADS, _K)) for kk in keys)
    rows = []
    for impl in ("jax", "xla", "reference"):
        if impl == "jax":
            f = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
        else:
            f = jax.jit(
                lambda q, k, v, impl=impl: dot_product_attention(q, k, v, causal=True, impl=impl)
            )
        t = harness.timeit(f, q, k, v, repeats=repeats)
        rows.append(
            harness.Result(
                "attention",
                f"causal B=2 L={length} H={_HEADS} K={_K} fwd",
                impl,
                "float32",
                t.median_s * 1e3,
                t.compile_s,
            )
        )
    return rows


def _sample_rows(repeats: int):
    model = axial.AxialTransformer(axial.AxialTransformerConfig.preset("tiny"), nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    rows = []
    for method in ("naive", "semi_parallel"):

        def f(state, key, method=method):
            return axial_sampling.sample(nnx.merge(graphdef, state), key, 4, method=method)

        t = harness.timeit(f, state, jax.random.key(2), repeats=repeats)
        rows.append(
            harness.Result(
                "attention",
                "axial sample tiny 8x8x1 num=4",
                method,
                "float32",
                t.median_s * 1e3,
                t.compile_s,
                extra={"images/s": 4 / t.median_s},
            )
        )
    return rows


def run(quick: bool = True) -> list[harness.Result]:
    repeats = 3 if quick else 10
    grid = _grid_rows(32, False, repeats) + _grid_rows(32, True, repeats)
    grid += _grid_rows(64, False, repeats)
    if not quick:
        grid += _grid_rows(64, True, repeats)
    impl = _impl_rows(1024, repeats)
    samp = _sample_rows(repeats)
    return (
        harness.with_ratios(grid, "full")
        + harness.with_ratios(impl, "jax")
        + (harness.with_ratios(samp, "naive"))
    )
