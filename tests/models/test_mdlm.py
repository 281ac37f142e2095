"""MDLM: NELBO of the exact model equals the negative log-likelihood (for every schedule);
training and sampling hooks; unigram entropy (jaxar/MATHS.md s.5)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from flax import nnx

from jaxar.models import mdlm
from jaxar.ops import masked_diffusion_loss
from jaxar.sampling import sample_mdlm
from tests.models.test_bd3 import HAVE_LM, MASK, TinyBidiLM, V
from tests.sampling.test_masked_diffusion_samplers import JOINT, SEQS, exact_denoiser


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_exact_model_nelbo_equals_nll(schedule):
    """With exact conditionals the continuous-time NELBO is tight: for every x,
    int_0^1 w(t) E_z[sum_masked -log p(x_l | z)] dt = -log p(x) (any schedule)."""
    toy_mask = 3
    masks = np.asarray(list(itertools.product([0, 1], repeat=3)), bool)[1:]  # non-empty
    for s in (0, 5, 13, 26):
        x = jnp.asarray(SEQS[s])[None]
        z = jnp.where(jnp.asarray(masks), toy_mask, x)  # (7, 3)
        sums = np.asarray(
            masked_diffusion_loss(
                exact_denoiser(z),
                jnp.broadcast_to(x, z.shape),
                z,
                jnp.ones(7),
                mask_id=toy_mask,
            )
        )  # loglinear weight at t=1 is 1: the plain sums of -log p

        def integrand(t):  # float64: alpha_t and the weight -alpha'_t / (1 - alpha_t)
            if schedule == "loglinear":
                alpha, w = 1 - t, 1 / t
            else:
                alpha = np.cos(np.pi * t / 2)
                w = np.pi / 2 * np.sin(np.pi * t / 2) / (2 * np.sin(np.pi * t / 4) ** 2)
            k = masks.sum(-1)
            probs = (1 - alpha) ** k * alpha ** (3 - k)
            return w * float((probs * sums).sum())

        value, _ = scipy.integrate.quad(integrand, 0.0, 1.0, limit=200)
        np.testing.assert_allclose(value, -np.log(JOINT[s]), rtol=1e-4)


def _model(**kw):
    cfg = mdlm.MDLMConfig(vocab_size=V, **kw)
    return TinyBidiLM(cfg)


def test_loss_metrics_and_padding():
    model = _model()
    x = jax.random.randint(jax.random.key(0), (4, 8), 0, V)
    seg = jnp.ones_like(x).at[1, 5:].set(0)
    value, metrics = jax.jit(mdlm.loss)(model, {"tokens": x, "segment_ids": seg}, jax.random.key(1))
    assert np.isfinite(float(value)) and float(value) > 0
    assert float(metrics["num_tokens"]) == 29
    np.testing.assert_allclose(float(metrics["bits_per_token"]), float(value) / np.log(2), 1e-6)
    np.testing.assert_allclose(float(metrics["perplexity_bound"]), np.exp(float(value)), 1e-5)
    grads = jax.jit(jax.grad(lambda m: mdlm.loss(m, {"tokens": x}, jax.random.key(1))[0]))(model)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_sample_hook_and_unigram_entropy():
    model = _model()
    tokens = np.asarray(sample_mdlm(model, jax.random.key(2), 3, length=8))
    assert tokens.shape == (3, 8) and tokens.max() < V
    assert mdlm.unigram_entropy([[0, 0, 1, 1]]) == pytest.approx(np.log(2))
    assert mdlm.unigram_entropy([[3, 3, 3, 3], [0, 1, 2, 3]]) == pytest.approx(np.log(4) / 2)
    assert mdlm.unigram_entropy([[0, 1, 7, 7]], lengths=[2]) == pytest.approx(np.log(2))


def test_config_validation():
    with pytest.raises(ValueError, match="schedule='linear'"):
        mdlm.MDLMConfig(vocab_size=V, schedule="linear")
    with pytest.raises(ValueError, match="t_low"):
        mdlm.MDLMConfig(vocab_size=V, t_low=0.9, t_high=0.5)
    with pytest.raises(ValueError, match="name='huge'"):
        mdlm.MDLMConfig.preset("huge")
    with pytest.raises(ValueError, match=r"no field\(s\) \['d_modle'\].*'d_model', 'num_layers'"):
        mdlm.MDLMConfig.preset("tiny", d_modle=64)
    assert mdlm.MDLMConfig(vocab_size=V).mask_id == MASK


@pytest.mark.skipif(not HAVE_LM, reason="jaxar.models.lm / jaxar.nn.attention not there yet")
def test_real_lm_presets_loss_and_sample():
    cfg = mdlm.MDLMConfig.preset("tiny", vocab_size=256, d_model=32, num_heads=2)
    assert cfg.mask_id == 256 and cfg.lm.vocab_size == 257
    model = mdlm.MDLM(cfg, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.key(0), (2, 16), 0, 256)
    value, metrics = jax.jit(mdlm.loss)(model, {"tokens": x}, jax.random.key(1))
    assert np.isfinite(float(value)) and "perplexity_bound" in metrics
    tokens = np.asarray(sample_mdlm(model, jax.random.key(2), 2, length=16))
    assert tokens.shape == (2, 16) and tokens.max() < 256
