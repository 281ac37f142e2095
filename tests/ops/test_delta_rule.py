"""The (gated) delta rule against a float64 per-step reference, both impls.

The reference is the recurrence as written, one position at a time with the explicit
(K, K) projection ``I - beta k k^T`` (no chunking, no delta rewriting), run in float64;
its gradient is autodiff of that loop.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.ops import delta_rule
from jaxar.testing import assert_allclose, reference_x64

B, L, H, K, V = 2, 11, 2, 4, 3
IMPLS = [("recurrent", 64), ("chunked", 4), ("chunked", 64)]  # C = 4 < L; C = 64 caps at L


def _reference(q, k, v, beta, log_gate, s0, reset):
    """Per-step recurrence: S = g (I - b k k^T) S + b k v^T, y = S^T q (a reset zeroes S)."""
    k = k / jnp.sqrt(jnp.sum(k * k, -1, keepdims=True) + 1e-6)
    eye = jnp.eye(K)[None, None]

    def step(s, inp):
        qt, kt, vt, bt, lg, rt = inp
        s = jnp.where(rt[:, None, None, None], 0.0, s)
        bt, g = bt[..., None, None], jnp.exp(lg)[..., None, None]
        proj = eye - bt * kt[..., :, None] * kt[..., None, :]  # (B, H, K, K)
        s = g * jnp.einsum("bhij,bhjv->bhiv", proj, s) + bt * kt[..., None] * vt[..., None, :]
        return s, jnp.einsum("bhk,bhkv->bhv", qt, s)

    xs = tuple(jnp.moveaxis(t, 1, 0) for t in (q, k, v, beta, log_gate, reset))
    s, ys = jax.lax.scan(step, s0, xs)
    return jnp.moveaxis(ys, 0, 1), s


def _inputs(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, B, L, H, K))
    v = rng.normal(size=(B, L, H, V))
    beta = 1 / (1 + np.exp(-rng.normal(size=(B, L, H))))
    log_gate = -np.log1p(np.exp(rng.normal(size=(B, L, H))))  # g in (0, 1)
    s0 = rng.normal(size=(B, H, K, V))
    reset = np.zeros((B, L), bool)
    reset[0, 5] = reset[1, 0] = True
    args = tuple(jnp.asarray(t, dtype) for t in (q, k, v, beta, log_gate, s0))
    return (*args, jnp.asarray(reset))


def _run(impl, c, q, k, v, beta, log_gate, s0, reset):
    return delta_rule(
        q,
        k,
        v,
        beta,
        gate=log_gate,
        initial_state=s0,
        reset=reset,
        impl=impl,
        chunk_size=c,
        return_state=True,
    )


def _loss(fn):
    """A scalar touching every output and the final state with fixed random weights."""
    rng = np.random.default_rng(12)
    wy, ws = rng.normal(size=(B, L, H, V)), rng.normal(size=(B, H, K, V))

    def loss(*args):
        y, s = fn(*args)
        return jnp.sum(y * wy.astype(y.dtype)) + jnp.sum(s * ws.astype(s.dtype))

    return loss


WRT = tuple(range(6))  # q, k, v, beta, gate (log), initial state


@functools.cache
def _want():
    args = _inputs()
    return reference_x64(jax.jit(_reference), *args), reference_x64(
        jax.jit(jax.grad(_loss(_reference), argnums=WRT)), *args
    )


@pytest.mark.parametrize("impl,c", IMPLS)
def test_forward_and_gradient_match_float64_reference(impl, c):
    args = _inputs()
    want_out, want_grads = _want()
    y, s = jax.jit(lambda *a: _run(impl, c, *a))(*args)
    assert y.dtype == jnp.float32 and s.dtype == jnp.float32
    assert_allclose((y, s), want_out)
    grads = jax.jit(jax.grad(_loss(lambda *a: _run(impl, c, *a)), argnums=WRT))(*args)
    assert_allclose(grads, want_grads, kind="grad")


@pytest.mark.parametrize("impl,c", [("recurrent", 64), ("chunked", 4)])
def test_bfloat16_inputs_keep_a_float32_state(impl, c):
    *args, reset = _inputs(seed=1, dtype=jnp.bfloat16)
    y, s = jax.jit(lambda *a: _run(impl, c, *a, reset))(*args)
    assert y.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    want_y, want_s = reference_x64(jax.jit(_reference), *args, reset)
    assert_allclose(y, want_y)
    assert_allclose(s, want_s)  # the state is float32-accurate on the bf16 inputs


@pytest.mark.parametrize("impl,c", [("recurrent", 64), ("chunked", 4)])
def test_identities_beta_zero_unit_gate_zero_gate(impl, c):
    q, k, v, beta, log_gate, s0, _ = _inputs(seed=2)

    @jax.jit
    def identities(q, k, v, beta, log_gate, s0):
        run = functools.partial(delta_rule, impl=impl, chunk_size=c)
        # beta = 0 writes nothing and erases nothing: the state stays S_0, y_t = S_0^T q_t
        frozen = run(q, k, v, 0 * beta, initial_state=s0, return_state=True)
        # Gated DeltaNet with g = 1 (log-gate 0) is DeltaNet
        gated, plain = run(q, k, v, beta, gate=jnp.zeros_like(beta)), run(q, k, v, beta)
        # keys given unit-norm with normalize_keys=False equal normalize_keys=True
        k_unit = k / jnp.sqrt(jnp.sum(k * k, -1, keepdims=True) + 1e-6)
        raw = run(q, k_unit, v, beta, gate=log_gate, normalize_keys=False)
        # a log-gate of -inf (g = 0) at position 5 is a reset there
        cut = run(q, k, v, beta, gate=log_gate.at[:, 5].set(-jnp.inf), initial_state=s0)
        reset = jnp.zeros((B, L), bool).at[:, 5].set(True)
        by_reset = run(q, k, v, beta, gate=log_gate, initial_state=s0, reset=reset)
        return frozen, (gated, plain), (raw, run(q, k, v, beta, gate=log_gate)), (cut, by_reset)

    (y, s), gated, raw, cut = identities(q, k, v, beta, log_gate, s0)
    assert_allclose(*cut)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(s0))
    assert_allclose(y, jnp.einsum("blhk,bhkv->blhv", q, s0))
    assert_allclose(*gated)
    assert_allclose(*raw)


def test_argument_errors():
    q, k, v, beta, log_gate, s0, reset = _inputs()
    cases = [
        (dict(chunk_size=0), r"^chunk_size=0 is not supported; accepted: an int >= 1"),
        (dict(chunk_size=-3), r"^chunk_size=-3 is not supported"),
        (dict(chunk_size=2.5), r"^chunk_size=2.5 is not supported"),
        (dict(impl="fast"), r"^impl='fast' is not supported by delta_rule; accepted: \('auto'"),
        (dict(gate=-log_gate), r"^gate holds log-gates log g_t, which must be <= 0"),
        (dict(gate=log_gate[:, :3]), r"^gate must be \(B, L, H\) = \(2, 11, 2\)"),
        (dict(initial_state=s0[:1]), r"^initial_state must be \(B, H, K, V\) = \(2, 2, 4, 3\)"),
        (dict(reset=reset.astype(jnp.int32)), r"^reset must be bool \(B, L\) = \(2, 11\)"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            delta_rule(q, k, v, beta, **kw)
    with pytest.raises(ValueError, match=r"^k must have q's shape"):
        delta_rule(q, k[..., :2], v, beta)
    with pytest.raises(ValueError, match=r"^v must be \(B, L, H, V\)"):
        delta_rule(q, k, v[:, :3], beta)
    with pytest.raises(ValueError, match=r"^beta must be \(B, L, H\)"):
        delta_rule(q, k, v, beta[..., None])
    with pytest.raises(ValueError, match=r"^q must be \(B, L, H, K\)"):
        delta_rule(q[0], k[0], v[0], beta[0])


def test_extreme_gates_stay_finite_and_exact():
    """Gates of 1e-30 and 1 - 1e-7 mixed, no reset: the chunked form's decays are
    exponentials of exact segment sums (no cancellation), so it matches the reference."""
    q, k, v, beta, _, s0, _ = _inputs(seed=3)
    extreme = np.where(np.arange(L) % 3 == 0, np.log(1e-30), np.log1p(-1e-7))
    log_gate = jnp.broadcast_to(jnp.asarray(extreme, jnp.float32)[None, :, None], beta.shape)
    no_reset = jnp.zeros((B, L), bool)
    want = reference_x64(jax.jit(_reference), q, k, v, beta, log_gate, s0, no_reset)
    for impl, c in [("recurrent", 64), ("chunked", 4)]:
        got = jax.jit(lambda *a, impl=impl, c=c: _run(impl, c, *a))(
            q, k, v, beta, log_gate, s0, no_reset
        )
        assert np.isfinite(np.asarray(got[0])).all()
        assert_allclose(got, want)
