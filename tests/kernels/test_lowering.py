"""Every kernel lowers for TPU (Mosaic) and GPU (Triton) on this CPU, forward and backward,
reached the way jaxar reaches it: ``jaxar.ops.<op>(impl="pallas")`` -> ``jaxar.dispatch``
(which binds ``interpret=False`` on an accelerator) -> the kernel's compiled lowering.

The platform switch (``jax.default_backend``) is patched; ``lower(lowering_platforms=...)``
runs Mosaic / Triton lowering in full (only the final compile needs the hardware). Each
kernel file also lowers the kernel called directly, with more shapes and dtypes.
"""

from unittest import mock

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxar import ops

PLATFORMS = [("tpu", "tpu_custom_call"), ("cuda", "triton")]


def _gateloop():
    x = jax.ShapeDtypeStruct((1, 40, 2, 16), jnp.bfloat16)
    a = jax.ShapeDtypeStruct((1, 40, 2, 16), jnp.float32)  # real gates: the sign fold too

    def loss(q, k, v, a):
        y, s = ops.gateloop(q, k, v, a, impl="pallas")
        return y.astype(jnp.float32).sum() + s.sum()

    return loss, (x, x, x, a), 3  # kernels: y; dq; dk, dv


def _linear_scan():
    x = jax.ShapeDtypeStruct((2, 40, 8), jnp.float32)

    def loss(a, x):
        h, last = ops.linear_scan(a, x, impl="pallas")
        return h.sum() + last.sum()

    return loss, (x, x), 2  # forward and reverse (post) scans


def _flash_attention():
    q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)

    def loss(q, k, v):
        return ops.dot_product_attention(q, k, v, causal=True, impl="pallas").sum()

    return loss, (q, q, q), 3  # forward; dq; dk, dv


def _flash_scale_causal():
    """VAR's scale-causal rule as a block-mask term (scales 1, 2, 4, 8, 10: 185 positions)."""
    q = jax.ShapeDtypeStruct((1, 185, 2, 64), jnp.bfloat16)
    rule = ops.masks.ScaleCausal.from_scales((1, 2, 4, 8, 10))

    def loss(q, k, v):
        return ops.dot_product_attention(q, k, v, mask=rule, impl="pallas").sum()

    return loss, (q, q, q), 3  # forward; dq; dk, dv


def _linear_attention():
    x = jax.ShapeDtypeStruct((1, 40, 2, 16), jnp.bfloat16)
    la = jax.ShapeDtypeStruct((1, 40, 2), jnp.float32)  # scalar gates: broadcast over K
    lc = jax.ShapeDtypeStruct((1, 40, 2, 16), jnp.complex64)  # complex diagonal gates

    def loss(q, k, v, la, lc):
        reset = jnp.zeros((1, 40), bool).at[0, 17].set(True)
        ys, ss = ops.linear_attention(q, k, v, -jnp.abs(la), gate="scalar", reset=reset,
                                      impl="pallas")  # fmt: skip
        lc = lax.complex(-jnp.abs(lc.real), lc.imag)
        yc, sc = ops.linear_attention(q, k, v, lc, impl="pallas")
        return (ys + yc).astype(jnp.float32).sum() + ss.sum() + jnp.abs(sc).sum()

    return loss, (x, x, x, la, lc), 6  # two kernels x (y; dq; dk, dv)


def _delta_rule():
    x = jax.ShapeDtypeStruct((1, 40, 2, 16), jnp.bfloat16)
    b = jax.ShapeDtypeStruct((1, 40, 2), jnp.float32)

    def loss(q, k, v, beta, g):
        y, s = ops.delta_rule(q, k, v, jax.nn.sigmoid(beta), gate=-jax.nn.softplus(g),
                              impl="pallas", return_state=True)  # fmt: skip
        return y.astype(jnp.float32).sum() + s.sum()

    return loss, (x, x, x, b, b), 2  # the forward carry; the reverse (adjoint) carry


KERNELS = {
    "delta_rule": _delta_rule,
    "flash_attention": _flash_attention,
    "flash_scale_causal": _flash_scale_causal,
    "gateloop": _gateloop,
    "linear_attention": _linear_attention,
    "linear_scan": _linear_scan,
}


@pytest.mark.parametrize("platform,target", PLATFORMS, ids=["tpu", "cuda"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_lowers_forward_and_backward(name, platform, target, tpu_info_on_cpu):
    loss, args, kernels = KERNELS[name]()
    grad = jax.grad(lambda *t: loss(*t).astype(jnp.float32), argnums=tuple(range(len(args))))
    with mock.patch.object(jax, "default_backend", lambda: platform):
        text = jax.jit(grad).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    assert text.count(target) >= kernels
