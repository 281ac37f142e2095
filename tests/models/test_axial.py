"""Axial Transformer: causality by gradient, semi-parallel == naive sampling, axial layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar import testing
from jaxar.models import axial
from jaxar.nn.attention import AttentionConfig
from jaxar.nn.axial import AxialAttention
from jaxar.sampling import axial as axial_sampling

H, W, C, V = 4, 4, 3, 16


@pytest.fixture(scope="module")
def model():
    cfg = axial.AxialTransformerConfig.preset("tiny", height=H, width=W, channels=C, levels=V)
    return axial.AxialTransformer(cfg, nnx.Rngs(0))


def test_causality_by_gradient(model):
    img = jax.random.randint(jax.random.key(1), (1, H, W, C), 0, V)
    e, f = model.embed_pixels(img), model.embed_channels(img)
    w = jax.random.normal(jax.random.key(2), (V,))

    def out(e, f):
        return (model.forward_embeddings(e, f) @ w)[0]  # (H, W, C)

    je, jf = jax.jit(jax.jacrev(out, argnums=(0, 1)))(e, f)
    je = np.abs(np.asarray(je)).sum(-1)[:, :, :, 0]  # (H, W, C, H, W)
    jf = np.abs(np.asarray(jf)).sum(-1)[:, :, :, 0]  # (H, W, C, H, W, C)
    for r in range(H):
        for c in range(W):
            for ch in range(C):
                later = np.arange(H * W).reshape(H, W) >= r * W + c
                assert np.all(je[r, c, ch][later] == 0), (r, c, ch)
                other = np.ones((H, W, C), bool)
                other[r, c, :ch] = False
                assert np.all(jf[r, c, ch][other] == 0), (r, c, ch)
                if ch:
                    assert np.all(jf[r, c, ch][r, c, :ch] > 0)
                if r * W + c:
                    assert je[r, c, ch][~later].sum() > 0


def test_semi_parallel_equals_naive(model):
    key = jax.random.key(7)
    naive = axial_sampling.sample(model, key, 2, method="naive")
    semi = axial_sampling.sample(model, key, 2, method="semi_parallel")
    assert naive.dtype == jnp.uint8 and naive.shape == (2, H, W, C)
    np.testing.assert_array_equal(np.asarray(semi), np.asarray(naive))
    assert len(np.unique(np.asarray(naive))) > 1


@pytest.mark.slow
def test_semi_parallel_equals_naive_8x8x1():
    m = axial.AxialTransformer(axial.AxialTransformerConfig.preset("tiny"), nnx.Rngs(3))
    key = jax.random.key(11)
    np.testing.assert_array_equal(
        np.asarray(axial_sampling.sample(m, key, 2, method="semi_parallel")),
        np.asarray(axial_sampling.sample(m, key, 2, method="naive")),
    )


def test_loss_metrics(model):
    img = jax.random.randint(jax.random.key(4), (2, H, W, C), 0, V).astype(jnp.uint8)
    loss, metrics = axial.loss(model, {"image": img}, None)
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(metrics["bits_per_dim"], loss / np.log(2.0), rtol=1e-6)
    with pytest.raises(ValueError, match="image has shape"):
        model(img[:, :2])
    with pytest.raises(ValueError, match="method"):
        axial_sampling.sample(model, jax.random.key(0), 1, method="fast")


def test_axial_layer_equals_folded_attention():
    layer = AxialAttention(16, 2, axis=1, causal=True, rngs=nnx.Rngs(5))
    x = jax.random.normal(jax.random.key(6), (2, 3, 5, 16))
    got = layer(x)
    # the same weights as a sequence mixer over columns: (B * W, H, D)
    mha = layer.attn
    xs = jnp.moveaxis(x, 2, 1).reshape(2 * 5, 3, 16)
    assert mha.config == AttentionConfig(num_heads=2, causal=True, rope=False)
    want = jnp.moveaxis(mha(xs).reshape(2, 5, 3, 16), 1, 2)
    testing.assert_allclose(got, want)


def test_presets():
    cfg = axial.AxialTransformerConfig.preset("imagenet32")
    assert (cfg.height, cfg.width, cfg.channels, cfg.levels) == (32, 32, 3, 256)
    with pytest.raises(ValueError, match=r"no field\(s\) \['layers'\]; accepted: \['height'"):
        axial.AxialTransformerConfig.preset("tiny", layers=3)
    with pytest.raises(ValueError, match=r"name='huge'.*'imagenet32'"):
        axial.AxialTransformerConfig.preset("huge")
    with pytest.raises(ValueError, match="num_heads"):
        axial.AxialTransformerConfig(d_model=30, num_heads=4)
