"""Jacobi (fixed-point) greedy decoding.

Greedy decoding is the fixed point of ``y_i = argmax p(. | prompt, y_<i)``; Jacobi
decoding (Santilli et al., "Accelerating Transformer Inference for Translation via Parallel
Decoding", arXiv:2305.10427; Fu et al., "Break the Sequential Dependency of LLM Inference
Using Lookahead Decoding", arXiv:2402.02057) iterates it on a window of ``W`` guesses with
one model call per iteration: from the last committed token ``x`` and guesses
``g_1 .. g_{W-1}``, the call gives ``y_i = argmax p(. | prefix, g_<i)`` for ``i = 1..W``.
If the first ``m`` guesses equal their ``y``, then ``y_1 .. y_{m+1}`` are the greedy tokens
(each was computed from a correct prefix): they are committed, and ``y_{m+2} .. y_W`` are
the next guesses. At least one token per call, so the output equals greedy
:func:`jaxar.sampling.generate`, in at most as many calls (MATHS.md s.9).

Rows have their own lengths and states are rolled back to the committed prefix as in
:mod:`jaxar.sampling.speculative` (caches by their per-row index; recurrent states from the
per-step states of the verification). The loop is one jitted ``lax.while_loop``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.ops.categorical import INVALID, check_draws, valid_logits
from jaxar.ops.checks import positive_int
from jaxar.sampling.generate import _check_prompt_ids, _vocab_size
from jaxar.sampling.speculative import (
    _check_common,
    _check_lm,
    _commit,
    _decode_steps,
    _prefill,
    _rollback,
    _verify_mode,
    _vocab,
)

__all__ = ["generate"]


def generate(model, prompt_BxP, *, max_new_tokens: int, window: int = 16):
    """Greedy decoding of ``max_new_tokens`` by Jacobi iteration on ``window`` positions.

    Args:
      model: an LM (``init_state`` / ``decode`` protocol).
      prompt_BxP: int (B, P) prompt, P >= 1.
      max_new_tokens: >= 1 tokens.
      window: W >= 1 positions per model call (W = 1 is plain greedy decoding).

    Returns:
      ``(tokens, stats)``: int32 (B, P + max_new_tokens), equal to greedy ``generate``
      (``-1`` from a step with garbage logits on); ``stats`` holds ``iterations`` (model
      calls after the prefill), ``row_iterations`` (B,) calls while each row was unfinished
      and ``tokens_per_call`` (B,).

    Raises:
      ValueError: bad arguments, or a prompt id outside ``[0, V)``.
    """
    _check_lm(model, "model")
    prompt = _check_common(prompt_BxP, max_new_tokens)
    positive_int("window", window)
    graphdef, params = nnx.split(model)
    if not isinstance(prompt, jax.core.Tracer):
        _check_prompt_ids(np.asarray(prompt), _vocab_size(model, graphdef, params))
    tokens, stats = _jacobi(graphdef, params, prompt.astype(jnp.int32), max_new_tokens, window)
    check_draws(tokens[:, prompt.shape[1] :], "jacobi.generate")
    return tokens, stats


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _jacobi(graphdef, params, prompt, max_new, w):
    model = nnx.merge(graphdef, params)
    b, p = prompt.shape
    mode = _verify_mode(model, b)
    total = p + max_new
    max_len = total + 2 * w
    bad_prompt = jnp.any((prompt < 0) | (prompt >= _vocab(graphdef, params)), axis=1)
    tokens = jnp.concatenate([prompt, jnp.zeros((b, max_new + w), jnp.int32)], axis=1)
    tokens = tokens.at[:, p:].set(jnp.where(bad_prompt[:, None], INVALID, 0))
    rows = jnp.arange(b)
    j_w = jnp.arange(w, dtype=jnp.int32)
    carry0 = dict(
        tokens=tokens,
        n=jnp.where(bad_prompt, total, p).astype(jnp.int32),
        state=_prefill(model, prompt, max_len),
        guess=jnp.broadcast_to(prompt[:, -1:], (b, w - 1)).astype(jnp.int32),
        it=jnp.zeros((), jnp.int32),
        row_calls=jnp.zeros((b,), jnp.int32),
    )

    def body(c):
        active = c["n"] < total
        n = c["n"]
        x0 = jnp.maximum(c["tokens"][rows, n - 1], 0)  # a finished garbage row idles on 0
        block = jnp.concatenate([x0[:, None], c["guess"]], axis=1)  # (B, W)
        pos = (n - 1)[:, None] + j_w[None]
        logits, new, steps = _decode_steps(model, block, c["state"], pos, mode=mode)
        y = jnp.argmax(logits, -1).astype(jnp.int32)  # (B, W)
        ok = valid_logits(logits)
        match = (c["guess"] == y[:, : w - 1]) & ok[:, : w - 1]
        m = jnp.sum(jnp.cumprod(match.astype(jnp.int32), axis=1), axis=1)  # (B,) in 0..W-1
        dead = ~ok[rows, m]
        y = jnp.where(j_w[None] == m[:, None], jnp.where(dead, INVALID, y[rows, m])[:, None], y)
        keep = jnp.where(active, m + 1, 0)
        tokens = _commit(c["tokens"], n, y, keep)
        tail = (jnp.arange(tokens.shape[1])[None] >= (n + m)[:, None]) & (dead & active)[:, None]
        tokens = jnp.where(tail, INVALID, tokens)
        nxt = jnp.minimum(m[:, None] + 1 + j_w[None, : w - 1], w - 1)
        return dict(
            tokens=tokens,
            n=jnp.where(active, jnp.where(dead, total, n + m + 1), n).astype(jnp.int32),
            state=_rollback(c["state"], new, steps, keep),
            guess=jnp.where(
                active[:, None], jnp.maximum(jnp.take_along_axis(y, nxt, 1), 0), c["guess"]
            ),
            it=c["it"] + 1,
            row_calls=c["row_calls"] + active,
        )

    out = jax.lax.while_loop(lambda c: jnp.any(c["n"] < total), body, carry0)
    calls = out["row_calls"]
    stats = dict(
        iterations=out["it"],
        row_iterations=calls,
        tokens_per_call=max_new / jnp.maximum(calls, 1).astype(jnp.float32),
    )
    return out["tokens"][:, :total], stats
