"""Sampling VAR by next-scale prediction (jaxar/MATHS.md s.10).

One transformer call per scale: scale k's ``s_k^2`` inputs (the class token, then
``area_{s_k}(f_hat_{k-1})``) are appended to a KV cache and attend to everything cached
(blocks <= k); all ``s_k^2`` codes of the scale are drawn at once from
``softmax(cfg(l_c, l_u)/temperature)`` (top-k / top-p) with the key ``fold_in(key, k)``,
guidance scale ``s_k`` on the ``"linear"`` schedule rising from 1 at the first scale to
``cfg_scale`` at the last. Then ``f_hat_k = f_hat_{k-1} + up(e(r_k))``. ``use_cache=False``
recomputes the full scale-causal pass per scale (the reference: same codes).

References:
  Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
    Next-Scale Prediction", arXiv:2404.02905.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.ops import quantize as qops
from jaxar.sampling.guidance import class_draw_options, guided_draw

__all__ = ["sample", "sample_codes"]


@functools.partial(jax.jit, static_argnames=("graphdef", "options", "use_cache"))
def _codes(graphdef, state, key, labels, scale, options, use_cache):
    model = nnx.merge(graphdef, state)
    c = model.config
    scales, n = c.scales, c.scales[-1]
    b = labels.shape[0]
    guided = options[0]
    rows = jnp.concatenate([labels, jnp.full_like(labels, c.null_class)]) if guided else labels
    r = rows.shape[0]
    cond = model.condition(rows)
    book = model.codebook[...]
    ends = c.block_ends()
    f_hat = jnp.zeros((b, n, n, c.latent_dim), jnp.float32)
    kv = model.init_state(r, c.seq_len) if use_cache else None
    inputs, codes = [], []
    for k, s in enumerate(scales):
        if k == 0:
            x = None
        else:
            x = qops.resize2d(f_hat, *(2 * (qops.area_resize_matrix(s, n),))) if s < n else f_hat
            x = x.reshape(b, s * s, c.latent_dim)
            x = jnp.concatenate([x, x]) if guided else x
            inputs.append(x)
        if use_cache:
            h, kv = model.transformer.decode(
                model.embed_block(k, x, cond),
                kv,
                limits=jnp.full((s * s,), ends[k]),
                cond=cond,
                kv_len=ends[k],
            )
            logits = model.logits(h)
        else:
            seq = jnp.concatenate(inputs, 1) if inputs else jnp.zeros((r, 0, c.latent_dim))
            pad = c.seq_len - 1 - seq.shape[1]
            seq = jnp.concatenate([seq, jnp.zeros((r, pad, c.latent_dim), seq.dtype)], 1)
            logits = model(rows, seq, num_scales=k + 1)[:, ends[k] - s * s : ends[k]]
        ids = guided_draw(jax.random.fold_in(key, k), logits, b, k, len(scales), options, scale)
        codes.append(ids)
        e = jnp.take(book, jnp.maximum(ids, 0), axis=0).reshape(b, s, s, c.latent_dim)
        up = qops.resize2d(e, *(2 * (qops.upsample_matrix(n, s),))) if s < n else e
        f_hat = f_hat + up
    return jnp.concatenate(codes, 1), f_hat


def sample_codes(
    model,
    key,
    num: int,
    *,
    labels=None,
    cfg_scale=None,
    cfg_schedule: str = "linear",
    temperature: float = 1.0,
    top_k=None,
    top_p=None,
    use_cache: bool = True,
):
    """``(codes (num, L) int32, f_hat (num, g, g, C))``: every scale's codes, flattened in
    order, and the final latent map."""
    labels, scale, options = class_draw_options(
        model.config.num_classes, num, labels=labels, cfg_scale=cfg_scale,
        cfg_schedule=cfg_schedule, temperature=temperature, top_k=top_k, top_p=top_p,
    )  # fmt: skip
    graphdef, state = nnx.split(model)
    return _codes(graphdef, state, key, labels, scale, options, bool(use_cache))


def sample(model, key, num: int, **options):
    """uint8 images (num, H, W, C) decoded by the model's frozen tokenizer."""
    if model.tokenizer is None:
        raise ValueError("this VAR has no tokenizer to decode images; use sample_codes")
    _, f_hat = sample_codes(model, key, num, **options)
    from_latent = model.tokenizer.decode(f_hat)
    return jnp.clip(jnp.round((from_latent + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
