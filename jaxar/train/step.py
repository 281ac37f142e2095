"""The pure train and eval steps over split NNX state (jitted once by the host loop).

The train state is a dict ``{"params", "opt_state", "ema" (optional), "step", "rng"}``
(``rng`` is raw key data, uint32). One step: per-step key ``fold_in(rng, step)``;
gradients over ``grad_accum`` micro-batches (a ``lax.scan`` summing gradients, rows
``i::grad_accum`` in micro-batch ``i`` so every device keeps its rows); a non-finite
loss or gradient norm leaves params, optimizer state and EMA unchanged (``finite`` = 0
in the metrics) while ``step`` advances past the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def init_state(params, tx: optax.GradientTransformation, *, seed: int, ema: bool) -> dict:
    """A fresh train state around ``params``."""
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def _micro(batch: dict, accum: int) -> dict:
    def split(x):
        b = x.shape[0]
        return jnp.swapaxes(x.reshape((b // accum, accum) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    graphdef,
    rest,
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    *,
    grad_accum: int = 1,
    ema_decay: float = 0.0,
    lr_schedule: Callable | None = None,
) -> Callable:
    """``train_step(state, batch) -> (state, metrics)``, pure; jit it with the shardings.

    Args:
      graphdef, rest: the model's graph and its non-parameter state (``nnx.split``).
      loss_fn: ``(model, batch, key) -> (loss, metrics)``.
      tx: the optimizer.
      grad_accum: micro-batches per step (gradient = mean over micro-batches).
      ema_decay: > 0 keeps ``state["ema"]``.
      lr_schedule: reported as ``lr`` in the metrics.
    """

    def loss_of(params, batch, key):
        model = nnx.merge(graphdef, params, rest)
        loss, metrics = loss_fn(model, batch, key)
        return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def train_step(state, batch):
        params = state["params"]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        if grad_accum == 1:
            (loss, metrics), grads = grad_fn(params, batch, key)
        else:

            def body(carry, mb_i):
                mb, i = mb_i
                (l, m), g = grad_fn(params, mb, jax.random.fold_in(key, i))
                acc = jax.tree.map(jnp.add, carry, (l, m, g))
                return acc, None

            (l0, m0), g0 = jax.eval_shape(
                grad_fn, params, jax.tree.map(lambda x: x[0], _micro(batch, grad_accum)), key
            )
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, m0, g0))
            (loss, metrics, grads), _ = jax.lax.scan(
                body, zeros, (_micro(batch, grad_accum), jnp.arange(grad_accum))
            )
            loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, (loss, metrics, grads))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        new = dict(state)
        new["params"] = keep(new_params, params)
        new["opt_state"] = keep(opt_state, state["opt_state"])
        if "ema" in state:
            ema = jax.tree.map(
                lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema"], new_params
            )
            new["ema"] = keep(ema, state["ema"])
        new["step"] = state["step"] + 1
        metrics = dict(metrics)
        metrics.update(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state["step"]), jnp.float32)
        return new, metrics

    return train_step


def make_eval_step(graphdef, rest, loss_fn: Callable) -> Callable:
    """``eval_step(params, batch, key) -> metrics`` (the loss function's metrics)."""

    def eval_step(params, batch, key):
        model = nnx.merge(graphdef, params, rest)
        loss, metrics = loss_fn(model, batch, key)
        out = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        out["loss"] = jnp.asarray(loss, jnp.float32)
        return out

    return eval_step
