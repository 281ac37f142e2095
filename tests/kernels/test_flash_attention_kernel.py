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

from jaxar import ops as jaxar_ops
from jaxar import testing
from pallas_kernels.flash_attention import BlockSizes, flash_attention, masks, ops


def _reference(q, k, v, **kw):
    """The attention reference: ``jaxar.ops.dot_product_attention`` (XLA form)."""
    return jaxar_ops.dot_product_attention(q, k, v, impl="xla", **kw)


def _ops_mask(m):
    """A jaxar.ops mask builder's (Lq, Lk) output as (1, 1, Lq, Lk)."""
    return jnp.asarray(m)[None, None]


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
              grad=True, causal=False, block_mask=True, dense=None, ref_mask=None,
              reference=None):  # fmt: skip
        """Kernel(spec, causal, seg, dense) vs jaxar.ops with ``ref_mask`` (a jaxar.ops
        builder's mask for ``spec``, also checked equal to ``spec.dense``)."""
        B = 1 if seg is None else seg[0].shape[0]
        B = B if dense is None else dense.shape[0]
        q, k, v, do = _inputs(B, Lq, Lk, H, G, K, E, dtype)
        segment_ids = None if seg is None else (seg[0] if seg[0] is seg[1] else tuple(seg))
        kw = dict(block_mask=spec if block_mask else None, segment_ids=segment_ids, causal=causal)
        if ref_mask is not None:
            np.testing.assert_array_equal(spec.dense(Lq, Lk), np.asarray(ref_mask)[0, 0])
        if dense is not None:
            kw["block_mask"] = jnp.asarray(dense)
            ref_mask = dense if ref_mask is None else ref_mask & dense
        ref_kw = dict(causal=causal, segment_ids=segment_ids, mask=ref_mask)
        f = lambda q, k, v: self.call(q, k, v, **kw)
        r = reference or (lambda q, k, v: _reference(q, k, v, **ref_kw))
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
        L = 2 * T + 3
        ref = _ops_mask(jaxar_ops.causal_mask(L))
        self.check(masks.mask(masks.Causal()), Lq=L, Lk=L, dtype=jnp.bfloat16, ref_mask=ref)

    def test_no_mask_cross_lengths(self):
        T = self.T
        self.check(masks.BlockMask(), Lq=T + 3, Lk=3 * T - 1, E=8, block_mask=False)

    def test_causal_bottom_right_cross_lengths(self):
        T = self.T
        self.check(masks.BlockMask(), Lq=T - 3, Lk=3 * T + 1, H=2, G=2, causal=True)

    def test_block_diffusion(self):
        n = self.T + self.T // 2  # 2n = 3 tiles; blocks of T/2 straddle tiles
        ref = _ops_mask(jaxar_ops.block_diffusion_mask(n, self.T // 2))
        spec = masks.mask(masks.BlockDiffusion(self.T // 2, n))
        self.check(spec, Lq=2 * n, Lk=2 * n, ref_mask=ref)

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
        "kind", ["local", "local_bidirectional", "chunk", "block_causal", "axial_row", "axial_col"]
    )
    def test_mask_kinds_forward(self, kind):
        T = self.T
        L, s = 3 * T, T // 16
        W = 8 * s  # image width for the axial masks: L = 6 rows of W
        terms = {
            "local": (masks.Local(5 * s), lambda: jaxar_ops.local_mask(L, window=5 * s)),
            "local_bidirectional": (
                masks.Local(5 * s, causal=False),
                lambda: jaxar_ops.local_mask(L, window=5 * s, causal=False),
            ),
            "chunk": (masks.Chunk(W), lambda: jaxar_ops.chunk_mask(L, W)),
            "block_causal": (masks.BlockCausal(W), lambda: jaxar_ops.block_causal_mask(L, W)),
            "axial_row": (masks.AxialRow(W, causal=True), None),
            "axial_col": (masks.AxialColumn(W), None),
        }
        term, builder = terms[kind]
        reference = None
        if builder is None:  # axial: jaxar.ops.axial_attention on the (rows, W) image
            axis, causal = (2, True) if kind == "axial_row" else (1, False)

            def reference(q, k, v):
                img = lambda x: x.reshape(x.shape[0], L // W, W, *x.shape[2:])
                out = jaxar_ops.axial_attention(
                    img(q), img(k), img(v), axis=axis, causal=causal, impl="xla"
                )
                return out.reshape(q.shape[0], L, *out.shape[3:])

        ref = None if builder is None else _ops_mask(builder())
        self.check(masks.mask(term), Lq=L, Lk=L, grad=False, ref_mask=ref, reference=reference)

    def test_local_and_axial_column_grads(self):
        T = self.T
        s = T // 16
        L, W = 3 * T, 4 * s
        spec = masks.mask(masks.Local(20 * s), masks.AxialColumn(W, causal=True))
        i = np.arange(L)
        column = (i[:, None] % W == i[None, :] % W) & (i[None, :] <= i[:, None])
        ref = _ops_mask(jaxar_ops.local_mask(L, window=20 * s)) & column[None, None]
        self.check(spec, Lq=L, Lk=L, ref_mask=ref)

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
        want = testing.reference_x64(_reference, q[:, :T], k[:, :T], v[:, :T])
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

    @pytest.mark.slow
    def test_dense_mask_gqa(self):
        super().test_dense_mask_gqa()

    @pytest.mark.slow
    def test_block_diffusion(self):
        super().test_block_diffusion()

    @pytest.mark.slow
    def test_empty_tiles_are_skipped(self):
        super().test_empty_tiles_are_skipped()


@pytest.mark.gpu
class TestGpu(FlashAttentionTestBase):
    interpret = False
    T = 32


@pytest.mark.tpu
class TestTpu(FlashAttentionTestBase):
    interpret = False
    T = 128


# ---------------------------------------------------------------------- lowering, API


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

    with mock.patch.object(jax, "default_backend", lambda: platform):
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
