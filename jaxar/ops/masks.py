"""Attention mask builders (pure functions; ``True`` = the query may attend to the key).

Every builder returns a boolean array: ``(Lq, Lk)`` for position-only masks, ``(B, 1, Lq,
Lk)`` for per-example masks, ready to broadcast as ``mask[None, None]`` into
``jaxar.ops.dot_product_attention``'s ``(B or 1, H or 1, Lq, Lk)``. When ``Lq != Lk`` the
query positions are aligned with the *last* keys (query i sits at key position
``i + Lk - Lq``), as for decoding against a cache.

``block_mask_for`` describes a mask per tile (empty / partial / full) for block-sparse
kernels: tiles that are all-False need not be loaded or computed, all-True tiles need no
per-element masking.

References:
  Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
    Language Models", arXiv:2503.09573.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "causal_mask",
    "local_mask",
    "chunk_mask",
    "segment_mask",
    "block_causal_mask",
    "block_diffusion_mask",
    "scale_causal_mask",
    "ScaleCausal",
    "block_mask_for",
    "tree_mask",
    "EMPTY",
    "PARTIAL",
    "FULL",
]

EMPTY, PARTIAL, FULL = 0, 1, 2


def _check_int(name: str, value, minimum: int = 1):
    if not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}={value!r} is not supported; accepted: an int >= {minimum}")


def _positions(q_len: int, k_len: int | None):
    k_len = q_len if k_len is None else k_len
    _check_int("q_len", q_len)
    _check_int("k_len", k_len)
    q = jnp.arange(q_len)[:, None] + (k_len - q_len)
    k = jnp.arange(k_len)[None, :]
    return q, k


def causal_mask(q_len: int, k_len: int | None = None):
    """``(Lq, Lk)``: ``k <= q`` with queries aligned to the last keys."""
    q, k = _positions(q_len, k_len)
    return k <= q


def local_mask(q_len: int, k_len: int | None = None, *, window: int, causal: bool = True):
    """``(Lq, Lk)`` sliding window: ``q - window < k <= q`` (causal) or ``|q - k| < window``."""
    _check_int("window", window)
    q, k = _positions(q_len, k_len)
    if causal:
        return (k <= q) & (k > q - window)
    return jnp.abs(q - k) < window


def chunk_mask(length: int, chunk_size: int, *, causal: bool = False):
    """``(L, L)`` local chunks: ``q // C == k // C`` (and ``k <= q`` if ``causal``)."""
    _check_int("chunk_size", chunk_size)
    q, k = _positions(length, None)
    m = (q // chunk_size) == (k // chunk_size)
    return m & (k <= q) if causal else m


def segment_mask(q_segment_ids, kv_segment_ids=None):
    """``(B, 1, Lq, Lk)``: a query attends to keys of its own segment (equal ids).

    Padding (id 0) attends to padding, so no row is empty; padding outputs are ignored.
    """
    q_seg = jnp.asarray(q_segment_ids)
    kv_seg = q_seg if kv_segment_ids is None else jnp.asarray(kv_segment_ids)
    if q_seg.ndim != 2 or kv_seg.ndim != 2 or q_seg.shape[0] != kv_seg.shape[0]:
        raise ValueError(
            f"segment ids have shapes {q_seg.shape} and {kv_seg.shape}; accepted: integer "
            "(B, Lq) and (B, Lk)"
        )
    return (q_seg[:, :, None] == kv_seg[:, None, :])[:, None]


def block_causal_mask(length: int, block_size: int):
    """``(L, L)``: ``k // block <= q // block`` (bidirectional inside a block, causal across)."""
    _check_int("block_size", block_size)
    q, k = _positions(length, None)
    return (k // block_size) <= (q // block_size)


def block_diffusion_mask(length: int, block_size: int):
    """``(2L, 2L)`` BD3 training mask on ``[x_t ; x_0]`` (jaxar/MATHS.md s.6).

    Noisy block b sees noisy block b and clean blocks < b; clean block b sees clean
    blocks <= b. ``length`` is L (one copy); it must be a multiple of ``block_size``.
    """
    _check_int("length", length)
    _check_int("block_size", block_size)
    if length % block_size:
        raise ValueError(f"length={length} must be a multiple of block_size={block_size}")
    idx = jnp.arange(2 * length)
    noisy = idx < length
    blk = jnp.where(noisy, idx, idx - length) // block_size
    qn, kn = noisy[:, None], noisy[None, :]
    qb, kb = blk[:, None], blk[None, :]
    return (qn & kn & (qb == kb)) | (qn & ~kn & (kb < qb)) | (~qn & ~kn & (kb <= qb))


def _check_scales(scales) -> tuple[int, ...]:
    scales = tuple(scales)
    ok = bool(scales) and all(isinstance(s, int | np.integer) and s >= 1 for s in scales)
    if not ok or any(a >= b for a, b in zip(scales, scales[1:], strict=False)):
        raise ValueError(f"scales={scales!r} is invalid; accepted: strictly increasing ints >= 1")
    return tuple(int(s) for s in scales)


def scale_causal_mask(scales):
    """``(L, L)`` with ``L = sum_k s_k^2``: VAR's next-scale mask (jaxar/MATHS.md s.10).

    Position i belongs to scale ``b(i)`` (the scales' ``s_k^2`` tokens in order); query q
    may attend to key k iff ``b(k) <= b(q)``: bidirectional inside a scale, causal across
    scales (variable block sizes). ``scales`` must be strictly increasing ints >= 1.
    """
    scales = _check_scales(scales)
    blk = jnp.asarray(np.repeat(np.arange(len(scales)), [s**2 for s in scales]))
    return blk[None, :] <= blk[:, None]


@dataclasses.dataclass(frozen=True)
class ScaleCausal:
    """:func:`scale_causal_mask` as a static position rule (a block-sparse kernel's mask term).

    With block ends ``e_1 < .. < e_n`` (exclusive; ``e_k = s_1^2 + .. + s_k^2``), ``b(k) <=
    b(q)`` iff no boundary separates a later key from the query:
    ``AND_{j < n} (k < e_j  OR  q >= e_j)``. Only comparisons, so the same rule runs on
    numpy positions (tile tables), on ``jnp`` iotas inside a kernel, and densely.
    ``jaxar.ops.dot_product_attention`` takes it as ``mask`` (dense for the XLA forms; the
    flash kernel's block mask with ``impl="pallas"``, which skips the all-masked tiles).
    """

    ends: tuple[int, ...]

    def __post_init__(self):
        ends = tuple(self.ends)
        ok = bool(ends) and all(isinstance(e, int | np.integer) and e >= 1 for e in ends)
        if not ok or any(a >= b for a, b in zip(ends, ends[1:], strict=False)):
            raise ValueError(
                f"ScaleCausal.ends={ends!r} is invalid; accepted: strictly increasing ints >= 1"
            )
        object.__setattr__(self, "ends", tuple(int(e) for e in ends))

    @classmethod
    def from_scales(cls, scales) -> ScaleCausal:
        """The rule of ``scale_causal_mask(scales)``."""
        return cls(tuple(int(e) for e in np.cumsum([s * s for s in _check_scales(scales)])))

    def __call__(self, q, k):
        out = None
        for e in self.ends[:-1]:
            m = (k < e) | (q >= e)
            out = m if out is None else out & m
        return (k >= 0) | (q < 0) if out is None else out  # one block: all allowed

    def dense(self, q_len: int, k_len: int | None = None):
        """The ``(Lq, Lk)`` bool mask (queries aligned to the last keys, as every builder)."""
        q, k = _positions(q_len, k_len)
        return jnp.broadcast_to(self(q, k), (q.shape[0], k.shape[1]))


def tree_mask(parents):
    """``(N, N)`` token-tree mask: ``mask[i, j]`` iff node j is node i or an ancestor of it.

    Tree attention (SpecInfer, arXiv:2305.09781; Medusa, arXiv:2401.10774) verifies all
    branches of a token tree in one call: each node sees only its own path to the root.

    Args:
      parents: int (N,), the parent of each node, ``-1`` for a root; a parent comes before
        its child (``parents[i] < i``), so the mask is lower triangular (causal).

    Returns:
      bool (N, N).
    """
    par = jnp.asarray(parents)
    if par.ndim != 1 or par.shape[0] < 1 or not jnp.issubdtype(par.dtype, jnp.integer):
        raise ValueError(
            f"parents has shape {par.shape} and dtype {par.dtype}; accepted: int (N,), N >= 1"
        )
    n = par.shape[0]
    if not isinstance(par, jax.core.Tracer):
        bad = np.flatnonzero((np.asarray(par) < -1) | (np.asarray(par) >= np.arange(n)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"parents[{i}]={int(par[i])} is invalid; accepted: -1 (a root) or a node index "
                f"in [0, {i}) (a parent comes before its child)"
            )
    idx = jnp.arange(n)
    reach = (idx[:, None] == idx[None]) | (par[:, None] == idx[None])  # self or parent
    for _ in range(max(1, (n - 1).bit_length())):  # transitive closure by squaring
        reach = reach | jnp.any(reach[:, :, None] & reach[None], axis=1)
    return reach


def block_mask_for(mask, block_q: int, block_k: int) -> np.ndarray:
    """Per-tile classification of a concrete mask, for block-sparse kernels.

    Args:
      mask: bool ``(..., Lq, Lk)`` (concrete; leading axes are OR-ed for EMPTY and AND-ed
        for FULL so the table is valid for every batch / head), e.g.
        ``block_mask_for(causal_mask(L), 128, 128)``.
      block_q, block_k: tile sizes; the last tile is padded with False.

    Returns:
      int8 numpy ``(ceil(Lq / block_q), ceil(Lk / block_k))`` with ``EMPTY`` (0: all
      masked, skip), ``PARTIAL`` (1: mask per element) or ``FULL`` (2: no masking needed).
    """
    _check_int("block_q", block_q)
    _check_int("block_k", block_k)
    m = np.asarray(mask).astype(bool)
    if m.ndim < 2:
        raise ValueError(f"mask has shape {m.shape}; accepted: (..., Lq, Lk)")
    m = m.reshape((-1,) + m.shape[-2:])
    lq, lk = m.shape[-2:]
    nq, nk = -(-lq // block_q), -(-lk // block_k)
    pad = np.zeros((m.shape[0], nq * block_q, nk * block_k), bool)
    pad[:, :lq, :lk] = m
    valid = np.zeros((nq * block_q, nk * block_k), bool)
    valid[:lq, :lk] = True
    tiles = pad.reshape(m.shape[0], nq, block_q, nk, block_k)
    vt = valid.reshape(nq, block_q, nk, block_k)
    any_ = tiles.any(axis=(0, 2, 4))
    full = (tiles | ~vt[None]).all(axis=(0, 2, 4))
    return np.where(~any_, EMPTY, np.where(full, FULL, PARTIAL)).astype(np.int8)
