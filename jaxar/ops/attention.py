"""Exact softmax attention, axial attention and rotary position embeddings (jaxar/MATHS.md s.4).

``out[b, i, h] = sum_j softmax_j(scale <q[b,i,h], k[b,j,g]> + bias) v[b,j,g]`` over the keys j
allowed by the masks, with kv head ``g = h // (H // G)`` (MHA: G = H, GQA, MQA: G = 1).
The softmax runs in float32 (float64 under x64); a query with no allowed key gets zeros and
finite gradients.

Implementations (``impl``, resolved by :func:`jaxar.dispatch.resolve`):
  ``"xla"``       grouped einsums, no repetition of kv heads (the default everywhere).
  ``"reference"`` the naive formula with kv heads repeated (the float64 test reference).
  ``"jax"``       ``jax.nn.dot_product_attention`` (cuDNN on GPU where it applies).
  ``"pallas"``    ``pallas_kernels.flash_attention`` (block-sparse flash attention).

References:
  Ho et al. 2019, "Axial Attention in Multidimensional Transformers", arXiv:1912.12180.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxar import dispatch
from jaxar.dispatch import AttentionImpl
from jaxar.ops.masks import ScaleCausal

__all__ = [
    "dot_product_attention",
    "axial_attention",
    "apply_rope",
    "apply_rope_nd",
    "combine_masks",
]


def _compute_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def _check_qkv(q, k, v):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; accepted: q (B, Lq, H, K), "
            "k (B, Lk, G, K), v (B, Lk, G, E)"
        )
    B, _, H, K = q.shape
    _, Lk, G, _ = v.shape
    if k.shape != (B, Lk, G, K) or v.shape[0] != B or H % G:
        raise ValueError(
            f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; accepted: q (B, Lq, H, K), "
            "k (B, Lk, G, K), v (B, Lk, G, E) with G dividing H"
        )


def _segment_pair(segment_ids, B, Lq, Lk):
    if isinstance(segment_ids, tuple | list):
        q_seg, kv_seg = segment_ids
    else:
        q_seg = kv_seg = segment_ids
    q_seg, kv_seg = jnp.asarray(q_seg), jnp.asarray(kv_seg)
    if q_seg.shape != (B, Lq) or kv_seg.shape != (B, Lk):
        raise ValueError(
            f"segment_ids shapes {q_seg.shape}, {kv_seg.shape}; accepted: int (B, L) with "
            f"Lq == Lk, or a pair ((B, Lq), (B, Lk)) = ({(B, Lq)}, {(B, Lk)})"
        )
    return q_seg, kv_seg


def combine_masks(B, H, Lq, Lk, *, causal=False, mask=None, segment_ids=None):
    """The boolean ``(B or 1, H or 1, Lq, Lk)`` conjunction of all masks, or None if none."""
    out = None
    if causal:
        q = jnp.arange(Lq)[:, None] + (Lk - Lq)
        out = (jnp.arange(Lk)[None, :] <= q)[None, None]
    if mask is not None:
        mask = jnp.asarray(mask)
        if (
            mask.dtype != jnp.bool_
            or mask.ndim != 4
            or mask.shape[0] not in (1, B)
            or mask.shape[1] not in (1, H)
            or mask.shape[2:] != (Lq, Lk)
        ):
            raise ValueError(
                f"mask has shape {mask.shape} and dtype {mask.dtype}; accepted: bool "
                f"(B or 1, H or 1, Lq, Lk) = ({B} or 1, {H} or 1, {Lq}, {Lk})"
            )
        out = mask if out is None else out & mask
    if segment_ids is not None:
        q_seg, kv_seg = _segment_pair(segment_ids, B, Lq, Lk)
        seg = (q_seg[:, :, None] == kv_seg[:, None, :])[:, None]
        out = seg if out is None else out & seg
    return out


def _masked_softmax(s, m):
    """Softmax over the last axis of float ``s`` where ``m`` (or everywhere if None);
    rows with nothing allowed give zeros, with finite gradients."""
    if m is not None:
        s = jnp.where(m, s, -jnp.inf)
    mx = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    e = jnp.exp(s - mx)
    denom = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


def _xla(q, k, v, m, bias, scale):
    B, Lq, H, K = q.shape
    _, Lk, G, E = v.shape
    R = H // G
    cdt = _compute_dtype(q.dtype)
    q_ = q.reshape(B, Lq, G, R, K).transpose(0, 2, 3, 1, 4)  # (B, G, R, Lq, K)
    k_ = k.transpose(0, 2, 1, 3)  # (B, G, Lk, K)
    s = jnp.einsum("bgrqk,bgsk->bgrqs", q_, k_, preferred_element_type=cdt) * scale
    s = s.astype(cdt)

    def grouped(a):  # (B or 1, H or 1, Lq, Lk) -> (B or 1, G or 1, R or 1, Lq, Lk)
        if a.shape[1] == H:
            return a.reshape(a.shape[0], G, R, Lq, Lk)
        return a[:, :, None]

    if bias is not None:
        s = s + grouped(bias.astype(cdt))
    p = _masked_softmax(s, None if m is None else grouped(m))
    v_ = v.transpose(0, 2, 1, 3)  # (B, G, Lk, E)
    o = jnp.einsum("bgrqs,bgse->bgrqe", p.astype(v.dtype), v_, preferred_element_type=cdt)
    return o.transpose(0, 3, 1, 2, 4).reshape(B, Lq, H, E).astype(q.dtype)


def _reference(q, k, v, m, bias, scale):
    H, G = q.shape[2], k.shape[2]
    k = jnp.repeat(k, H // G, axis=2)
    v = jnp.repeat(v, H // G, axis=2)
    cdt = _compute_dtype(q.dtype)
    s = jnp.einsum("bqhk,bshk->bhqs", q.astype(cdt), k.astype(cdt)) * scale
    if bias is not None:
        s = s + bias.astype(cdt)
    p = _masked_softmax(s, m)
    return jnp.einsum("bhqs,bshe->bqhe", p, v.astype(cdt)).astype(q.dtype)


def dot_product_attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    mask=None,
    segment_ids=None,
    bias=None,
    scale: float | None = None,
    impl: AttentionImpl = "auto",
):
    """Exact softmax attention ``softmax(scale q k^T + bias | masks) v`` with GQA.

    Args:
      q: (B, Lq, H, K). k: (B, Lk, G, K). v: (B, Lk, G, E); G divides H.
      causal: ``k <= q + Lk - Lq`` (the last query aligned with the last key, so a decode
        step over a cache is causal too).
      mask: bool (B or 1, H or 1, Lq, Lk), True = may attend; or a static position rule
        (:class:`jaxar.ops.masks.ScaleCausal`): dense for the XLA forms, the flash kernel's
        block mask (all-masked tiles skipped) for ``"pallas"``.
      segment_ids: int (B, L) (Lq == Lk) or a pair ((B, Lq), (B, Lk)); attend within
        equal ids.
      bias: float (B or 1, H or 1, Lq, Lk) added to the logits (not with ``"pallas"``).
      scale: logit scale, default ``1 / sqrt(K)``.
      impl: "auto" | "xla" | "reference" | "jax" | "pallas".

    Returns:
      (B, Lq, H, E) in q's dtype; rows with no allowed key are zeros.
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    _check_qkv(q, k, v)
    impl = dispatch.resolve("attention", impl)
    B, Lq, H, K = q.shape
    Lk = k.shape[1]
    scale = 1.0 / math.sqrt(K) if scale is None else float(scale)
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.ndim != 4 or bias.shape[0] not in (1, B) or bias.shape[1] not in (1, H):
            raise ValueError(
                f"bias has shape {bias.shape}; accepted: (B or 1, H or 1, Lq, Lk) = "
                f"({B} or 1, {H} or 1, {Lq}, {Lk})"
            )
        if bias.shape[2:] != (Lq, Lk):
            raise ValueError(f"bias has shape {bias.shape}; accepted: (.., .., {Lq}, {Lk})")
    rule = mask if isinstance(mask, ScaleCausal) else None
    if impl == "pallas":
        if bias is not None:
            raise ValueError("bias is not supported by impl='pallas'; accepted: bias=None")
        if mask is not None and rule is None:
            combine_masks(B, H, Lq, Lk, mask=mask)  # validates
        return dispatch.kernel("flash_attention")(
            q,
            k,
            v,
            causal=causal,
            segment_ids=segment_ids,
            block_mask=mask,
            scale=scale,
        )
    if rule is not None:
        mask = rule.dense(Lq, Lk)[None, None]
    m = combine_masks(B, H, Lq, Lk, causal=causal, mask=mask, segment_ids=segment_ids)
    if impl == "reference":
        return _reference(q, k, v, m, bias, scale)
    if impl == "jax":
        if v.shape[-1] != K:
            raise ValueError(
                f"impl='jax' needs value width E == key width K; got E={v.shape[-1]}, K={K}"
            )
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=m, scale=scale)
        if m is not None:  # jax.nn gives a uniform average over an empty row; we give zeros
            any_ = jnp.any(m, axis=-1)  # (B|1, H|1, Lq)
            any_ = jnp.broadcast_to(any_, (B, H, Lq)).transpose(0, 2, 1)[..., None]
            out = jnp.where(any_, out, jnp.zeros((), out.dtype))
        return out
    return _xla(q, k, v, m, bias, scale)


def axial_attention(q, k, v, *, axis: int, causal: bool = False, impl: AttentionImpl = "auto"):
    """Attention along one spatial axis, every other spatial axis folded into the batch.

    Args:
      q, k, v: (B, d_1, ..., d_n, H or G, K or E), n >= 2, same spatial shape.
      axis: the array axis attended along, 1 <= axis <= n.
      causal: causal along ``axis``.
      impl: as :func:`dot_product_attention`.

    Returns:
      (B, d_1, ..., d_n, H, E). Cost O(prod(d) * d_axis) instead of O(prod(d)^2).
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    n = q.ndim - 3
    if n < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; accepted: "
            "(B, d_1, ..., d_n, H, K) with n >= 2 spatial axes"
        )
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"q, k, v spatial shapes differ: {q.shape}, {k.shape}, {v.shape}; accepted: equal"
        )
    if not isinstance(axis, int) or not 1 <= axis <= n:
        raise ValueError(f"axis={axis!r} is not supported; accepted: an int in [1, {n}]")

    def fold(x):
        x = jnp.moveaxis(x, axis, n)  # (B, ..others.., d_axis, H, K)
        return x, x.reshape((-1,) + x.shape[n:])

    q_m, q_f = fold(q)
    _, k_f = fold(k)
    _, v_f = fold(v)
    o = dot_product_attention(q_f, k_f, v_f, causal=causal, impl=impl)
    o = o.reshape(q_m.shape[:-1] + (o.shape[-1],))
    return jnp.moveaxis(o, n, axis)


def apply_rope(x, positions, *, base: float = 10000.0):
    """Rotary position embedding (rotate-half form) of ``x`` (B, L, H, K) at ``positions``.

    Feature pairs (i, i + K/2) rotate by angle ``p * base^(-2i/K)``; K must be even.
    Computed in float32, returned in x's dtype.
    """
    K = x.shape[-1]
    if K % 2:
        raise ValueError(f"rope needs an even head dimension; got K={K}")
    positions = jnp.asarray(positions)
    if positions.shape != x.shape[:2]:
        raise ValueError(f"positions has shape {positions.shape}; accepted: {x.shape[:2]}")
    cdt = _compute_dtype(x.dtype)
    half = K // 2
    freq = base ** (-jnp.arange(half, dtype=cdt) * 2.0 / K)
    ang = positions.astype(cdt)[:, :, None, None] * freq[None, None, None, :]
    cos, sin = jnp.cos(ang), jnp.sin(ang)
    xf = x.astype(cdt)
    x1, x2 = xf[..., :half], xf[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def apply_rope_nd(x, positions, *, base: float = 10000.0):
    """N-dimensional RoPE (e.g. 2-D for image tokens) of ``x`` (B, L, H, K).

    ``positions`` is int (B, L, N) or (L, N): token l sits at ``positions[l] = (p_1 ..
    p_N)``. The head dimension is split into N equal chunks (K divisible by 2N); chunk n
    is rotated by :func:`apply_rope` at ``p_n`` with its own frequency ladder, so
    ``<R(p) q, R(p') k>`` depends only on ``p - p'`` per axis.
    """
    x = jnp.asarray(x)
    positions = jnp.asarray(positions)
    if positions.ndim == 2:
        positions = jnp.broadcast_to(positions[None], (x.shape[0],) + positions.shape)
    if x.ndim != 4 or positions.ndim != 3 or positions.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"positions has shape {positions.shape} for x {x.shape}; accepted: (B, L, N) or "
            "(L, N) with x (B, L, H, K)"
        )
    n = positions.shape[-1]
    K = x.shape[-1]
    if n < 1 or K % (2 * n):
        raise ValueError(f"apply_rope_nd needs K={K} divisible by 2N = {2 * n}")
    c = K // n
    parts = [
        apply_rope(x[..., i * c : (i + 1) * c], positions[..., i], base=base) for i in range(n)
    ]
    return jnp.concatenate(parts, -1)
