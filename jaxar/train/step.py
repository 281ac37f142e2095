"""The pure train and eval steps over split NNX state (jitted once by the host loop).

The train state is a dict ``{"params", "opt_state", "ema" (optional), "model_state"
(optional), "step", "rng"}`` (``rng`` is raw key data, uint32). One step: per-step key
``fold_in(rng, step)``; gradients over ``grad_accum`` micro-batches (a ``lax.scan`` summing
gradients, rows ``i::grad_accum`` in micro-batch ``i`` so every device keeps its rows); a
non-finite loss or gradient norm leaves params, optimizer state, EMA and model state
unchanged (``finite`` = 0 in the metrics) while ``step`` advances past the batch.

Model state is a model's non-gradient training state: its :data:`MODEL_STATE` variables
(``nnx.BatchStat`` and subclasses, e.g. the EMA codebook of ``jaxar.models.vq``), which the
loss updates in place while it runs (NNX style). The step merges them into the model, reads
their new values after the loss as an auxiliary output of the gradient (no gradient flows
into them), and writes them back; the optimizer never sees them. Micro-batches update them
in order (micro-batch ``i + 1`` starts from the state ``i`` left). A model without such
variables has no ``"model_state"`` entry, so its state, step and checkpoints are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

MODEL_STATE = nnx.BatchStat


def split_model(model: nnx.Module):
    """``(graphdef, params, model_state, rest)``: ``nnx.Param``, :data:`MODEL_STATE` and the
    other variables (fixed during training; the step closes over them)."""
    return nnx.split(model, nnx.Param, MODEL_STATE, ...)


def init_state(
    params, tx: optax.GradientTransformation, *, seed: int, ema: bool, model_state=None
) -> dict:
    """A fresh train state around ``params`` (and ``model_state`` when it has leaves)."""
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    if model_state is not None and jax.tree.leaves(model_state):
        state["model_state"] = model_state
    return state


def _merge(graphdef, params, model_state, rest):
    if model_state is None:
        return nnx.merge(graphdef, params, rest)
    # fresh variables owned by the current trace, so that the loss may update them
    return nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, model_state), rest)


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
      graphdef, rest: the model's graph and its fixed state (:func:`split_model`; the
        model state, if any, travels in the train state).
      loss_fn: ``(model, batch, key) -> (loss, metrics)``; it may update the model's
        :data:`MODEL_STATE` variables in place.
      tx: the optimizer.
      grad_accum: micro-batches per step (gradient = mean over micro-batches).
      ema_decay: > 0 keeps ``state["ema"]``.
      lr_schedule: reported as ``lr`` in the metrics.
    """

    def loss_of(params, model_state, batch, key):
        model = _merge(graphdef, params, model_state, rest)
        loss, metrics = loss_fn(model, batch, key)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        new_ms = None if model_state is None else nnx.state(model, MODEL_STATE)
        return loss, (metrics, jax.lax.stop_gradient(new_ms))

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def train_step(state, batch):
        params = state["params"]
        model_state = state.get("model_state")  # None (no leaves) for most families
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        if grad_accum == 1:
            (loss, (metrics, new_ms)), grads = grad_fn(params, model_state, batch, key)
        else:

            def body(carry, mb_i):
                (acc, ms), (mb, i) = carry, mb_i
                (l, (m, ms)), g = grad_fn(params, ms, mb, jax.random.fold_in(key, i))
                return (jax.tree.map(jnp.add, acc, (l, m, g)), ms), None

            micro = _micro(batch, grad_accum)
            (l0, (m0, _)), g0 = jax.eval_shape(
                grad_fn, params, model_state, jax.tree.map(lambda x: x[0], micro), key
            )
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, m0, g0))
            ((loss, metrics, grads), new_ms), _ = jax.lax.scan(
                body, (zeros, model_state), (micro, jnp.arange(grad_accum))
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
        if model_state is not None:
            new["model_state"] = keep(new_ms, model_state)
        new["step"] = state["step"] + 1
        metrics = dict(metrics)
        metrics.update(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
        if lr_schedule is not None:
            metrics["lr"] = jnp.asarray(lr_schedule(state["step"]), jnp.float32)
        return new, metrics

    return train_step


def make_eval_step(graphdef, rest, loss_fn: Callable) -> Callable:
    """``eval_step(params, batch, key, model_state=None) -> metrics`` (the loss function's
    metrics; updates the loss makes to the model state are dropped)."""

    def eval_step(params, batch, key, model_state=None):
        model = _merge(graphdef, params, model_state, rest)
        loss, metrics = loss_fn(model, batch, key)
        out = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        out["loss"] = jnp.asarray(loss, jnp.float32)
        return out

    return eval_step
