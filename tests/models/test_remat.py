"""LMConfig.remat: the same loss and gradients as no remat, with a remat in the graph."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.models import mdlm
from jaxar.models.lm import LM, REMAT, LMConfig, lm_loss

BASE = dict(vocab_size=32, d_model=16, num_layers=2, num_heads=2, mixer=("attention", "gss"))


def _grads(remat):
    model = LM(LMConfig(**BASE, remat=remat), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tokens = jax.random.randint(jax.random.key(1), (2, 13), 0, 32)
    seg = jnp.asarray([[1] * 5 + [2] * 8, [1] * 13])  # a packed row and a plain row

    def loss(p):
        return lm_loss(nnx.merge(graphdef, p), {"tokens": tokens, "segment_ids": seg})[0]

    f = jax.value_and_grad(loss)
    return jax.jit(f)(params), str(jax.make_jaxpr(f)(params))


@pytest.fixture(scope="module")
def reference():
    return _grads("none")


@pytest.mark.parametrize("remat", ["block", "dots_saveable"])
def test_remat_gradients_equal_no_remat(remat, reference, tol):
    (want_loss, want), plain_jaxpr = reference
    (got_loss, got), jaxpr = _grads(remat)
    assert "remat" in jaxpr and "remat" not in plain_jaxpr
    np.testing.assert_allclose(got_loss, want_loss, **tol(np.float32))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, **tol(np.float32, "grad"))


def test_remat_choices_and_mdlm_forwarding():
    assert set(REMAT) == {"none", "block", "dots_saveable"}
    with pytest.raises(ValueError, match=r"LMConfig.remat='all'.*accepted"):
        LMConfig(remat="all")
    assert mdlm.MDLMConfig(remat="block").lm.remat == "block"
