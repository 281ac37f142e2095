"""Masked ("absorbing state") diffusion over tokens: schedules, noising, NELBO (jaxar/MATHS.md
s.5, s.6).

Continuous time ``t`` in [0, 1]; ``alpha_t`` is the probability that a token is still clean.
Forward: every token is replaced by ``mask_id`` independently with probability
``1 - alpha_t``. SUBS parametrisation: the model puts no probability on ``mask_id`` and
clean positions are carried over, so only masked positions carry loss:

    NELBO(x) = E_t [ -alpha'_t / (1 - alpha_t) * sum_{l masked in z_t} -log p_theta(x_l | z_t) ]

Schedules (``alpha_t``, ``alpha'_t``, weight ``-alpha'_t / (1 - alpha_t)``):
  * ``"loglinear"``: ``1 - t``, ``-1``, ``1 / t`` (MDLM's log-linear noise ``-log(1 - t)``);
  * ``"cosine"``: ``cos(pi t / 2)``, ``-pi/2 sin(pi t / 2)``,
    ``pi/2 sin(pi t/2) / (1 - cos(pi t/2))``.
The network never sees ``t`` (time-agnostic), so the sampler's time grid is free.

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
  Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
    Language Models", arXiv:2503.09573.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SCHEDULES",
    "mask_schedule",
    "loss_weight",
    "sample_t",
    "add_mask_noise",
    "subs_logits",
    "masked_diffusion_loss",
]

SCHEDULES = ("loglinear", "cosine")


def _check_schedule(schedule):
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not supported; accepted: {SCHEDULES}")


def mask_schedule(t, schedule: str = "loglinear"):
    """``(alpha_t, alpha'_t)``: probability of a token being clean at ``t`` and its slope."""
    _check_schedule(schedule)
    t = jnp.asarray(t)
    if schedule == "loglinear":
        return 1.0 - t, -jnp.ones_like(t)
    half_pi = 0.5 * math.pi
    return jnp.cos(half_pi * t), -half_pi * jnp.sin(half_pi * t)


def loss_weight(t, schedule: str = "loglinear"):
    """``-alpha'_t / (1 - alpha_t)`` (> 0 on (0, 1]); ``1 / t`` for log-linear."""
    _check_schedule(schedule)
    t = jnp.asarray(t)
    if schedule == "loglinear":
        return 1.0 / t
    half_pi = 0.5 * math.pi
    # 1 - cos(x) = 2 sin^2(x / 2), kept accurate for small t.
    return half_pi * jnp.sin(half_pi * t) / (2.0 * jnp.sin(0.5 * half_pi * t) ** 2)


def sample_t(key, batch, *, low: float = 0.0, high: float = 1.0, antithetic: bool = True):
    """Diffusion times in ``(low, high]``, float32, shape ``batch`` (an int or a shape).

    ``antithetic=True`` uses one uniform offset and evenly spaced strata
    ``u_i = (u_0 + i / n) mod 1`` over the flattened batch (lower-variance estimator, each
    ``t_i`` still uniform). ``[low, high] = [beta, omega]`` is BD3-LM's clipped schedule.
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    shape = (batch,) if isinstance(batch, int) else tuple(batch)
    n = math.prod(shape)
    if antithetic:
        u0 = jax.random.uniform(key, (), jnp.float32)
        u = jnp.mod(u0 + jnp.arange(n, dtype=jnp.float32) / n, 1.0).reshape(shape)
    else:
        u = jax.random.uniform(key, shape, jnp.float32)
    return high - (high - low) * u


def _broadcast_t(t, shape, name="t"):
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 1 and t.shape[0] == shape[0]:
        return jnp.broadcast_to(t[:, None], shape)
    if t.shape == tuple(shape):
        return t
    raise ValueError(
        f"{name} must have shape (B,) or (B, L) = {(shape[0],)} or {tuple(shape)}, got {t.shape}"
    )


def add_mask_noise(key, tokens, t, mask_id: int, schedule: str = "loglinear"):
    """Forward process: each token becomes ``mask_id`` with probability ``1 - alpha_t``.

    Args:
      tokens: int (B, L) clean tokens.
      t: (B,) times, or (B, L) per-position times (BD3: one time per block).
    """
    tokens = jnp.asarray(tokens)
    t_BxL = _broadcast_t(t, tokens.shape)
    alpha_BxL, _ = mask_schedule(t_BxL, schedule)
    masked = jax.random.uniform(key, tokens.shape, jnp.float32) >= alpha_BxL
    return jnp.where(masked, jnp.asarray(mask_id, tokens.dtype), tokens)


def subs_logits(logits, mask_id: int):
    """SUBS: float32 logits with ``-inf`` on ``mask_id`` (a no-op if ``mask_id >= V``)."""
    logits = jnp.asarray(logits, jnp.float32)
    if 0 <= mask_id < logits.shape[-1]:
        logits = logits.at[..., mask_id].set(-jnp.inf)
    return logits


def masked_diffusion_loss(
    logits, targets, noisy, t, *, mask_id: int, schedule: str = "loglinear", weights=None
):
    """Per-sequence negative-ELBO estimate in nats (SUBS parametrisation).

    ``nelbo_b = sum_l [z_bl = mask] * w(t) * -log softmax(logits_bl)[x_bl]`` with the
    ``mask_id`` logit set to ``-inf`` and ``w(t) = -alpha'_t / (1 - alpha_t)``; unmasked
    positions (and masked ones of weight 0) contribute nothing.

    A target that counts (masked, nonzero weight) must be a data token: in ``[0, V)`` and
    not ``mask_id``. With concrete ``targets`` and ``noisy`` a bad one raises
    ``ValueError``; under ``jit`` the values cannot be checked and the sequence's NELBO is
    NaN, so the loss fails loudly instead of returning a plausible number.

    Args:
      logits: (B, L, V) network output on ``noisy``; ``V`` may include ``mask_id`` or not.
      targets: int (B, L) clean tokens.
      noisy: int (B, L) noised tokens the network saw.
      t: (B,) times in (0, 1], or (B, L) per-position times (BD3 per-block times).
      mask_id: the [MASK] token id, an int >= 0.
      schedule: one of ``SCHEDULES``.
      weights: optional (B, L) multiplier (e.g. 0 on padding).

    Returns:
      (B,) float32 NELBO estimates summed over positions; NaN for a sequence with a bad
      counted target (traced inputs only, see above).

    Raises:
      ValueError: bad shapes, dtypes, ``mask_id``, or a bad concrete target.
    """
    _check_schedule(schedule)
    if isinstance(mask_id, bool) or not isinstance(mask_id, int | np.integer) or mask_id < 0:
        raise ValueError(f"mask_id={mask_id!r} is not accepted; expected an int >= 0")
    logits = jnp.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (B, L, V), got shape {logits.shape}")
    shape = logits.shape[:2]
    targets, noisy = jnp.asarray(targets), jnp.asarray(noisy)
    for name, x in (("targets", targets), ("noisy", noisy)):
        if x.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (logits' B, L), got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be integer token ids, got dtype {x.dtype}")
    vocab = logits.shape[-1]
    masked_BxL = noisy == mask_id
    counted_BxL = masked_BxL
    if weights is not None:
        weights = jnp.asarray(weights, jnp.float32)
        counted_BxL = masked_BxL & (weights != 0)
    bad_BxL = counted_BxL & ((targets < 0) | (targets >= vocab) | (targets == mask_id))
    if not isinstance(bad_BxL, jax.core.Tracer) and bool(jnp.any(bad_BxL)):
        where = tuple(int(i) for i in np.argwhere(np.asarray(bad_BxL))[0])
        raise ValueError(
            f"targets holds {int(jnp.sum(bad_BxL))} id(s) at masked positions outside "
            f"[0, {vocab}) or equal to mask_id={mask_id}, e.g. {int(targets[where])} at "
            f"(row, position) {where}"
        )
    logp_BxLxV = jax.nn.log_softmax(subs_logits(logits, mask_id), axis=-1)
    safe_BxL = jnp.clip(targets, 0, vocab - 1)[..., None]
    ll_BxL = jnp.take_along_axis(logp_BxLxV, safe_BxL, axis=-1)[..., 0]
    t_BxL = _broadcast_t(t, shape)
    w_BxL = loss_weight(jnp.where(masked_BxL, t_BxL, 1.0), schedule)
    if weights is not None:
        w_BxL = w_BxL * weights
    per_token = jnp.where(counted_BxL & ~bad_BxL, -ll_BxL * w_BxL, 0.0)
    return jnp.where(jnp.any(bad_BxL, axis=-1), jnp.nan, jnp.sum(per_token, axis=-1))
