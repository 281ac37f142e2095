"""Pallas kernels of block-sparse flash attention: forward, dq and dk/dv, in two lowerings.

Layouts inside: q (B, H, Lq, K), k (B, G, Lk, K), v (B, G, Lk, E), lengths padded to the
tiles. Every pass walks a compressed tile list (``plan``): for each q tile the k tiles
that are not EMPTY (and the transpose for dk/dv), so empty tiles are neither loaded nor
computed. Online softmax in float32 (m = running max, l = running sum):

    m' = max(m, rowmax s),  l' = e^{m-m'} l + sum e^{s-m'},  acc' = e^{m-m'} acc + e^{s-m'} v
    out = acc / l (0 where l = 0),  lse = m + log l (+inf where l = 0)

Backward with the saved lse: p = e^{s - lse}, dv = p^T do, dp = do v^T,
ds = p (dp - delta) with delta = rowsum(do * out), dq = scale ds k, dk = scale ds^T q.

Lowerings (chosen in ``select_lowering``, the one place):
- "triton": grid (B, H, q tiles), a ``fori_loop`` over the tile list inside the program,
  K/V of the head resident; generic Pallas, so it also runs under ``interpret=True``.
- "mosaic": grid (B, H, q tiles, list slots) with the list as scalar prefetch (SMEM)
  driving the K/V BlockSpec index maps, accumulators in VMEM scratch; the backward works
  on transposed scores (k rows, q lanes) so that lse and delta are lane vectors.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from pallas_kernels import _common
from pallas_kernels._common import pow2, round_up
from pallas_kernels.flash_attention import masks

LANES = 128
LOWERINGS = ("mosaic", "triton")
NEG_INF = float("-inf")


def select_lowering(interpret: Any = False) -> str:
    """The lowering for this call (see ``pallas_kernels._common.select_lowering``)."""
    return _common.select_lowering(interpret, "flash_attention")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (shared by forward and backward) and GPU launch settings.

    On TPU both blocks must be multiples of 128 (the TPU interpreter too); on GPU powers
    of two >= 16. ``num_warps=None`` picks 4 for head widths <= 64, else 8.
    """

    block_q: int
    block_k: int
    num_warps: int | None = None
    num_stages: int = 2

    def __post_init__(self):
        _common.check_block_sizes(self, ("block_q", "block_k", "num_stages"))

    @classmethod
    def default(cls, lowering: str, q_len: int, k_len: int, head_dim: int) -> BlockSizes:
        """Heuristic defaults: 512 tiles on TPU (128 leaves v5e mostly idle), 64-128 on GPU."""
        if lowering == "mosaic":
            return cls(min(512, round_up(q_len, LANES)), min(512, round_up(k_len, LANES)))
        bq = 128 if head_dim <= 64 else 64
        return cls(max(16, min(bq, pow2(q_len))), max(16, min(64, pow2(k_len))))

    def validate(self, lowering: str) -> None:
        if lowering == "mosaic":
            for name in ("block_q", "block_k"):
                if getattr(self, name) % LANES:
                    raise ValueError(
                        f"BlockSizes.{name}={getattr(self, name)} is not supported by the Mosaic "
                        f"(TPU) lowering; accepted: multiples of {LANES}"
                    )
        elif lowering == "triton":
            for name in ("block_q", "block_k"):
                value = getattr(self, name)
                if value < 16 or value != pow2(value):
                    raise ValueError(
                        f"BlockSizes.{name}={value} is not supported by the Triton (GPU) "
                        "lowering; accepted: powers of two >= 16"
                    )


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything static about one call (hashable: custom_vjp nondiff argument)."""

    spec: masks.BlockMask
    scale: float
    q_len: int  # true lengths (the arrays are padded)
    k_len: int
    block_q: int
    block_k: int
    num_warps: int | None
    num_stages: int
    lowering: str
    interpret: Any
    has_segments: bool
    dense: tuple[int, int] | None = None  # (batch, heads) of a dense mask: 1 or B, 1 or H

    def optional_refs(self, refs):
        """Splits ``refs`` after the fixed inputs into (q_seg, k_seg, mask, rest)."""
        n = 2 if self.has_segments else 0
        q_seg, k_seg = refs[:2] if self.has_segments else (None, None)
        mask = refs[n] if self.dense else None
        return q_seg, k_seg, mask, refs[n + (1 if self.dense else 0) :]

    def mask_index(self, b, h):
        """Block indices of the dense mask's batch and head axes (0 where broadcast)."""
        return (b if self.dense[0] > 1 else 0), (h if self.dense[1] > 1 else 0)


# --------------------------------------------------------------------------- tile lists


def plan(static: Static, batch: int, q_seg=None, k_seg=None, dense=None):
    """Compressed tile lists (int32) for the forward/dq passes and the dk/dv pass.

    Returns ``(idx, kind, cnt, idx_t, kind_t, cnt_t)``: ``idx[b, i, j]`` is the j-th
    non-empty k tile of q tile i (slots past ``cnt[b, i]`` repeat the last one with kind
    EMPTY, so the TPU pipeline issues no new copy), ``kind`` is PARTIAL or FULL.
    Segment ids and a dense mask ((Bm, Hm, Lq, Lk) bool, padded) refine the static table
    at run time.
    """
    bq, bk = static.block_q, static.block_k
    table = masks.block_table(static.spec, static.q_len, static.k_len, bq, bk)
    width, width_t = max(1, int((table > 0).sum(1).max())), max(1, int((table > 0).sum(0).max()))
    if static.lowering == "triton":
        width, width_t = pow2(width), pow2(width_t)
    if q_seg is None and dense is None:  # static: computed once in numpy, program constants
        d = np.broadcast_to(table.astype(np.int32)[None], (batch, *table.shape))
        return (*_compress(np, d, width), *_compress(np, d.transpose(0, 2, 1), width_t))
    d = jnp.broadcast_to(jnp.asarray(table, jnp.int32)[None], (batch, *table.shape))
    nq, nk = table.shape
    if q_seg is not None:
        qs, ks = q_seg.reshape(batch, nq, bq), k_seg.reshape(batch, nk, bk)
        qmin, qmax, kmin, kmax = qs.min(-1), qs.max(-1), ks.min(-1), ks.max(-1)
        overlap = (qmax[:, :, None] >= kmin[:, None, :]) & (kmax[:, None, :] >= qmin[:, :, None])
        single = ((qmin == qmax)[:, :, None] & (kmin == kmax)[:, None, :]) & (
            qmin[:, :, None] == kmin[:, None, :]
        )
        d = _refine(d, overlap, single)
    if dense is not None:
        tiles = dense.reshape(dense.shape[0], dense.shape[1], nq, bq, nk, bk)
        d = _refine(d, tiles.any((1, 3, 5)), tiles.all((1, 3, 5)))
    return (*_compress(jnp, d, width), *_compress(jnp, d.transpose(0, 2, 1), width_t))


def _refine(d, some, every):
    """EMPTY where no element is allowed; at most PARTIAL unless every element is."""
    return jnp.where(some, jnp.where(every, d, jnp.minimum(d, masks.PARTIAL)), masks.EMPTY)


def _compress(xp, d, width):
    """Per row: the non-empty column indices first (ascending), padded to ``width``."""
    order = xp.argsort(d == masks.EMPTY, axis=-1, stable=True).astype(np.int32)
    if order.shape[-1] < width:
        order = xp.pad(order, ((0, 0), (0, 0), (0, width - order.shape[-1])))
    order = order[..., :width]
    cnt = (d != masks.EMPTY).sum(-1).astype(np.int32)
    live = np.arange(width, dtype=np.int32)[None, None, :] < cnt[..., None]
    last = xp.take_along_axis(order, xp.maximum(cnt - 1, 0)[..., None], axis=-1)
    idx = xp.where(live, order, last)
    kind = xp.where(live, xp.take_along_axis(d, order, axis=-1), masks.EMPTY)
    return idx.astype(np.int32), kind.astype(np.int32), cnt


# --------------------------------------------------------------------------- tile maths


def _dot(a, b, contract):
    # float32 inputs ask for full precision (no TF32 on GPU, no single bf16 pass on TPU).
    exact = a.dtype == jnp.float32 or b.dtype == jnp.float32
    return lax.dot_general(
        a,
        b,
        (contract, ((), ())),
        precision=lax.Precision.HIGHEST if exact else None,
        preferred_element_type=jnp.float32,
    )


def dot_nt(a, b):  # a @ b.T
    return _dot(a, b, ((1,), (1,)))


def dot_nn(a, b):  # a @ b
    return _dot(a, b, ((1,), (0,)))


def dot_tn(a, b):  # a.T @ b
    return _dot(a, b, ((0,), (0,)))


def tile_mask(static: Static, q_pos, k_pos, q_seg, k_seg, dense=None):
    """Elementwise mask of a partial tile (positions/segments broadcast to the tile)."""
    valid = k_pos < static.k_len
    term = static.spec(q_pos, k_pos)
    if term is not None:
        valid = valid & term
    if q_seg is not None:
        valid = valid & (q_seg == k_seg)
    if dense is not None:
        valid = valid & (dense if dense.dtype == jnp.bool_ else dense != 0)
    return valid


def online_step(m, l, acc, s, v):
    """One online-softmax update with masked scores s = -inf; m, l (bq, 1)."""
    m_new = jnp.maximum(m, s.max(axis=-1, keepdims=True))
    m_use = jnp.where(m_new == NEG_INF, 0.0, m_new)
    p = jnp.exp(s - m_use)
    alpha = jnp.exp(m - m_use)
    l_new = alpha * l + p.sum(axis=-1, keepdims=True)
    acc_new = alpha * acc + dot_nn(p.astype(v.dtype), v)
    return m_new, l_new, acc_new


def finish(m, l, acc):
    empty = l == 0.0
    out = acc * jnp.where(empty, 0.0, 1.0 / jnp.where(empty, 1.0, l))
    lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
    return out, lse


# One module per lowering; ``select_lowering`` above is the only place that picks one.
_LOWERING_MODULES = {
    "mosaic": "pallas_kernels.flash_attention.kernel_mosaic",
    "triton": "pallas_kernels.flash_attention.kernel_triton",
}


def _module(static: Static):
    return importlib.import_module(_LOWERING_MODULES[static.lowering])


def forward(static: Static, tiles, q, k, v, q_seg, k_seg, dense):
    """(out (B, H, Lq, E), lse (B, H, Lq) float32) on padded, head-major inputs.

    ``dense`` is None or a (Bm, Hm, Lq, Lk) mask, bool (Mosaic) or int8 (Triton).
    """
    return _module(static).forward(static, tiles, q, k, v, q_seg, k_seg, dense)


def backward(static: Static, tiles, q, k, v, q_seg, k_seg, dense, do, lse, delta):
    """(dq, dk, dv) on padded, head-major inputs; delta = rowsum(do * out) float32."""
    return _module(static).backward(static, tiles, q, k, v, q_seg, k_seg, dense, do, lse, delta)
