"""GLA, RetNet, Mamba2, GatedDeltaNet: full-sequence call == decode in pieces; per-step
states (return_steps) == the states of shorter decodes; packed documents == separate runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.models.lm import LM, LMConfig
from jaxar.nn import MIXERS
from jaxar.nn.linear_attention import (
    GatedDeltaNetConfig,
    GLAConfig,
    Mamba2Config,
    RetNetConfig,
)

B, L, D = 2, 10, 16
TOL = dict(rtol=1e-4, atol=1e-4)  # float32 on both sides: the table's "grad" row
CONFIGS = {
    "gla": GLAConfig(num_heads=2, chunk_size=4),
    "retnet": RetNetConfig(num_heads=2, chunk_size=4),
    "mamba2": Mamba2Config(num_heads=2, d_state=4, chunk_size=4),
    "gated_deltanet": GatedDeltaNetConfig(num_heads=2, chunk_size=4),  # short convs, W = 4
}
NO_CONV = GatedDeltaNetConfig(num_heads=2, chunk_size=4, conv_width=0)


@nnx.jit
def _call(mixer, x, seg=None):
    return mixer(x, segment_ids=seg)


@nnx.jit(static_argnames="return_steps")
def _decode(mixer, x, state, return_steps=False):
    return mixer.decode(x, state, return_steps=return_steps)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **TOL)


@pytest.mark.parametrize(
    "name", [*CONFIGS, pytest.param("gated_deltanet_noconv", marks=pytest.mark.slow)]
)
def test_full_equals_decode_steps_and_resets(name):
    cfg = NO_CONV if name == "gated_deltanet_noconv" else CONFIGS[name]
    assert isinstance(cfg, MIXERS[name.removesuffix("_noconv")])
    mixer = cfg.make(D, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (B, L, D))
    full = _call(mixer, x)
    assert full.shape == (B, L, D) and np.isfinite(np.asarray(full)).all()
    h = L // 2
    s0 = mixer.init_state(B, L)
    y1, s1, steps = _decode(mixer, x[:, :h], s0, return_steps=True)
    y2, _ = _decode(mixer, x[:, h:], s1)
    _close(jnp.concatenate([y1, y2], axis=1), full)
    # steps: a leading axis of size T; entry t is the state after t + 1 inputs
    _close(jax.tree.map(lambda t: t[-1], steps), s1)
    _, s_short, _ = _decode(mixer, x[:, : h - 1], s0, return_steps=True)
    _close(jax.tree.map(lambda t: t[h - 2], steps), s_short)
    # packed documents: segment ids == two separate runs
    seg = jnp.concatenate([jnp.ones((B, h), jnp.int32), 2 * jnp.ones((B, L - h), jnp.int32)], 1)
    packed = _call(mixer, x, seg)
    _close(packed[:, :h], y1)
    _close(packed[:, h:], _call(mixer, x[:, h:]))


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "kind", ["gla"] + [pytest.param(k, marks=SLOW) for k in ("retnet", "mamba2", "gated_deltanet")]
)
def test_lm_presets_build_and_errors(kind):
    cfg = LMConfig.preset(f"{kind}-tiny", d_model=16, num_heads=2, num_layers=1, vocab_size=11)
    model = LM(cfg, rngs=nnx.Rngs(0))
    logits = nnx.jit(lambda m, t: m(t))(model, jnp.zeros((1, 6), jnp.int32))
    assert logits.shape == (1, 6, 11) and np.isfinite(np.asarray(logits)).all()
    mixer = model.backbone.blocks[0].mixer
    with pytest.raises(ValueError, match="mask must be None"):
        mixer(jnp.zeros((1, 4, 16)), mask=jnp.ones((4, 4), bool))
    with pytest.raises(ValueError, match="bidirectional"):
        mixer.decode(jnp.zeros((1, 1, 16)), mixer.init_state(1, 4), bidirectional=True)


def test_config_errors():
    with pytest.raises(ValueError, match="GLAConfig.impl='fast'"):
        GLAConfig(impl="fast")
    with pytest.raises(ValueError, match="RetNetConfig.num_heads=0"):
        RetNetConfig(num_heads=0)
    with pytest.raises(ValueError, match="Mamba2Config.d_state=0"):
        Mamba2Config(d_state=0)
    with pytest.raises(ValueError, match="GatedDeltaNetConfig.chunk_size=-1"):
        GatedDeltaNetConfig(chunk_size=-1)
    with pytest.raises(ValueError, match="GatedDeltaNetConfig.conv_width=-1.*int >= 0"):
        GatedDeltaNetConfig(conv_width=-1)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Mamba2Config(num_heads=3).make(16, rngs=nnx.Rngs(0))


@pytest.mark.slow  # the Pallas interpreter on CPU: ~10-30 s per mixer
@pytest.mark.parametrize("name", list(CONFIGS))
def test_pallas_impl_equals_chunked_with_packed_documents(name):
    """``impl="pallas"`` (the GateLoop kernel for GLA / RetNet / Mamba2, the delta-rule
    kernel for GatedDeltaNet; interpret mode on CPU) == the chunked core, resets included."""
    cfg = CONFIGS[name]
    x = jax.random.normal(jax.random.key(1), (B, L, D))
    seg = jnp.array([[0] * 4 + [1] * 6, [0] * 10])
    want = _call(cfg.make(D, rngs=nnx.Rngs(0)), x, seg)
    got = _call(dataclasses.replace(cfg, impl="pallas").make(D, rngs=nnx.Rngs(0)), x, seg)
    _close(got, want)
