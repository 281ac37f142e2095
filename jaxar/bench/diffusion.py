"""Masked-diffusion samplers: first-hitting vs ancestral vs cached (jaxar/MATHS.md s.5).

``jaxar bench diffusion [--quick]``. One sequence (B=1) of L tokens from scratch with a
small network (embedding + one global-mixing residual MLP layer + output head, D=64;
logits over V + 1 with the [MASK] row), ``num_steps = L`` for the ancestral samplers.
Rows: wall time of the whole sampler (median), denoiser calls, ratio = ancestral / method
(> 1: faster) measured in the same run. Target (jaxar/MATHS.md s.5, Zheng et al.):
first-hitting >= 10x faster than ancestral at L=1024, V=50257.

Cases whose full run would take minutes on a CPU (``L * V >= 2**22``) are timed on a run
of ``_PARTIAL`` steps (ancestral: ``_PARTIAL`` time steps of the same L-step grid; cached
likewise; first-hitting: a prompt leaving ``_PARTIAL`` masked tokens) and scaled by
``L / _PARTIAL`` (each step of every method costs the same at any point of the run, up to
the cached sampler's skipped steps, which the partial run samples too); those rows say
``extrapolated_from_steps`` in ``extra``. ``--quick`` runs only L=128 with V=256 and
V=50257.

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxar.bench import harness
from jaxar.sampling import masked_diffusion as md

_PARTIAL = 16
_D = 64


def small_denoiser(key, vocab_size: int, length: int, d_model: int = _D):
    """A small bidirectional denoiser ``tokens (B, L) -> logits (B, L, V + 1)``."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    emb = jax.random.normal(k1, (vocab_size + 1, d_model)) / jnp.sqrt(d_model)
    pos = jax.random.normal(k2, (length, d_model)) * 0.1
    w = jax.random.normal(k3, (2 * d_model, d_model)) / jnp.sqrt(2 * d_model)
    head = jax.random.normal(k4, (d_model, vocab_size + 1)) / jnp.sqrt(d_model)

    def denoise(tokens_BxL):
        h_BxLxD = emb[tokens_BxL] + pos[None]
        ctx_BxLxD = jnp.broadcast_to(jnp.mean(h_BxLxD, axis=1, keepdims=True), h_BxLxD.shape)
        h_BxLxD = h_BxLxD + jnp.tanh(jnp.concatenate([h_BxLxD, ctx_BxLxD], -1) @ w)
        return h_BxLxD @ head

    return denoise


def _case(length, vocab, repeats):
    denoise = small_denoiser(jax.random.key(0), vocab, length)
    mask_id = vocab
    partial = length * vocab >= 2**22
    steps = _PARTIAL if partial else length
    scale = length / steps
    rows = []
    for method in ("ancestral", "cached", "first_hitting"):
        kw = dict(denoise_fn=denoise, batch_size=1, length=length, mask_id=mask_id, method=method)
        if method == "first_hitting":
            if partial:  # a clean prefix leaves exactly `steps` masked tokens
                kw["prompt"] = jnp.zeros((1, length - steps), jnp.int32)
        elif partial:
            kw["num_steps"] = length
        fn = jax.jit(
            functools.partial(_run, steps=steps if method != "first_hitting" else None, **kw)
        )
        key = jax.random.key(1)
        timing = harness.timeit(fn, key, repeats=repeats)
        calls = int(fn(key)[1])
        extra = {"denoiser_calls": round(calls * scale), "num_steps": length}
        if partial:
            extra["extrapolated_from_steps"] = steps
        rows.append(
            harness.Result(
                bench="diffusion",
                case=f"B=1 L={length} V={vocab}",
                impl=method,
                dtype="float32",
                median_ms=timing.median_s * 1e3 * scale,
                compile_s=timing.compile_s,
                extra=extra,
            )
        )
    return rows


def _run(key, *, steps, **kw):
    """The sampler; for a partial ancestral/cached run, only the first ``steps`` steps."""
    if steps is None or steps == kw["length"]:
        out = md.sample(key, **kw)
        return out.tokens, out.num_calls
    return _partial_ancestral(key, steps=steps, **kw)


def _partial_ancestral(key, *, steps, denoise_fn, batch_size, length, mask_id, method, num_steps):
    """The first ``steps`` steps of the ``num_steps``-step chain (the same per-step work)."""
    x = jnp.full((batch_size, length), mask_id, jnp.int32)
    opts = dict(mask_id=mask_id, temperature=1.0, top_p=None)
    out = md._ancestral(
        key,
        denoise_fn,
        x,
        num_steps,
        "loglinear",
        cached=method == "cached",
        stop_after=steps,
        **opts,
    )
    return out.tokens, out.num_calls


def run(quick: bool) -> list[harness.Result]:
    cases = (
        [(128, 256), (128, 50257)]
        if quick
        else [(128, 256), (128, 50257), (1024, 256), (1024, 50257)]
    )
    results = []
    for length, vocab in cases:
        results += _case(length, vocab, repeats=2 if quick else 3)
    return harness.with_ratios(results, baseline="ancestral")
