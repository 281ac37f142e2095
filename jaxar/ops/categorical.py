"""Categorical sampling that is faithful in float32 (jaxar/MATHS.md s.5, "Precision").

Gumbel-max draws ``argmax_i (logit_i + g_i)`` with ``g_i = -log E_i`` and ``E_i ~ Exp(1)``;
equivalently the winner of the exponential race ``argmin_i E_i / p_i``. A low-probability
token wins only when its ``E_i`` is tiny (about ``p_i`` times an O(1) number). The naive
float32 recipe ``E = -log(u)`` with ``u`` on the float32 uniform grid (spacing ``2^-23``
near 1) has no value of ``E`` below ``2^-23 ~ 1.2e-7`` and rounds small values up, so a
token with ``p_i`` near or below ``1e-7`` is drawn too rarely or never: the tail is cut
and the sampler acts as if at a lower temperature.

``categorical`` draws ``E`` from 64 random bits so that small values keep full relative
precision: with one bit choose the half ``E < log 2`` or ``E > log 2`` (each has
probability 1/2), then draw ``W`` uniform on ``(0, 1/2)`` with a geometric exponent (from
the leading zeros of 40 random bits) and a 23-bit mantissa, and set
``E = -log1p(-W)`` (lower half, accurate for tiny ``W``) or ``E = -log(W)`` (upper half).
Every float32 value of ``W`` down to ``2^-41`` is reached with its exact probability up to
the 23-bit mantissa grid (relative spacing ``2^-23`` everywhere, not only near 1), so the
only departure from the exact race is the event ``W < 2^-41``; the total-variation error of
a draw is at most ``V * 2^-41`` (``2.3e-8`` at ``V = 50257``), below the float32 rounding
of the logits themselves. tests/ops/test_categorical.py checks tail mass and entropy at
``V = 50257`` against the exact distribution and shows the naive sampler's bias.

Garbage logits never give a plausible index. A row defines a distribution only when it has
no NaN, no ``+inf`` and at least one finite logit (:func:`valid_logits`); any other row
(any NaN, any ``+inf``, or every logit ``-inf``) draws :data:`INVALID` (``-1``), a value no
caller can mistake for a token and that can be tested for under ``jit``. Samplers built on
these draws keep the sentinel and turn it into a ``ValueError`` when their result is
concrete (:func:`check_draws`).

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "INVALID",
    "categorical",
    "gumbel_categorical",
    "exponential",
    "gumbel",
    "valid_logits",
    "check_draws",
]

INVALID = -1  # the draw of a row whose logits are not a distribution (see valid_logits)

_MANTISSA_BITS = 23
_GEOMETRIC_BITS = 40  # 8 bits left in the first word + the whole second word


def exponential(key, shape) -> jax.Array:
    """Exp(1) variates in float32 with full relative precision near 0 (and to ``E ~ 29``).

    ``E = -log1p(-W)`` or ``-log(W)`` (one random bit each) with ``W ~ U(0, 1/2)`` built
    from two 32-bit words: 23 mantissa bits, 1 half-selection bit, and an exponent whose
    geometric law comes from the leading zeros of the remaining 40 bits.
    """
    shape = tuple(shape)
    bits = jax.random.bits(key, (2, *shape), jnp.uint32)
    w0, w1 = bits[0], bits[1]
    mantissa = w0 & jnp.uint32((1 << _MANTISSA_BITS) - 1)
    lower_half = ((w0 >> _MANTISSA_BITS) & jnp.uint32(1)) == 1
    top8 = w0 >> 24
    zeros0 = lax.clz(top8) - 24  # leading zeros of the 8-bit field, in [0, 8]
    zeros = jnp.where(zeros0 < 8, zeros0, 8 + lax.clz(w1))  # in [0, 40]
    # W in [2^-(zeros+2), 2^-(zeros+1)): biased exponent 127 - (zeros + 2).
    exponent = (jnp.uint32(125) - zeros.astype(jnp.uint32)) << _MANTISSA_BITS
    w = lax.bitcast_convert_type(exponent | mantissa, jnp.float32)
    # One log for both halves: log1p(-w) = log(u) * (-w) / (u - 1) with u = fl(1 - w)
    # (exact correction of the rounding of 1 - w; u == 1 means log1p(-w) = -w to float32).
    u = 1.0 - w
    log_uw = jnp.log(jnp.where(lower_half, u, w))
    lower = jnp.where(u == 1.0, w, log_uw * w / (u - 1.0))
    return jnp.where(lower_half, lower, -log_uw)


def gumbel(key, shape) -> jax.Array:
    """Standard Gumbel variates ``-log E`` in float32 from :func:`exponential`."""
    return -jnp.log(exponential(key, shape))


def valid_logits(logits, *, axis: int = -1) -> jax.Array:
    """Whether each row of ``logits`` defines a distribution: no NaN, no ``+inf`` and at
    least one finite entry (``softmax`` is then well defined). Bool, ``logits.shape``
    without ``axis``."""
    x = jnp.asarray(logits)
    garbage = jnp.isnan(x) | jnp.isposinf(x)
    return jnp.any(jnp.isfinite(x), axis=axis) & ~jnp.any(garbage, axis=axis)


def check_draws(draws, what: str):
    """Raises ``ValueError`` if a concrete ``draws`` array holds :data:`INVALID`.

    Returns ``draws`` unchanged. Under tracing (inside ``jit``, ``scan``, ...) the values
    are unknown and nothing is checked: the caller of the traced function tests
    ``draws == INVALID`` on the result (or calls this function on it).
    """
    if isinstance(draws, jax.core.Tracer):
        return draws
    bad = np.asarray(draws) == INVALID
    if bad.any():
        bad_rows = bad.reshape(bad.shape[0], -1).any(axis=-1) if bad.ndim else bad.reshape(1)
        rows = np.flatnonzero(bad_rows)
        raise ValueError(
            f"{what}: no token could be drawn in {rows.size} of {bad_rows.size} row(s) "
            f"(rows {rows[:8].tolist()}): the model's logits were NaN, +inf or all -inf there "
            f"(drawn as {INVALID})"
        )
    return draws


def _prepare(logits, axis, shape, name):
    """Moves ``axis`` last (float32) and checks ``shape``; returns (logits_xV, full shape)."""
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"{name}: logits must be floating, got dtype={logits.dtype}")
    if logits.ndim == 0:
        raise ValueError(f"{name}: logits must have at least one axis, got shape ()")
    axis = axis % logits.ndim
    logits_xV = jnp.moveaxis(logits, axis, -1).astype(jnp.float32)
    batch_shape = logits_xV.shape[:-1]
    shape = batch_shape if shape is None else tuple(shape)
    try:
        full = np.broadcast_shapes((*batch_shape, 1), (*shape, 1))
    except ValueError:
        full = None
    if full is None or tuple(full[:-1]) != shape:
        raise ValueError(
            f"{name}: shape={shape} is not broadcast-compatible with the logits' batch "
            f"shape {batch_shape} (logits.shape={logits.shape}, axis={axis})"
        )
    return logits_xV, (*shape, logits_xV.shape[-1])


def categorical(key, logits, *, axis: int = -1, shape=None) -> jax.Array:
    """Draws indices ``i`` with probability ``softmax(logits)_i``, faithful in float32.

    The exponential race ``argmin_i E_i exp(max logit - logit_i)`` (= Gumbel-max) with the
    high-resolution ``E_i ~ Exp(1)`` of :func:`exponential` (module docstring:
    total-variation error <= ``V * 2^-41``).
    ``-inf`` logits are never drawn. A row that is not a distribution (any NaN, any
    ``+inf``, or all ``-inf``; :func:`valid_logits`) draws :data:`INVALID` = ``-1``.

    Args:
      key: a PRNG key.
      logits: unnormalised log-probabilities, float array; any float dtype (computed in
        float32).
      axis: the category axis.
      shape: result shape; must be broadcast-compatible with ``logits.shape`` without
        ``axis`` (default: exactly that shape), as in ``jax.random.categorical``.

    Returns:
      int32 indices of shape ``shape``; ``-1`` (:data:`INVALID`) for garbage rows.
    """
    logits_xV, full_shape = _prepare(logits, axis, shape, "categorical")
    # Race form argmin_i E_i / p_i: one multiply per draw; 1/p computed before the
    # broadcast over ``shape``. exp overflows to inf only for p_i < e^-88 (never drawn).
    top = lax.stop_gradient(jnp.max(logits_xV, axis=-1, keepdims=True))
    inv_p_xV = jnp.broadcast_to(jnp.exp(top - logits_xV), full_shape)
    e = exponential(key, full_shape)
    index = jnp.argmin(e * inv_p_xV, axis=-1).astype(jnp.int32)
    return _invalid_where_garbage(index, logits_xV)


def _invalid_where_garbage(index, logits_xV):
    ok = jnp.broadcast_to(valid_logits(logits_xV), index.shape)
    return jnp.where(ok, index, jnp.int32(INVALID))


def gumbel_categorical(key, logits, *, axis: int = -1, shape=None) -> jax.Array:
    """Naive float32 Gumbel-max: ``argmax(logits + g)``, ``g = -log(-log u)``, ``u`` on the
    float32 uniform grid. Kept for comparison only: it under-samples tokens with
    probability below about ``1e-7`` (see the module docstring). Garbage rows draw
    :data:`INVALID` as in :func:`categorical`."""
    logits_xV, full_shape = _prepare(logits, axis, shape, "gumbel_categorical")
    logits_xV = jnp.broadcast_to(logits_xV, full_shape)
    noise = jax.random.gumbel(key, full_shape, jnp.float32, mode="low")
    index = jnp.argmax(logits_xV + noise, axis=-1).astype(jnp.int32)
    return _invalid_where_garbage(index, logits_xV)
