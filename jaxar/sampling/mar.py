"""MAR generation (jaxar/MATHS.md s.7): masked-order decoding that reveals tokens over
``num_iter`` steps on a cosine schedule (:func:`reveal_schedule`), causal raster-order
decoding against a KV cache, classifier-free guidance with a constant or linear scale
(:func:`guidance_scale`) and a temperature on the head sampler's noise. Models and the
training loss are in :mod:`jaxar.models.mar`.

References:
  Li et al. 2024, "Autoregressive Image Generation without Vector Quantization",
    arXiv:2406.11838.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.models.mar import CFG_SCHEDULES, MAR, alphas_cumprod
from jaxar.ops import gaussian_diffusion as gd
from jaxar.ops.checks import positive_int
from jaxar.sampling import diffusion_head as dh

__all__ = ["reveal_schedule", "guidance_scale", "masked_order_generate", "sample_tokens"]


def reveal_schedule(seq_len: int, num_iter: int) -> np.ndarray:
    """Tokens still masked after each of ``num_iter`` steps (int64, ends at 0).

    ``m_k = floor(L cos(pi/2 (k+1)/num_iter))`` clamped to ``[1, m_{k-1} - 1]`` (so every
    step reveals at least one token while more than one remains), and ``m_{K-1} = 0``.
    """
    positive_int("num_iter", num_iter)
    remaining = seq_len
    out = []
    for k in range(num_iter):
        if k == num_iter - 1:
            m = 0
        else:
            m = math.floor(seq_len * math.cos(math.pi / 2 * (k + 1) / num_iter))
            m = max(1, min(remaining - 1, m))
        out.append(m)
        remaining = m
    return np.asarray(out, np.int64)


def guidance_scale(cfg_scale, progress, schedule: str = "linear"):
    """``cfg_scale`` (constant) or ``1 + (cfg_scale - 1) * progress`` (linear), ``progress``
    the fraction of tokens generated once the current step is done."""
    if schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule={schedule!r} is not supported; accepted: {CFG_SCHEDULES}")
    if schedule == "constant":
        return jnp.asarray(cfg_scale, jnp.float32) + 0.0 * jnp.asarray(progress, jnp.float32)
    return 1.0 + (cfg_scale - 1.0) * jnp.asarray(progress, jnp.float32)


def _draw_tokens(model, key, z_c, z_u, scale, opts):
    """Samples tokens ``(..., N)`` given conditions ``z_c`` (and ``z_u`` for guidance)."""
    cfg = model.config
    shape = (*z_c.shape[:-1], cfg.token_dim)

    def guided(x, t, cond):
        zc, zu = cond
        if zu is None:
            out = model.head_fn(x, t, zc)
        else:
            both = model.head_fn(
                jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([zc, zu])
            )
            out_c, out_u = jnp.split(both, 2)
            out = out_u + scale * (out_c - out_u)
        if cfg.head == "diffusion":  # v / x0 heads: the implied eps (affine in the output)
            out = gd.eps_from_prediction(out, x, t, alphas_cumprod(cfg), cfg.target)
        return out

    if cfg.head == "flow":
        sampler = dh.flow_sample
    else:
        sampler = functools.partial(dh.sample, alphas_cumprod=alphas_cumprod(cfg))
    return sampler(
        key,
        guided,
        (z_c, z_u),
        shape=shape,
        num_steps=opts["num_steps"],
        method=opts["method"],
        temperature=opts["temperature"],
    )


def _split_guided(z, guided):
    return jnp.split(z, 2) if guided else (z, None)


def masked_order_generate(
    key, batch: int, seq_len: int, token_dim: int, num_iter: int, cond_fn, draw_fn
):
    """Masked random-order generation loop, independent of the networks.

    A random order per example; step ``k`` (``lax.scan``) calls
    ``cond_fn(tokens_BxLxN, unknown_BxL) -> z`` (``unknown`` True = not yet generated; ``z``
    is ``(R B, L, D)``, ``R`` stacked copies, e.g. conditional and unconditional), gathers
    ``z`` at the ``W`` order slots revealed at this step (``W`` = the largest count of
    any step; the unused slots of smaller steps are dropped) and writes
    ``draw_fn(key_k, z_RBxWxD, progress_k) -> tokens_BxWxN`` there. ``progress_k`` is the
    generated fraction once step ``k`` is done (:func:`reveal_schedule`).

    Returns:
      ``(tokens_BxLxN, unknown_KxBxL)``: the tokens and, per step, the mask it started from.
    """
    remaining = reveal_schedule(seq_len, num_iter)
    before = np.concatenate([[seq_len], remaining[:-1]])
    starts, counts = seq_len - before, before - remaining
    width = int(counts.max())
    k_order, k_steps = jax.random.split(key)
    order_BxL = jnp.argsort(jax.random.uniform(k_order, (batch, seq_len)), axis=-1)
    rank_BxL = jnp.argsort(order_BxL, axis=-1)
    rows = jnp.arange(batch)[:, None]
    slot = jnp.arange(width)

    def step(tokens, xs):
        start, count, prog, k = xs
        unknown = rank_BxL >= start
        z = cond_fn(tokens, unknown)
        idx = jnp.broadcast_to(jnp.minimum(start + slot, seq_len - 1)[None], (batch, width))
        pos = jnp.take_along_axis(order_BxL, idx, axis=1)
        pos_z = jnp.concatenate([pos] * (z.shape[0] // batch))  # z may stack c/u halves
        new = draw_fn(k, jnp.take_along_axis(z, pos_z[..., None], axis=1), prog)
        target = jnp.where((slot < count)[None], pos, seq_len)  # out of range: dropped
        return tokens.at[rows, target].set(new.astype(tokens.dtype), mode="drop"), unknown

    xs = (
        jnp.asarray(starts, jnp.int32),
        jnp.asarray(counts, jnp.int32),
        jnp.asarray((seq_len - remaining) / seq_len, jnp.float32),
        jax.random.split(k_steps, num_iter),
    )
    tokens0 = jnp.zeros((batch, seq_len, token_dim), jnp.float32)
    return jax.lax.scan(step, tokens0, xs)


def _sample_masked(model, key, labels_B, opts):
    cfg = model.config
    b = labels_B.shape[0]
    guided = opts["guided"]
    reps = 2 if guided else 1
    labels_all = (
        jnp.concatenate([labels_B, jnp.full_like(labels_B, cfg.null_class)]) if guided else labels_B
    )

    def cond_fn(tokens, unknown):
        return model.conditions(
            jnp.concatenate([tokens] * reps), labels_all, jnp.concatenate([unknown] * reps)
        )

    def draw_fn(k, z, prog):
        z_c, z_u = _split_guided(z, guided)
        scale = guidance_scale(opts["cfg_scale"], prog, opts["cfg_schedule"])
        return _draw_tokens(model, k, z_c, z_u, scale, opts)

    tokens, _ = masked_order_generate(
        key, b, cfg.seq_len, cfg.token_dim, opts["num_iter"], cond_fn, draw_fn
    )
    return tokens


def _sample_causal(model, key, labels_B, opts):
    cfg = model.config
    b, seq, n = labels_B.shape[0], cfg.seq_len, cfg.token_dim
    guided = opts["guided"]
    reps = 2 if guided else 1
    labels_all = (
        jnp.concatenate([labels_B, jnp.full_like(labels_B, cfg.null_class)]) if guided else labels_B
    )
    keys = jax.random.split(key, seq)
    progress = jnp.arange(1, seq + 1, dtype=jnp.float32) / seq
    scale_of = lambda p: guidance_scale(opts["cfg_scale"], p, opts["cfg_schedule"])

    def draw(z, k, p):
        z_c, z_u = _split_guided(z, guided)
        return _draw_tokens(model, k, z_c, z_u, scale_of(p), opts)

    tokens0 = jnp.zeros((b, seq, n), jnp.float32)
    if opts["use_cache"]:
        state = model.backbone.init_state(reps * b, cfg.buffer_size + seq)
        h, state = model.backbone.decode(model.embed_prefix(labels_all), state)
        z0 = h[:, -1]

        def step(carry, xs):
            tokens, state, z = carry
            i, k, p = xs
            x = draw(z, k, p)
            tokens = jax.lax.dynamic_update_slice_in_dim(tokens, x[:, None], i, axis=1)
            h = model.embed_tokens(jnp.concatenate([x] * reps)[:, None], i)
            h, state = model.backbone.decode(h, state)
            return (tokens, state, h[:, -1]), None

        (tokens, _, _), _ = jax.lax.scan(
            step, (tokens0, state, z0), (jnp.arange(seq), keys, progress)
        )
        return tokens

    def step_full(tokens, xs):
        i, k, p = xs
        z = model.conditions(jnp.concatenate([tokens] * reps), labels_all)
        x = draw(jax.lax.dynamic_index_in_dim(z, i, axis=1, keepdims=False), k, p)
        return jax.lax.dynamic_update_slice_in_dim(tokens, x[:, None], i, axis=1), None

    tokens, _ = jax.lax.scan(step_full, tokens0, (jnp.arange(seq), keys, progress))
    return tokens


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def _sample_jit(graphdef, state, key, labels_B, cfg_scale, temperature, options):
    model = nnx.merge(graphdef, state)
    opts = dict(options, cfg_scale=cfg_scale, temperature=temperature)
    if model.config.order == "masked":
        return _sample_masked(model, key, labels_B, opts)
    return _sample_causal(model, key, labels_B, opts)


def sample_tokens(
    model: MAR,
    key,
    num: int,
    *,
    labels=None,
    num_iter: int = 64,
    cfg_scale: float | None = None,
    cfg_schedule: str = "linear",
    temperature: float = 1.0,
    num_steps: int = 100,
    method: str | None = None,
    use_cache: bool = True,
):
    """Generates ``num`` token sequences ``float32 (num, L, N)``.

    Args:
      labels: int (num,) class ids (``num_classes`` = unconditional); default random.
      num_iter: masked order's generation steps (ignored in causal order, one per token).
      cfg_scale: classifier-free guidance scale; None runs the conditional model alone
        (``1.0`` runs the guided combination, which equals it).
      cfg_schedule: ``"linear"`` (grows from 1 to ``cfg_scale``) or ``"constant"``.
      temperature: the head sampler's temperature.
      num_steps, method: head sampler steps and method (default ``"ddpm"`` for a
        diffusion head, ``"euler"`` for a flow head).
      use_cache: causal order decodes against a KV cache (False: a full backbone pass
        per token; same result).
    """
    cfg = model.config
    if labels is None:
        labels = jax.random.randint(jax.random.fold_in(key, 1), (num,), 0, cfg.num_classes)
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != (num,):
        raise ValueError(f"labels must have shape ({num},); got {labels.shape}")
    if method is None:
        method = "ddpm" if cfg.head == "diffusion" else "euler"
    accepted = dh.METHODS if cfg.head == "diffusion" else dh.FLOW_METHODS
    if method not in accepted:
        raise ValueError(f"method={method!r} does not suit head={cfg.head!r}; accepted: {accepted}")
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(
            f"cfg_schedule={cfg_schedule!r} is not supported; accepted: {CFG_SCHEDULES}"
        )
    reveal_schedule(cfg.seq_len, num_iter)
    options = (
        ("num_iter", int(num_iter)),
        ("guided", cfg_scale is not None),
        ("cfg_schedule", cfg_schedule),
        ("num_steps", int(num_steps)),
        ("method", method),
        ("use_cache", bool(use_cache)),
    )
    graphdef, state = nnx.split(model)
    scale = jnp.asarray(1.0 if cfg_scale is None else cfg_scale, jnp.float32)
    temp = jnp.asarray(temperature, jnp.float32)
    return _sample_jit(graphdef, state, key, labels, scale, temp, options)
