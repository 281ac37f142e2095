"""Masked-diffusion NELBO, schedules, time sampling and noising (jaxar/MATHS.md s.5, s.6)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

from jaxar.ops import add_mask_noise, mask_schedule, masked_diffusion_loss, sample_t
from jaxar.ops.masked_diffusion import loss_weight
from jaxar.testing import assert_allclose


def _reference_loss(logits, targets, noisy, t, mask_id, schedule):
    """The formula in float64 numpy: w(t) * sum over masked l of -log p(x_l | z)."""
    logits = np.asarray(logits, np.float64).copy()
    if mask_id < logits.shape[-1]:
        logits[..., mask_id] = -np.inf
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    t = np.asarray(t, np.float64)
    if schedule == "loglinear":
        w = 1.0 / t
    else:
        w = (np.pi / 2) * np.sin(np.pi * t / 2) / (1.0 - np.cos(np.pi * t / 2))
    noisy, targets = np.asarray(noisy), np.asarray(targets)
    out = np.zeros(logits.shape[0])
    for b, l in itertools.product(range(logits.shape[0]), range(logits.shape[1])):
        if noisy[b, l] == mask_id:
            out[b] += -logp[b, l, targets[b, l]] * w[b]
    return out


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
@pytest.mark.parametrize("vocab_out", [7, 8])  # logits without / with the [MASK] row
def test_loss_equals_float64_formula(schedule, vocab_out):
    mask_id = 7
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    logits = 3 * jax.random.normal(k1, (3, 5, vocab_out))
    targets = jax.random.randint(k2, (3, 5), 0, 7)
    t = jnp.asarray([0.05, 0.5, 1.0])
    noisy = add_mask_noise(k3, targets, t, mask_id, schedule)
    noisy = noisy.at[0, 0].set(mask_id)  # at least one masked token at small t
    got = masked_diffusion_loss(logits, targets, noisy, t, mask_id=mask_id, schedule=schedule)
    want = _reference_loss(logits, targets, np.asarray(noisy), t, mask_id, schedule)
    assert got.shape == (3,) and got.dtype == jnp.float32
    assert_allclose(got, want)
    del k4


def test_no_loss_on_unmasked_positions():
    mask_id = 5
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    logits = jax.random.normal(k1, (2, 6, 6))
    targets = jax.random.randint(k2, (2, 6), 0, 5)
    noisy = add_mask_noise(k3, targets, jnp.asarray([0.5, 0.5]), mask_id)
    t = jnp.asarray([0.5, 0.5])

    def total(lg):
        return masked_diffusion_loss(lg, targets, noisy, t, mask_id=mask_id).sum()

    g = jax.jit(jax.grad(total))(logits)
    unmasked = np.asarray(noisy != mask_id)
    assert unmasked.any() and (~unmasked).any()
    assert np.all(np.asarray(g)[unmasked] == 0)
    assert np.all(np.abs(np.asarray(g)[~unmasked]).sum(-1) > 0)
    # the [MASK] logit gets no gradient either (SUBS: it is -inf)
    assert np.all(np.asarray(g)[..., mask_id] == 0)
    # nothing masked -> zero loss, even at t -> 0 where the weight blows up
    clean = masked_diffusion_loss(logits, targets, targets, jnp.zeros(2), mask_id=mask_id)
    assert np.all(np.asarray(clean) == 0)


def _toy_logits(noisy_NxL, table_SxLxV, vocab):
    """A deterministic 'network': a random table indexed by the whole noisy sequence."""
    length = noisy_NxL.shape[1]
    idx = jnp.sum(noisy_NxL * (vocab + 1) ** jnp.arange(length)[None, :], axis=1)
    return table_SxLxV[idx]


@pytest.mark.parametrize(
    "schedule,low,high", [("loglinear", 0.05, 1.0), ("cosine", 0.05, 1.0), ("loglinear", 0.3, 0.8)]
)
def test_estimator_mean_equals_numerical_integral(schedule, low, high):
    """E_{t~U[low,high], z~q(.|x,t)}[loss] == (1/(high-low)) int_low^high E_z[loss | t] dt,
    the inner expectation enumerated exactly over the 2^L masks."""
    vocab, length, mask_id = 3, 3, 3
    table = jax.random.normal(jax.random.key(2), ((vocab + 1) ** length, length, vocab))
    x = jnp.asarray([2, 0, 1])

    # E_z[loss | t] = w(t) sum_m P(m | t) S_m, S_m = sum of -log p over the masked set m
    patterns, sums = [], []
    for mask in itertools.product([0, 1], repeat=length):
        m = np.asarray(mask, bool)
        z = np.where(m, mask_id, np.asarray(x))[None]
        logits = _toy_logits(jnp.asarray(z), table, vocab)
        patterns.append(m)
        sums.append(_reference_loss(logits, np.asarray(x)[None], z, [1.0], mask_id, "loglinear"))

    def exact_given_t(t):
        alpha = 1 - t if schedule == "loglinear" else np.cos(np.pi * t / 2)
        w = _reference_loss(np.zeros((1, 1, 2)), [[0]], [[9]], [t], 9, schedule)[0]
        w = w / np.log(2)  # w(t) * log 2 for uniform logits over two classes
        total = 0.0
        for m, s_m in zip(patterns, sums, strict=True):
            total += (1 - alpha) ** m.sum() * alpha ** (~m).sum() * s_m[0]
        return w * total

    integral, _ = scipy.integrate.quad(exact_given_t, low, high, limit=200)
    want = integral / (high - low)

    n = 200_000
    kt, kz = jax.random.split(jax.random.key(3))
    t = sample_t(kt, n, low=low, high=high)
    xs = jnp.broadcast_to(x[None], (n, length))
    z = add_mask_noise(kz, xs, t, mask_id, schedule)
    loss = masked_diffusion_loss(
        _toy_logits(z, table, vocab), xs, z, t, mask_id=mask_id, schedule=schedule
    )
    loss = np.asarray(loss, np.float64)
    stderr = loss.std() / np.sqrt(n)
    assert abs(loss.mean() - want) < 4 * stderr, (loss.mean(), want, stderr)


def test_schedules_and_weights():
    t = jnp.linspace(0.01, 1.0, 50)
    for schedule in ("loglinear", "cosine"):
        alpha, dalpha = mask_schedule(t, schedule)
        assert np.all(np.diff(np.asarray(alpha)) < 0)
        num = np.gradient(np.asarray(alpha, np.float64), np.asarray(t, np.float64))
        np.testing.assert_allclose(np.asarray(dalpha)[1:-1], num[1:-1], rtol=2e-3, atol=2e-3)
        t64 = np.asarray(t, np.float64)
        a64 = 1 - t64 if schedule == "loglinear" else np.cos(np.pi * t64 / 2)
        d64 = (
            -np.ones_like(t64) if schedule == "loglinear" else -np.pi / 2 * np.sin(np.pi * t64 / 2)
        )
        assert_allclose(loss_weight(t, schedule), -d64 / (1 - a64))
    a0, _ = mask_schedule(jnp.asarray([0.0, 1.0]), "cosine")
    np.testing.assert_allclose(np.asarray(a0), [1.0, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="schedule='linear'"):
        mask_schedule(t, "linear")


def test_sample_t_and_noise_rates():
    t = sample_t(jax.random.key(4), 1000, low=0.2, high=0.6)
    assert t.shape == (1000,) and float(t.min()) > 0.2 and float(t.max()) <= 0.6
    # antithetic: one point per stratum of width (high - low) / n
    strata = np.floor((0.6 - np.sort(np.asarray(t, np.float64))) / 0.4 * 1000 + 1e-3)
    assert len(np.unique(np.clip(strata, 0, 999))) >= 990
    t2 = sample_t(jax.random.key(4), (4, 8), antithetic=False)
    assert t2.shape == (4, 8) and float(t2.min()) > 0
    with pytest.raises(ValueError, match="low"):
        sample_t(jax.random.key(0), 3, low=0.5, high=0.5)
    tokens = jnp.zeros((4, 4096), jnp.int32)
    times = jnp.asarray([0.1, 0.5, 0.9, 1.0])
    z = add_mask_noise(jax.random.key(5), tokens, times, 9)
    rate = np.asarray((z == 9).mean(axis=1))
    np.testing.assert_allclose(rate, np.asarray(times), atol=0.03)
    # per-position times (BD3: one time per block)
    t_BxL = jnp.broadcast_to(jnp.repeat(jnp.asarray([0.0, 1.0]), 2048)[None], (4, 4096))
    z = add_mask_noise(jax.random.key(6), tokens, t_BxL, 9)
    assert np.all(np.asarray(z[:, :2048]) == 0) and np.all(np.asarray(z[:, 2048:]) == 9)


def _bad_target_case():
    mask_id = 7
    logits = 3 * jax.random.normal(jax.random.key(5), (4, 3, 8))  # V = 8 includes [MASK]
    targets = jnp.asarray([[1, 2, 3], [4, 5, 6], [0, 1, 2], [3, 4, 5]])
    noisy = jnp.full((4, 3), mask_id).at[:, 2].set(targets[:, 2])
    return logits, targets, noisy, jnp.asarray([0.5, 0.5, 0.5, 0.5]), mask_id


@pytest.mark.parametrize("bad_target", [8, 99, -1, 7])  # >= V, < 0, == mask_id
def test_bad_targets_raise_eagerly_and_give_nan_under_jit(bad_target):
    logits, targets, noisy, t, mask_id = _bad_target_case()
    bad = targets.at[1, 0].set(bad_target)
    with pytest.raises(
        ValueError, match=rf"targets holds 1 id\(s\) .* \[0, 8\) .* {bad_target} at"
    ):
        masked_diffusion_loss(logits, bad, noisy, t, mask_id=mask_id)
    loss = jax.jit(lambda x: masked_diffusion_loss(logits, x, noisy, t, mask_id=mask_id))
    got, want = np.asarray(loss(bad)), np.asarray(loss(targets))
    assert np.isnan(got[1]) and np.isfinite(want).all()
    np.testing.assert_array_equal(np.delete(got, 1), np.delete(want, 1))
    # a bad id where it does not count (unmasked, or weight 0) is no error and no NaN
    unmasked = targets.at[1, 2].set(bad_target)
    assert np.isfinite(
        np.asarray(masked_diffusion_loss(logits, unmasked, noisy, t, mask_id=7))
    ).all()
    weights = jnp.ones((4, 3)).at[1, 0].set(0.0)
    padded = masked_diffusion_loss(logits, bad, noisy, t, mask_id=mask_id, weights=weights)
    assert np.isfinite(np.asarray(padded)).all()


def test_bad_mask_id_and_dtypes_raise():
    logits, targets, noisy, t, _ = _bad_target_case()
    for mask_id in (-1, 2.0, True):
        with pytest.raises(
            ValueError, match=rf"^mask_id={mask_id!r} is not supported; accepted: an int >= 0"
        ):
            masked_diffusion_loss(logits, targets, noisy, t, mask_id=mask_id)
    with pytest.raises(ValueError, match="targets must be integer token ids"):
        masked_diffusion_loss(logits, targets.astype(jnp.float32), noisy, t, mask_id=7)
