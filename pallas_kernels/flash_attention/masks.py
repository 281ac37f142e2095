"""Block-sparse mask descriptions for the flash-attention kernel.

A mask is a conjunction of static terms, each a pure function of the query position ``q``
and the key position ``k`` (integers; ``True`` = may attend):

=====================  ======================================================
``Causal(offset)``     ``k <= q + offset``
``Local(window)``      ``q - window < k <= q`` (or ``|q - k| < window`` if not causal)
``Chunk(size)``        ``q // size == k // size`` (bidirectional inside a chunk)
``BlockCausal(size)``  ``k // size <= q // size``
``BlockDiffusion(n)``  the BD3 mask on ``[x_t ; x_0]`` (jaxar/MATHS.md s.6), blocks of ``n``
``AxialRow(width)``    same image row: ``q // width == k // width`` (optionally causal)
``AxialColumn(width)`` same image column: ``q % width == k % width`` (optionally causal)
``ScaleCausal(ends)``  VAR's next-scale mask: blocks of variable sizes ending at ``ends``
                       (exclusive), ``block(k) <= block(q)`` (``jaxar.ops.masks``)
=====================  ======================================================

The same term is evaluated three ways: in numpy to classify every (q tile, k tile) as
empty / partial / full (``block_table``), and inside the kernel on broadcast iotas to mask
the partial tiles. Segment ids (dynamic) are combined with the static table at run time
(``jaxar``'s convention: a query attends to keys of its own segment). Empty tiles are
never loaded nor computed.

References:
  Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
    Next-Scale Prediction", arXiv:2404.02905.
  Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
    Language Models", arXiv:2503.09573.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxar.ops.checks import positive_int
from jaxar.ops.masks import ScaleCausal

EMPTY, PARTIAL, FULL = 0, 1, 2


def _div(x, n: int):
    """x // n for positions x >= 0 (truncating division in kernels: no sign fix-up)."""
    return x // n if isinstance(x, np.ndarray | int) else lax.div(x, jnp.int32(n))


def _mod(x, n: int):
    return x % n if isinstance(x, np.ndarray | int) else lax.rem(x, jnp.int32(n))


def _check_positive(obj, name):
    positive_int(f"{type(obj).__name__}.{name}", getattr(obj, name))


@dataclasses.dataclass(frozen=True)
class Causal:
    """``k <= q + offset`` (offset = Lk - Lq aligns the diagonal bottom-right)."""

    offset: int = 0

    def __call__(self, q, k):
        return k <= q + self.offset


@dataclasses.dataclass(frozen=True)
class Local:
    """Sliding window of ``window`` keys: ``q - window < k <= q`` (causal) else ``|q-k| < w``."""

    window: int
    causal: bool = True
    offset: int = 0

    def __post_init__(self):
        _check_positive(self, "window")

    def __call__(self, q, k):
        d = q + self.offset - k
        if self.causal:
            return (d >= 0) & (d < self.window)
        return (d < self.window) & (d > -self.window)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Bidirectional attention inside chunks of ``size``: ``q // size == k // size``."""

    size: int

    def __post_init__(self):
        _check_positive(self, "size")

    def __call__(self, q, k):
        return _div(q, self.size) == _div(k, self.size)


@dataclasses.dataclass(frozen=True)
class BlockCausal:
    """Causal across blocks, bidirectional inside: ``k // size <= q // size``."""

    size: int

    def __post_init__(self):
        _check_positive(self, "size")

    def __call__(self, q, k):
        return _div(k, self.size) <= _div(q, self.size)


@dataclasses.dataclass(frozen=True)
class BlockDiffusion:
    """BD3-LM training mask on ``[x_t ; x_0]`` (length ``2 * seq_len``), blocks of ``block_size``.

    Noisy block b sees noisy block b and clean blocks < b; clean block b sees clean
    blocks <= b; clean never sees noisy.
    """

    block_size: int
    seq_len: int

    def __post_init__(self):
        _check_positive(self, "block_size")
        _check_positive(self, "seq_len")

    def __call__(self, q, k):
        n, size = self.seq_len, self.block_size
        q_clean, k_clean = q >= n, k >= n
        qb = _div(q - n * q_clean.astype(q.dtype), size)
        kb = _div(k - n * k_clean.astype(k.dtype), size)
        noisy_self = (~q_clean) & (~k_clean) & (qb == kb)
        noisy_ctx = (~q_clean) & k_clean & (kb < qb)
        clean = q_clean & k_clean & (kb <= qb)
        return noisy_self | noisy_ctx | clean


@dataclasses.dataclass(frozen=True)
class AxialRow:
    """Row attention on a raster-flattened image of ``width`` columns."""

    width: int
    causal: bool = False

    def __post_init__(self):
        _check_positive(self, "width")

    def __call__(self, q, k):
        same = _div(q, self.width) == _div(k, self.width)
        return same & (k <= q) if self.causal else same


@dataclasses.dataclass(frozen=True)
class AxialColumn:
    """Column attention on a raster-flattened image of ``width`` columns."""

    width: int
    causal: bool = False

    def __post_init__(self):
        _check_positive(self, "width")

    def __call__(self, q, k):
        same = _mod(q, self.width) == _mod(k, self.width)
        return same & (k <= q) if self.causal else same


TERMS = (Causal, Local, Chunk, BlockCausal, BlockDiffusion, AxialRow, AxialColumn, ScaleCausal)


@dataclasses.dataclass(frozen=True)
class BlockMask:
    """A static attention mask: the conjunction (AND) of ``terms``; no terms = full."""

    terms: tuple = ()

    def __post_init__(self):
        for t in self.terms:
            if not isinstance(t, TERMS):
                names = [c.__name__ for c in TERMS]
                raise ValueError(f"BlockMask.terms has {t!r}; accepted: instances of {names}")

    def __and__(self, other: BlockMask) -> BlockMask:
        return BlockMask(self.terms + other.terms)

    def __call__(self, q, k):
        """Elementwise mask for broadcastable integer positions (numpy or jnp)."""
        out = None
        for t in self.terms:
            m = t(q, k)
            out = m if out is None else out & m
        return out

    def dense(self, q_len: int, k_len: int) -> np.ndarray:
        """The (q_len, k_len) boolean mask."""
        q = np.arange(q_len)[:, None]
        k = np.arange(k_len)[None, :]
        m = self(q, k)
        return np.ones((q_len, k_len), bool) if m is None else np.broadcast_to(m, (q_len, k_len))


def mask(*terms) -> BlockMask:
    """``BlockMask(terms)``; e.g. ``mask(Causal(), Local(256))``."""
    return BlockMask(tuple(terms))


@functools.lru_cache(maxsize=64)
def block_table(spec: BlockMask, q_len: int, k_len: int, block_q: int, block_k: int) -> np.ndarray:
    """(nq, nk) int8 classification of tiles: EMPTY (skipped), PARTIAL (masked), FULL.

    Lengths are the true ones; tiles are cut from the padded lengths, and padded keys
    count as masked (so a tile reaching past ``k_len`` is never FULL).
    """
    nq, nk = -(-q_len // block_q), -(-k_len // block_k)
    table = np.empty((nq, nk), np.int8)
    k = np.arange(nk * block_k)[None, :]
    for i in range(nq):
        q = np.arange(i * block_q, (i + 1) * block_q)[:, None]
        m = spec(q, k)
        m = (
            np.ones((block_q, nk * block_k), bool)
            if m is None
            else np.broadcast_to(m, (block_q, k.shape[1]))
        )
        m = m & (k < k_len)
        m = m.reshape(block_q, nk, block_k)
        # Padded query rows are dropped from the output: they may be anything.
        real = min(block_q, q_len - i * block_q)
        m = m[:real]
        anyv, allv = m.any(axis=(0, 2)), m.all(axis=(0, 2))
        table[i] = np.where(allv, FULL, np.where(anyv, PARTIAL, EMPTY))
    return table
