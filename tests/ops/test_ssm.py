"""causal_conv == direct sum; DSS convolution == DSS recurrence (float64 references)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.ops import causal_conv, dss_chunked, dss_kernel, dss_recurrent
from jaxar.testing import assert_allclose, reference_x64

B, L, C, N = 2, 12, 3, 4


def _direct(u, kernel):
    u, kernel = np.asarray(u, np.float64), np.asarray(kernel, np.float64)
    y = np.zeros_like(u)
    for t in range(u.shape[1]):
        for s in range(t + 1):
            y[:, t] += kernel[t - s][None] * u[:, s]
    return y


def test_causal_conv_equals_direct_sum():
    ks = jax.random.split(jax.random.key(0), 2)
    u = jax.random.normal(ks[0], (B, L, C))
    kern = jax.random.normal(ks[1], (L, C))
    assert_allclose(causal_conv(u, kern), _direct(u, kern))
    # a shorter kernel is zero-padded
    assert_allclose(
        causal_conv(u, kern[:5]), _direct(u, np.pad(np.asarray(kern[:5]), ((0, L - 5), (0, 0))))
    )


def _dss_params(seed=1):
    ks = jax.random.split(jax.random.key(seed), 4)
    lam = -jnp.exp(jax.random.normal(ks[0], (C, N)) - 1.0) + 1j * jnp.pi * jnp.arange(N)[None]
    log_step = jnp.log(jax.random.uniform(ks[1], (C,), minval=0.01, maxval=0.5))
    w = jax.random.normal(ks[2], (C, N)) + 1j * jax.random.normal(ks[3], (C, N))
    return lam.astype(jnp.complex64), log_step, w.astype(jnp.complex64)


@pytest.mark.slow
def test_dss_convolution_equals_recurrence():
    lam, log_step, w = _dss_params()
    u = jax.random.normal(jax.random.key(2), (B, L, C))

    def conv(u, lam, log_step, w):
        return causal_conv(u, dss_kernel(lam, log_step, w, L))

    def rec(u, lam, log_step, w):
        return dss_recurrent(u, lam, log_step, w, impl="sequential")[0]

    ref_conv = reference_x64(conv, u, lam, log_step, w)
    ref_rec = reference_x64(rec, u, lam, log_step, w)
    np.testing.assert_allclose(ref_conv, ref_rec, rtol=1e-10, atol=1e-10)
    assert_allclose(conv(u, lam, log_step, w), ref_rec)
    assert_allclose(rec(u, lam, log_step, w), ref_rec)
    # splitting the sequence and carrying the state gives the same outputs
    y1, s = dss_recurrent(u[:, :5], lam, log_step, w)
    y2, _ = dss_recurrent(u[:, 5:], lam, log_step, w, state0=s)
    assert_allclose(jnp.concatenate([y1, y2], 1), ref_rec)


def test_validation():
    u = jnp.ones((B, L, C))
    with pytest.raises(ValueError, match="kernel"):
        causal_conv(u, jnp.ones((L + 1, C)))
    with pytest.raises(ValueError, match="u must be"):
        causal_conv(u[0], jnp.ones((L, C)))
    lam, log_step, w = _dss_params()
    with pytest.raises(ValueError, match="length"):
        dss_kernel(lam, log_step, w, 0)
    with pytest.raises(ValueError, match="log_step"):
        dss_kernel(lam, log_step[:2], w, L)


def _resets(length, seed=3):
    """Row 0: documents of lengths 1, 4, 2, ... (a reset at t=0 too); row 1: no reset."""
    starts = np.zeros((2, length), bool)
    pos = 0
    for n in [1, 4, 2, 7, 3, 1, 5, 2] * length:
        if pos >= length:
            break
        starts[0, pos] = True
        pos += n
    return jnp.asarray(starts)


@pytest.mark.parametrize(
    "chunk",
    [
        3,
        pytest.param(32, marks=pytest.mark.slow),
        pytest.param(1, marks=pytest.mark.slow),
        pytest.param(4, marks=pytest.mark.slow),
    ],
)
def test_dss_chunked_equals_recurrence_with_resets(chunk):
    """Forward and gradients (u and every DSS parameter) vs the sequential recurrence with
    resets, float64 reference; chunk sizes dividing L or not, and longer than L."""
    lam, log_step, w = _dss_params()
    u = jax.random.normal(jax.random.key(4), (2, L, C))
    reset = _resets(L)

    def rec(u, lam, log_step, w):
        return dss_recurrent(u, lam, log_step, w, reset=reset, impl="sequential")[0]

    def chunked(u, lam, log_step, w):
        return dss_chunked(u, lam, log_step, w, reset=reset, chunk_size=chunk)

    want = reference_x64(jax.jit(rec), u, lam, log_step, w)
    assert_allclose(jax.jit(chunked)(u, lam, log_step, w), want)
    probe = jax.random.normal(jax.random.key(5), (2, L, C))

    def loss(fn):
        return lambda *a: jnp.sum(probe * fn(*a))

    # complex parameters: the gradient of a real loss is conj-symmetric; compare both parts
    want = reference_x64(jax.jit(jax.grad(loss(rec), argnums=(0, 1, 2, 3))), u, lam, log_step, w)
    got = jax.jit(jax.grad(loss(chunked), argnums=(0, 1, 2, 3)))(u, lam, log_step, w)
    assert_allclose(got, want, kind="grad")


def test_dss_chunked_without_resets_equals_convolution():
    lam, log_step, w = _dss_params()
    u = jax.random.normal(jax.random.key(6), (B, L, C))
    want = causal_conv(u, dss_kernel(lam, log_step, w, L))
    assert_allclose(dss_chunked(u, lam, log_step, w, chunk_size=5), want)
    with pytest.raises(ValueError, match="chunk_size=0"):
        dss_chunked(u, lam, log_step, w, chunk_size=0)
    with pytest.raises(ValueError, match="reset must have shape"):
        dss_chunked(u, lam, log_step, w, reset=jnp.zeros((B, L + 1), bool))
