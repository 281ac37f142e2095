"""The VQ tokenizer (every quantizer), token-AR and VAR models: shapes, code round trips,
losses, no leakage from later scales (by gradient), config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.models import token_ar, var, vq
from jaxar.ops.masks import ScaleCausal


def _images(b=2, size=8, c=1):
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (b, size, size, c)), jnp.uint8)


QUANT = {
    "vq": dict(quantizer="vq"),
    "vq_ema": dict(quantizer="vq_ema"),
    "fsq": dict(quantizer="fsq", latent_dim=3, levels=(4, 4, 4)),
    "lfq": dict(quantizer="lfq", latent_dim=6),
    "rq": dict(quantizer="rq"),
    "msrq": dict(quantizer="msrq"),
}


@pytest.mark.parametrize(
    "kind",  # the quantizers are covered against float64 references in tests/ops
    [pytest.param(k, marks=pytest.mark.slow) for k in QUANT],  # eager convs: slow on CPU
)
def test_vq_codes_round_trip_and_loss(kind):
    cfg = vq.VQConfig.preset("tiny", width=8, **QUANT[kind])
    assert cfg.num_codes == 64
    model = vq.VQ(cfg, rngs=nnx.Rngs(0))
    images = _images()
    z_q, ids, _ = model.quantize(model.encode(images))
    np.testing.assert_allclose(model.code_vectors(ids), z_q, atol=1e-5)
    value, metrics = vq.loss(model, {"image": images})
    assert np.isfinite(float(value))
    assert 0 < float(metrics["usage"]) <= 1 and float(metrics["perplexity"]) >= 1
    assert model.reconstruct(images).shape == images.shape
    assert model.decode_ids(ids).dtype == jnp.uint8


def test_vq_config_errors():
    with pytest.raises(ValueError, match=r"levels=\(4, 1\) is invalid"):
        vq.VQConfig(quantizer="fsq", latent_dim=2, levels=(4, 1))
    with pytest.raises(ValueError, match="needs latent_dim=3"):
        vq.VQConfig(quantizer="fsq", latent_dim=4, levels=(4, 4, 4))
    with pytest.raises(ValueError, match="strictly increasing"):
        vq.VQConfig(quantizer="msrq", scales=(1, 4, 2, 4))
    with pytest.raises(ValueError, match="quantizer='pq' is not supported"):
        vq.VQConfig(quantizer="pq")
    with pytest.raises(ValueError, match="must start at 1"):
        var.VARConfig(scales=(2, 4))
    with pytest.raises(ValueError, match=r"attention_impl='flash' is not supported by attention"):
        var.VARConfig(attention_impl="flash")
    with pytest.raises(
        ValueError, match=r"TokenARConfig.grid=0 is not supported; accepted: an int >= 1"
    ):
        token_ar.TokenARConfig(grid=0)
    with pytest.raises(ValueError, match=r"VARConfig.label_drop_prob=1.0 not in \[0, 1\)"):
        var.VARConfig(label_drop_prob=1.0)


def test_var_mask_is_the_kernels_block_mask_under_pallas():
    dense = var.VARConfig(scales=(1, 2, 3)).mask(2)
    rule = var.VARConfig(scales=(1, 2, 3), attention_impl="pallas").mask(2)
    assert isinstance(rule, ScaleCausal) and rule.ends == (1, 5)
    np.testing.assert_array_equal(np.asarray(rule.dense(5)), np.asarray(dense))


@pytest.mark.slow  # eager convs of the tokenizer inside the loss
def test_frozen_tokenizer_is_not_a_parameter():
    tok = vq.VQ(vq.VQConfig(width=8), rngs=nnx.Rngs(0))
    n_tok = len(jax.tree.leaves(nnx.state(tok, nnx.Param)))
    m = token_ar.TokenAR(
        token_ar.TokenARConfig(d_model=16, num_heads=2), rngs=nnx.Rngs(0), tokenizer=tok
    )
    assert len(jax.tree.leaves(nnx.state(m, vq.Frozen))) == n_tok
    assert not any("tokenizer" in str(p) for p, _ in nnx.to_flat_state(nnx.state(m, nnx.Param)))
    value, _ = token_ar.loss(
        m, {"image": _images(), "label": jnp.asarray([1, 2])}, jax.random.key(0)
    )
    assert np.isfinite(float(value))


def test_var_no_leakage_from_later_scales():
    cfg = var.VARConfig(
        num_codes=8, latent_dim=3, scales=(1, 2, 3), d_model=16, num_heads=2, num_layers=2
    )
    model = var.VAR(cfg, rngs=nnx.Rngs(0))
    nnx.update(
        model, jax.tree.map(lambda x: x + 0.1, nnx.state(model, nnx.Param))
    )  # non-zero gates
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, cfg.seq_len - 1, 3)), jnp.float32)
    ends = cfg.block_ends()  # (1, 5, 14); inputs of block k are x[:, ends[k-1]-1 : ends[k]-1]

    def grads(x):  # one compile for the three gradients (eager op-by-op was ~40 s)
        out = lambda x, k: jnp.sum(model(jnp.asarray([2]), x)[:, : ends[k]] ** 2)  # noqa: E731
        return [jax.grad(out)(x, k) for k in range(3)]

    for k, g in enumerate(jax.jit(grads)(x)):
        g = np.abs(np.asarray(g))[0].sum(-1)
        seen = ends[k] - 1
        assert np.all(g[seen:] == 0), (k, g)
        if seen:
            assert np.all(g[:seen] > 0), (k, g)


@pytest.mark.slow  # shapes and loss levels; the samplers' tests run both models
def test_var_loss_and_token_ar_shapes():
    cfg = var.VARConfig(num_codes=8, latent_dim=3, scales=(1, 2), d_model=16, num_heads=2)
    model = var.VAR(cfg, rngs=nnx.Rngs(0))
    codes = jnp.asarray(np.random.default_rng(2).integers(0, 8, (3, cfg.seq_len)), jnp.int32)
    value, m = var.loss(model, {"codes": codes, "label": jnp.asarray([0, 1, 2])}, jax.random.key(0))
    assert abs(float(value) - np.log(8)) < 1.0
    tcfg = token_ar.TokenARConfig(num_codes=8, grid=2, num_classes=3, d_model=16, num_heads=2)
    tm = token_ar.TokenAR(tcfg, rngs=nnx.Rngs(0))
    logits = tm(jnp.asarray([[8, 0, 1, 2]]))
    assert logits.shape == (1, 4, tcfg.vocab_size)
    assert np.all(np.isneginf(np.asarray(logits[..., 8:])))
    with pytest.raises(ValueError, match="codes have 3 per image; the model expects 4"):
        token_ar.loss(
            tm, {"codes": codes[:, :3], "label": jnp.asarray([0, 1, 2])}, jax.random.key(0)
        )


@pytest.mark.slow  # the flash kernel in the Pallas interpreter inside a model
def test_var_on_the_flash_kernel_equals_xla():
    kw = dict(num_codes=8, latent_dim=3, scales=(1, 2, 3), d_model=16, num_heads=2)
    model = var.VAR(var.VARConfig(**kw), rngs=nnx.Rngs(0))
    nnx.update(model, jax.tree.map(lambda x: x + 0.1, nnx.state(model, nnx.Param)))
    graphdef, state = nnx.split(model)
    flash = var.VAR(var.VARConfig(**kw, attention_impl="pallas"), rngs=nnx.Rngs(0))
    nnx.update(flash, state)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 13, 3)), jnp.float32)
    labels = jnp.asarray([1, 2])
    np.testing.assert_allclose(flash(labels, x), model(labels, x), rtol=1e-5, atol=1e-5)
