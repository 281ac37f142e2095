"""linear_scan: every implementation against a float64 sequential reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.ops import linear_scan
from jaxar.testing import assert_allclose, reference_x64

B, L, D = 2, 13, 3  # L not a multiple of the chunk (4): exercises padding


def _inputs(cplx, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    a = jax.random.uniform(ks[0], (B, L, D), minval=0.3, maxval=1.0)
    x = jax.random.normal(ks[1], (B, L, D))
    h0 = jax.random.normal(ks[2], (B, D))
    if cplx:
        a = a * jnp.exp(1j * jax.random.normal(ks[3], (B, L, D)))
        x = x + 1j * jax.random.normal(ks[4], (B, L, D))
        h0 = h0.astype(jnp.complex64)
    reset = jnp.zeros((B, L), bool).at[0, 5].set(True).at[1, 9].set(True)
    return a, x, h0, reset


def _loop(a, x, h0, reset, reverse):
    """Plain per-step reference (numpy semantics, run under x64)."""
    a = jnp.where(reset[..., None], 0.0, a)
    order = range(L - 1, -1, -1) if reverse else range(L)
    h, out = h0, [None] * L
    for t in order:
        h = a[:, t] * h + x[:, t]
        out[t] = h
    return jnp.stack(out, 1), h


def _loss(fn):
    def f(a, x, h0):
        h, last = fn(a, x, h0)
        return jnp.sum(jnp.abs(h) ** 2) + jnp.sum(jnp.abs(last))

    return f


@functools.cache
def _reference(cplx, reverse):
    """float64 outputs and gradients of the per-step loop (computed once per case)."""
    a, x, h0, reset = _inputs(cplx)

    def ref(a, x, h0):
        return _loop(a, x, h0, reset, reverse)

    def both(a, x, h0):
        return ref(a, x, h0), jax.grad(_loss(ref), argnums=(0, 1, 2))(a, x, h0)

    return reference_x64(jax.jit(both), a, x, h0)


@pytest.mark.parametrize("impl", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_matches_reference_fwd_and_grad(impl, cplx):
    a, x, h0, reset = _inputs(cplx)
    for reverse in (False, True):

        def ours(a, x, h0, reverse=reverse):
            return linear_scan(a, x, h0, reverse=reverse, reset=reset, impl=impl, chunk_size=4)

        @jax.jit
        def both(a, x, h0, ours=ours):
            return ours(a, x, h0), jax.grad(_loss(ours), argnums=(0, 1, 2))(a, x, h0)

        out, g = both(a, x, h0)
        out_ref, g_ref = _reference(cplx, reverse)
        assert_allclose(out, out_ref)
        assert_allclose(g, g_ref, kind="grad")


@pytest.mark.parametrize("impl", ["associative", "chunked"])
def test_broadcast_gate_and_default_h0(impl):
    a, x, _, _ = _inputs(False, seed=1)
    a1 = a[..., :1]  # (B, L, 1) broadcasts over D
    h, last = linear_scan(a1, x, impl=impl, chunk_size=5)
    h_ref, last_ref = reference_x64(
        lambda a, x: _loop(
            jnp.broadcast_to(a, x.shape), x, jnp.zeros((B, D)), jnp.zeros((B, L), bool), False
        ),
        a1,
        x,
    )
    assert_allclose((h, last), (h_ref, last_ref))


def test_bfloat16_float32_carry():
    a, x, h0, reset = _inputs(False, seed=2)
    ab, xb = a.astype(jnp.bfloat16), x.astype(jnp.bfloat16)
    h, last = linear_scan(ab, xb, reset=reset, impl="chunked", chunk_size=4)
    assert h.dtype == jnp.bfloat16 and last.dtype == jnp.float32
    ref = reference_x64(lambda a, x: _loop(a, x, jnp.zeros((B, D)), reset, False), ab, xb)
    assert_allclose((h, last), ref, dtype=jnp.bfloat16)


def test_resets_equal_separate_documents():
    a, x, _, _ = _inputs(False, seed=3)
    reset = jnp.zeros((B, L), bool).at[:, 6].set(True)
    h, _ = linear_scan(a, x, reset=reset, impl="chunked", chunk_size=4)
    h2, _ = linear_scan(a[:, 6:], x[:, 6:], impl="sequential")
    np.testing.assert_allclose(np.asarray(h[:, 6:]), np.asarray(h2), rtol=1e-5, atol=1e-5)


def _signed_inputs():
    """Gates of both signs in (-1, 1), with an exact -1 and an exact 0."""
    _, x, h0, reset = _inputs(False, seed=4)
    a = jax.random.uniform(jax.random.key(5), (B, L, D), minval=-1.0, maxval=1.0)
    return a.at[0, 2].set(-1.0).at[1, 7].set(0.0), x, h0, reset


def _fwd_and_grad(fn, reset):
    def run(a, x, h0):
        f = functools.partial(fn, reset=reset)
        return f(a, x, h0), jax.grad(_loss(f), argnums=(0, 1, 2))(a, x, h0)

    return jax.jit(run)


@functools.cache
def _signed_reference():
    a, x, h0, reset = _signed_inputs()
    loop = lambda a, x, h0, reset: _loop(a, x, h0, reset, False)
    return reference_x64(_fwd_and_grad(loop, reset), a, x, h0)


SLOW = pytest.mark.slow  # the sequential / associative forms are plain products


@pytest.mark.parametrize(
    "impl",
    ["chunked", pytest.param("sequential", marks=SLOW), pytest.param("associative", marks=SLOW)],
)
def test_negative_gates(impl):
    """Issue 18 item 9: gates of both signs in every impl, fwd + grad against the float64
    loop ("pallas": tests/kernels)."""
    a, x, h0, reset = _signed_inputs()
    ours = functools.partial(linear_scan, impl=impl, chunk_size=4)
    out, g = _fwd_and_grad(ours, reset)(a, x, h0)
    out_ref, g_ref = _signed_reference()
    assert_allclose(out, out_ref)
    assert_allclose(g, g_ref, kind="grad")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_chunk_size_errors(bad):
    """Issue 18: chunk_size=0 used to mean 32 silently, -3 failed deep in jax."""
    a, x, _, _ = _inputs(False)
    with pytest.raises(ValueError, match=rf"chunk_size={bad!r} .*accepted: None .* int >= 1"):
        linear_scan(a, x, impl="chunked", chunk_size=bad)


def test_validation_errors():
    a, x, h0, _ = _inputs(False)
    with pytest.raises(ValueError, match="impl="):
        linear_scan(a, x, impl="fast")
    with pytest.raises(ValueError, match="a.shape"):
        linear_scan(a[:, :3], x)
    with pytest.raises(ValueError, match="same rank"):
        linear_scan(a[0], x)
    with pytest.raises(ValueError, match="h0"):
        linear_scan(a, x, h0[:, :2])
    with pytest.raises(ValueError, match="reset"):
        linear_scan(a, x, reset=jnp.zeros((B, L + 1), bool))
    with pytest.raises(ValueError, match="float or complex"):
        linear_scan(jnp.ones((B, L, D), jnp.int32), jnp.ones((B, L, D), jnp.int32))
