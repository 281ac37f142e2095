"""Quantizers against float64 brute-force references; scale-causal mask; N-D RoPE."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar import testing
from jaxar.ops import attention, masks
from jaxar.ops import quantize as q


def _rand(seed, shape):
    return np.random.default_rng(seed).normal(size=shape)


@pytest.mark.parametrize("normalize", [False, True])
def test_vector_quantize_matches_brute_force_float64(normalize):
    z, book = _rand(0, (5, 7, 3)), _rand(1, (11, 3))
    with testing.enable_x64():
        z_q, ids, losses = q.vector_quantize(jnp.asarray(z), jnp.asarray(book), normalize=normalize)
        zz, bb = z, book
        if normalize:
            zz = z / np.linalg.norm(z, axis=-1, keepdims=True)
            bb = book / np.linalg.norm(book, axis=-1, keepdims=True)
        d = ((zz[..., None, :] - bb) ** 2).sum(-1)
        want = d.argmin(-1)
        np.testing.assert_array_equal(np.asarray(ids), want)
        testing.assert_allclose(z_q, bb[want])
        sq = ((zz - bb[want]) ** 2).sum(-1).mean()
        testing.assert_allclose(losses["codebook"], sq)
        testing.assert_allclose(losses["commitment"], sq)


def test_vector_quantize_straight_through_gradient_is_identity():
    z, book = _rand(2, (4, 3)), _rand(3, (6, 3))
    w = _rand(4, (4, 3))
    g = jax.grad(lambda z: jnp.sum(q.vector_quantize(z, book)[0] * w))(jnp.asarray(z, jnp.float32))
    testing.assert_allclose(g, w.astype(np.float32))
    # the losses pull the codebook toward z and z toward the codebook (not through ids)
    gb = jax.grad(lambda b: q.vector_quantize(z, b)[2]["codebook"])(jnp.asarray(book))
    assert np.abs(np.asarray(gb)).sum() > 0


def test_quantizer_bad_input_errors():
    with pytest.raises(ValueError, match=r"codebook has shape \(4, 2\).*D = z.shape\[-1\] = 3"):
        q.vector_quantize(jnp.zeros((2, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"levels=\(3, 1\) is invalid; accepted: .*>= 2"):
        q.fsq(jnp.zeros((2, 2)), (3, 1))
    with pytest.raises(ValueError, match="scales=.* strictly increasing"):
        q.multiscale_residual_quantize(jnp.zeros((1, 4, 4, 2)), (1, 3, 2, 4), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="must end at the feature map's side 4"):
        q.multiscale_residual_quantize(jnp.zeros((1, 4, 4, 2)), (1, 2), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="strictly increasing"):
        masks.scale_causal_mask((2, 2))
    with pytest.raises(ValueError, match=r"codebooks\[1\] has shape"):
        q.residual_quantize(jnp.zeros((2, 3)), [jnp.zeros((4, 3)), jnp.zeros((4, 2))])


def test_ema_codebook_update_matches_formula_and_restarts_dead_codes():
    z, book = _rand(5, (32, 2)), _rand(6, (4, 2))
    n0, m0 = np.full(4, 2.0), book * 2.0
    ids = np.asarray(q.nearest_code(z, book))
    d, eps = 0.9, 1e-5
    new, n, m, restarted = q.ema_codebook_update(book, n0, m0, z, ids, decay=d, eps=eps)
    cnt = np.bincount(ids, minlength=4)
    sums = np.stack([z[ids == k].sum(0) for k in range(4)])
    n_want = d * n0 + (1 - d) * cnt
    m_want = d * m0 + (1 - d) * sums
    tot = n_want.sum()
    testing.assert_allclose(np.asarray(n, np.float64), n_want, dtype=np.float32)
    testing.assert_allclose(
        np.asarray(new, np.float64),
        m_want / ((n_want + eps) / (tot + 4 * eps) * tot)[:, None],
        dtype=np.float32,
    )
    assert int(restarted) == 0
    # a code far away is never used: it restarts at a batch latent
    far = np.concatenate([book[:3], [[100.0, 100.0]]])
    ids = np.asarray(q.nearest_code(z, far))
    new, n, m, restarted = q.ema_codebook_update(
        far, np.full(4, 0.5), far * 0.5, z, ids, decay=0.5, key=jax.random.key(0),
        dead_threshold=0.3,
    )  # fmt: skip
    assert int(restarted) == 1
    assert any(np.allclose(np.asarray(new)[3], zi, atol=1e-6) for zi in z)
    assert float(n[3]) == 1.0


def test_fsq_code_count_idempotent_and_gradient():
    levels = (3, 4, 5)
    assert q.fsq_codes(levels) == 60
    grid = np.linspace(-4, 4, 41)
    z = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3)
    z_q, ids = q.fsq(jnp.asarray(z, jnp.float32), levels)
    assert set(np.unique(np.asarray(ids))) == set(range(60))
    again, ids2 = q.fsq(z_q, levels, bounded=True)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(z_q))
    np.testing.assert_array_equal(np.asarray(ids2), np.asarray(ids))
    assert float(jnp.max(jnp.abs(z_q))) <= 1.0
    # ids decode back to the values: digit_i = (id // radix_i) % L_i
    radix = np.cumprod((1,) + levels[:-1])
    digits = (np.asarray(ids)[:, None] // radix) % np.asarray(levels)
    h = (np.asarray(levels) - 1) / 2
    np.testing.assert_allclose(np.asarray(z_q), (digits - h) / h, atol=1e-6)
    w = _rand(7, (5, 3))
    zz = jnp.asarray(_rand(8, (5, 3)), jnp.float32)
    g = jax.grad(lambda z: jnp.sum(q.fsq(z, levels)[0] * w))(zz)
    h32 = h.astype(np.float32)
    testing.assert_allclose(
        g, (w * h32 * (1 - np.tanh(np.asarray(zz)) ** 2) / h32).astype(np.float32)
    )


def test_lfq_entropy_matches_direct_computation_float64():
    z, t = _rand(9, (6, 4)), 0.7
    with testing.enable_x64():
        z_q, ids, losses = q.lfq(jnp.asarray(z), temperature=t)
        codes = np.array(list(itertools.product([-1.0, 1.0], repeat=4)))[:, ::-1]  # bit i = dim i
        logits = -((z[:, None, :] - codes[None]) ** 2).sum(-1) / t
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        code_id = ((codes > 0) * 2 ** np.arange(4)).sum(-1)
        p_by_id = np.zeros_like(p)
        p_by_id[:, code_id] = p
        ent = -(p * np.log(p)).sum(-1).mean()
        avg = p_by_id.mean(0)
        cb = -(avg * np.log(avg)).sum()
        testing.assert_allclose(losses["entropy"], ent)
        testing.assert_allclose(losses["codebook_entropy"], cb)
        testing.assert_allclose(losses["entropy_penalty"], ent - cb)
        np.testing.assert_array_equal(np.asarray(z_q), np.where(z >= 0, 1.0, -1.0))
        np.testing.assert_array_equal(np.asarray(ids), ((z >= 0) * 2 ** np.arange(4)).sum(-1))
        assert int(np.argmax(p_by_id[0])) == int(ids[0])  # the hard code is the mode


def test_residual_quantize_matches_sequential_nearest():
    z = _rand(10, (7, 3))
    books = _rand(11, (3, 8, 3))
    with testing.enable_x64():
        z_q, ids, _ = q.residual_quantize(jnp.asarray(z), jnp.asarray(books))
        r, tot = z.copy(), np.zeros_like(z)
        for s in range(3):
            i = ((r[:, None] - books[s]) ** 2).sum(-1).argmin(-1)
            np.testing.assert_array_equal(np.asarray(ids[:, s]), i)
            tot += books[s][i]
            r = z - tot
        testing.assert_allclose(z_q, tot)


def test_resize_matrices():
    a = q.area_resize_matrix(3, 8)
    np.testing.assert_allclose(a.sum(1), 1.0)
    np.testing.assert_allclose(a[0, :3], [1 / (8 / 3), 1 / (8 / 3), (8 / 3 - 2) / (8 / 3)])
    np.testing.assert_allclose(q.area_resize_matrix(2, 4), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(q.upsample_matrix(4, 4), np.eye(4))
    np.testing.assert_allclose(q.upsample_matrix(5, 2).sum(1), 1.0)


def test_multiscale_exact_at_infinite_codebook_and_inverse_consistent():
    f = _rand(12, (2, 6, 6, 3))
    scales = (1, 2, 4, 6)
    with testing.enable_x64():
        f_hat, ids, _ = q.multiscale_residual_quantize(jnp.asarray(f), scales, None)
        testing.assert_allclose(f_hat, f)
        book = _rand(13, (16, 3))
        f_hat, ids, losses = q.multiscale_residual_quantize(jnp.asarray(f), scales, book)
        assert [i.shape for i in ids] == [(2, s, s) for s in scales]
        testing.assert_allclose(q.multiscale_residual_dequantize(ids, scales, book), f_hat)
        # brute force per scale, from the definition
        r, fh = f.copy(), np.zeros_like(f)
        for s, i in zip(scales, ids, strict=True):
            a = q.area_resize_matrix(s, 6)
            rs = np.einsum("ih,bhwc,jw->bijc", a, r, a)
            want = ((rs[..., None, :] - book) ** 2).sum(-1).argmin(-1)
            np.testing.assert_array_equal(np.asarray(i), want)
            u = q.upsample_matrix(6, s) if s < 6 else np.eye(6)
            fh += np.einsum("ih,bhwc,jw->bijc", u, book[want], u)
            r = f - fh
        testing.assert_allclose(f_hat, fh)
        testing.assert_allclose(losses["commitment"], ((f - fh) ** 2).sum(-1).mean())
        # teacher-forced inputs: scale k sees area(f_hat_{k-1}) at s_k
        x = q.multiscale_inputs(ids, scales, book)
        assert x.shape == (2, sum(s * s for s in scales[1:]), 3)
        part = q.multiscale_residual_dequantize(ids[:2], scales[:2], book)  # at side 2
        up = np.einsum(
            "ih,bhwc,jw->bijc", q.upsample_matrix(6, 2), np.asarray(part), q.upsample_matrix(6, 2)
        )
        a = q.area_resize_matrix(4, 6)
        want = np.einsum("ih,bhwc,jw->bijc", a, up, a).reshape(2, -1, 3)
        testing.assert_allclose(x[:, 4 : 4 + 16], want)


def test_codebook_usage_and_perplexity():
    usage, ppl = q.codebook_usage(jnp.asarray([0, 0, 1, 1]), 4)
    testing.assert_allclose(usage, np.float32(0.5))
    testing.assert_allclose(ppl, np.float32(2.0))


def test_scale_causal_mask_brute_force_and_block_table():
    scales = (1, 2, 3)
    m = np.asarray(masks.scale_causal_mask(scales))
    blk = [k for k, s in enumerate(scales) for _ in range(s * s)]
    want = np.array([[blk[j] <= blk[i] for j in range(14)] for i in range(14)])
    np.testing.assert_array_equal(m, want)
    table = masks.block_mask_for(masks.scale_causal_mask((1, 2, 4, 8)), 4, 4)
    assert table.shape == (22, 22)
    assert (table == masks.EMPTY).any() and (table == masks.FULL).any()


def test_apply_rope_nd_is_per_axis_rope_and_relative():
    x = jnp.asarray(_rand(14, (1, 6, 2, 8)), jnp.float32)
    pos = np.stack(np.meshgrid(np.arange(2), np.arange(3), indexing="ij"), -1).reshape(6, 2)
    y = attention.apply_rope_nd(x, pos)
    want = jnp.concatenate(
        [attention.apply_rope(x[..., :4], jnp.asarray(pos[None, :, 0])),
         attention.apply_rope(x[..., 4:], jnp.asarray(pos[None, :, 1]))], -1,
    )  # fmt: skip
    testing.assert_allclose(y, want)
    # <R(p) q, R(p') k> depends on p - p' only
    qv, kv = x[:, :1], x[:, 1:2]

    def dot(p, pp):
        a = attention.apply_rope_nd(qv, jnp.asarray([[p]]))
        b = attention.apply_rope_nd(kv, jnp.asarray([[pp]]))
        return jnp.sum(a * b)

    testing.assert_allclose(dot((3, 1), (1, 4)), dot((5, 2), (3, 5)), kind="grad")
    with pytest.raises(ValueError, match="divisible by 2N = 6"):
        attention.apply_rope_nd(jnp.zeros((1, 2, 1, 8)), jnp.zeros((2, 3), jnp.int32))
