"""Transformer LM (``LMConfig.preset("transformer-<size>")``): cached decode == full
forward; causality by gradient; loss; presets; the deprecated ``attention_impl``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar import testing
from jaxar.models import lm


def _model(**kw):
    cfg = lm.LMConfig.preset(
        "transformer-tiny",
        vocab_size=32,
        d_model=32,
        num_heads=2,
        mixer_options={"num_kv_heads": 1},
        **kw,
    )
    return lm.LM(cfg, nnx.Rngs(0))


@pytest.mark.slow
def test_cached_decode_equals_full_forward():
    model = _model()
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 0, 32)
    full = model(tokens)
    state = model.init_state(2, 12)
    logits, state = model.decode(tokens[:, :4], state)
    outs = [logits]
    for t in range(4, 10):
        logits, state = model.decode(tokens[:, t : t + 1], state)
        outs.append(logits)
    testing.assert_allclose(jnp.concatenate(outs, axis=1), full)


def test_causality_by_gradient():
    model = _model()
    x = jax.random.normal(jax.random.key(2), (1, 8, 32))
    t = 4

    def out_t(x):
        return jnp.sum(model.backbone(x)[0, t])

    g = np.asarray(jax.grad(out_t)(x))
    assert np.all(g[0, t + 1 :] == 0)
    assert np.any(g[0, : t + 1] != 0)


def test_loss_and_presets():
    model = _model()
    tokens = jax.random.randint(jax.random.key(3), (2, 9), 0, 32)
    loss, metrics = lm.loss(model, {"tokens": tokens}, None)
    assert np.isfinite(float(loss)) and abs(float(loss) - np.log(32)) < 2.0
    assert set(metrics) >= {"loss", "bits_per_token", "num_tokens"}
    cfg = lm.LMConfig.preset("transformer-base", vocab_size=50257)
    assert (cfg.d_model, cfg.num_layers) == (768, 12)
    with pytest.raises(ValueError, match="name='transformer-huge'"):
        lm.LMConfig.preset("transformer-huge")


def test_attention_impl_is_a_deprecated_alias_of_impl():
    with pytest.warns(DeprecationWarning, match="mixer_options"):
        cfg = lm.LMConfig.preset("transformer-tiny", attention_impl="reference")
    assert cfg.layer_mixers[0].impl == "reference"
    with pytest.warns(DeprecationWarning):
        hybrid = lm.LMConfig.preset("gss_hybrid-tiny", attention_impl="reference")
    assert hybrid.layer_mixers[1].impl == "reference" and hybrid.layer_mixers[1].window == 512
