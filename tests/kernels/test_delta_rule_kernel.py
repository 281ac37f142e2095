"""Delta-rule kernel vs the ``jaxar.ops.delta_rule`` reference, one shared base per mode.

Reached as jaxar reaches it, ``jaxar.ops.delta_rule(impl="pallas")`` (key normalisation
and resets in the op, the chunk carries in the kernel), with the ``interpret`` flag the
dispatch table binds set per mode: the generic Pallas interpreter (the Triton-form kernel)
and the TPU interpreter (the Mosaic kernel). Lowering: tests/kernels/test_lowering.py.
"""

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxar import dispatch, ops, testing
from pallas_kernels.delta_rule import delta_rule


def _inputs(B=1, L=21, H=1, K=4, V=4, seed=0):
    ks = jax.random.split(jax.random.key(seed), 8)
    q = jax.random.normal(ks[0], (B, L, H, K))
    k = jax.random.normal(ks[1], (B, L, H, K))
    v = jax.random.normal(ks[2], (B, L, H, V))
    beta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, L, H)))
    g = jax.nn.log_sigmoid(2.0 + jax.random.normal(ks[4], (B, L, H)))
    s0 = jax.random.normal(ks[5], (B, H, K, V))
    dy = jax.random.normal(ks[6], (B, L, H, V))
    ds = jax.random.normal(ks[7], (B, H, K, V))
    reset = jnp.zeros((B, L), bool).at[0, 9].set(True)
    return q, k, v, beta, g, s0, reset, dy, ds


class DeltaRuleKernelBase:
    """y, final state and the gradients of q, k, v, beta, the log-gate and the state."""

    interpret = True

    def check(self, monkeypatch, *, gated=True, dtype=jnp.float32, grad=True):
        monkeypatch.setitem(dispatch.INTERPRET, dispatch.platform(), self.interpret)
        q, k, v, beta, g, s0, reset, dy, ds = _inputs()
        q, k, v = (t.astype(dtype) for t in (q, k, v))

        def op(impl):
            def f(q, k, v, beta, g, s0):
                return ops.delta_rule(q, k, v, beta, gate=g if gated else None,
                                      initial_state=s0, reset=reset, impl=impl,
                                      return_state=True)  # fmt: skip

            return f

        def fwd_bwd(fn):
            def run(q, k, v, beta, g, s0, dy, ds):
                out, vjp = jax.vjp(fn, q, k, v, beta, g, s0)
                return out, vjp((dy.astype(out[0].dtype), ds))

            return run

        args = (q, k, v, beta, g, s0, dy, ds)
        want = testing.reference_x64(fwd_bwd(op("recurrent")), *args)
        if not grad:
            got = jax.jit(op("pallas"))(*args[:6])
            testing.assert_allclose(got, want[0], dtype=dtype, kind="fwd")
            return
        got = jax.jit(fwd_bwd(op("pallas")))(*args)
        testing.assert_allclose(got[0], want[0], dtype=dtype, kind="fwd")
        testing.assert_allclose(got[1], want[1], dtype=dtype, kind="grad")

    def test_gated_with_state_and_reset(self, monkeypatch):
        self.check(monkeypatch)

    @pytest.mark.slow
    def test_ungated(self, monkeypatch):
        self.check(monkeypatch, gated=False)

    @pytest.mark.slow
    def test_bfloat16(self, monkeypatch):
        self.check(monkeypatch, dtype=jnp.bfloat16, grad=False)


class TestInterpret(DeltaRuleKernelBase):
    interpret = True


@pytest.mark.slow  # ~15 s in the TPU interpreter on 2 cores
class TestTpuInterpret(DeltaRuleKernelBase):
    interpret = pltpu.InterpretParams()


@pytest.mark.gpu
class TestGpu(DeltaRuleKernelBase):
    interpret = False


@pytest.mark.tpu
class TestTpu(DeltaRuleKernelBase):
    interpret = False


def test_errors_name_the_argument():
    x = jnp.zeros((1, 16, 2, 8))
    b = jnp.zeros((1, 16, 2))
    with pytest.raises(ValueError, match="accepted: q, k"):
        delta_rule(x, x[..., :4], x, b, interpret=True)
    with pytest.raises(ValueError, match="beta has shape"):
        delta_rule(x, x, x, b[:, :8], interpret=True)
    with pytest.raises(ValueError, match="state0 has shape"):
        delta_rule(x, x, x, b, state0=jnp.zeros((1, 2, 8, 4)), interpret=True)
    with pytest.raises(ValueError, match="chunk_size"):
        delta_rule(x, x, x, b, chunk_size=0, interpret=True)
    with pytest.raises(ValueError, match="q has dtype"):
        delta_rule(x.astype(jnp.int32), x, x, b, interpret=True)
