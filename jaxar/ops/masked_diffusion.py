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

Per-position schedules (:func:`position_window`): position ``l`` is noised only while
``t`` crosses its window ``[a_l, b_l]``, ``alpha_l(t) = alpha(tau_l(t))`` with
``tau_l(t) = clip((t - a_l) / (b_l - a_l), 0, 1)``; the NELBO weight becomes
``-alpha'(tau) tau'_l(t) / (1 - alpha(tau))`` (zero outside the window), still a valid bound
since the forward process factorizes over positions. ``skew = 0`` is the window ``[0, 1]``
for every position: ``tau = t`` and weight 1 exactly, the MDLM loss bit for bit.

ReMDM (Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling",
arXiv:2503.00307; :func:`remdm_sigma`): a revealed token is masked again from ``t`` to ``s``
with probability ``sigma_t <= sigma_max = min(1, (1 - alpha_s) / alpha_t)``, and a masked
one revealed with ``(alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t)``; both keep the
marginal ``P(masked at s) = 1 - alpha_s``.

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
  Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling",
    arXiv:2503.00307.
  Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
    Language Models", arXiv:2503.09573.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.ops.checks import positive_int

__all__ = [
    "SCHEDULES",
    "mask_schedule",
    "loss_weight",
    "sample_t",
    "add_mask_noise",
    "subs_logits",
    "masked_diffusion_loss",
    "REMASK_SCHEDULES",
    "remdm_sigma",
    "loop_time",
    "position_window",
]

SCHEDULES = ("loglinear", "cosine")
REMASK_SCHEDULES = ("cap", "rescale", "loop")


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
    positive_int("mask_id", mask_id, minimum=0)
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


def remdm_sigma(alpha_t, alpha_s, schedule: str, eta: float):
    """ReMDM's remasking probability ``sigma_t`` of a revealed token from ``t`` to ``s``.

    ``sigma_max = min(1, (1 - alpha_s) / alpha_t)`` (the largest that keeps the marginal);
    ``"cap"``: ``min(eta, sigma_max)``; ``"rescale"``: ``eta * sigma_max``; ``"loop"``:
    ``min(eta, sigma_max)`` where ``alpha_s == alpha_t`` (the loop phase of
    :func:`loop_time`), else 0. ``eta`` in ``[0, 1]``.
    """
    if schedule not in REMASK_SCHEDULES:
        raise ValueError(f"remask={schedule!r} is not supported; accepted: {REMASK_SCHEDULES}")
    alpha_t, alpha_s = jnp.asarray(alpha_t, jnp.float32), jnp.asarray(alpha_s, jnp.float32)
    ratio = (1.0 - alpha_s) / jnp.where(alpha_t > 0, alpha_t, 1.0)
    sigma_max = jnp.where(alpha_t > 0, jnp.clip(ratio, 0.0, 1.0), 1.0)
    if schedule == "rescale":
        return eta * sigma_max
    sigma = jnp.minimum(eta, sigma_max)
    if schedule == "loop":
        sigma = jnp.where(alpha_s == alpha_t, sigma, 0.0)
    return sigma


def loop_time(t, t_on: float, t_off: float):
    """ReMDM-loop's time map: ``t`` for ``t >= t_on`` (plain MDLM down to ``t_on``), held at
    ``t_on`` on ``[t_off, t_on)`` (the loop: constant ``alpha``, remasking at rate
    ``sigma``), then ``t_on * t / t_off`` down to 0 (MDLM again)."""
    t = jnp.asarray(t, jnp.float32)
    if t_off <= 0.0:
        return jnp.where(t >= t_on, t, t_on)
    return jnp.where(t >= t_on, t, jnp.where(t >= t_off, t_on, t_on * t / t_off))


def position_window(t, length: int, skew: float):
    """Per-position times ``(tau_BxL, dtau_BxL)`` for (B,) times ``t`` (module docstring).

    Window of position ``l`` (``u_l = l / (L - 1)``): ``a_l = skew (1 - u_l)``,
    ``b_l = a_l + 1 - skew``; ``skew`` in ``[0, 1)``: 0 is the uniform schedule, towards 1
    positions are noised right to left (revealed left to right when sampling).
    ``dtau = 1 / (b_l - a_l)`` inside ``(a_l, b_l]``, else 0.
    """
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"position_skew={skew!r} is not accepted; expected a float in [0, 1)")
    t = jnp.asarray(t, jnp.float32)
    u = jnp.arange(length, dtype=jnp.float32) / max(length - 1, 1)
    a = jnp.reshape(skew * (1.0 - u), (1,) * t.ndim + (length,))
    width = 1.0 - skew
    t = t[..., None]
    tau = jnp.clip((t - a) / width, 0.0, 1.0)
    inside = (t > a) & (t <= a + width)
    return tau, jnp.where(inside, 1.0 / width, 0.0)
