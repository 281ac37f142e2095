"""Classifier-free guidance and the token-AR / VAR samplers: guidance scale 1 is the
conditional law (exactly, and by chi-square against the exact joint), cached sampling
equals uncached token for token, the Guided wrapper drives ``generate``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from jaxar.models import token_ar, var
from jaxar.sampling import generate
from jaxar.sampling import token_ar as tas
from jaxar.sampling import var as vs
from jaxar.sampling.guidance import Guided, cfg, guidance_scale


def _perturb(model, scale, seed=1):
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    nnx.update(model, jax.tree.unflatten(tree, noisy))
    return model


@pytest.fixture(scope="module")
def tar():
    cfg_ = token_ar.TokenARConfig(
        num_codes=3, grid=2, num_classes=2, d_model=16, num_heads=2, num_layers=1
    )
    return _perturb(token_ar.TokenAR(cfg_, rngs=nnx.Rngs(0)), 0.7)


def test_cfg_formula_schedules_and_errors():
    c = jnp.asarray([[1.0, -jnp.inf, 0.5]])
    u = jnp.asarray([[0.0, 2.0, -jnp.inf]])
    np.testing.assert_array_equal(np.asarray(cfg(c, u, 1.0)), np.asarray(c))
    np.testing.assert_array_equal(np.asarray(cfg(c, u, 3.0)), [[3.0, -np.inf, 0.5]])
    assert float(guidance_scale(4.0, "linear", 0, 5)) == 1.0
    assert float(guidance_scale(4.0, "linear", 4, 5)) == 4.0
    with pytest.raises(ValueError, match="cfg_schedule='cosine' is not supported"):
        cfg(c, u, 2.0, schedule="cosine")


def _exact_first_two(model, label, scale):
    """The exact law of the first two codes (guided when scale is not None)."""
    k = model.config.num_codes
    cls, null = k + label, k + model.config.null_class
    p = np.zeros((k, k))
    for t0 in range(k):
        lc = model(jnp.asarray([[cls, t0]]))[0, :, :k]
        lu = model(jnp.asarray([[null, t0]]))[0, :, :k]
        logit = lc if scale is None else cfg(lc, lu, scale)
        probs = np.asarray(jax.nn.softmax(logit, -1), np.float64)
        p[t0] = probs[0, t0] * probs[1]
    return p.reshape(-1)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_token_ar_guided_law_chi_square(tar, scale):
    n = 4000
    codes = np.asarray(
        tas.sample_codes(tar, jax.random.key(7), n, labels=jnp.ones(n, jnp.int32), cfg_scale=scale)
    )
    counts = np.bincount(codes[:, 0] * 3 + codes[:, 1], minlength=9)
    exact = _exact_first_two(tar, 1, scale)
    expected = exact / exact.sum() * n
    assert stats.chisquare(counts, expected).pvalue > 1e-3, (counts, expected)
    if scale == 1.0:  # same key, same draws as plain conditional sampling
        plain = tas.sample_codes(tar, jax.random.key(7), n, labels=jnp.ones(n, jnp.int32))
        np.testing.assert_array_equal(codes, np.asarray(plain))


@pytest.mark.parametrize("cfg_scale", [pytest.param(None, marks=pytest.mark.slow), 2.0])
def test_token_ar_cached_equals_uncached(tar, cfg_scale):
    kw = dict(labels=jnp.asarray([0, 1, 1]), cfg_scale=cfg_scale, top_k=2, top_p=0.9)
    a = tas.sample_codes(tar, jax.random.key(3), 3, **kw)
    b = tas.sample_codes(tar, jax.random.key(3), 3, use_cache=False, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_guided_wrapper_drives_generate(tar):
    k = tar.config.num_codes
    prompt = jnp.asarray([[k + 1], [k + 0]], jnp.int32)
    null = jnp.full((2, 1), k + tar.config.null_class, jnp.int32)
    key = jax.random.key(5)
    plain = generate(key, tar, prompt, max_new_tokens=4)
    np.testing.assert_array_equal(
        np.asarray(generate(key, Guided(tar, null, 1.0), prompt, max_new_tokens=4)),
        np.asarray(plain),
    )
    assert np.all(np.asarray(plain)[:, 1:] < k)  # class ids are never drawn


def test_var_cached_equals_uncached_and_bad_labels():
    c = var.VARConfig(
        num_codes=6,
        latent_dim=3,
        scales=(1, 2, 3),
        num_classes=3,
        d_model=16,
        num_heads=2,
        num_layers=1,
    )
    model = _perturb(var.VAR(c, rngs=nnx.Rngs(0)), 0.3)
    kw = dict(labels=jnp.asarray([0, 2]), cfg_scale=2.0, top_k=4, top_p=0.95)
    a, fa = vs.sample_codes(model, jax.random.key(1), 2, **kw)
    b, fb = vs.sample_codes(model, jax.random.key(1), 2, use_cache=False, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(fa), np.asarray(fb), atol=1e-6)
    assert a.shape == (2, c.seq_len) and np.all((np.asarray(a) >= 0) & (np.asarray(a) < 6))
    with pytest.raises(ValueError, match=r"labels hold ids outside \[0, 3\)"):
        vs.sample_codes(model, jax.random.key(1), 2, labels=[0, 3])
