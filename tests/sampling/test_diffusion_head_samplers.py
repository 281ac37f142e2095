"""Diffusion / flow head samplers against exact oracles (closed-form eps and velocity).

For data x0 ~ sum_k w_k N(mu_k, s_k^2) the optimal eps-predictor is the posterior mean
E[eps | x_t] = sum_k r_k(x_t) sqrt(1 - a) / V_k (x_t - sqrt(a) mu_k), V_k = a s_k^2 + 1 - a,
with responsibilities r_k(x_t) proportional to w_k N(x_t; sqrt(a) mu_k, V_k). Samples drawn with
it must match the data's moments within statistical tolerance (5 standard errors); the
samplers' own discretisation error at 1000 steps is far below that.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar import ops, testing
from jaxar.sampling import diffusion_head as dh

N_SAMPLES = 20000
ACP = ops.diffusion_schedule("cosine", 1000)
GAUSS = ((1.0,), (1.5,), (0.7,))  # weights, means, stds
MIXTURE = ((0.3, 0.7), (-2.0, 2.0), (0.5, 0.5))


def mixture_eps_fn(weights, means, stds):
    w, m, s = (jnp.asarray(v, jnp.float32)[None, :] for v in (weights, means, stds))

    def eps_fn(x, t, cond):
        a = ACP[t][..., None]  # (M, 1) against components on the last axis
        var = a * s**2 + 1 - a
        centred = x - jnp.sqrt(a) * m
        logits = jnp.log(w) - 0.5 * jnp.log(var) - 0.5 * centred**2 / var
        r = jax.nn.softmax(logits, axis=-1)
        return jnp.sum(r * jnp.sqrt(1 - a) / var * centred, axis=-1, keepdims=True)

    return eps_fn


def moments(weights, means, stds):
    w, m, s = (np.asarray(v, np.float64) for v in (weights, means, stds))
    mean = np.sum(w * m)
    var = np.sum(w * (s**2 + m**2)) - mean**2
    return mean, var


def check_moments(x, weights, means, stds, spread=1.0):
    x = np.asarray(x, np.float64).reshape(-1)
    n = x.size
    mean, var = moments(weights, means, stds)
    var = var if len(weights) > 1 else var * spread**2
    se_mean = np.sqrt(var / n)
    se_var = np.sqrt(np.mean((x - x.mean()) ** 4) - x.var() ** 2) / np.sqrt(n)
    assert abs(x.mean() - mean) < 5 * se_mean, (x.mean(), mean)
    assert abs(x.var() - var) < 5 * se_var, (x.var(), var)


@functools.partial(jax.jit, static_argnames=("mix", "method", "num_steps"))
def _draw(key, temperature, *, mix, method, num_steps=1000):
    eps_fn = mixture_eps_fn(*(GAUSS, MIXTURE)[mix])
    return dh.sample(
        key,
        eps_fn,
        None,
        shape=(N_SAMPLES, 1),
        num_steps=num_steps,
        method=method,
        temperature=temperature,
        alphas_cumprod=ACP,
    )


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_gaussian_oracle_recovers_data(method):
    x = _draw(jax.random.key(0), 1.0, mix=0, method=method)
    assert x.shape == (N_SAMPLES, 1) and x.dtype == jnp.float32
    check_moments(x, *GAUSS)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_mixture_oracle_recovers_weights_and_moments(method):
    x = np.asarray(_draw(jax.random.key(1), 1.0, mix=1, method=method)).reshape(-1)
    check_moments(x, *MIXTURE)
    frac = np.mean(x > 0)
    assert abs(frac - 0.7) < 5 * np.sqrt(0.21 / x.size), frac
    for side, mu in ((x < 0, -2.0), (x > 0, 2.0)):  # each mode keeps its own spread
        assert abs(x[side].mean() - mu) < 0.05 and abs(x[side].std() - 0.5) < 0.05


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_temperature_shrinks_spread(method):
    # Same key as the T=1 Gaussian run: the mean stays, the spread scales by ~T (the
    # oracle is affine in x_t, so for a Gaussian both samplers are affine in their noise).
    x1 = np.asarray(_draw(jax.random.key(0), 1.0, mix=0, method=method))
    xt = np.asarray(_draw(jax.random.key(0), 0.5, mix=0, method=method))
    assert abs(xt.mean() - 1.5) < 5 * 0.35 / np.sqrt(N_SAMPLES)
    ratio = xt.std() / x1.std()
    assert 0.47 < ratio < 0.53, ratio


def test_respaced_ddim_converges_and_respace_indices():
    tau, abar = dh.respace(ACP, 100)
    assert tau[0] == 0 and tau[-1] == 999 and np.all(np.diff(tau) > 0) and len(tau) == 100
    np.testing.assert_array_equal(abar, np.asarray(ACP, np.float64)[tau])
    # With 100 of 1000 steps the (deterministic, first-order) DDIM spread is within ~2 %.
    x = np.asarray(_draw(jax.random.key(0), 1.0, mix=0, method="ddim", num_steps=100))
    assert abs(x.mean() - 1.5) < 0.02 and abs(x.std() - 0.7) < 0.02


def gaussian_velocity(mu, s):
    def velocity_fn(x, t, cond):
        t = t[..., None]
        var = t**2 * s**2 + (1 - t) ** 2
        return mu + (t * s**2 - (1 - t)) / var * (x - t * mu)

    return velocity_fn


@pytest.mark.parametrize("method,num_steps", [("euler", 200), ("heun", 20)])
def test_flow_sampler_recovers_gaussian(method, num_steps):
    mu, s = 1.5, 0.7
    run = jax.jit(
        lambda k, temp: dh.flow_sample(
            k,
            gaussian_velocity(mu, s),
            None,
            shape=(N_SAMPLES, 1),
            num_steps=num_steps,
            method=method,
            temperature=temp,
        )
    )
    x = run(jax.random.key(2), 1.0)
    check_moments(x, (1.0,), (mu,), (s,))
    xt = run(jax.random.key(2), 0.5)
    assert 0.47 < float(xt.std() / x.std()) < 0.53


def test_sampler_cond_is_passed_and_errors():
    cond = jnp.arange(4.0)[:, None]
    eps_fn = lambda x, t, c: jnp.zeros_like(x) + 0.0 * c
    seen = []

    def recording(x, t, c):
        seen.append((x.shape, t.shape, t.dtype, c.shape))
        return eps_fn(x, t, c)

    dh.sample(jax.random.key(0), recording, cond, shape=(4, 3), num_steps=5, alphas_cumprod=ACP)
    assert seen[0] == ((4, 3), (4,), jnp.int32, (4, 1))
    with pytest.raises(ValueError, match="method='euler'"):
        dh.sample(jax.random.key(0), eps_fn, cond, shape=(4, 3), num_steps=5, method="euler")
    with pytest.raises(ValueError, match="num_steps=2000"):
        dh.sample(jax.random.key(0), eps_fn, cond, shape=(4, 3), num_steps=2000)
    with pytest.raises(ValueError, match="cond leaves"):
        dh.sample(jax.random.key(0), eps_fn, cond, shape=(5, 3), num_steps=5)
    with pytest.raises(ValueError, match="method='ddpm'"):
        dh.flow_sample(jax.random.key(0), eps_fn, cond, shape=(4, 3), num_steps=5, method="ddpm")


def test_ddim_eta_one_is_ddpm_and_eta_between_is_exact():
    """DDIM with eta = 1 takes DDPM's steps (same draws at temperature 1); eta = 0.5 still
    samples the data distribution (moments of the Gaussian oracle)."""
    eps_fn = mixture_eps_fn(*GAUSS)
    kw = dict(shape=(N_SAMPLES, 1), num_steps=200, alphas_cumprod=ACP)

    @functools.partial(jax.jit, static_argnames=("method", "eta"))
    def draw(key, method, eta):
        return dh.sample(key, eps_fn, None, method=method, eta=eta, **kw)

    key = jax.random.key(3)
    ddpm, ddim1 = draw(key, "ddpm", 0.0), draw(key, "ddim", 1.0)
    testing.assert_allclose(ddim1, ddpm, kind="long")  # 200 float32 steps, two formulas
    check_moments(draw(key, "ddim", 0.5), *GAUSS)
    with pytest.raises(ValueError, match="eta=1.5"):
        dh.sample(key, eps_fn, None, method="ddim", eta=1.5, **kw)
    with pytest.raises(ValueError, match="method='ddim' only"):
        dh.sample(key, eps_fn, None, method="ddpm", eta=0.5, **kw)
