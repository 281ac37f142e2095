"""VAR's scale-causal mask on the flash kernel's block mask (``masks.ScaleCausal``): the
rule equals ``scale_causal_mask``; the kernel (Pallas interpreter) with it equals the
attention reference with the dense mask, forward and gradient; all-masked tiles (later
scales) are skipped; ``jaxar.ops.dot_product_attention`` takes the rule for every impl."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar import ops as jaxar_ops
from jaxar import testing
from jaxar.ops.masks import ScaleCausal, scale_causal_mask
from pallas_kernels.flash_attention import BlockSizes, flash_attention, masks, visited_tiles

SCALES = (1, 2, 3, 4, 5)  # L = 55: blocks of 1, 4, 9, 16, 25 cut across tiles of 16
BS = BlockSizes(16, 16)


@pytest.mark.parametrize("scales", [(1,), (1, 2, 4, 5)])
def test_rule_equals_scale_causal_mask(scales):
    rule = ScaleCausal.from_scales(scales)
    L = sum(s * s for s in scales)
    np.testing.assert_array_equal(np.asarray(rule.dense(L)), np.asarray(scale_causal_mask(scales)))
    np.testing.assert_array_equal(
        masks.BlockMask((rule,)).dense(L, L), np.asarray(scale_causal_mask(scales))
    )


def test_rule_rejects_bad_ends():
    with pytest.raises(ValueError, match=r"ScaleCausal.ends=\(3, 3\) is invalid; accepted"):
        ScaleCausal((3, 3))
    with pytest.raises(ValueError, match=r"scales=\(2, 1\) is invalid"):
        ScaleCausal.from_scales((2, 1))


def _inputs():
    L = sum(s * s for s in SCALES)
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (1, L, 2, 8))
    k = jax.random.normal(ks[1], (1, L, 1, 8))
    v = jax.random.normal(ks[2], (1, L, 1, 8))
    do = jax.random.normal(ks[3], (1, L, 2, 8))
    return q, k, v, do


def _kernel(q, k, v):
    rule = ScaleCausal.from_scales(SCALES)
    return flash_attention(q, k, v, block_mask=rule, interpret=True, block_sizes=BS)


def _reference(q, k, v):
    dense = scale_causal_mask(SCALES)[None, None]
    return jaxar_ops.dot_product_attention(q, k, v, mask=dense, impl="reference")


def test_flash_with_scale_causal_equals_reference(monkeypatch):
    q, k, v, _ = _inputs()
    want = _reference(q, k, v)
    tol = testing.tolerance(jnp.float32)
    np.testing.assert_allclose(_kernel(q, k, v), want, **tol)
    rule = ScaleCausal.from_scales(SCALES)
    np.testing.assert_allclose(
        jaxar_ops.dot_product_attention(q, k, v, mask=rule, impl="xla"), want, **tol
    )
    # impl="pallas" hands the rule itself to the kernel as its block mask (not a dense mask)
    seen = {}

    def kernel(name):
        def call(q, k, v, **kw):
            seen.update(kw)
            return _kernel(q, k, v)

        return call

    monkeypatch.setattr(jaxar_ops.attention.dispatch, "kernel", kernel)
    jaxar_ops.dot_product_attention(q, k, v, mask=rule, impl="pallas")
    assert seen["block_mask"] is rule


@pytest.mark.slow  # the kernel's backward in the Pallas interpreter (minutes on a loaded CPU)
def test_flash_with_scale_causal_gradient_equals_reference():
    q, k, v, do = _inputs()
    _, vjp = jax.vjp(_kernel, q, k, v)
    _, vjp_ref = jax.vjp(_reference, q, k, v)
    for g, w in zip(vjp(do), vjp_ref(do), strict=True):
        np.testing.assert_allclose(g, w, **testing.tolerance(jnp.float32, "grad"))


def test_later_scales_tiles_are_skipped():
    rule = ScaleCausal.from_scales(SCALES)
    L = rule.ends[-1]
    table = masks.block_table(masks.BlockMask((rule,)), L, L, 16, 16)
    # the first query tile (scales 1-4) never reads keys of scale 5 (positions 30..54)
    assert (table[0, 2:] == masks.EMPTY).all() and table[0, 1] == masks.PARTIAL
    visited, total = visited_tiles(L, L, block_mask=rule, block_sizes=BS)
    assert (visited, total) == ((table != masks.EMPTY).sum(), 16) and visited < total
