"""The family samplers ``sample_<family>(model, key, num, **options)``: options checked
once (unknown option or method -> error listing the accepted ones), the LM's ``length``
counts the prompt and greedy sampling equals the full forward's argmax, BD3 cuts whole
blocks back to ``length``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar import models, sampling
from jaxar.sampling.generate import generate

V = 11


@pytest.mark.parametrize(
    "sampler", [sampling.sample_lm, sampling.sample_mdlm, sampling.sample_bd3,
                sampling.sample_axial, sampling.sample_mar],
)  # fmt: skip
def test_unknown_option_lists_the_accepted(sampler):
    with pytest.raises(
        ValueError, match=r"does not take option\(s\) \['bogus'\]; accepted: \["
    ) as e:
        sampler(None, jax.random.key(0), 1, bogus=1)
    for option in sampler.options:
        assert f"'{option}'" in str(e.value)
    with pytest.raises(ValueError, match="num=0 is not supported; accepted: an int >= 1"):
        sampler(None, jax.random.key(0), 0)


def test_method_is_checked_before_the_model_runs():
    with pytest.raises(ValueError, match=r"method='bogus' is not supported; accepted: \('anc"):
        sampling.sample_mdlm(None, jax.random.key(0), 1, method="bogus")
    with pytest.raises(ValueError, match=r"method='fast' is not supported; accepted: \('semi"):
        sampling.sample_axial(None, jax.random.key(0), 1, method="fast")


def _lm():
    cfg = models.LMConfig(vocab_size=V, d_model=16, num_layers=1, num_heads=2, mlp_ratio=1.0)
    return models.LM(cfg, rngs=nnx.Rngs(0))


def test_lm_length_counts_the_prompt_and_greedy_is_argmax():
    model = _lm()
    prompt = jnp.asarray([3, 1, 4], jnp.int32)
    key = jax.random.key(1)
    out = sampling.sample_lm(model, key, 2, length=6, prompt=prompt, temperature=0.0)
    assert out.shape == (2, 6)
    want = generate(key, model, jnp.tile(prompt, (2, 1)), max_new_tokens=3, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))
    np.testing.assert_array_equal(
        np.asarray(jnp.argmax(model(out)[:, 2:-1], -1)), np.asarray(out[:, 3:])
    )
    default = sampling.sample_lm(model, key, 2, length=4)
    assert np.all(np.asarray(default[:, 0]) == sampling.samplers.DEFAULT_PROMPT_ID)
    with pytest.raises(ValueError, match="length=3 must exceed the prompt's 3 tokens"):
        sampling.sample_lm(model, key, 2, length=3, prompt=prompt)


def test_bd3_samples_whole_blocks_cut_to_length():
    cfg = models.BD3Config(vocab_size=V, d_model=16, num_layers=1, num_heads=2, block_size=4)
    model = models.BD3(cfg, rngs=nnx.Rngs(0))
    out = np.asarray(sampling.sample_bd3(model, jax.random.key(2), 2, length=6))
    assert out.shape == (2, 6) and out.min() >= 0 and out.max() < V  # no [MASK] left


def _poison(model):
    """Every float parameter NaN: every logit the model gives is garbage."""
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), state))
    return model


def test_garbage_logits_never_come_back_as_a_plausible_sample():
    key = jax.random.key(0)
    lm = _poison(_lm())
    with pytest.raises(ValueError, match="generate: no token could be drawn"):
        sampling.sample_lm(lm, key, 2, length=4)
    cfg = models.MDLMConfig.preset("tiny", vocab_size=V, d_model=16, num_layers=1, num_heads=2)
    mdlm = _poison(models.MDLM(cfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="no token could be drawn"):
        sampling.sample_mdlm(mdlm, key, 2, length=4)
    acfg = models.AxialTransformerConfig.preset("tiny", height=2, width=2, channels=1)
    axial = _poison(models.AxialTransformer(acfg, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="axial sample: no token could be drawn"):
        sampling.sample_axial(axial, key, 1)
