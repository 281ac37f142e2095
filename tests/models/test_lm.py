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


@pytest.mark.parametrize(
    "family", ["gateloop", pytest.param("gss", marks=pytest.mark.slow), FAMILIES[2]]
)
def test_decode_return_steps_are_per_position_states(family):
    """Shared protocol: steps[t] is the state after t + 1 inputs; steps[-1] is the new state."""
    model = LM(_cfg(family), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(4), (B, L), 0, V)
    t = 3
    _, state0 = _decode(model, tokens[:, :2], model.init_state(B, L))
    logits, new, steps = nnx.jit(lambda m, x, s: m.decode(x, s, return_steps=True))(
        model, tokens[:, 2 : 2 + t], state0
    )
    assert len(steps) == len(new)
    s_i, want_logits = state0, []
    for i in range(t):  # one input at a time: the state after i + 1 inputs
        lg, s_i = _decode(model, tokens[:, 2 + i : 3 + i], s_i)
        want_logits.append(lg)
        for layer, (s_new, s_steps) in enumerate(zip(new, steps, strict=True)):
            if isinstance(s_new, dict):  # attention: rolled back by its index
                assert s_steps is None
                continue
            assert s_steps.shape == (t,) + s_new.shape, layer
            np.testing.assert_allclose(np.asarray(s_steps[i]), np.asarray(s_i[layer]), atol=1e-5)
            if i == t - 1:
                np.testing.assert_array_equal(np.asarray(s_steps[-1]), np.asarray(s_new))
    np.testing.assert_allclose(
        np.asarray(logits), np.asarray(jnp.concatenate(want_logits, 1)), rtol=1e-4, atol=1e-4
    )


def test_mtp_heads_loss_and_validation():
    """Head j predicts token t + j + 1; loss = CE + w * mean_j CE_j; spans stay in a segment."""
    n, w = 2, 0.3
    model = LM(_cfg("gss", mtp_heads=n, mtp_weight=w), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(5), (B, L), 0, V)
    seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 1]], jnp.int32)
    value, metrics = nnx.jit(lm_loss)(model, {"tokens": tokens, "segment_ids": seg}, None)

    @nnx.jit
    def heads(m, x, s):
        h = m.hidden(x, segment_ids=s)
        return m.logits(h), m.mtp_logits(h)

    logits, mtp = (np.asarray(a, np.float64) for a in heads(model, tokens[:, :-1], seg[:, :-1]))
    assert mtp.shape == (B, L - 1, n, V)
    toks, sg = np.asarray(tokens), np.asarray(seg)

    def ce(lg, off):  # mean CE of predicting tokens[t + off] from position t
        tot, cnt = 0.0, 0
        for b in range(B):
            for i in range(L - off):
                if sg[b, i] > 0 and all(sg[b, i + r] == sg[b, i] for r in range(off + 1)):
                    lp = lg[b, i] - np.log(np.exp(lg[b, i]).sum())
                    tot, cnt = tot - lp[toks[b, i + off]], cnt + 1
        return tot / cnt

    ce0 = ce(logits, 1)
    ces = [ce(mtp[:, :, j - 1], j + 1) for j in range(1, n + 1)]
    np.testing.assert_allclose(float(metrics["next_token_loss"]), ce0, rtol=1e-5)
    for j in range(1, n + 1):
        np.testing.assert_allclose(float(metrics[f"mtp_loss_{j}"]), ces[j - 1], rtol=1e-5)
    np.testing.assert_allclose(float(value), ce0 + w * np.mean(ces), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["bits_per_token"]), ce0 / np.log(2), rtol=1e-5)
    # the heads train: their loss has a gradient on their weights
    grads = nnx.jit(nnx.grad(lambda m: lm_loss(m, {"tokens": tokens}, None)[0]))(model)
    assert float(jnp.abs(grads.mtp[0].kernel[...]).sum()) > 0
    with pytest.raises(ValueError, match="mtp_heads=-1"):
        _cfg("gss", mtp_heads=-1)
    with pytest.raises(ValueError, match="mtp_weight=-0.5"):
        _cfg("gss", mtp_heads=1, mtp_weight=-0.5)
    with pytest.raises(ValueError, match="mtp_heads=0"):
        LM(_cfg("gss"), rngs=nnx.Rngs(0)).mtp_logits(jnp.zeros((1, 1, 16)))
