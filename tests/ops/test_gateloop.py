"""gateloop: recurrent == parallel == attention == chunked (fwd + grad) vs float64; negative
real gates, gates near 0, argument errors."""

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


IMPLS = ["recurrent", "parallel", "attention", "chunked"]  # "pallas": tests/kernels


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_impls_match_reference(impl, cplx):
    def ours(q, k, v, a, s0):
        return gateloop(q, k, v, a, state0=s0, impl=impl, chunk_size=4)

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
    y, s = gateloop(qb, kb, vb, a, impl="chunked", chunk_size=4)
    assert y.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    ref = reference_x64(lambda *t: _plain(*t, jnp.zeros((B, H, K, E))), qb, kb, vb, a)
    assert_allclose((y, s), ref, dtype=jnp.bfloat16)


def test_zero_gates_finite_gradients():
    q, k, v, a, s0 = _inputs(True, seed=2)
    a = a.at[:, 3].set(0.0)

    def fn(*t):
        return gateloop(*t[:4], state0=t[4], impl="chunked", chunk_size=4)

    g = jax.jit(jax.grad(_loss(fn), argnums=(0, 3)))(q, k, v, a, s0)
    assert all(np.isfinite(np.asarray(x)).all() for x in g)


def test_validation():
    q, k, v, a, s0 = _inputs(False)
    with pytest.raises(ValueError, match="impl="):
        gateloop(q, k, v, a, impl="fast")
    with pytest.raises(ValueError, match="v must be"):
        gateloop(q, k, v[:, :3], a)
    with pytest.raises(ValueError, match="state0"):
        gateloop(q, k, v, a, state0=s0[..., :1])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"chunk_size={bad!r} .*accepted: an int >= 1"):
            gateloop(q, k, v, a, chunk_size=bad)


def test_mode_is_a_deprecated_alias_of_impl():
    q, k, v, a, s0 = _inputs(False)
    with pytest.warns(DeprecationWarning, match="impl="):
        y, s = gateloop(q, k, v, a, state0=s0, mode="chunked", chunk_size=4)
    y2, s2 = gateloop(q, k, v, a, state0=s0, impl="chunked", chunk_size=4)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s2))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="disagree"):
        gateloop(q, k, v, a, mode="chunked", impl="recurrent")


def _signed_inputs(seed=4):
    """Real gates of both signs in (-1, 1), with exact -1 and 1 among them (gates at 0:
    test_gates_near_zero_match_reference)."""
    q, k, v, _, s0 = _inputs(False, seed=seed)
    a = jax.random.uniform(jax.random.key(seed + 100), q.shape, minval=-1.0, maxval=1.0)
    a = a.at[0, 2].set(-1.0).at[1, 5].set(-1.0).at[0, 7].set(1.0)
    return q, k, v, a, s0


@functools.cache
def _signed_reference():
    def both(*args):
        return _plain(*args), jax.grad(_loss(_plain), argnums=(0, 1, 2, 3, 4))(*args)

    return reference_x64(jax.jit(both), *_signed_inputs())


# recurrent / parallel multiply the gates (never floored): slow suite only
LOG_SPACE = ["attention", "chunked"]
SIGNED = LOG_SPACE + [pytest.param(i, marks=pytest.mark.slow) for i in ("recurrent", "parallel")]


@pytest.mark.parametrize("impl", SIGNED)
def test_negative_real_gates(impl):
    """Issue 18 item 9: a < 0 is exact in every impl (the sign is carried as a parity)."""

    def ours(q, k, v, a, s0):
        return gateloop(q, k, v, a, state0=s0, impl=impl, chunk_size=4)

    @jax.jit
    def both(*args):
        return ours(*args), jax.grad(_loss(ours), argnums=(0, 1, 2, 3, 4))(*args)

    out, g = both(*_signed_inputs())
    out_ref, g_ref = _signed_reference()
    assert_allclose(out, out_ref)
    assert_allclose(g, g_ref, kind="grad")


def test_gates_near_zero_match_reference():
    """Gates of both signs at and below the log floor (e^-30): outputs, the gradients of
    q, k, v, state0 and of gate logits (a = +-sigmoid(m)) equal the float64 recurrence.

    (dL/da itself is dL/dlog|a| / a in the log-space impls: inaccurate for |a| << 1e-3,
    see the module docstring; the logits' gradient a (1 - a) dL/da is not.)"""
    q, k, v, _, s0 = _inputs(False, seed=5)
    ks = jax.random.split(jax.random.key(6), 2)
    m = jax.random.uniform(ks[0], q.shape, minval=-80.0, maxval=3.0)  # sigmoid: 1e-35..0.95
    sign = jnp.where(jax.random.bernoulli(ks[1], 0.3, q.shape), -1.0, 1.0)

    def run(fn):
        def f(q, k, v, m, s0):
            a = sign * jax.nn.sigmoid(m)
            return fn(q, k, v, a, s0)

        def both(*args):
            return f(*args), jax.grad(_loss(f), argnums=(0, 1, 2, 3, 4))(*args)

        return both

    def chunked(q, k, v, a, s0):
        return gateloop(q, k, v, a, state0=s0, impl="chunked", chunk_size=4)

    got = jax.jit(run(chunked))(q, k, v, m, s0)
    want = reference_x64(jax.jit(run(_plain)), q, k, v, m, s0)
    assert_allclose(got[0], want[0])
    assert_allclose(got[1], want[1], kind="grad")


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
    y, s = jax.jit(lambda *t: gateloop(*t, impl="chunked"))(q, k, v, a)
    assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(s)).all()
    ref = reference_x64(jax.jit(lambda *t: gateloop(*t, impl="recurrent")), q, k, v, a)
    assert_allclose((y, s), ref, dtype=jnp.float32, kind="long")
