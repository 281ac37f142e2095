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

from jaxar.sampling.guidance import SCHEDULES, cfg
from jaxar.sampling.logits import sample_token

__all__ = ["sample_codes", "default_labels"]


def default_labels(num: int, num_classes: int):
    """``0, 1, .., C - 1, 0, 1, ..`` for ``num`` samples."""
    return jnp.arange(num, dtype=jnp.int32) % num_classes


def check_options(num_classes, labels, num, cfg_scale, cfg_schedule, temperature):
    """Validated int32 labels (num,) (None -> :func:`default_labels`)."""
    if cfg_schedule not in SCHEDULES:
        raise ValueError(f"cfg_schedule={cfg_schedule!r} is not supported; accepted: {SCHEDULES}")
    if cfg_scale is not None and not cfg_scale >= 0:
        raise ValueError(f"cfg_scale={cfg_scale!r} is invalid; accepted: None or a float >= 0")
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r} is invalid; accepted: >= 0")
    if labels is None:
        return default_labels(num, num_classes)
    labels = jnp.asarray(labels, jnp.int32).reshape(-1)
    if labels.shape != (num,):
        raise ValueError(f"labels has shape {labels.shape}; accepted: ({num},)")
    if not isinstance(labels, jax.core.Tracer):
        bad = (labels < 0) | (labels >= num_classes)
        if bool(jnp.any(bad)):
            raise ValueError(f"labels hold ids outside [0, {num_classes}): {labels.tolist()}")
    return labels


def _pick(key, logits, b, step, total, options, scale):
    guided, schedule, temperature, top_k, top_p = options
    if guided:
        logits = cfg(logits[:b], logits[b:], scale, schedule=schedule, step=step, total=total)
    return sample_token(key, logits, temperature=temperature, top_k=top_k, top_p=top_p)


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
        first = _pick(
            jax.random.fold_in(key, 0), logits[:, 0, : c.num_codes], b, 0, n, options, scale
        )

        def step(carry, i):
            tok, kv = carry
            both = jnp.concatenate([tok, tok])[:, None] if r > b else tok[:, None]
            logits, kv = model.decode(both, kv, positions=jnp.full((r, 1), i, jnp.int32))
            nxt = _pick(
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
            _pick(jax.random.fold_in(key, i), logits, b, i, n, options, scale)
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
    c = model.config
    labels = check_options(c.num_classes, labels, num, cfg_scale, cfg_schedule, temperature)
    options = (cfg_scale is not None, cfg_schedule, float(temperature), top_k, top_p)
    scale = jnp.asarray(1.0 if cfg_scale is None else cfg_scale, jnp.float32)
    graphdef, state = nnx.split(model)
    return _codes(graphdef, state, key, labels, scale, options, bool(use_cache))
