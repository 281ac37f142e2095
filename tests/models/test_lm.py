"""The generic LM: causality by gradient, full logits == step-by-step decoding, loss."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.models.lm import LM, Backbone, LMConfig, lm_loss
from jaxar.nn.gateloop import GateLoopConfig
from jaxar.nn.gss import GSSConfig

V, B, L = 13, 2, 8
HAVE_ATTENTION = importlib.util.find_spec("jaxar.nn.attention") is not None


def _cfg(family, **kw):
    if family == "gateloop":
        mixers = (GateLoopConfig(num_heads=2, chunk_size=4),)
    elif family == "gss":
        mixers = (GSSConfig(state_size=4),)
    else:
        from jaxar.nn.attention import AttentionConfig

        mixers = (GSSConfig(state_size=4), AttentionConfig(num_heads=2, window=3))
    return LMConfig(vocab_size=V, d_model=16, num_layers=2, mixers=mixers, mlp_ratio=2.0, **kw)


FAMILIES = [
    "gateloop",
    "gss",
    pytest.param(
        "gss_hybrid",
        marks=pytest.mark.skipif(not HAVE_ATTENTION, reason="jaxar.nn.attention not there yet"),
    ),
]


@nnx.jit
def _full(model, tokens):
    return model(tokens)


@nnx.jit
def _decode(model, tokens, state):
    return model.decode(tokens, state)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_logits_equal_stepwise_decode(family):
    model = LM(_cfg(family), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (B, L), 0, V)
    full = _full(model, tokens)
    assert full.shape == (B, L, V) and full.dtype == jnp.float32
    state = model.init_state(B, L)
    logits, state = _decode(model, tokens[:, : L // 2], state)  # parallel prefill
    outs = [logits]
    for t in range(L // 2, L):  # then O(1) steps
        logits, state = _decode(model, tokens[:, t : t + 1], state)
        outs.append(logits)
    # float32 on both sides through several layers: the "grad" row of the table
    np.testing.assert_allclose(
        np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_by_gradient(family):
    backbone = Backbone(_cfg(family), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (1, L, 16))
    t = 4

    @nnx.jit
    def grad_at(backbone, x):
        return jax.grad(lambda x: jnp.sum(backbone(x)[:, t] * jnp.cos(jnp.arange(16.0))[None]))(x)

    g = np.abs(np.asarray(grad_at(backbone, x))).sum(-1)[0]
    # exact zeros for recurrences; the FFT convolution (GSS) leaks round-off (~1e-14)
    assert np.all(g[t + 1 :] <= 1e-6 * g.max())
    assert np.all(g[: t + 1] > 1e-6 * g.max())


def test_lm_loss_segments_and_metrics():
    model = LM(_cfg("gateloop", tie_embeddings=False), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (B, L), 0, V)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], jnp.int32)
    value, metrics = nnx.jit(lm_loss)(model, {"tokens": tokens, "segment_ids": seg}, None)
    # counted targets: row 0 -> positions 1, 2, 4, 5 (4); row 1 -> 7
    assert float(metrics["num_tokens"]) == 11.0
    logits = nnx.jit(lambda m, t, s: m(t, segment_ids=s))(model, tokens[:, :-1], seg[:, :-1])
    logp = jax.nn.log_softmax(logits, -1)
    nll = -np.take_along_axis(np.asarray(logp), np.asarray(tokens[:, 1:, None]), -1)[..., 0]
    w = np.asarray((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0), np.float64)
    np.testing.assert_allclose(float(value), (nll * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["bits_per_token"]), float(value) / np.log(2), rtol=1e-6
    )


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="vocab_size"):
        LMConfig(vocab_size=0, d_model=8, num_layers=1, mixers=(GSSConfig(),))
    with pytest.raises(ValueError, match="mlp_activation"):
        LMConfig(vocab_size=4, d_model=8, num_layers=1, mixers=(GSSConfig(),), mlp_activation="x")
    with pytest.raises(ValueError, match="make"):
        LMConfig(vocab_size=4, d_model=8, num_layers=1, mixers=("attention",))
    with pytest.raises(ValueError, match="preset"):
        LMConfig.preset("gateloop-huge")
    gss = LMConfig.preset("gss-tiny")
    assert gss.layer_mixers == (GSSConfig(),) and (gss.num_layers, gss.mlp_ratio) == (4, 0.0)
    tf = LMConfig.preset("transformer-small", vocab_size=300)
    assert tf.layer_mixers[0].causal and (tf.d_model, tf.num_layers, tf.vocab_size) == (256, 4, 300)
    # the trainer's tiny size is the one tiny: width 128, 2 layers, 4 heads
    tiny = LMConfig.preset("tiny")
    assert (tiny.d_model, tiny.num_layers, tiny.layer_mixers[0].num_heads) == (128, 2, 4)
    # the paper-scale preset: ~125M parameters with a GPT-2 vocabulary (abstract init)
    cfg = LMConfig.preset("gateloop-base", vocab_size=50257)
    abstract = nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert 100e6 < n < 160e6, n
