"""Raster-order sampling of the Axial Transformer (:mod:`jaxar.models.axial`).

``"naive"`` runs the full model once per (pixel, channel) (the reference);
``"semi_parallel"`` runs the outer decoder once per row and the inner decoder one pixel at a
time against a per-row KV cache. Both draw the value of dimension ``i = (r W + c) C + ch``
as ``argmax(logits + Gumbel(fold_in(key, i)))``, so they give identical images from the
same key (tests/models/test_axial.py). A pixel drawn from garbage logits (NaN, ``+inf``,
all ``-inf``) is :data:`jaxar.ops.INVALID`, and :func:`sample` then raises ``ValueError``
rather than return a plausible image.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.models.axial import AxialTransformer
from jaxar.ops.categorical import INVALID, check_draws, valid_logits
from jaxar.ops.checks import positive_int

__all__ = ["METHODS", "sample"]

METHODS = ("semi_parallel", "naive")


def _draw(key, i, logits_BxV):
    """Gumbel-argmax; a row of garbage logits (NaN, +inf, all -inf) draws ``INVALID``."""
    g = jax.random.gumbel(jax.random.fold_in(key, i), logits_BxV.shape, jnp.float32)
    draw = jnp.argmax(logits_BxV + g, axis=-1).astype(jnp.int32)
    return jnp.where(valid_logits(logits_BxV), draw, INVALID)


def _naive(model, key, num):
    cfg = model.config
    H, W, C = cfg.height, cfg.width, cfg.channels

    def body(i, canvas):
        r, c, ch = i // (W * C), (i // C) % W, i % C
        logits = model(canvas)[:, r, c, ch]
        return canvas.at[:, r, c, ch].set(_draw(key, i, logits))

    return jax.lax.fori_loop(0, H * W * C, body, jnp.zeros((num, H, W, C), jnp.int32))


def _semi_parallel(model, key, num):
    cfg = model.config
    H, W, C = cfg.height, cfg.width, cfg.channels

    def row(r, canvas):
        o = jax.lax.dynamic_index_in_dim(
            model.outer_context(model.embed_pixels(canvas)), r, axis=1, keepdims=False
        )  # (num, W, D)
        states = tuple(blk.row.init_state(num, W, cfg.dtype) for blk in model.inner)

        def pixel(c, carry):
            canvas, states = carry
            prev = model.embed_pixels(canvas[:, r, jnp.maximum(c - 1, 0)])
            prev = jnp.where(c > 0, prev, jnp.zeros_like(prev))
            z = (prev + jax.lax.dynamic_index_in_dim(o, c, axis=1, keepdims=False))[:, None]
            new_states = []
            for blk, st in zip(model.inner, states, strict=True):
                z, st = blk.decode(z, st)
                new_states.append(st)
            h = model.inner_norm(z)[:, 0]  # (num, D)
            pix = jnp.zeros((num, C), jnp.int32)
            for ch in range(C):
                logits = model.channel_logits(h, model.embed_channels(pix))[:, ch]
                pix = pix.at[:, ch].set(_draw(key, (r * W + c) * C + ch, logits))
            return canvas.at[:, r, c].set(pix), tuple(new_states)

        canvas, _ = jax.lax.fori_loop(0, W, pixel, (canvas, states))
        return canvas

    return jax.lax.fori_loop(0, H, row, jnp.zeros((num, H, W, C), jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _sample_jit(graphdef, state, key, num, method):
    model = nnx.merge(graphdef, state)
    fn = _naive if method == "naive" else _semi_parallel
    return fn(model, key, num)


def sample(model: AxialTransformer, key, num: int, *, method: str = "semi_parallel"):
    """``num`` images (uint8 (num, H, W, C)) in raster order; see the module docstring.

    Args:
      method: ``"semi_parallel"`` (outer decoder once per row, inner decoder per pixel with
        a row cache) or ``"naive"`` (a full forward per dimension, the reference).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; accepted: {METHODS}")
    positive_int("num", num)
    graphdef, state = nnx.split(model)
    images = check_draws(_sample_jit(graphdef, state, key, num, method), "axial sample")
    return images.astype(jnp.uint8)
