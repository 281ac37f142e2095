"""Mask builders against explicit loops over (query, key) positions."""

import numpy as np
import pytest

from jaxar.ops import masks


def _loop(lq, lk, fn):
    off = lk - lq
    return np.array([[fn(i + off, j) for j in range(lk)] for i in range(lq)])


def test_causal_and_local():
    np.testing.assert_array_equal(masks.causal_mask(3, 5), _loop(3, 5, lambda q, k: k <= q))
    np.testing.assert_array_equal(
        masks.local_mask(6, window=2), _loop(6, 6, lambda q, k: q - 2 < k <= q)
    )
    np.testing.assert_array_equal(
        masks.local_mask(6, window=2, causal=False), _loop(6, 6, lambda q, k: abs(q - k) < 2)
    )


def test_chunk_and_block_causal():
    np.testing.assert_array_equal(
        masks.chunk_mask(7, 3), _loop(7, 7, lambda q, k: q // 3 == k // 3)
    )
    np.testing.assert_array_equal(
        masks.chunk_mask(7, 3, causal=True), _loop(7, 7, lambda q, k: q // 3 == k // 3 and k <= q)
    )
    np.testing.assert_array_equal(
        masks.block_causal_mask(6, 2), _loop(6, 6, lambda q, k: k // 2 <= q // 2)
    )


def test_segment():
    seg = np.array([[1, 1, 2, 0]])
    m = np.asarray(masks.segment_mask(seg))
    assert m.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(m[0, 0], seg[0][:, None] == seg[0][None, :])


def test_block_diffusion():
    L, n = 6, 2

    def rule(q, k):
        qn, kn = q < L, k < L
        qb, kb = (q % L) // n, (k % L) // n
        if qn and kn:
            return qb == kb
        if qn:
            return kb < qb
        if kn:
            return False
        return kb <= qb

    np.testing.assert_array_equal(masks.block_diffusion_mask(L, n), _loop(2 * L, 2 * L, rule))
    with pytest.raises(ValueError, match="multiple"):
        masks.block_diffusion_mask(5, 2)


def test_block_mask_for():
    table = masks.block_mask_for(masks.causal_mask(8), 4, 4)
    np.testing.assert_array_equal(
        table, [[masks.PARTIAL, masks.EMPTY], [masks.FULL, masks.PARTIAL]]
    )
    # ragged last tile: padding does not make a tile partial
    table = masks.block_mask_for(np.ones((5, 5), bool), 4, 4)
    assert (table == masks.FULL).all()
    with pytest.raises(ValueError, match="block_q"):
        masks.block_mask_for(np.ones((4, 4), bool), 0, 4)
