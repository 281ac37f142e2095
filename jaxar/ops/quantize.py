"""Discrete bottlenecks for visual tokenizers (jaxar/MATHS.md s.10).

Every quantizer maps a latent ``z (..., D)`` to a quantized ``z_q`` of the same shape and
integer ``ids (...)``; gradients pass straight through (``z_q = z + sg(q - z)``, so
``dz_q / dz = I``).

* :func:`vector_quantize`: nearest codebook row, ``ids = argmin_k ||z - e_k||^2`` (or the
  largest cosine with ``normalize=True``), codebook loss ``||sg(z) - e||^2`` and
  commitment loss ``||z - sg(e)||^2`` (VQ-VAE).
* :func:`ema_codebook_update`: the codebook as exponential moving averages of its
  assigned latents, with restarts of dead codes.
* :func:`fsq`: finite scalar quantization, each channel bounded then rounded to one of
  ``L_i`` levels; ``prod(L_i)`` codes and no codebook.
* :func:`lfq`: lookup-free quantization ``q = sign(z)`` with MAGVIT-v2's entropy penalty.
* :func:`residual_quantize`: a stack of codebooks, each quantizing what the previous left.
* :func:`multiscale_residual_quantize` and its inverse: VAR's tokenizer, one shared
  codebook quantizing area-downsampled residuals at increasing scales.

References:
  van den Oord et al. 2017, "Neural Discrete Representation Learning", arXiv:1711.00937.
  Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv:2309.15505.
  Yu et al. 2023, "Language Model Beats Diffusion -- Tokenizer is Key to Visual
    Generation" (MAGVIT-v2), arXiv:2310.05737.
  Lee et al. 2022, "Autoregressive Image Generation using Residual Quantization",
    arXiv:2203.01941.
  Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
    Next-Scale Prediction", arXiv:2404.02905.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "vector_quantize",
    "nearest_code",
    "ema_codebook_update",
    "fsq",
    "fsq_codes",
    "lfq",
    "residual_quantize",
    "area_resize_matrix",
    "upsample_matrix",
    "resize2d",
    "multiscale_residual_quantize",
    "multiscale_residual_dequantize",
    "multiscale_inputs",
    "check_scales",
    "codebook_usage",
]

_sg = jax.lax.stop_gradient


def _ste(z, q):
    """``q`` in the forward pass, identity gradient to ``z``."""
    return z + _sg(q.astype(z.dtype) - z)


def _lead(v, ndim):
    """``v (n,)`` reshaped to broadcast against the last axis of a rank-``ndim`` array."""
    return jnp.reshape(v, (1,) * (ndim - 1) + (-1,))


def _l2n(x, eps=1e-6):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps * eps))


def _check_codebook(z, codebook, name="codebook"):
    codebook = jnp.asarray(codebook)
    if codebook.ndim != 2 or codebook.shape[-1] != z.shape[-1]:
        raise ValueError(
            f"{name} has shape {codebook.shape}; accepted: (K, D) with D = z.shape[-1] = "
            f"{z.shape[-1]}"
        )
    return codebook


def nearest_code(z, codebook, *, normalize: bool = False):
    """``argmin_k ||z - e_k||^2`` per row of ``z (..., D)`` as int32 ``(...)`` (float32 or
    wider distances; ties go to the lowest id). ``normalize``: both sides l2-normalised."""
    z = jnp.asarray(z)
    codebook = _check_codebook(z, codebook)
    cdt = jnp.promote_types(z.dtype, jnp.float32)
    zf, ef = z.astype(cdt), codebook.astype(cdt)
    if normalize:
        zf, ef = _l2n(zf), _l2n(ef)
    d = _lead(jnp.sum(ef * ef, -1), zf.ndim) - 2.0 * jnp.einsum("...d,kd->...k", zf, ef)
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def vector_quantize(z, codebook, *, normalize: bool = False):
    """Nearest-code vector quantization with a straight-through gradient.

    ``ids = argmin_k ||z - e_k||^2``; ``z_q = z + sg(e_ids - z)``. With ``normalize`` both
    ``z`` and the codes are l2-normalised first (cosine codes; ``z_q`` is then the unit
    code and the losses compare unit vectors).

    Args:
      z: float (..., D) latents.
      codebook: float (K, D).
      normalize: l2-normalised (cosine) codes.

    Returns:
      ``(z_q, ids, losses)``: z_q (..., D) in z's dtype, int32 ids (...), and
      ``{"codebook": mean ||sg(z) - e||^2, "commitment": mean ||z - sg(e)||^2}`` (means over
      rows of the squared distance, i.e. summed over D). The usual VQ objective is
      ``codebook + beta * commitment``.
    """
    z = jnp.asarray(z)
    codebook = _check_codebook(z, codebook)
    ids = nearest_code(z, codebook, normalize=normalize)
    zz = _l2n(z) if normalize else z
    e = jnp.take(_l2n(codebook) if normalize else codebook, ids, axis=0).astype(z.dtype)
    cb = jnp.mean(jnp.sum((_sg(zz) - e) ** 2, -1))
    commit = jnp.mean(jnp.sum((zz - _sg(e)) ** 2, -1))
    return _ste(zz, e), ids, {"codebook": cb, "commitment": commit}


def ema_codebook_update(
    codebook,
    cluster_size,
    embed_sum,
    z,
    ids,
    *,
    decay: float = 0.99,
    eps: float = 1e-5,
    key=None,
    dead_threshold: float = 0.0,
):
    """One EMA codebook step (VQ-VAE appendix) with dead-code restarts.

    ``N_k <- d N_k + (1 - d) n_k`` and ``m_k <- d m_k + (1 - d) sum_{i: ids_i = k} z_i``
    with ``n_k`` the batch count of code k; Laplace smoothing
    ``N'_k = (N_k + eps) / (sum N + K eps) * sum N`` and ``e_k = m_k / N'_k``. With a ``key``
    every code whose ``N_k < dead_threshold`` afterwards restarts at a random batch latent
    (``e_k = m_k = z_j``, ``N_k = 1``).

    Args:
      codebook: (K, D). cluster_size: (K,). embed_sum: (K, D).
      z: (..., D) latents (not normalised). ids: int (...) their codes.
      decay, eps: EMA decay in [0, 1) and smoothing > 0.
      key, dead_threshold: restarts (off when ``key`` is None).

    Returns:
      ``(codebook, cluster_size, embed_sum, num_restarted)``.
    """
    z = jnp.asarray(z)
    codebook = _check_codebook(z, codebook)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay={decay!r} is invalid; accepted: a float in [0, 1)")
    if not eps > 0:
        raise ValueError(f"eps={eps!r} is invalid; accepted: a float > 0")
    k, d = codebook.shape
    if cluster_size.shape != (k,) or embed_sum.shape != (k, d):
        raise ValueError(
            f"cluster_size {cluster_size.shape} / embed_sum {embed_sum.shape}; accepted: "
            f"({k},) and ({k}, {d})"
        )
    zf = z.reshape(-1, d).astype(jnp.float32)
    onehot = jax.nn.one_hot(jnp.asarray(ids).reshape(-1), k, dtype=jnp.float32)
    n = cluster_size * decay + (1 - decay) * jnp.sum(onehot, 0)
    m = embed_sum * decay + (1 - decay) * onehot.T @ zf
    total = jnp.sum(n)
    smoothed = (n + eps) / (total + k * eps) * total
    new = m / smoothed[:, None]
    restarted = jnp.zeros((), jnp.int32)
    if key is not None:
        dead = n < dead_threshold
        pick = jax.random.randint(key, (k,), 0, zf.shape[0])
        fresh = zf[pick]
        new = jnp.where(dead[:, None], fresh, new)
        m = jnp.where(dead[:, None], fresh, m)
        n = jnp.where(dead, 1.0, n)
        restarted = jnp.sum(dead).astype(jnp.int32)
    return new.astype(codebook.dtype), n, m, restarted


def _check_levels(levels):
    levels = tuple(levels)
    if not levels or any(not isinstance(v, int | np.integer) or v < 2 for v in levels):
        raise ValueError(f"levels={levels!r} is invalid; accepted: a tuple of ints >= 2")
    return tuple(int(v) for v in levels)


def fsq_codes(levels) -> int:
    """The number of FSQ codes, ``prod(levels)``."""
    return math.prod(_check_levels(levels))


def fsq(z, levels: Sequence[int], *, bounded: bool = False):
    """Finite scalar quantization.

    Channel i is bounded to ``b = h_i tanh(z)`` with ``h_i = (L_i - 1) / 2``, rounded to the
    nearest of the ``L_i`` points ``{-h_i, -h_i + 1, ..., h_i}`` and rescaled to ``[-1, 1]``:
    ``z_q = round_ste(b + h_i) - h_i) / h_i``. ``ids`` is the mixed-radix number of the
    digits ``round(b + h_i) in [0, L_i)`` (channel 0 least significant): ``prod(L_i)``
    codes. With ``bounded=True`` the input is taken as already in ``[-1, 1]`` (no tanh):
    then ``fsq(fsq(z)[0], bounded=True)[0] == fsq(z)[0]`` (idempotent).

    Returns:
      ``(z_q, ids)``: z_q like z, int32 ids (...).
    """
    levels = _check_levels(levels)
    z = jnp.asarray(z)
    if z.shape[-1] != len(levels):
        raise ValueError(
            f"z has {z.shape[-1]} channels; levels={levels} needs {len(levels)} channels"
        )
    cdt = jnp.promote_types(z.dtype, jnp.float32)
    h = _lead((jnp.asarray(levels, cdt) - 1.0) / 2.0, z.ndim)
    zf = z.astype(cdt)
    b = zf * h if bounded else jnp.tanh(zf) * h
    digits = jnp.clip(jnp.round(b + h), 0, 2 * h)
    q = _ste(b, digits - h) / h
    radix = np.cumprod((1,) + levels[:-1]).astype(np.int64)
    ids = jnp.sum(digits.astype(jnp.int32) * _lead(jnp.asarray(radix, jnp.int32), z.ndim), -1)
    return q.astype(z.dtype), ids


def lfq(z, *, temperature: float = 1.0):
    """Lookup-free quantization with MAGVIT-v2's entropy penalty.

    ``q = sign(z)`` (0 -> +1), ``ids = sum_i [q_i > 0] 2^i`` over the ``2^D`` implicit codes
    ``c in {-1, 1}^D``. With the soft assignment ``p(c | z) ∝ exp(-||z - c||^2 / T)``
    (``= prod_i sigmoid(4 z_i c_i / T)``) the penalty is
    ``mean_z H(p(. | z)) - H(mean_z p(. | z))``: confident per-latent codes, uniform usage.

    Args:
      z: float (..., D), D <= 20 (the batch distribution is summed over all 2^D codes).
      temperature: T > 0.

    Returns:
      ``(z_q, ids, losses)`` with losses ``{"entropy": mean per-latent entropy,
      "codebook_entropy": H(mean p), "entropy_penalty": their difference, "commitment":
      mean ||z - sg(q)||^2}`` (entropies in nats).
    """
    z = jnp.asarray(z)
    d = z.shape[-1]
    if d > 20:
        raise ValueError(f"lfq z has D={d} channels; accepted: D <= 20 (2^D implicit codes)")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is invalid; accepted: > 0")
    cdt = jnp.promote_types(z.dtype, jnp.float32)
    zf = z.astype(cdt)
    q = jnp.where(zf >= 0, 1.0, -1.0).astype(cdt)
    ids = jnp.sum(
        (q > 0).astype(jnp.int32) * _lead(2 ** jnp.arange(d, dtype=jnp.int32), z.ndim), -1
    )
    logit = 4.0 * zf.reshape(-1, d) / temperature  # log p(+1) - log p(-1) per bit
    lp, lm = jax.nn.log_sigmoid(logit), jax.nn.log_sigmoid(-logit)
    ent = -jnp.sum(jnp.exp(lp) * lp + jnp.exp(lm) * lm, -1)  # bits are independent
    bits = (jnp.arange(2**d)[:, None] >> jnp.arange(d)[None]) & 1  # (2^D, D)
    logp = lp @ bits.T.astype(cdt) + lm @ (1 - bits).T.astype(cdt)  # (N, 2^D)
    avg = jnp.mean(jnp.exp(logp), 0)
    cb_ent = -jnp.sum(avg * jnp.log(jnp.maximum(avg, 1e-30)))
    losses = {
        "entropy": jnp.mean(ent),
        "codebook_entropy": cb_ent,
        "entropy_penalty": jnp.mean(ent) - cb_ent,
        "commitment": jnp.mean(jnp.sum((zf - _sg(q)) ** 2, -1)),
    }
    return _ste(z, q), ids, losses


def residual_quantize(z, codebooks):
    """Residual quantization: ``r_0 = z``, ``q_s = e^s_{ids_s}`` nearest to ``r_s``,
    ``r_{s+1} = r_s - q_s``; ``z_q = z + sg(sum_s q_s - z)``.

    Args:
      z: (..., D). codebooks: (S, K, D) (or a sequence of (K_s, D)).

    Returns:
      ``(z_q, ids (..., S), losses)`` with ``{"codebook": mean_s ||sg(r_s) - q_s||^2,
      "commitment": ||z - sg(sum q)||^2}``.
    """
    z = jnp.asarray(z)
    books = list(codebooks)
    if not books:
        raise ValueError("codebooks is empty; accepted: (S, K, D) with S >= 1")
    r = z
    total = jnp.zeros_like(z)
    ids, cb = [], 0.0
    for s, book in enumerate(books):
        book = _check_codebook(z, book, name=f"codebooks[{s}]")
        i = nearest_code(r, book)
        q = jnp.take(book, i, axis=0).astype(z.dtype)
        cb = cb + jnp.mean(jnp.sum((_sg(r) - q) ** 2, -1))
        ids.append(i)
        total = total + q
        r = r - _sg(q)
    commit = jnp.mean(jnp.sum((z - _sg(total)) ** 2, -1))
    losses = {"codebook": cb / len(books), "commitment": commit}
    return _ste(z, total), jnp.stack(ids, -1), losses


# --------------------------------------------------------------------------- multi-scale


def check_scales(scales, size: int | None = None) -> tuple[int, ...]:
    """``scales`` as a tuple of strictly increasing ints >= 1 (ending at ``size`` if given)."""
    scales = tuple(scales)
    ok = bool(scales) and all(isinstance(s, int | np.integer) and s >= 1 for s in scales)
    if not ok or any(a >= b for a, b in zip(scales, scales[1:], strict=False)):
        raise ValueError(f"scales={scales!r} is invalid; accepted: strictly increasing ints >= 1")
    if size is not None and scales[-1] != size:
        raise ValueError(
            f"scales={scales!r} must end at the feature map's side {size}; got {scales[-1]}"
        )
    return tuple(int(s) for s in scales)


def area_resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) area-averaging matrix: output cell i averages input ``[i n/m, (i+1) n/m)``
    with fractional overlaps (rows sum to 1); for ``out >= in`` it is nearest upsampling."""
    a = np.zeros((out_size, in_size))
    for i in range(out_size):
        lo, hi = i * in_size / out_size, (i + 1) * in_size / out_size
        for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), in_size)):
            a[i, j] = max(0.0, min(hi, j + 1) - max(lo, j))
    return a / a.sum(1, keepdims=True)


def upsample_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) bilinear interpolation matrix (half-pixel centres, edges clamped)."""
    a = np.zeros((out_size, in_size))
    for i in range(out_size):
        x = (i + 0.5) * in_size / out_size - 0.5
        x = min(max(x, 0.0), in_size - 1.0)
        j0 = int(np.floor(x))
        j1 = min(j0 + 1, in_size - 1)
        t = x - j0
        a[i, j0] += 1.0 - t
        a[i, j1] += t
    return a


def resize2d(x_BxHxWxC, matrix_h, matrix_w):
    """``M_h x M_w^T`` on the two spatial axes of ``(B, H, W, C)``."""
    mh = jnp.asarray(matrix_h, x_BxHxWxC.dtype)
    mw = jnp.asarray(matrix_w, x_BxHxWxC.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", mh, x_BxHxWxC, mw)


def _down(x, s):
    n = x.shape[1]
    if s == n:
        return x
    m = area_resize_matrix(s, n)
    return resize2d(x, m, m)


def _up(x, n):
    s = x.shape[1]
    if s == n:
        return x
    m = upsample_matrix(n, s)
    return resize2d(x, m, m)


def _check_map(f):
    f = jnp.asarray(f)
    if f.ndim != 4 or f.shape[1] != f.shape[2]:
        raise ValueError(f"f has shape {f.shape}; accepted: square feature maps (B, N, N, C)")
    return f


def multiscale_residual_quantize(f, scales: Sequence[int], codebook):
    """VAR's multi-scale residual quantization of a feature map.

    ``r_1 = f``; for each scale ``s_k``: ``ids_k = nearest(area_{s_k}(r_k))``,
    ``z_k = up_N(e_{ids_k})`` (bilinear), ``f_hat_k = f_hat_{k-1} + z_k``,
    ``r_{k+1} = f - f_hat_k``. The last scale is the full side N, so with ``codebook=None``
    (the infinite-codebook limit: ``e_{ids} = area(r)`` exactly) ``f_hat = f``.

    Args:
      f: float (B, N, N, C). scales: strictly increasing, ending at N.
      codebook: (K, C) shared by all scales, or None (no quantization).

    Returns:
      ``(f_hat, ids, losses)``: f_hat (B, N, N, C) with a straight-through gradient to f,
      ids a list of int32 (B, s_k, s_k) (None entries when ``codebook`` is None), losses
      ``{"codebook": mean_k ||sg(area(r_k)) - e||^2, "commitment": ||f - sg(f_hat)||^2}``.
    """
    f = _check_map(f)
    n = f.shape[1]
    scales = check_scales(scales, n)
    if codebook is not None:
        codebook = _check_codebook(f, codebook)
    f_hat = jnp.zeros_like(f)
    ids, cb = [], 0.0
    for s in scales:
        r = _down(_sg(f) - f_hat, s)
        if codebook is None:
            e, i = r, None
        else:
            i = nearest_code(r, codebook)
            e = jnp.take(codebook, i, axis=0).astype(f.dtype)
            cb = cb + jnp.mean(jnp.sum((r - e) ** 2, -1))
        ids.append(i)
        f_hat = f_hat + _up(e, n)
    commit = jnp.mean(jnp.sum((f - _sg(f_hat)) ** 2, -1))
    losses = {"codebook": cb / len(scales), "commitment": commit}
    return _ste(f, f_hat), ids, losses


def _embed_ids(ids_k, codebook, s):
    e = jnp.take(jnp.asarray(codebook), jnp.asarray(ids_k), axis=0)
    if e.shape[1:3] != (s, s):
        raise ValueError(f"ids for scale {s} have shape {jnp.shape(ids_k)}; accepted (B, {s}, {s})")
    return e


def multiscale_residual_dequantize(ids, scales: Sequence[int], codebook):
    """The inverse map: ``f_hat = sum_k up_N(e_{ids_k})`` (N = the last scale)."""
    scales = check_scales(scales)
    if len(ids) != len(scales):
        raise ValueError(f"got {len(ids)} id maps for {len(scales)} scales; accepted: equal")
    n = scales[-1]
    out = 0.0
    for i, s in zip(ids, scales, strict=True):
        out = out + _up(_embed_ids(i, codebook, s), n)
    return out


def multiscale_inputs(ids, scales: Sequence[int], codebook):
    """VAR's teacher-forced inputs: for k >= 1 the running sum ``f_hat_{k-1}`` area-
    resized to ``s_k``, flattened in raster order and concatenated: ``(B, sum_{k>=1} s_k^2,
    C)``. (Scale 0's input is the class token.)"""
    scales = check_scales(scales)
    n = scales[-1]
    f_hat = 0.0
    out = []
    for k in range(1, len(scales)):
        f_hat = f_hat + _up(_embed_ids(ids[k - 1], codebook, scales[k - 1]), n)
        x = _down(f_hat, scales[k])
        out.append(x.reshape(x.shape[0], -1, x.shape[-1]))
    return jnp.concatenate(out, 1)


def codebook_usage(ids, num_codes: int):
    """``(usage, perplexity)``: the fraction of the ``num_codes`` codes used by ``ids`` and
    ``exp(H)`` of their empirical distribution."""
    counts = jnp.zeros((num_codes,), jnp.float32).at[jnp.asarray(ids).reshape(-1)].add(1.0)
    p = counts / jnp.maximum(jnp.sum(counts), 1.0)
    ent = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.mean((counts > 0).astype(jnp.float32)), jnp.exp(ent)
