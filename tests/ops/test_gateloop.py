"""gateloop: recurrent == parallel == attention == chunked (fwd + grad) vs float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.ops import gateloop
from jaxar.testing import assert_allclose, reference_x64

B, L, H, K, E = 2, 11, 2, 3, 2


def _inputs(cplx, seed=0):
    ks = jax.random.split(jax.random.key(seed), 6)
    q = 0.5 * jax.random.normal(ks[0], (B, L, H, K))
    k = 0.5 * jax.random.normal(ks[1], (B, L, H, K))
    v = jax.random.normal(ks[2], (B, L, H, E))
    a = jax.nn.sigmoid(2.0 * jax.random.normal(ks[3], (B, L, H, K)))
    s0 = jax.random.normal(ks[5], (B, H, K, E))
    if cplx:
        a = a * jnp.exp(1j * jax.random.normal(ks[4], (B, L, H, K)))
        s0 = s0.astype(jnp.complex64)
    return q, k, v, a, s0


def _loss(fn):
    def f(q, k, v, a, s0):
        y, s = fn(q, k, v, a, s0)
        w = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
        return jnp.sum(y * w) + jnp.sum(jnp.abs(s))

    return f


def _plain(q, k, v, a, s0):
    """The definition, one step at a time (python loop)."""
    s, ys = s0, []
    for t in range(q.shape[1]):
        s = a[:, t, ..., None] * s + k[:, t, ..., None] * v[:, t, :, None, :]
        ys.append(jnp.einsum("bhk,bhke->bhe", q[:, t], jnp.real(s)))
    return jnp.stack(ys, 1), s


@functools.cache
def _reference(cplx):
    def both(*args):
        return _plain(*args), jax.grad(_loss(_plain), argnums=(0, 1, 2, 3, 4))(*args)

    return reference_x64(jax.jit(both), *_inputs(cplx))


@pytest.mark.parametrize("mode", ["recurrent", "parallel", "attention", "chunked"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_modes_match_reference(mode, cplx):
    def ours(q, k, v, a, s0):
        return gateloop(q, k, v, a, state0=s0, mode=mode, chunk_size=4)

    @jax.jit
    def both(*args):
        return ours(*args), jax.grad(_loss(ours), argnums=(0, 1, 2, 3, 4))(*args)

    out, g = both(*_inputs(cplx))
    out_ref, g_ref = _reference(cplx)
    assert_allclose(out, out_ref)
    assert_allclose(g, g_ref, kind="grad")


def test_bfloat16_inputs():
    q, k, v, a, _ = _inputs(False, seed=1)
    qb, kb, vb = (t.astype(jnp.bfloat16) for t in (q, k, v))
    y, s = gateloop(qb, kb, vb, a, mode="chunked", chunk_size=4)
    assert y.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    ref = reference_x64(lambda *t: _plain(*t, jnp.zeros((B, H, K, E))), qb, kb, vb, a)
    assert_allclose((y, s), ref, dtype=jnp.bfloat16)


def test_zero_gates_finite_gradients():
    q, k, v, a, s0 = _inputs(True, seed=2)
    a = a.at[:, 3].set(0.0)

    def fn(*t):
        return gateloop(*t[:4], state0=t[4], mode="chunked", chunk_size=4)

    g = jax.jit(jax.grad(_loss(fn), argnums=(0, 3)))(q, k, v, a, s0)
    assert all(np.isfinite(np.asarray(x)).all() for x in g)


def test_validation():
    q, k, v, a, s0 = _inputs(False)
    with pytest.raises(ValueError, match="mode="):
        gateloop(q, k, v, a, mode="fast")
    with pytest.raises(ValueError, match="v must be"):
        gateloop(q, k, v[:, :3], a)
    with pytest.raises(ValueError, match="state0"):
        gateloop(q, k, v, a, state0=s0[..., :1])
    with pytest.raises(ValueError, match="chunk_size"):
        gateloop(q, k, v, a, chunk_size=0)


def test_long_sequence_stable():
    """L = 16384, gates near 0 and near 1 (and complex phases): finite and == float64."""
    n = 16384
    ks = jax.random.split(jax.random.key(3), 5)
    q = jax.random.normal(ks[0], (1, n, 1, 2))
    k = jax.random.normal(ks[1], (1, n, 1, 2))
    v = jax.random.normal(ks[2], (1, n, 1, 2))
    # near 1 with a memory of <= 100 steps, so float32 itself stays well conditioned
    near1 = 1.0 - 1e-2 * jax.random.uniform(ks[3], (1, n, 1, 1), minval=0.1)
    near0 = 1e-6 * jax.random.uniform(ks[4], (1, n, 1, 1))
    a = jnp.concatenate([near1, near0], axis=-1) * jnp.exp(0.3j)
    y, s = jax.jit(lambda *t: gateloop(*t, mode="chunked"))(q, k, v, a)
    assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(s)).all()
    ref = reference_x64(jax.jit(lambda *t: gateloop(*t, mode="recurrent")), q, k, v, a)
    assert_allclose((y, s), ref, dtype=jnp.float32, kind="long")
