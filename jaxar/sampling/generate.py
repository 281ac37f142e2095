"""Autoregressive generation with a decoding state (KV cache or O(1) recurrent state).

The prompt is processed in one ``decode`` call (parallel prefill), then one ``decode`` per
new token inside a ``lax.scan``; the whole loop is one jitted function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

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
      int32 (B, P + max_new_tokens): the prompt followed by the samples.
    """
    prompt = jnp.asarray(prompt_BxP)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt_BxP must be (B, P) with P >= 1, got shape {prompt.shape}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt_BxP must be integer ids, got dtype {prompt.dtype}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive int")
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be >= 0")
    graphdef, params = nnx.split(model)
    return _generate(
        graphdef,
        params,
        key,
        prompt.astype(jnp.int32),
        max_new_tokens,
        float(temperature),
        top_k,
        top_p,
    )


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _generate(graphdef, params, key, prompt, max_new_tokens, temperature, top_k, top_p):
    model = nnx.merge(graphdef, params)
    b, p = prompt.shape
    state = model.init_state(b, p + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None], (b, p))
    logits, state = model.decode(prompt, state, positions=positions)
    keys = jax.random.split(key, max_new_tokens)
    sample = functools.partial(sample_token, temperature=temperature, top_k=top_k, top_p=top_p)
    first = sample(keys[0], logits[:, -1])

    def step(carry, inp):
        tok, state = carry
        k, pos = inp
        logits, state = model.decode(
            tok[:, None], state, positions=jnp.full((b, 1), pos, jnp.int32)
        )
        nxt = sample(k, logits[:, -1])
        return (nxt, state), nxt

    if max_new_tokens > 1:
        steps = jnp.arange(p, p + max_new_tokens - 1, dtype=jnp.int32)
        _, rest = jax.lax.scan(step, (first, state), (keys[1:], steps))
        new = jnp.concatenate([first[:, None], rest.T], axis=1)
    else:
        new = first[:, None]
    return jnp.concatenate([prompt, new], axis=1)
