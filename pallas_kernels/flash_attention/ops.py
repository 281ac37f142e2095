"""Public wrapper: block-sparse flash attention with a Pallas forward and backward."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.flash_attention import kernel, masks
from pallas_kernels.flash_attention.kernel import BlockSizes


def _spec(causal: bool, block_mask, q_len: int, k_len: int) -> masks.BlockMask:
    if block_mask is None or _is_array(block_mask):
        spec = masks.BlockMask()
    elif isinstance(block_mask, masks.BlockMask):
        spec = block_mask
    elif isinstance(block_mask, masks.TERMS):
        spec = masks.BlockMask((block_mask,))
    else:
        raise ValueError(
            f"block_mask={block_mask!r} is not supported; accepted: None, a "
            "pallas_kernels.flash_attention.masks.BlockMask or one of its terms, or a bool "
            "array (B or 1, H or 1, Lq, Lk)"
        )
    if causal:
        spec = spec & masks.BlockMask((masks.Causal(offset=k_len - q_len),))
    return spec


def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray)


def _dense(block_mask, B: int, H: int, Lq: int, Lk: int):
    if not _is_array(block_mask):
        return None
    m = block_mask
    if m.ndim != 4 or m.dtype != bool or m.shape[0] not in (1, B) or m.shape[1] not in (1, H):
        raise ValueError(
            f"block_mask has shape {m.shape} and dtype {m.dtype}; accepted: a bool array of "
            f"shape (B or 1, H or 1, Lq, Lk) = ({B} or 1, {H} or 1, {Lq}, {Lk})"
        )
    if m.shape[2:] != (Lq, Lk):
        raise ValueError(f"block_mask has shape {m.shape}; accepted: (B or 1, H or 1, {Lq}, {Lk})")
    return jnp.asarray(m)


def _segments(segment_ids, batch: int, q_len: int, k_len: int):
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, tuple | list):
        q_seg, k_seg = segment_ids
    else:
        q_seg = k_seg = segment_ids
    for name, s, n in (("q", q_seg, q_len), ("kv", k_seg, k_len)):
        if s.shape != (batch, n) or not jnp.issubdtype(s.dtype, jnp.integer):
            raise ValueError(
                f"segment_ids ({name}) has shape {s.shape} and dtype {s.dtype}; accepted: an "
                f"integer array of shape {(batch, n)} (or a (q, kv) pair when Lq != Lk)"
            )
    return q_seg.astype(jnp.int32), k_seg.astype(jnp.int32)


def flash_attention(
    q,
    k,
    v,
    *,
    causal: bool = False,
    segment_ids=None,
    block_mask=None,
    scale: float | None = None,
    interpret=False,
    block_sizes: BlockSizes | None = None,
):
    """Block-sparse flash attention: softmax(scale q k^T + mask) v, tiled, float32 softmax.

    ``out[b, i, h] = sum_j softmax_j(scale <q[b,i,h], k[b,j,g]>) v[b,j,g]`` over allowed j,
    with g = h // (H // G); rows with no allowed key give zeros. Tiles that the mask
    leaves empty are never loaded or computed, in the forward and the backward.

    Args:
      q: (B, Lq, H, K). k: (B, Lk, G, K). v: (B, Lk, G, E); G divides H (GQA).
      causal: adds ``masks.Causal(Lk - Lq)``: k <= q + Lk - Lq, the last query aligned with
        the last key (as ``jaxar.ops.dot_product_attention``; a decode step sees the cache).
      segment_ids: int (B, L) (query and key share it; needs Lq == Lk) or a pair
        ``(q_segment_ids (B, Lq), kv_segment_ids (B, Lk))``; attends within equal ids.
      block_mask: a ``masks.BlockMask`` (or one term): causal, local, chunk, block-causal,
        block-diffusion, axial row / column, combined with AND; or a dense bool mask
        (B or 1, H or 1, Lq, Lk) (True = may attend), whose all-False tiles are skipped.
      scale: logit scale, default 1 / sqrt(K).
      interpret: False (compiled: Mosaic on TPU, Triton on GPU), True (generic Pallas
        interpreter, any platform) or ``pltpu.InterpretParams()`` (the Mosaic kernels in the
        TPU interpreter).
      block_sizes: tiles; default ``BlockSizes.default`` for the chosen lowering.

    Returns:
      (B, Lq, H, E) in q's dtype.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; accepted: q (B, Lq, H, K), "
            "k (B, Lk, G, K), v (B, Lk, G, E)"
        )
    B, Lq, H, K = q.shape
    _, Lk, G, E = v.shape
    if k.shape != (B, Lk, G, K) or v.shape[0] != B or H % G:
        raise ValueError(
            f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; accepted: q (B, Lq, H, K), "
            "k (B, Lk, G, K), v (B, Lk, G, E) with G dividing H"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (
        jnp.float32,
        jnp.bfloat16,
        jnp.float16,
    ):
        raise ValueError(
            f"q, k, v dtypes {q.dtype}, {k.dtype}, {v.dtype}; accepted: one of float32, "
            "bfloat16, float16 for all three"
        )
    if segment_ids is not None and not isinstance(segment_ids, tuple | list) and Lq != Lk:
        raise ValueError(
            f"segment_ids of one array needs Lq == Lk (got {Lq}, {Lk}); pass a "
            "(q_segment_ids, kv_segment_ids) pair"
        )
    lowering = kernel.select_lowering(interpret)
    bs = block_sizes or BlockSizes.default(lowering, Lq, Lk, max(K, E))
    bs.validate(lowering)
    q_seg, k_seg = _segments(segment_ids, B, Lq, Lk)
    dense = _dense(block_mask, B, H, Lq, Lk)
    static = kernel.Static(
        spec=_spec(causal, block_mask, Lq, Lk),
        scale=float(K**-0.5 if scale is None else scale),
        q_len=Lq,
        k_len=Lk,
        block_q=bs.block_q,
        block_k=bs.block_k,
        num_warps=bs.num_warps,
        num_stages=bs.num_stages,
        lowering=lowering,
        interpret=interpret,
        has_segments=q_seg is not None,
        dense=None if dense is None else dense.shape[:2],
    )
    lq, lk = kernel.round_up(Lq, bs.block_q), kernel.round_up(Lk, bs.block_k)
    kp = ep = None
    if lowering == "triton":  # Triton tiles need power-of-two widths
        kp, ep = max(16, kernel.pow2(K)), max(16, kernel.pow2(E))
    q_ = _pad(q.transpose(0, 2, 1, 3), lq, kp)
    k_ = _pad(k.transpose(0, 2, 1, 3), lk, kp)
    v_ = _pad(v.transpose(0, 2, 1, 3), lk, ep)
    if q_seg is not None:
        q_seg = jnp.pad(q_seg, ((0, 0), (0, lq - Lq)), mode="edge")
        k_seg = jnp.pad(k_seg, ((0, 0), (0, lk - Lk)), mode="edge")
    if dense is not None:
        dense = jnp.pad(dense, ((0, 0), (0, 0), (0, lq - Lq), (0, lk - Lk)))
    tiles = kernel.plan(static, B, q_seg, k_seg, dense)
    if dense is not None and lowering == "triton":  # Mosaic takes bool tiles, Triton int8
        dense = dense.astype(jnp.int8)
    out = _flash(static, tiles, q_, k_, v_, q_seg, k_seg, dense)
    return out[:, :, :Lq, :E].transpose(0, 2, 1, 3)


def _pad(x, length, width):
    pad_w = 0 if width is None else width - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, pad_w)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(static, tiles, q, k, v, q_seg, k_seg, dense):
    return kernel.forward(static, tiles, q, k, v, q_seg, k_seg, dense)[0]


def _flash_fwd(static, tiles, q, k, v, q_seg, k_seg, dense):
    out, lse = kernel.forward(static, tiles, q, k, v, q_seg, k_seg, dense)
    return out, (tiles, q, k, v, q_seg, k_seg, dense, out, lse)


def _flash_bwd(static, res, do):
    tiles, q, k, v, q_seg, k_seg, dense, out, lse = res
    delta = (do.astype(jnp.float32) * out.astype(jnp.float32)).sum(-1)
    dq, dk, dv = kernel.backward(static, tiles, q, k, v, q_seg, k_seg, dense, do, lse, delta)
    return None, dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def visited_tiles(
    q_len: int,
    k_len: int,
    *,
    causal=False,
    segment_ids=None,
    block_mask=None,
    block_sizes: BlockSizes,
    batch: int = 1,
) -> tuple[int, int]:
    """(tiles the forward visits per head summed over the batch, total tiles): the sparsity."""
    q_seg, k_seg = _segments(segment_ids, batch, q_len, k_len)
    dense = None
    if _is_array(block_mask):
        dense = _dense(block_mask, batch, block_mask.shape[1], q_len, k_len)
    static = kernel.Static(
        _spec(causal, block_mask, q_len, k_len), 1.0, q_len, k_len, block_sizes.block_q,
        block_sizes.block_k, None, 2, "mosaic", False, q_seg is not None,
        None if dense is None else dense.shape[:2],
    )  # fmt: skip
    lq, lk = (
        kernel.round_up(q_len, block_sizes.block_q),
        kernel.round_up(k_len, block_sizes.block_k),
    )
    if q_seg is not None:
        q_seg = jnp.pad(q_seg, ((0, 0), (0, lq - q_len)), mode="edge")
        k_seg = jnp.pad(k_seg, ((0, 0), (0, lk - k_len)), mode="edge")
    if dense is not None:
        dense = jnp.pad(dense, ((0, 0), (0, 0), (0, lq - q_len), (0, lk - k_len)))
    cnt = kernel.plan(static, batch, q_seg, k_seg, dense)[2]
    return int(cnt.sum()), batch * (lq // block_sizes.block_q) * (lk // block_sizes.block_k)
