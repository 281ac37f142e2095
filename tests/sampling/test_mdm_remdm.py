"""ReMDM remasking (Wang et al. 2025, arXiv:2503.00307) on the exact toy joint.

sigma = 0 is the ancestral chain token for token (so it samples the joint); sigma > 0 keeps
the marginal ``P(masked at s) = 1 - alpha_s`` at every step and respects the paper's bound
``sigma_t <= min(1, (1 - alpha_s) / alpha_t)``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.ops.masked_diffusion import loop_time, mask_schedule, remdm_sigma
from jaxar.sampling import masked_diffusion as md
from tests.sampling.test_masked_diffusion_samplers import (
    JOINT,
    MASK,
    L,
    _chi2_pvalue,
    _peaked_denoiser,
    _run,
    exact_denoiser,
)


def test_remdm_sigma_zero_is_the_ancestral_chain_and_samples_the_joint():
    """cap with eta = 0 is the ancestral chain token for token; loop with eta = 0 an MDLM
    chain on another time grid (held during the loop): both sample the joint."""
    ancestral, _ = _run("ancestral", 300, seed=0, n=1000)
    tokens, calls = _run("remdm", 300, seed=0, n=1000, remask="cap", eta=0.0)
    np.testing.assert_array_equal(tokens, ancestral)
    assert calls == 300
    tokens, _ = _run("remdm", 300, seed=1, n=4000, remask="loop", eta=0.0)
    assert _chi2_pvalue(tokens, JOINT) > 1e-3


@pytest.mark.parametrize("schedule", ["cap", "rescale", "loop"])
def test_remdm_sigma_respects_the_bound(schedule):
    a = jnp.linspace(0.0, 1.0, 41)
    alpha_t, alpha_s = jnp.meshgrid(a, a, indexing="ij")
    keep = alpha_s >= alpha_t  # s < t: at least as clean
    for eta in (0.0, 0.02, 0.5, 1.0):
        sigma = np.asarray(remdm_sigma(alpha_t, alpha_s, schedule, eta))
        ratio = np.where(alpha_t > 0, (1 - alpha_s) / np.where(alpha_t > 0, alpha_t, 1), 1.0)
        sigma_max = np.minimum(1.0, ratio)
        assert (sigma[keep] >= 0).all() and (sigma[keep] <= sigma_max[keep] + 1e-7).all()
        # the reveal probability of a masked token stays a probability
        denom = np.where(alpha_t < 1, 1 - alpha_t, 1.0)
        p = (alpha_s - (1 - sigma) * alpha_t) / denom
        assert (p[keep & (alpha_t < 1)] >= -1e-6).all() and (p[keep] <= 1 + 1e-6).all()
    assert float(remdm_sigma(0.5, 0.6, "loop", 0.3)) == 0.0  # outside the loop phase
    assert float(remdm_sigma(0.5, 0.5, "loop", 0.3)) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "remask,eta",
    [
        ("cap", 0.3),
        pytest.param("rescale", 0.5, marks=pytest.mark.slow),
        pytest.param("loop", 0.5, marks=pytest.mark.slow),
    ],
)
def test_remdm_keeps_the_marginal_masking_schedule(remask, eta):
    """Independent positions: after k of n steps each position is masked with probability
    exactly 1 - alpha_s(k) (remasking included); 64 x 64 positions, 5 sigma."""
    B, length, n = 64, 64, 20
    t_on, t_off = 0.6, 0.2

    @jax.jit
    def masked_fraction(stop):
        x = jnp.full((B, length), MASK, jnp.int32)
        out, _ = md._fixed_block(
            jax.random.key(3),
            x,
            jnp.int32(0),
            jnp.ones((1, length), bool),
            md._plain_denoiser(_peaked_denoiser),
            n_steps=n,
            offset=0,
            alpha_fn=md._alpha_fn(n, "loglinear", remask, t_on, t_off, 0.0),
            sigma_fn=functools.partial(remdm_sigma, schedule=remask, eta=eta),
            cached=False,
            gen_BxL=x == MASK,
            mask_id=MASK,
            temperature=1.0,
            top_p=None,
            stop_after=stop,
        )
        return jnp.mean(out == MASK)

    for stop in (5, 10, 15):
        s = 1.0 - stop / n
        if remask == "loop":
            s = loop_time(s, t_on, t_off)
        expected = 1.0 - float(mask_schedule(s)[0])
        sd = np.sqrt(expected * (1 - expected) / (B * length))
        assert abs(float(masked_fraction(stop)) - expected) < 5 * sd + 1e-6


@pytest.mark.slow
def test_remdm_more_steps_than_length_and_remasks():
    calls = []

    def counted(z):
        jax.debug.callback(lambda: calls.append(1))
        return exact_denoiser(z)

    out = md.sample(
        jax.random.key(0),
        counted,
        batch_size=8,
        length=L,
        mask_id=MASK,
        method="remdm",
        num_steps=4 * L,
        remask="rescale",
        eta=1.0,
        prompt=jnp.asarray([[2]]),
    )
    jax.effects_barrier()
    tokens = np.asarray(out.tokens)
    assert int(out.num_calls) == 4 * L == len(calls)
    assert ((tokens >= 0) & (tokens < 3)).all() and (tokens[:, 0] == 2).all()


def test_remdm_argument_errors():
    kw = dict(batch_size=1, length=L, mask_id=MASK)
    key = jax.random.key(0)
    cases = [
        (dict(method="remdm", eta=1.5), r"^eta=1.5 is not accepted; expected a float in \[0, 1\]"),
        (dict(method="remdm", eta=-0.1), r"^eta=-0.1 is not accepted"),
        (dict(method="remdm", remask="sometimes"), r"^remask='sometimes' is not supported"),
        (
            dict(method="remdm", remask="loop", t_on=0.1, t_off=0.3),
            r"^t_on=0.1, t_off=0.3 are not accepted; expected 0 <= t_off < t_on <= 1",
        ),
        (dict(method="ancestral", eta=0.1), r"^eta=0.1 is not accepted with method='ancestral'"),
        (dict(method="confidence", remask="cap"), r"^remask='cap' is not accepted with"),
    ]
    for opts, match in cases:
        with pytest.raises(ValueError, match=match):
            md.sample(key, exact_denoiser, **kw, **opts)
