"""Per-token Gaussian diffusion and flow matching (jaxar/MATHS.md s.7).

Discrete-time Gaussian diffusion with ``T`` training steps indexed ``t = 0 .. T - 1``
(step index ``t`` is the paper's step ``t + 1``); ``abar_t = alphas_cumprod[t]``:

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,        eps ~ N(0, I).

A denoiser ``model_fn(x_t, t, cond)`` predicts one of three targets:
``"eps"`` (eps), ``"v"`` (``sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``) or ``"x0"`` (x_0);
the loss is the squared error averaged over the token's features and over ``num_draws``
independent ``(t, eps)`` draws per token (MAR's ``diffusion_batch_mul``).

Flow matching on the linear path from noise (``s = 0``) to data (``s = 1``):

    x_s = s x_1 + (1 - s) x_0,   x_0 ~ N(0, I),   target velocity  x_1 - x_0,

with ``s ~ U[0, 1)`` (a float time, not a step index).

References:
  Li et al. 2024, "Autoregressive Image Generation without Vector Quantization",
    arXiv:2406.11838.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.ops.checks import positive_int

__all__ = [
    "SCHEDULES",
    "TARGETS",
    "diffusion_schedule",
    "sample_diffusion_noise",
    "add_gaussian_noise",
    "diffusion_target",
    "eps_from_prediction",
    "gaussian_diffusion_loss",
    "gaussian_diffusion_loss_from_noise",
    "sample_flow_noise",
    "flow_matching_loss",
    "flow_matching_loss_from_noise",
]

SCHEDULES = ("cosine", "linear")
TARGETS = ("eps", "v", "x0")


def diffusion_schedule(name: str, num_steps: int, *, max_beta: float = 0.999) -> jax.Array:
    """``alphas_cumprod`` (float32, length ``num_steps``) of a named noise schedule.

    * ``"cosine"`` (Nichol & Dhariwal 2021, s = 0.008): ``f(u) = cos^2((u + s)/(1 + s) pi/2)``,
      ``beta_t = min(1 - f((t+1)/T) / f(t/T), max_beta)``;
    * ``"linear"`` (Ho et al. 2020, scaled to ``T``): ``beta_t`` evenly spaced from
      ``1e-4 * 1000/T`` to ``0.02 * 1000/T``;

    and ``abar_t = prod_{i <= t} (1 - beta_i)``, computed in float64 then cast.

    Raises:
      ValueError: unknown ``name`` or ``num_steps < 1``.
    """
    if name not in SCHEDULES:
        raise ValueError(f"name={name!r} is not a diffusion schedule; accepted: {SCHEDULES}")
    positive_int("num_steps", num_steps)
    if name == "cosine":
        s = 0.008
        u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        f = np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2
        betas = np.minimum(1.0 - f[1:] / f[:-1], max_beta)
    else:
        scale = 1000.0 / num_steps
        betas = np.linspace(1e-4 * scale, 0.02 * scale, num_steps, dtype=np.float64)
    with jax.ensure_compile_time_eval():  # a constant, concrete even inside a jit trace
        return jnp.asarray(np.cumprod(1.0 - betas), dtype=jnp.float32)


def _check_target(target):
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not supported; accepted: {TARGETS}")


def _coefs(alphas_cumprod, t, like):
    """``sqrt(abar_t)``, ``sqrt(1 - abar_t)`` gathered at ``t`` with a trailing feature axis."""
    abar = jnp.asarray(alphas_cumprod)[t].astype(like.dtype)[..., None]
    return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


def sample_diffusion_noise(key, x0_shape, *, num_draws: int, num_steps: int):
    """The random draws of :func:`gaussian_diffusion_loss` for ``x0`` of ``x0_shape``.

    Returns ``(t, eps)``: ``t`` int32 ``(num_draws, *x0_shape[:-1])`` uniform in
    ``[0, num_steps)``, ``eps`` float32 ``(num_draws, *x0_shape)`` standard normal.
    """
    k_t, k_eps = jax.random.split(key)
    batch = (num_draws, *x0_shape[:-1])
    t = jax.random.randint(k_t, batch, 0, num_steps, dtype=jnp.int32)
    eps = jax.random.normal(k_eps, (num_draws, *x0_shape), jnp.float32)
    return t, eps


def add_gaussian_noise(x0, t, eps, alphas_cumprod):
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; ``t`` has ``x0``'s shape minus the
    feature axis."""
    a, b = _coefs(alphas_cumprod, t, x0)
    return a * x0 + b * eps


def diffusion_target(x0, eps, t, alphas_cumprod, target: str = "eps"):
    """The regression target: eps, ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``, or x0."""
    _check_target(target)
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    a, b = _coefs(alphas_cumprod, t, x0)
    return a * eps - b * x0


def eps_from_prediction(pred, x_t, t, alphas_cumprod, target: str = "eps"):
    """Converts a denoiser's prediction of ``target`` into the implied eps.

    ``x0 -> (x_t - sqrt(abar) x0) / sqrt(1 - abar)``; ``v -> sqrt(abar) v + sqrt(1 - abar) x_t``.
    Lets a v- or x0-trained head run in the eps samplers of
    :mod:`jaxar.sampling.diffusion_head`.
    """
    _check_target(target)
    if target == "eps":
        return pred
    a, b = _coefs(alphas_cumprod, t, x_t)
    if target == "x0":
        return (x_t - a * pred) / b
    return a * pred + b * x_t


def _check_x0(x0, cond):
    if x0.ndim < 1:
        raise ValueError(f"x0 must have a trailing feature axis; got shape {x0.shape}")
    if cond is not None and cond.shape[:-1] != x0.shape[:-1]:
        raise ValueError(
            f"cond's leading shape must equal x0's: cond {cond.shape} vs x0 {x0.shape}"
        )


def _per_draw_fn(model_fn, x0, cond, x_t, t, num_draws, flatten=True):
    """Runs ``model_fn`` once on all draws: flattened into one leading axis, or (``flatten``
    False) with the draws as a new leading axis in front of ``x0``'s own."""
    if not flatten:
        c_rep = None if cond is None else jnp.broadcast_to(cond[None], (num_draws, *cond.shape))
        return model_fn(x_t, t, c_rep)
    feat = x0.shape[-1]
    x_flat = x_t.reshape(-1, feat)
    t_flat = t.reshape(-1)
    c_flat = None
    if cond is not None:
        c_rep = jnp.broadcast_to(cond[None], (num_draws, *cond.shape))
        c_flat = c_rep.reshape(-1, cond.shape[-1])
    return model_fn(x_flat, t_flat, c_flat).reshape(x_t.shape)


def gaussian_diffusion_loss(
    key,
    model_fn: Callable,
    x0,
    cond,
    *,
    alphas_cumprod,
    target: str = "eps",
    num_draws: int = 4,
    flatten: bool = True,
):
    """Per-token denoising loss ``mean_{draws} mean_features (f(x_t, t, z) - target)^2``.

    Args:
      key: PRNG key; the draws are :func:`sample_diffusion_noise` of it.
      model_fn: ``model_fn(x_t_MxN, t_M, cond_MxC) -> prediction_MxN`` (``t`` int32 step
        indices); called once with ``M = num_draws * prod(x0.shape[:-1])``.
      x0: clean tokens ``(..., N)``.
      cond: conditions ``(..., C)`` with ``x0``'s leading shape (or None).
      alphas_cumprod: ``(T,)`` from :func:`diffusion_schedule`.
      target: ``"eps"``, ``"v"`` or ``"x0"``.
      num_draws: independent ``(t, eps)`` draws per token.
      flatten: False calls ``model_fn`` on ``(num_draws, *x0.shape)`` instead (the draws
        as a new leading axis, so a batch axis sharded over a mesh stays where it is).

    Returns:
      float32 loss of shape ``x0.shape[:-1]`` (mask and average it in the caller).
    """
    _check_target(target)
    x0 = jnp.asarray(x0)
    _check_x0(x0, cond)
    if num_draws < 1:
        raise ValueError(f"num_draws={num_draws!r} must be >= 1")
    num_steps = jnp.shape(alphas_cumprod)[0]
    t, eps = sample_diffusion_noise(key, x0.shape, num_draws=num_draws, num_steps=num_steps)
    return gaussian_diffusion_loss_from_noise(
        model_fn,
        x0,
        cond,
        t,
        eps.astype(x0.dtype),
        alphas_cumprod=alphas_cumprod,
        target=target,
        flatten=flatten,
    )


def gaussian_diffusion_loss_from_noise(
    model_fn, x0, cond, t, eps, *, alphas_cumprod, target: str = "eps", flatten: bool = True
):
    """:func:`gaussian_diffusion_loss` with given draws ``t (R, ...)``, ``eps (R, ..., N)``."""
    _check_target(target)
    num_draws = t.shape[0]
    x0_rep = jnp.broadcast_to(x0[None], eps.shape)
    x_t = add_gaussian_noise(x0_rep, t, eps, alphas_cumprod)
    pred = _per_draw_fn(model_fn, x0, cond, x_t, t, num_draws, flatten)
    goal = diffusion_target(x0_rep, eps, t, alphas_cumprod, target)
    err = jnp.square(pred.astype(jnp.float32) - goal.astype(jnp.float32))
    return jnp.mean(err, axis=(0, -1))


def sample_flow_noise(key, x1_shape, *, num_draws: int):
    """The draws of :func:`flow_matching_loss`: ``s`` float32 ``(num_draws, *x1_shape[:-1])``
    uniform in [0, 1) and noise ``x_0`` float32 ``(num_draws, *x1_shape)``."""
    k_s, k_n = jax.random.split(key)
    s = jax.random.uniform(k_s, (num_draws, *x1_shape[:-1]), jnp.float32)
    noise = jax.random.normal(k_n, (num_draws, *x1_shape), jnp.float32)
    return s, noise


def flow_matching_loss(
    key, model_fn: Callable, x1, cond, *, num_draws: int = 4, flatten: bool = True
):
    """Per-token flow-matching loss ``mean (v(x_s, s, z) - (x_1 - x_0))^2``.

    ``x_s = s x_1 + (1 - s) x_0`` with noise ``x_0`` and data ``x1 (..., N)``;
    ``model_fn(x_s_MxN, s_M, cond_MxC) -> velocity_MxN`` with float ``s`` in [0, 1)
    (``flatten`` as in :func:`gaussian_diffusion_loss`). Returns float32 of shape
    ``x1.shape[:-1]``.
    """
    x1 = jnp.asarray(x1)
    _check_x0(x1, cond)
    if num_draws < 1:
        raise ValueError(f"num_draws={num_draws!r} must be >= 1")
    s, noise = sample_flow_noise(key, x1.shape, num_draws=num_draws)
    return flow_matching_loss_from_noise(
        model_fn, x1, cond, s, noise.astype(x1.dtype), flatten=flatten
    )


def flow_matching_loss_from_noise(model_fn, x1, cond, s, noise, *, flatten: bool = True):
    """:func:`flow_matching_loss` with given draws ``s (R, ...)``, ``noise (R, ..., N)``."""
    num_draws = s.shape[0]
    x1_rep = jnp.broadcast_to(x1[None], noise.shape)
    s_ = s.astype(x1.dtype)[..., None]
    x_s = s_ * x1_rep + (1.0 - s_) * noise
    pred = _per_draw_fn(model_fn, x1, cond, x_s, s, num_draws, flatten)
    err = jnp.square(pred.astype(jnp.float32) - (x1_rep - noise).astype(jnp.float32))
    return jnp.mean(err, axis=(0, -1))
