"""Logits processing for sampling: temperature, top-k and top-p (nucleus) filtering."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxar.ops.categorical import INVALID, valid_logits

__all__ = ["process", "sample_token"]

_NEG = -jnp.inf


def process(
    logits, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
):
    """``logits / temperature`` with everything outside the top-k / top-p set at -inf.

    Args:
      logits: (..., V) float logits.
      temperature: > 0 (use :func:`sample_token` with 0 for greedy).
      top_k: keep the k largest (ties at the k-th value are kept); None = all.
      top_p: keep the smallest set of most likely tokens whose probability reaches p
        (the most likely token is always kept); None = all.

    Returns:
      (..., V) float32 processed logits.
    """
    if not temperature > 0:
        raise ValueError(
            f"temperature={temperature!r} must be > 0 here (0 = greedy in sample_token)"
        )
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be None or a positive int")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p!r} must be None or in (0, 1]")
    x = logits.astype(jnp.float32) / temperature
    if top_k is not None and top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, top_k)[0][..., -1:]
        x = jnp.where(x >= kth, x, _NEG)
    if top_p is not None and top_p < 1.0:
        sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_x, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
        keep_sorted = before < top_p
        # threshold = smallest kept logit
        thresh = jnp.min(jnp.where(keep_sorted, sorted_x, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x >= thresh, x, _NEG)
    return x


def sample_token(key, logits, *, temperature: float = 1.0, top_k=None, top_p=None):
    """One token id per row of (..., V) logits; ``temperature == 0`` is greedy (argmax).

    A row whose logits are not a distribution (any NaN or ``+inf``, or all ``-inf``) gives
    ``-1`` (:data:`jaxar.ops.categorical.INVALID`), never a plausible token.
    """
    if temperature == 0:
        token = jnp.argmax(logits, axis=-1)
    else:
        x = process(logits, temperature=temperature, top_k=top_k, top_p=top_p)
        token = jax.random.categorical(key, x, axis=-1)
    return jnp.where(valid_logits(logits), token.astype(jnp.int32), INVALID)
