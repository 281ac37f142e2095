"""Sampling a token-AR image model (raster order, KV cache, classifier-free guidance;
jaxar/MATHS.md s.10).

Code ``i`` is drawn from ``softmax(cfg(l_c, l_u)_i / temperature)`` (top-k / top-p
filtered) with the key ``fold_in(key, i)``; with a cache the class token is prefilled and
each code is one transformer call on one position (``L`` calls for ``L = g^2`` codes);
``use_cache=False`` recomputes the whole causal pass per code (the reference: same keys,
same codes). Guidance runs the batch twice, the second half with the null class.

References:
  Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable Image
    Generation", arXiv:2406.06525.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.sampling.guidance import class_draw_options, default_labels, guided_draw

__all__ = ["sample_codes", "default_labels"]


@functools.partial(jax.jit, static_argnames=("graphdef", "options", "use_cache"))
def _codes(graphdef, state, key, labels, scale, options, use_cache):
    model = nnx.merge(graphdef, state)
    c = model.config
    n = c.seq_len
    b = labels.shape[0]
    rows = (
        labels if not options[0] else jnp.concatenate([labels, jnp.full_like(labels, c.null_class)])
    )
    cls = model.class_tokens(rows)
    r = cls.shape[0]
    if use_cache:
        kv = model.init_state(r, n)
        logits, kv = model.decode(cls[:, None], kv, positions=jnp.zeros((r, 1), jnp.int32))
        first = guided_draw(
            jax.random.fold_in(key, 0), logits[:, 0, : c.num_codes], b, 0, n, options, scale
        )

        def step(carry, i):
            tok, kv = carry
            both = jnp.concatenate([tok, tok])[:, None] if r > b else tok[:, None]
            logits, kv = model.decode(both, kv, positions=jnp.full((r, 1), i, jnp.int32))
            nxt = guided_draw(
                jax.random.fold_in(key, i), logits[:, 0, : c.num_codes], b, i, n, options, scale
            )
            return (nxt, kv), nxt

        _, rest = jax.lax.scan(step, (first, kv), jnp.arange(1, n, dtype=jnp.int32))
        return jnp.concatenate([first[:, None], rest.T], 1)

    def full(i, codes):
        seq = jnp.concatenate(
            [cls[:, None], (jnp.concatenate([codes, codes]) if r > b else codes)[:, :-1]], 1
        )
        logits = model(jnp.maximum(seq, 0))[:, i, : c.num_codes]
        return codes.at[:, i].set(
            guided_draw(jax.random.fold_in(key, i), logits, b, i, n, options, scale)
        )

    return jax.lax.fori_loop(0, n, full, jnp.zeros((b, n), jnp.int32))


def sample_codes(
    model,
    key,
    num: int,
    *,
    labels=None,
    cfg_scale=None,
    cfg_schedule: str = "constant",
    temperature: float = 1.0,
    top_k=None,
    top_p=None,
    use_cache: bool = True,
):
    """int32 codes (num, g*g) of class ``labels`` (default: classes in turn); ``cfg_scale``
    None = no guidance (1.0 gives the same codes with twice the work)."""
    labels, scale, options = class_draw_options(
        model.config.num_classes, num, labels=labels, cfg_scale=cfg_scale,
        cfg_schedule=cfg_schedule, temperature=temperature, top_k=top_k, top_p=top_p,
    )  # fmt: skip
    graphdef, state = nnx.split(model)
    return _codes(graphdef, state, key, labels, scale, options, bool(use_cache))
