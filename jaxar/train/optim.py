"""Optimisation (optax in one file): AdamW, warmup + cosine decay, clipping, EMA.

lr(t) = peak * t / warmup for t < warmup, then cosine from peak down to
``min_lr_ratio * peak`` at ``steps``. Weight decay applies to matrices only (ndim >= 2);
gradients are clipped to a global norm before Adam. Gradient accumulation and mixed
precision live in the train step (``jaxar.train.step``); the EMA of weights is
``ema <- d * ema + (1 - d) * params`` after each applied update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxar.train.config import TrainConfig


def schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup to ``learning_rate`` then cosine decay to ``min_lr_ratio`` of it."""
    warmup = min(cfg.warmup_steps, cfg.steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def _decay_mask(params):
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optimizer for a config: [clip_by_global_norm] -> AdamW(schedule)."""
    parts = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(
        optax.adamw(
            schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*parts)


def ema_update(ema, params, decay: float):
    """``decay * ema + (1 - decay) * params`` leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
