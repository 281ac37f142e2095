"""Classifier-free guidance on logits (jaxar/MATHS.md s.10).

``l = l_c + (s_t - 1) (l_c - l_u)`` (= ``l_u + s_t (l_c - l_u)``, written so that ``s_t = 1``
returns the conditional logits bit for bit), with ``s_t = s`` (``"constant"``) or
``s_t = 1 + (s - 1) t / max(T - 1, 1)`` (``"linear"``: from 1 at the first of T steps to
``s`` at the last). A token the conditional logits forbid (``-inf``) stays forbidden; where
only the unconditional side is ``-inf`` the token gets no guidance (``l = l_c``).

The class-conditional image samplers (token-AR, VAR) share :func:`class_draw_options` (the
validated labels, scale and static options, once per call) and :func:`guided_draw` (one
guided, filtered draw: the batch's second half holds the null-class rows).
:class:`Guided` wraps any LM so that an LM sampler (``jaxar.sampling.generate``) draws
from the guided logits.

References:
  Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", arXiv:2207.12598.
  Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable Image
    Generation", arXiv:2406.06525.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.sampling.logits import sample_token

__all__ = [
    "SCHEDULES", "guidance_scale", "cfg", "Guided", "default_labels", "class_draw_options",
    "guided_draw",
]  # fmt: skip

SCHEDULES = ("constant", "linear")


def guidance_scale(scale, schedule: str = "constant", step=0, total: int = 1):
    """``s_t`` of the schedule at ``step`` (0-based) of ``total``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"cfg_schedule={schedule!r} is not supported; accepted: {SCHEDULES}")
    if schedule == "constant":
        return jnp.asarray(scale, jnp.float32)
    frac = jnp.asarray(step, jnp.float32) / max(int(total) - 1, 1)
    return 1.0 + (jnp.asarray(scale, jnp.float32) - 1.0) * frac


def cfg(cond_logits, uncond_logits, scale, *, schedule: str = "constant", step=0, total: int = 1):
    """Guided logits ``l_c + (s_t - 1)(l_c - l_u)`` (float32; ``-inf`` where ``l_c`` is; no
    guidance term where ``l_u`` is not finite), so ``s_t = 1`` returns ``l_c`` exactly."""
    c = jnp.asarray(cond_logits, jnp.float32)
    u = jnp.asarray(uncond_logits, jnp.float32)
    if c.shape != u.shape:
        raise ValueError(f"cond_logits {c.shape} and uncond_logits {u.shape} must match")
    s = guidance_scale(scale, schedule, step, total)
    both = jnp.isfinite(c) & jnp.isfinite(u)
    out = c + (s - 1.0) * jnp.where(both, c - u, 0.0)
    return jnp.where(jnp.isneginf(c), -jnp.inf, out)


class Guided(nnx.Module):
    """An LM whose logits are guided: rows are run twice, the second time with the prompt
    slots ``< P`` replaced by ``uncond_prompt`` (e.g. the null class token).

    Follows the LM protocol (``init_state``, ``decode(tokens, state, *, positions)``), so
    ``generate(key, Guided(lm, null, scale), prompt, ...)`` samples with guidance
    (constant schedule).
    """

    def __init__(self, model, uncond_prompt_BxP, scale: float):
        self.model = model
        self.uncond = nnx.data(jnp.asarray(uncond_prompt_BxP, jnp.int32))
        self.scale = float(scale)

    def init_state(self, batch_size: int, max_len: int, dtype=None):
        return self.model.init_state(2 * batch_size, max_len, dtype)

    def decode(self, tokens_BxT, state, *, positions=None, bidirectional=False):
        b, t = tokens_BxT.shape
        p = self.uncond.shape[1]
        if positions is None:
            raise ValueError("Guided.decode needs positions (B, T)")
        at = jnp.clip(positions, 0, p - 1)
        u = self.uncond if self.uncond.shape[0] == b else self.uncond[:1]
        null = jnp.take_along_axis(jnp.broadcast_to(u, (b, p)), at, axis=1)
        other = jnp.where(positions < p, null, tokens_BxT)
        both = jnp.concatenate([tokens_BxT, other], 0)
        logits, state = self.model.decode(
            both, state, positions=jnp.concatenate([positions, positions], 0)
        )
        return cfg(logits[:b], logits[b:], self.scale), state


def default_labels(num: int, num_classes: int):
    """``0, 1, .., C - 1, 0, 1, ..`` for ``num`` samples."""
    return jnp.arange(num, dtype=jnp.int32) % num_classes


def class_draw_options(
    num_classes: int, num: int, *, labels, cfg_scale, cfg_schedule, temperature, top_k, top_p
):
    """``(labels int32 (num,), scale, options)`` of a class-conditional sampler, validated
    once: ``labels`` None -> :func:`default_labels`; ``cfg_scale`` None = no guidance;
    ``options = (guided, cfg_schedule, temperature, top_k, top_p)`` (static, hashable)."""
    if cfg_schedule not in SCHEDULES:
        raise ValueError(f"cfg_schedule={cfg_schedule!r} is not supported; accepted: {SCHEDULES}")
    if cfg_scale is not None and not cfg_scale >= 0:
        raise ValueError(f"cfg_scale={cfg_scale!r} is invalid; accepted: None or a float >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r} is invalid; accepted: >= 0")
    if labels is None:
        labels = default_labels(num, num_classes)
    else:
        labels = jnp.asarray(labels, jnp.int32).reshape(-1)
        if labels.shape != (num,):
            raise ValueError(f"labels has shape {labels.shape}; accepted: ({num},)")
        if not isinstance(labels, jax.core.Tracer):
            bad = (labels < 0) | (labels >= num_classes)
            if bool(jnp.any(bad)):
                raise ValueError(f"labels hold ids outside [0, {num_classes}): {labels.tolist()}")
    options = (cfg_scale is not None, cfg_schedule, float(temperature), top_k, top_p)
    scale = jnp.asarray(1.0 if cfg_scale is None else cfg_scale, jnp.float32)
    return labels, scale, options


def guided_draw(key, logits, b: int, step, total: int, options, scale):
    """Tokens (b, ...) drawn from ``logits`` (rows ``b:`` unconditional when guided) after
    :func:`cfg` at ``step`` of ``total`` and temperature / top-k / top-p filtering."""
    guided, schedule, temperature, top_k, top_p = options
    if guided:
        logits = cfg(logits[:b], logits[b:], scale, schedule=schedule, step=step, total=total)
    return sample_token(key, logits, temperature=temperature, top_k=top_k, top_p=top_p)
