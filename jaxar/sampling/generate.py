"""Autoregressive generation with a decoding state (KV cache or O(1) recurrent state).

The prompt is processed in one ``decode`` call (parallel prefill), then one ``decode`` per
new token inside a ``lax.scan``; the whole loop is one jitted function.

Garbage never comes back as tokens: a step whose logits are not a distribution (NaN,
``+inf`` or all ``-inf``) draws ``-1`` (:data:`jaxar.ops.categorical.INVALID`) and that row
stays ``-1`` for the rest of the generation; a prompt with an id outside ``[0, V)`` gives a
row of ``-1``. Called with concrete arrays, :func:`generate` raises ``ValueError`` instead
(for a bad prompt before generating); under an outer ``jit`` the ``-1`` rows are returned.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.ops.categorical import INVALID, check_draws
from jaxar.ops.checks import positive_int
from jaxar.sampling.logits import sample_token

__all__ = ["generate"]


def generate(
    key,
    model,
    prompt_BxP,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
):
    """Samples ``max_new_tokens`` after ``prompt_BxP``.

    Args:
      key: PRNG key.
      model: an LM with ``init_state(B, max_len)`` and ``decode(tokens_BxT, state, *,
        positions) -> (logits_BxTxV, state)``.
      prompt_BxP: int (B, P) prompt, P >= 1.
      max_new_tokens: >= 1 tokens to sample.
      temperature: 0 = greedy; otherwise logits are divided by it.
      top_k, top_p: optional filtering (:func:`jaxar.sampling.logits.process`).

    Returns:
      int32 (B, P + max_new_tokens): the prompt followed by the samples (``-1`` from a
      step whose logits were garbage on, or for a whole row with a bad prompt id, when
      traced; see the module docstring).

    Raises:
      ValueError: bad arguments, a concrete prompt id outside ``[0, V)``, or (concrete
        call) logits from which no token could be drawn.
    """
    prompt = jnp.asarray(prompt_BxP)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt_BxP must be (B, P) with P >= 1, got shape {prompt.shape}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt_BxP must be integer ids, got dtype {prompt.dtype}")
    positive_int("max_new_tokens", max_new_tokens)
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be >= 0")
    graphdef, params = nnx.split(model)
    if not isinstance(prompt, jax.core.Tracer):
        _check_prompt_ids(np.asarray(prompt), _vocab_size(model, graphdef, params))
    out = _generate(
        graphdef,
        params,
        key,
        prompt.astype(jnp.int32),
        max_new_tokens,
        float(temperature),
        top_k,
        top_p,
    )
    check_draws(out[:, prompt.shape[1] :], "generate")
    return out


def _check_prompt_ids(prompt, vocab_size):
    bad = (prompt < 0) | (prompt >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"prompt_BxP holds {int(bad.sum())} id(s) outside the vocabulary [0, {vocab_size}), "
            f"e.g. {int(prompt[where])} at (row, position) {where}"
        )


def _vocab_size(model, graphdef, params) -> int:
    """V: the model's int ``vocab_size`` attribute when it has one (an LM), else the shape
    of one traced decode step (:func:`_logits_probe`; ~1 ms of host time per call)."""
    v = getattr(model, "vocab_size", None)
    if isinstance(v, int | np.integer) and not isinstance(v, bool):
        return int(v)
    return _logits_probe.eval_shape(graphdef, params).shape[-1]


@functools.partial(jax.jit, static_argnums=0)
def _logits_probe(graphdef, params):
    """One decode step on a (1, 1) input: its shape gives ``V`` (used via ``eval_shape``)."""
    model = nnx.merge(graphdef, params)
    token = jnp.zeros((1, 1), jnp.int32)
    logits, _ = model.decode(token, model.init_state(1, 1), positions=token)
    return logits


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _generate(graphdef, params, key, prompt, max_new_tokens, temperature, top_k, top_p):
    model = nnx.merge(graphdef, params)
    b, p = prompt.shape
    state = model.init_state(b, p + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
    logits, state = model.decode(prompt, state, positions=positions)
    keys = jax.random.split(key, max_new_tokens)
    sample = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)
    bad_prompt = jnp.any((prompt < 0) | (prompt >= logits.shape[-1]), axis=1)
    first = jnp.where(bad_prompt, INVALID, sample(keys[0], logits[:, -1]))

    def step(carry, inp):
        tok, state = carry
        k, pos = inp
        logits, state = model.decode(
            tok[:, None], state, positions=jnp.full((b, 1), pos, jnp.int32)
        )
        nxt = jnp.where(tok == INVALID, INVALID, sample(k, logits[:, -1]))
        return (nxt, state), nxt

    if max_new_tokens > 1:
        steps = jnp.arange(p, p + max_new_tokens - 1, dtype=jnp.int32)
        _, rest = jax.lax.scan(step, (first, state), (keys[1:], steps))
        new = jnp.concatenate([first[:, None], rest.T], axis=1)
    else:
        new = first[:, None]
    return jnp.concatenate([prompt, new], axis=1)
