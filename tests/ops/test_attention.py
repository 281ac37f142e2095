"""dot_product_attention / axial_attention / apply_rope against float64 naive references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar import ops, testing
from jaxar.ops import masks

B, LQ, LK, H, G, K, E = 2, 6, 8, 4, 2, 8, 8


def naive(q, k, v, mask):
    """softmax(q k^T / sqrt(K)) v over allowed keys, kv heads repeated; empty rows -> 0."""
    rep = q.shape[2] // k.shape[2]
    k = jnp.repeat(k, rep, axis=2)
    v = jnp.repeat(v, rep, axis=2)
    s = jnp.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    m = jnp.broadcast_to(mask, s.shape)
    s = jnp.where(m, s, -1e300)
    p = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)) * m
    p = p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), 1e-300)
    return jnp.einsum("bhqs,bshe->bqhe", p, v)


def _qkv(lq=LQ, lk=LK, h=H, g=G, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(k1, (B, lq, h, K)),
        jax.random.normal(k2, (B, lk, g, K)),
        jax.random.normal(k3, (B, lk, g, E)),
    )


def _empty_rows_mask():
    m = np.asarray(masks.causal_mask(LQ, LK))[None, None] & np.ones((B, H, 1, 1), bool)
    m = m.copy()
    m[0, 1, 2, :] = False  # one fully masked row
    m[1, :, 0, :] = False  # a fully masked query for all heads
    return jnp.asarray(m)


def _cases():
    seg_q = jnp.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1]])
    seg_k = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 2, 2]])
    return {
        "none": (dict(), jnp.ones((1, 1, LQ, LK), bool)),
        "causal_cross_length": (dict(causal=True), masks.causal_mask(LQ, LK)[None, None]),
        "local": (
            dict(mask=masks.local_mask(LQ, LK, window=3)[None, None]),
            masks.local_mask(LQ, LK, window=3)[None, None],
        ),
        "segment": (dict(segment_ids=(seg_q, seg_k)), masks.segment_mask(seg_q, seg_k)),
        "empty_rows": (dict(mask=_empty_rows_mask()), _empty_rows_mask()),
    }


@pytest.mark.parametrize(
    "impl,case",
    [("xla", c) for c in _cases()]
    + [("reference", "causal_cross_length"), ("reference", "empty_rows")],
)
def test_matches_naive(impl, case):
    kw, m = _cases()[case]
    q, k, v = _qkv()
    out = ops.dot_product_attention(q, k, v, impl=impl, **kw)
    want = testing.reference_x64(naive, q, k, v, m)
    testing.assert_allclose(out, want)
    assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize(
    "name,mask",
    [
        ("chunk", masks.chunk_mask(8, 3)),
        ("block_causal", masks.block_causal_mask(8, 2)),
        ("block_diffusion", masks.block_diffusion_mask(4, 2)),
    ],
)
def test_square_mask_kinds(name, mask):
    q, k, v = _qkv(lq=8, lk=8)
    m = mask[None, None]
    out = ops.dot_product_attention(q, k, v, mask=m, impl="xla")
    testing.assert_allclose(out, testing.reference_x64(naive, q, k, v, m), err_msg=name)


@pytest.mark.parametrize("g", [1, 4])
def test_gqa_mqa_mha(g):
    q, k, v = _qkv(g=g)
    out = ops.dot_product_attention(q, k, v, causal=True, impl="xla")
    want = testing.reference_x64(naive, q, k, v, masks.causal_mask(LQ, LK)[None, None])
    testing.assert_allclose(out, want)


def test_gradients_with_empty_rows():
    q, k, v = _qkv()
    m = _empty_rows_mask()
    w = jax.random.normal(jax.random.key(9), (B, LQ, H, E))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * w.astype(q.dtype))

    got = jax.grad(loss(lambda q, k, v: ops.dot_product_attention(q, k, v, mask=m)), (0, 1, 2))(
        q, k, v
    )
    for g in got:
        assert np.all(np.isfinite(np.asarray(g)))
    want = testing.reference_x64(
        lambda q, k, v: jax.grad(loss(lambda q, k, v: naive(q, k, v, m)), (0, 1, 2))(q, k, v),
        q,
        k,
        v,
    )
    testing.assert_allclose(got, want, kind="grad")
    assert np.all(np.asarray(got[0])[0, 2, 1] == 0)  # the empty row has zero query grad


def test_bias_and_scale():
    q, k, v = _qkv()
    bias = jax.random.normal(jax.random.key(3), (1, H, LQ, LK))

    def ref(q, k, v, bias):
        return naive(q * 0.5 * np.sqrt(K), k, v, jnp.ones((1, 1, 1, 1), bool) | (bias > 1e9))

    out = ops.dot_product_attention(q, k, v, bias=bias * 0, scale=0.5)
    testing.assert_allclose(out, testing.reference_x64(ref, q, k, v, bias))
    with_bias = ops.dot_product_attention(q, k, v, bias=bias, impl="xla")
    ref_bias = ops.dot_product_attention(q, k, v, bias=bias, impl="reference")
    testing.assert_allclose(with_bias, ref_bias)


def test_jax_nn_path():
    q, k, v = _qkv()
    m = _empty_rows_mask()
    out = ops.dot_product_attention(q, k, v, mask=m, impl="jax")
    testing.assert_allclose(out, testing.reference_x64(naive, q, k, v, m))


def test_bfloat16():
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
    out = ops.dot_product_attention(q, k, v, causal=True)
    assert out.dtype == jnp.bfloat16
    want = testing.reference_x64(naive, q, k, v, masks.causal_mask(LQ, LK)[None, None])
    testing.assert_allclose(out, want, dtype=jnp.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_axial_equals_reshaped_attention(causal):
    key = jax.random.split(jax.random.key(1), 3)
    shape = (2, 3, 4, 5)  # B, d1, d2, d3
    q = jax.random.normal(key[0], shape + (H, K))
    k = jax.random.normal(key[1], shape + (G, K))
    v = jax.random.normal(key[2], shape + (G, E))
    for axis in (1, 2, 3):

        def ref(q, k, v, axis=axis):
            def fold(x):
                x = jnp.moveaxis(x, axis, 3)
                return x.reshape((-1,) + x.shape[3:]), x.shape

            (qf, qs), (kf, _), (vf, _) = fold(q), fold(k), fold(v)
            n = qf.shape[1]
            m = masks.causal_mask(n)[None, None] if causal else jnp.ones((1, 1, n, n), bool)
            o = naive(qf, kf, vf, m).reshape(qs[:-1] + (E,))
            return jnp.moveaxis(o, 3, axis)

        out = ops.axial_attention(q, k, v, axis=axis, causal=causal)
        testing.assert_allclose(out, testing.reference_x64(ref, q, k, v), err_msg=f"{axis=}")


def test_rope_is_relative():
    x = jax.random.normal(jax.random.key(4), (1, 2, 1, K))
    pos_a = jnp.array([[3, 7]])
    pos_b = jnp.array([[10, 14]])  # same offset
    ra, rb = ops.apply_rope(x, pos_a), ops.apply_rope(x, pos_b)
    dot_a = jnp.sum(ra[0, 0, 0] * ra[0, 1, 0])
    dot_b = jnp.sum(rb[0, 0, 0] * rb[0, 1, 0])
    testing.assert_allclose(dot_a, testing.reference_x64(lambda d: d, dot_b))
    np.testing.assert_allclose(jnp.linalg.norm(ra), jnp.linalg.norm(x), rtol=1e-5)


def test_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="impl"):
        ops.dot_product_attention(q, k, v, impl="nope")
    with pytest.raises(ValueError, match="G dividing H"):
        ops.dot_product_attention(q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2))
    with pytest.raises(ValueError, match="mask"):
        ops.dot_product_attention(q, k, v, mask=jnp.ones((LQ, LK), bool))
    with pytest.raises(ValueError, match="axis"):
        ops.axial_attention(q[:, :, None], q[:, :, None], q[:, :, None], axis=3)


@pytest.mark.slow
def test_pallas_interpret_path():
    pytest.importorskip("pallas_kernels")
    q, k, v = _qkv(lq=8, lk=8)
    out = ops.dot_product_attention(q, k, v, causal=True, impl="pallas")
    want = testing.reference_x64(naive, q, k, v, masks.causal_mask(8)[None, None])
    testing.assert_allclose(out, want)
