"""Beam search over an LM's decoding state.

Each step extends every beam by every token, scores ``log p(prefix) + log p(token |
prefix)`` and keeps the ``beam_size`` best of the ``beam_size * V`` candidates (their
states gathered from their parents). A beam that has emitted ``eos_id`` is finished: it
continues with ``eos_id`` at log-probability 0. The final ranking divides the summed
log-probability by ``length ** length_penalty`` (length = new tokens up to and including
the first ``eos_id``; Wu et al., "Google's Neural Machine Translation System",
arXiv:1609.08144, use a smoothed length); the pruning between steps ranks by the plain sum.
When ``beam_size >= V ** max_new_tokens`` nothing is pruned, so the top beam is the best
continuation by brute force.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.ops.categorical import INVALID, valid_logits
from jaxar.ops.checks import positive_int
from jaxar.sampling.generate import _check_prompt_ids, _vocab_size
from jaxar.sampling.speculative import _check_common, _check_lm

__all__ = ["beam_search"]


def beam_search(
    model,
    prompt_BxP,
    *,
    beam_size: int,
    max_new_tokens: int,
    length_penalty: float = 0.0,
    eos_id: int | None = None,
):
    """The ``beam_size`` best continuations of ``max_new_tokens`` tokens after each prompt.

    Args:
      model: an LM (``init_state`` / ``decode`` protocol).
      prompt_BxP: int (B, P) prompts, P >= 1.
      beam_size: beams kept per prompt, >= 1.
      max_new_tokens: >= 1 new tokens.
      length_penalty: alpha >= 0 of the final ranking ``score / length ** alpha``.
      eos_id: optional end token in ``[0, V)``; a finished beam is padded with it.

    Returns:
      ``(beams, scores)``: int32 (B, beam_size, P + max_new_tokens), best first, and
      float32 (B, beam_size) scores (``-inf`` for slots with no continuation, when
      ``beam_size`` exceeds their number). A prompt whose decoding met garbage logits gets
      ``-1`` tokens and NaN scores.

    Raises:
      ValueError: bad arguments, or a prompt id outside ``[0, V)``.
    """
    _check_lm(model, "model")
    prompt = _check_common(prompt_BxP, max_new_tokens)
    positive_int("beam_size", beam_size)
    if not length_penalty >= 0:
        raise ValueError(f"length_penalty={length_penalty!r} is invalid; accepted: a float >= 0")
    graphdef, params = nnx.split(model)
    vocab = _vocab_size(model, graphdef, params)
    if eos_id is not None and (not isinstance(eos_id, int | np.integer) or not 0 <= eos_id < vocab):
        raise ValueError(f"eos_id={eos_id!r} is invalid; accepted: None or an int in [0, {vocab})")
    if not isinstance(prompt, jax.core.Tracer):
        _check_prompt_ids(np.asarray(prompt), vocab)
    return _beam(
        graphdef,
        params,
        prompt.astype(jnp.int32),
        beam_size,
        max_new_tokens,
        float(length_penalty),
        None if eos_id is None else int(eos_id),
    )


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def _beam(graphdef, params, prompt, k, max_new, length_penalty, eos_id):
    model = nnx.merge(graphdef, params)
    b, p = prompt.shape
    state = model.init_state(b, p + max_new)
    pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
    logits, state = model.decode(prompt, state, positions=pos)
    v = logits.shape[-1]
    state = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0) if x.ndim else x, state)
    logits_KxV = jnp.repeat(logits[:, -1], k, axis=0).reshape(b, k, v)
    scores = jnp.where(jnp.arange(k)[None] == 0, 0.0, -jnp.inf) * jnp.ones((b, 1))
    eos_row = (
        None if eos_id is None else jnp.where(jnp.arange(v) == eos_id, 0.0, -jnp.inf)
    )  # a finished beam's only continuation
    carry0 = dict(
        logits=logits_KxV,
        state=state,
        scores=scores,
        hist=jnp.zeros((b, k, max_new), jnp.int32),
        done=jnp.zeros((b, k), bool),
        length=jnp.zeros((b, k), jnp.int32),
        garbage=jnp.any((prompt < 0) | (prompt >= v), axis=1),
    )
    flat_base = (jnp.arange(b) * k)[:, None]

    def step(c, t):
        live = jnp.isfinite(c["scores"])
        bad = jnp.any(live & ~valid_logits(c["logits"]), axis=1)
        logp = jax.nn.log_softmax(c["logits"].astype(jnp.float32), -1)
        logp = jnp.where(valid_logits(c["logits"])[..., None], logp, -jnp.inf)
        if eos_row is not None:
            logp = jnp.where(c["done"][..., None], eos_row, logp)
        cand = (c["scores"][..., None] + logp).reshape(b, k * v)
        scores, idx = jax.lax.top_k(cand, k)
        parent, tok = idx // v, (idx % v).astype(jnp.int32)
        hist = jnp.take_along_axis(c["hist"], parent[..., None], axis=1).at[:, :, t].set(tok)
        done = jnp.take_along_axis(c["done"], parent, axis=1)
        length = jnp.take_along_axis(c["length"], parent, axis=1) + (~done).astype(jnp.int32)
        if eos_id is not None:
            done = done | (tok == eos_id)
        rows = (flat_base + parent).reshape(-1)
        state = jax.tree.map(lambda x: x[rows] if x.ndim else x, c["state"])
        logits, state = model.decode(
            tok.reshape(-1, 1), state, positions=jnp.full((b * k, 1), p + t, jnp.int32)
        )
        return dict(
            logits=logits[:, 0].reshape(b, k, v),
            state=state,
            scores=scores,
            hist=hist,
            done=done,
            length=length,
            garbage=c["garbage"] | bad,
        ), None

    out, _ = jax.lax.scan(step, carry0, jnp.arange(max_new, dtype=jnp.int32))
    final = out["scores"] / jnp.maximum(out["length"], 1).astype(jnp.float32) ** length_penalty
    order = jnp.argsort(-final, axis=1, stable=True)
    final = jnp.take_along_axis(final, order, axis=1)
    hist = jnp.take_along_axis(out["hist"], order[..., None], axis=1)
    beams = jnp.concatenate([jnp.broadcast_to(prompt[:, None], (b, k, p)), hist], axis=2)
    g = out["garbage"]
    beams = jnp.where(g[:, None, None], INVALID, beams)
    return beams, jnp.where(g[:, None], jnp.nan, final)
