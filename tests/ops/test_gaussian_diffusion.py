"""Per-token Gaussian diffusion / flow matching ops against their formulas (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar import ops
from jaxar.ops import gaussian_diffusion as gd
from jaxar.testing import assert_allclose, reference_x64


def test_cosine_schedule_matches_formula():
    T = 1000
    acp = ops.diffusion_schedule("cosine", T)
    assert acp.dtype == jnp.float32 and acp.shape == (T,)
    s = 0.008
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    # beta is clipped only at the very end; before that the product telescopes to f(t+1)/f(0)
    want = np.array([f((t + 1) / T) / f(0.0) for t in range(T - 1)])
    assert_allclose(acp[: T - 1], want)
    assert_allclose(acp[T - 1], want[-1] * (1 - 0.999), dtype=jnp.float32)
    assert np.all(np.diff(np.asarray(acp)) < 0)


def test_linear_schedule_matches_formula():
    for T in (1000, 250):
        acp = ops.diffusion_schedule("linear", T)
        scale = 1000 / T
        betas = [1e-4 * scale + (0.02 - 1e-4) * scale * i / (T - 1) for i in range(T)]
        want = np.cumprod([1 - b for b in betas])
        assert acp.shape == (T,)
        assert_allclose(acp, want)


def test_schedule_errors():
    with pytest.raises(ValueError, match="name='quadratic'"):
        ops.diffusion_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="num_steps=0"):
        ops.diffusion_schedule("cosine", 0)


def _linear_model(key, n, c):
    k1, k2, k3 = jax.random.split(key, 3)
    w = jax.random.normal(k1, (n, n)) / math.sqrt(n)
    u = jax.random.normal(k2, (c, n)) / math.sqrt(c)
    b = jax.random.normal(k3, (n,))

    def model_fn(x, t, cond):  # any leading shape (flatten=False passes (R, ..., N))
        return x @ w + cond @ u + (t[..., None] / 1000.0) * b.reshape((1,) * t.ndim + (n,))

    return model_fn, (np.asarray(w), np.asarray(u), np.asarray(b))


@pytest.mark.parametrize("target,flatten", [("eps", True), ("v", False), ("x0", True)])
def test_diffusion_loss_vs_float64_formula(target, flatten):
    key = jax.random.key(1)
    kx, kc, km, kl = jax.random.split(key, 4)
    B, L, N, C, R = 2, 3, 4, 5, 3
    x0 = jax.random.normal(kx, (B, L, N))
    cond = jax.random.normal(kc, (B, L, C))
    acp = ops.diffusion_schedule("cosine", 100)
    model_fn, (w, u, b) = _linear_model(km, N, C)
    got = ops.gaussian_diffusion_loss(
        kl, model_fn, x0, cond, alphas_cumprod=acp, target=target, num_draws=R, flatten=flatten
    )
    assert got.shape == (B, L) and got.dtype == jnp.float32
    t, eps = gd.sample_diffusion_noise(kl, x0.shape, num_draws=R, num_steps=100)

    def reference(x0, cond, eps, acp):
        x0, cond, eps, t_ = (np.asarray(a) for a in (x0, cond, eps, t))
        a = np.asarray(acp)[t_][..., None]
        x_t = np.sqrt(a) * x0[None] + np.sqrt(1 - a) * eps
        pred = x_t @ w + (cond @ u)[None] + (t_[..., None] / 1000.0) * b
        goal = {"eps": eps, "x0": np.broadcast_to(x0[None], eps.shape)}.get(
            target, np.sqrt(a) * eps - np.sqrt(1 - a) * x0[None]
        )
        return ((pred - goal) ** 2).mean(axis=(0, -1))

    want = reference_x64(reference, x0, cond, eps, acp)
    assert_allclose(got, want)


def test_diffusion_loss_zero_for_exact_model():
    acp = ops.diffusion_schedule("linear", 50)
    x0 = jax.random.normal(jax.random.key(2), (6, 3))
    key = jax.random.key(3)

    def oracle(x_t, t_, cond):  # knows x0, so recovers the drawn eps (rows: draw-major)
        a = acp[t_][:, None]
        rows = jnp.arange(x_t.shape[0]) % 6
        return (x_t - jnp.sqrt(a) * x0[rows]) / jnp.sqrt(1 - a)

    loss = ops.gaussian_diffusion_loss(key, oracle, x0, None, alphas_cumprod=acp, num_draws=2)
    assert loss.shape == (6,)
    assert float(jnp.max(loss)) < 1e-6


@pytest.mark.parametrize("target", ["v", "x0"])
def test_eps_from_prediction_inverts_target(target):
    acp = ops.diffusion_schedule("cosine", 100)
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    x0 = jax.random.normal(k1, (7, 3))
    eps = jax.random.normal(k2, (7, 3))
    t = jax.random.randint(k3, (7,), 0, 99)
    x_t = ops.add_gaussian_noise(x0, t, eps, acp)
    pred = ops.diffusion_target(x0, eps, t, acp, target)
    assert_allclose(ops.eps_from_prediction(pred, x_t, t, acp, target), eps, kind="grad")


@pytest.mark.parametrize("flatten", [True, False])
def test_flow_matching_loss_vs_float64_formula(flatten):
    kx, kc, km, kl = jax.random.split(jax.random.key(5), 4)
    B, N, C, R = 4, 3, 2, 5
    x1 = jax.random.normal(kx, (B, N))
    cond = jax.random.normal(kc, (B, C))
    model_fn, (w, u, b) = _linear_model(km, N, C)
    got = ops.flow_matching_loss(kl, model_fn, x1, cond, num_draws=R, flatten=flatten)
    s, noise = gd.sample_flow_noise(kl, x1.shape, num_draws=R)

    def reference(x1, cond, s, noise):
        x1, cond, s, noise = (np.asarray(a) for a in (x1, cond, s, noise))
        x_s = s[..., None] * x1[None] + (1 - s[..., None]) * noise
        pred = x_s @ w + (cond @ u)[None] + (s[..., None] / 1000.0) * b
        return ((pred - (x1[None] - noise)) ** 2).mean(axis=(0, -1))

    assert_allclose(got, reference_x64(reference, x1, cond, s, noise))


def test_loss_argument_errors():
    acp = ops.diffusion_schedule("cosine", 10)
    x0 = jnp.zeros((2, 3))
    f = lambda x, t, c: x
    with pytest.raises(ValueError, match="target='score'"):
        ops.gaussian_diffusion_loss(
            jax.random.key(0), f, x0, None, alphas_cumprod=acp, target="score"
        )
    with pytest.raises(ValueError, match="cond's leading shape"):
        ops.gaussian_diffusion_loss(jax.random.key(0), f, x0, jnp.zeros((3, 1)), alphas_cumprod=acp)
