"""Flash-attention kernel vs the attention reference, one shared base per execution mode.

Modes: the generic Pallas interpreter (``interpret=True``, the Triton-form kernels), the
TPU interpreter (the Mosaic kernels, 128 tiles), and compiled GPU / TPU (skipped here).
A lowering test checks that both compiled lowerings (Mosaic, Triton) trace and lower
for fwd + bwd on this CPU machine.
"""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxar import testing
from pallas_kernels.flash_attention import BlockSizes, flash_attention, kernel, masks, ops


def _reference(q, k, v, mask):
    """``jaxar.ops.dot_product_attention`` with a dense mask (the private formula below
    stands in only while the attention reference is not in the tree)."""
    try:
        from jaxar.ops import dot_product_attention
    except (ImportError, AttributeError):
        return _private_reference(q, k, v, mask)
    return dot_product_attention(q, k, v, mask=mask, impl="xla")


def _private_reference(q, k, v, mask):
    """softmax(q k^T / sqrt(K) masked) v with GQA; fully masked rows give 0."""
    B, Lq, H, K = q.shape
    G = k.shape[2]
    k = jnp.repeat(k, H // G, axis=2)
    v = jnp.repeat(v, H // G, axis=2)
    s = jnp.einsum("bqhk,bphk->bhqp", q, k) * K**-0.5
    s = jnp.where(mask, s, -jnp.inf)
    m = s.max(-1, keepdims=True)
    p = jnp.exp(s - jnp.where(jnp.isfinite(m), m, 0.0))
    l = p.sum(-1, keepdims=True)
    p = p / jnp.where(l > 0, l, 1.0)
    return jnp.einsum("bhqp,bphe->bqhe", p, v)


def _dense(spec, q_len, k_len, q_seg=None, k_seg=None, batch=1):
    m = jnp.asarray(spec.dense(q_len, k_len))[None, None]
    m = jnp.broadcast_to(m, (batch, 1, q_len, k_len))
    if q_seg is not None:
        m = m & (q_seg[:, None, :, None] == k_seg[:, None, None, :])
    return m


def _inputs(B, Lq, Lk, H, G, K, E, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (B, Lq, H, K), jnp.float32).astype(dtype)
    k = jax.random.normal(ks[1], (B, Lk, G, K), jnp.float32).astype(dtype)
    v = jax.random.normal(ks[2], (B, Lk, G, E), jnp.float32).astype(dtype)
    do = jax.random.normal(ks[3], (B, Lq, H, E), jnp.float32).astype(dtype)
    return q, k, v, do


class FlashAttentionTestBase:
    """The cases; subclasses set the execution mode and the tile unit ``T``."""

    interpret = True
    T = 16  # tile size; lengths below are in units of it
    extra_slow = False  # mark the heavier cases slow in slow modes

    def call(self, q, k, v, **kw):
        bs = BlockSizes(self.T, self.T)
        return flash_attention(q, k, v, interpret=self.interpret, block_sizes=bs, **kw)

    def check(self, spec, *, Lq, Lk, H=2, G=1, K=16, E=16, dtype=jnp.float32, seg=None,
              grad=True, causal=False, block_mask=True, dense=None):  # fmt: skip
        B = 1 if seg is None else seg[0].shape[0]
        B = B if dense is None else dense.shape[0]
        q, k, v, do = _inputs(B, Lq, Lk, H, G, K, E, dtype)
        segment_ids = None if seg is None else (seg[0] if seg[0] is seg[1] else tuple(seg))
        kw = dict(block_mask=spec if block_mask else None, segment_ids=segment_ids, causal=causal)
        full = spec & masks.mask(masks.Causal(Lk - Lq)) if causal else spec
        mask = _dense(full, Lq, Lk, *(seg or (None, None)), batch=B)
        if dense is not None:
            kw["block_mask"] = jnp.asarray(dense)
            mask = mask & dense
        f = lambda q, k, v: self.call(q, k, v, **kw)
        r = lambda q, k, v: _reference(q, k, v, mask)
        if not grad:
            out = jax.jit(f)(q, k, v)
            testing.assert_allclose(out, testing.reference_x64(r, q, k, v), dtype=dtype)
            return out

        def fwd_bwd(fn):
            def run(q, k, v, do):
                out, vjp = jax.vjp(fn, q, k, v)
                return out, vjp(do)

            return run

        got = jax.jit(fwd_bwd(f))(q, k, v, do)
        want = testing.reference_x64(fwd_bwd(r), q, k, v, do)
        testing.assert_allclose(got[0], want[0], dtype=dtype, kind="fwd")
        testing.assert_allclose(got[1], want[1], dtype=dtype, kind="grad")
        return got

    # ------------------------------------------------------------------ cases

    def test_causal_gqa_odd_lengths(self):
        T = self.T
        self.check(masks.BlockMask(), Lq=2 * T + 5, Lk=2 * T + 5, H=4, G=2, causal=True)

    def test_bfloat16(self):
        T = self.T
        self.check(masks.mask(masks.Causal()), Lq=2 * T + 3, Lk=2 * T + 3, dtype=jnp.bfloat16)

    def test_no_mask_cross_lengths(self):
        T = self.T
        self.check(masks.BlockMask(), Lq=T + 3, Lk=3 * T - 1, E=8, block_mask=False)

    def test_causal_bottom_right_cross_lengths(self):
        T = self.T
        self.check(masks.BlockMask(), Lq=T - 3, Lk=3 * T + 1, H=2, G=2, causal=True)

    def test_block_diffusion(self):
        n = self.T + self.T // 2  # 2n = 3 tiles; blocks of T/2 straddle tiles
        self.check(masks.mask(masks.BlockDiffusion(self.T // 2, n)), Lq=2 * n, Lk=2 * n)

    def test_segments_causal(self):
        T = self.T
        L = 3 * T
        seg = np.ones((2, L), np.int32)
        seg[0, T + 2 :] = 2
        seg[1, 5:] = 2
        seg[1, 2 * T + 1 :] = 3
        seg = jnp.asarray(seg)
        self.check(masks.BlockMask(), Lq=L, Lk=L, seg=(seg, seg), causal=True)

    @pytest.mark.parametrize(
        "make",
        [
            lambda s: masks.Local(5 * s),
            lambda s: masks.Local(5 * s, causal=False),
            lambda s: masks.Chunk(8 * s),
            lambda s: masks.BlockCausal(8 * s),
            lambda s: masks.AxialRow(8 * s, causal=True),
            lambda s: masks.AxialColumn(8 * s),
        ],
        ids=["local", "local_bidirectional", "chunk", "block_causal", "axial_row", "axial_col"],
    )
    def test_mask_kinds_forward(self, make):
        T = self.T
        self.check(masks.mask(make(T // 16)), Lq=3 * T, Lk=3 * T, grad=False)

    def test_local_and_axial_column_grads(self):
        T = self.T
        s = T // 16
        spec = masks.mask(masks.Local(20 * s), masks.AxialColumn(4 * s, causal=True))
        self.check(spec, Lq=3 * T, Lk=3 * T)

    def test_fully_masked_rows_are_zero(self):
        T = self.T
        L = 2 * T
        q_seg = np.ones((1, L), np.int32)
        q_seg[0, T // 2 : T + 3] = 7  # no key has segment 7
        k_seg = jnp.ones((1, L), jnp.int32)
        out, grads = self.check(masks.BlockMask(), Lq=L, Lk=L, seg=(jnp.asarray(q_seg), k_seg))
        np.testing.assert_array_equal(np.asarray(out[0, T // 2 : T + 3]), 0.0)
        for g in grads:
            assert np.isfinite(np.asarray(g)).all()

    def test_dense_mask_gqa(self):
        T = self.T
        L = 2 * T + 3
        m = np.random.default_rng(1).random((2, 4, L, L)) < 0.3
        m[:, :, :T, T : 2 * T] = False  # an all-False tile: skipped
        m[1, 2, 5] = False  # a fully masked row: zeros
        out, _ = self.check(masks.BlockMask(), Lq=L, Lk=L, H=4, G=2, dense=m, causal=True)
        np.testing.assert_array_equal(np.asarray(out[1, 5, 2]), 0.0)

    def test_empty_tiles_are_skipped(self):
        """Keys of skipped tiles are NaN: a visited tile would spread NaN (NaN * 0 = NaN)."""
        T = self.T
        L = 3 * T
        spec = masks.mask(masks.Chunk(T))
        q, k, v, do = _inputs(1, L, L, 2, 1, 16, 16, jnp.float32)
        poison = jnp.arange(L)[None, :, None, None] >= T
        k_bad, v_bad = jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v)
        f = lambda q, k, v: self.call(q, k, v, block_mask=spec)
        out, vjp = jax.vjp(f, q[:, :T], k_bad, v_bad)
        dq, dk, dv = vjp(do[:, :T])
        want = testing.reference_x64(
            lambda q, k, v: _reference(q, k, v, _dense(spec, T, T)), q[:, :T], k[:, :T], v[:, :T]
        )
        testing.assert_allclose(out, want, dtype=jnp.float32)
        assert np.isfinite(np.asarray(dq)).all()
        for g in (dk, dv):  # k tiles 1, 2 meet no q tile: never visited, zero gradient
            assert np.isfinite(np.asarray(g[:, :T])).all()
            np.testing.assert_array_equal(np.asarray(g[:, T:]), 0.0)
        visited, total = ops.visited_tiles(L, L, block_mask=spec, block_sizes=BlockSizes(T, T))
        assert (visited, total) == (3, 9)
        visited, _ = ops.visited_tiles(L, L, causal=True, block_sizes=BlockSizes(T, T))
        assert visited == 6


class TestInterpret(FlashAttentionTestBase):
    """Generic Pallas interpreter: the Triton-form kernels on CPU."""

    interpret = True
    T = 16


class TestTpuInterpret(FlashAttentionTestBase):
    """The Mosaic kernels in the TPU interpreter (tiles of 128)."""

    interpret = pltpu.InterpretParams()
    T = 128

    # Covered by the generic mode and by the Mosaic cases above; slow in this interpreter.
    @pytest.mark.slow
    def test_bfloat16(self):
        super().test_bfloat16()

    @pytest.mark.slow
    def test_no_mask_cross_lengths(self):
        super().test_no_mask_cross_lengths()

    @pytest.mark.slow
    def test_fully_masked_rows_are_zero(self):
        super().test_fully_masked_rows_are_zero()

    @pytest.mark.slow
    def test_causal_bottom_right_cross_lengths(self):
        super().test_causal_bottom_right_cross_lengths()


@pytest.mark.gpu
class TestGpu(FlashAttentionTestBase):
    interpret = False
    T = 32


@pytest.mark.tpu
class TestTpu(FlashAttentionTestBase):
    interpret = False
    T = 128


# ---------------------------------------------------------------------- lowering, API


@pytest.fixture
def tpu_info_on_cpu(monkeypatch):
    """Lets the Mosaic lowering query a TPU v5e's info on a CPU host (lowering only)."""
    from jax._src.pallas.mosaic import tpu_info

    info = lambda: tpu_info.get_tpu_info_for_chip(tpu_info.ChipVersion.TPU_V5E, 1)
    monkeypatch.setitem(tpu_info.registry, jax.devices()[0].device_kind, info)


@pytest.mark.parametrize("dense", [False, True], ids=["block_mask", "dense_mask"])
@pytest.mark.parametrize("platform,target", [("tpu", "tpu_custom_call"), ("cuda", "triton")])
def test_compiled_lowerings(platform, target, dense, tpu_info_on_cpu):
    """Both compiled lowerings (Mosaic, Triton) lower fwd + bwd: 1 + 2 kernels each."""
    q = jax.ShapeDtypeStruct((1, 256, 4, 64), jnp.bfloat16)
    kv = jax.ShapeDtypeStruct((1, 256, 2, 64), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((1, 256), jnp.int32)
    m = jax.ShapeDtypeStruct((1, 4, 256, 256), jnp.bool_)
    spec = masks.mask(masks.BlockDiffusion(32, 128))

    def loss(q, k, v, s, m):
        kw = dict(block_mask=m, causal=True) if dense else dict(block_mask=spec, segment_ids=s)
        return flash_attention(q, k, v, **kw).astype(jnp.float32).sum()

    with mock.patch.object(kernel.jax, "default_backend", lambda: platform):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, kv, kv, seg, m)
        text = lowered.lower(lowering_platforms=(platform,)).as_text()
    assert text.count(target) >= 3


def test_block_table_matches_dense():
    spec = masks.mask(masks.BlockDiffusion(4, 20))
    table = masks.block_table(spec, 40, 40, 16, 8)
    dense = np.pad(spec.dense(40, 40), ((0, 8), (0, 0))).reshape(3, 16, 5, 8)
    dense[2, 8:] = dense[2, :8].any(0)  # padded rows do not matter
    assert (table == masks.EMPTY).tolist() == (~dense.any((1, 3))).tolist()


def test_errors_name_the_argument():
    q = jnp.zeros((1, 16, 2, 8))
    with pytest.raises(ValueError, match="G dividing H"):
        flash_attention(q, jnp.zeros((1, 16, 3, 8)), jnp.zeros((1, 16, 3, 8)), interpret=True)
    with pytest.raises(ValueError, match="block_mask"):
        flash_attention(q, q, q, block_mask="causal", interpret=True)
    with pytest.raises(ValueError, match="multiples of 128"):
        flash_attention(q, q, q, interpret=pltpu.InterpretParams(), block_sizes=BlockSizes(64, 128))
    with pytest.raises(ValueError, match="BlockSizes.block_q"):
        BlockSizes(0, 16)
    with pytest.raises(ValueError, match="window"):
        masks.Local(0)


def test_bench_refuses_interpret_mode(capsys):
    from pallas_kernels.flash_attention import bench

    assert bench.run(quick=True) == []
    assert "never timed" in capsys.readouterr().out
