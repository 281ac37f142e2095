"""Per-position time windows (jaxar.ops.masked_diffusion.position_window) in the MDLM loss
and the time-grid samplers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from flax import nnx

from jaxar.models import mdlm
from jaxar.ops import masked_diffusion as md_ops
from jaxar.sampling import masked_diffusion as md

V, L = 7, 6


def test_uniform_window_is_the_mdlm_loss_bit_for_bit():
    """position_skew=0: tau = t and weight 1, so the loss equals the MDLM loss computed the
    plain way ((B,) times, no weights) exactly, segment padding included."""
    cfg = mdlm.MDLMConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2)
    model = mdlm.MDLM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (4, L), 0, V)
    segment_ids = jnp.asarray([[1] * L] * 3 + [[1, 1, 1, 1, 0, 0]])
    key = jax.random.key(2)
    for seg in (None, segment_ids):
        batch = {"tokens": tokens} if seg is None else {"tokens": tokens, "segment_ids": seg}
        got, metrics = mdlm.loss(model, batch, key)
        k_t, k_noise = jax.random.split(key)
        t = md_ops.sample_t(k_t, 4)
        noisy = md_ops.add_mask_noise(k_noise, tokens, t, cfg.mask_id)
        if seg is not None:
            noisy = jnp.where(seg > 0, noisy, tokens)
        w = None if seg is None else (seg > 0).astype(jnp.float32)
        nelbo = md_ops.masked_diffusion_loss(
            model(noisy, segment_ids=seg), tokens, noisy, t, mask_id=cfg.mask_id, weights=w
        )
        count = L * 4 if seg is None else int(jnp.sum(seg > 0))
        ref = jnp.sum(nelbo) / count
        assert np.asarray(got).tobytes() == np.asarray(ref).tobytes()


def test_position_window_integrates_to_a_full_schedule():
    """For every position tau rises monotonically from 0 to 1 with dtau/dt integrating to 1,
    so each position runs through the whole schedule alpha(0) = 1 ... alpha(1) = 0 (the
    per-position NELBO is a valid bound)."""
    skew = 0.6
    ts = jnp.linspace(1e-3, 1.0, 4001)
    tau, dtau = md_ops.position_window(ts, L, skew)
    tau, dtau = np.asarray(tau), np.asarray(dtau)
    assert (tau[0] <= 1e-2).all() and (tau[-1] >= 1.0 - 1e-6).all()
    assert (np.diff(tau, axis=0) >= 0).all()
    # the mass of dtau/dt over t is 1 per position: tau goes from 0 to 1 exactly once
    np.testing.assert_allclose(scipy.integrate.trapezoid(dtau, np.asarray(ts), axis=0), 1, 1e-2)
    # left positions are noised at later times than right positions (revealed first)
    assert tau[2000, 0] < tau[2000, -1]
    with pytest.raises(ValueError, match=r"position_skew=1.0 is not accepted"):
        md_ops.position_window(ts, L, 1.0)
    with pytest.raises(ValueError, match=r"MDLMConfig.position_skew=-0.1"):
        mdlm.MDLMConfig(vocab_size=V, position_skew=-0.1)


def test_skewed_sampler_keeps_each_positions_marginal():
    """Ancestral steps under the window schedule: after k of n steps position l is masked
    with probability 1 - alpha(tau_l(s)), left positions revealed first."""
    B, length, n, skew = 512, 8, 10, 0.7

    def peaked(z):
        return jnp.broadcast_to(jnp.log(jnp.asarray([0.2, 0.6, 0.2])), (*z.shape, 3))

    @functools.partial(jax.jit, static_argnums=0)
    def masked_fraction(stop):
        x = jnp.full((B, length), 3, jnp.int32)
        out, _ = md._fixed_block(
            jax.random.key(0),
            x,
            jnp.int32(0),
            jnp.ones((1, length), bool),
            md._plain_denoiser(peaked),
            n_steps=n,
            offset=0,
            alpha_fn=md._alpha_fn(n, "loglinear", None, 0.0, 0.0, skew),
            sigma_fn=None,
            cached=False,
            gen_BxL=None,
            mask_id=3,
            temperature=1.0,
            top_p=None,
            stop_after=stop,
        )
        return jnp.mean(out == 3, axis=0)

    got = np.asarray(masked_fraction(5))
    tau = np.asarray(md_ops.position_window(jnp.asarray([0.5]), length, skew)[0][0])
    expected = tau  # loglinear: 1 - alpha = tau
    sd = np.sqrt(np.maximum(expected * (1 - expected), 1e-12) / B)
    assert (np.abs(got - expected) < 5 * sd + 1e-6).all()
    assert got[0] < got[-1]
    tokens = md.sample(
        jax.random.key(1),
        peaked,
        batch_size=2,
        length=length,
        mask_id=3,
        method="ancestral",
        num_steps=n,
        position_skew=skew,
    ).tokens
    assert ((np.asarray(tokens) >= 0) & (np.asarray(tokens) < 3)).all()
