"""Linear-scan kernel vs the ``jaxar.ops.linear_scan`` reference, one shared base per mode.

Modes: the generic Pallas interpreter (``interpret=True``, the Triton-form kernel), the
TPU interpreter (the Mosaic kernel), and compiled GPU / TPU (skipped here). A lowering
test checks that both compiled lowerings trace and lower, forward and backward, on CPU.
"""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxar import ops, testing
from pallas_kernels.linear_scan import BlockSizes, linear_scan


def _reference(a, x, h0, reverse=False, reset=None):
    """``jaxar.ops.linear_scan`` with the sequential (lax.scan) implementation."""
    return ops.linear_scan(a, x, h0, reverse=reverse, reset=reset, impl="sequential")


def _inputs(shape, dtype, complex_=False, seed=0, gate_range=(0.6, 1.0)):
    ks = jax.random.split(jax.random.key(seed), 7)
    B = shape[0]
    a = jax.random.uniform(ks[0], shape, jnp.float32, *gate_range)
    x = jax.random.normal(ks[1], shape, jnp.float32)
    h0 = jax.random.normal(ks[2], (B, *shape[2:]), jnp.float32)
    dh = jax.random.normal(ks[3], shape, jnp.float32)
    if complex_:
        a = a * jnp.exp(1j * jax.random.uniform(ks[4], shape, jnp.float32, -1.0, 1.0))
        x = x + 1j * jax.random.normal(ks[5], shape, jnp.float32)
        h0 = h0 + 1j * jax.random.normal(ks[6], h0.shape, jnp.float32)
        dh = dh - 0.5j * x.real
    cast = lambda u: u.astype(jnp.complex64 if complex_ else dtype)
    return cast(a), cast(x), cast(h0), cast(dh)


class LinearScanTestBase:
    """The cases; subclasses set the execution mode and the tiles."""

    interpret = True
    block_sizes = BlockSizes(16, 16)

    def call(self, a, x, h0, **kw):
        return linear_scan(a, x, h0, interpret=self.interpret, block_sizes=self.block_sizes, **kw)

    def check(self, shape, dtype=jnp.float32, complex_=False, reverse=False, reset=None, h0=True,
              gate_range=(0.6, 1.0)):  # fmt: skip
        a, x, h0_, dh = _inputs(shape, dtype, complex_, gate_range=gate_range)
        dtype = a.dtype
        use_h0 = h0
        carry = jnp.complex64 if complex_ else jnp.float32  # h_last is float32 / complex64
        dlast = (0.5 * h0_ if h0 else jnp.ones(dh.shape[:1] + dh.shape[2:], dh.dtype)).astype(carry)

        def fwd_bwd(fn):
            def run(a, x, h0, dh, dlast, reset):
                out, vjp = jax.vjp(
                    lambda a, x, h: fn(a, x, h if use_h0 else None, reverse=reverse, reset=reset),
                    a,
                    x,
                    h0,
                )
                return out, vjp((dh, dlast))

            return run

        if not h0:  # h0=None: its "gradient" below is the zeros passed in
            h0_ = jnp.zeros(dlast.shape, dtype)
        got = jax.jit(fwd_bwd(self.call))(a, x, h0_, dh, dlast, reset)
        want = testing.reference_x64(fwd_bwd(_reference), a, x, h0_, dh, dlast, reset)
        testing.assert_allclose(got[0], want[0], dtype=dtype, kind="fwd")
        testing.assert_allclose(got[1], want[1], dtype=dtype, kind="grad")

    # ------------------------------------------------------------------ cases

    def test_real_h0_odd_length(self):
        self.check((2, 37, 3, 7))  # 21 features: two feature tiles of 16 in the generic mode

    @pytest.mark.slow
    def test_long_wide(self):
        self.block_sizes = None  # the default heuristic
        self.check((1, 300, 130), complex_=True, reverse=True)

    def test_reverse(self):
        self.check((2, 37, 5), reverse=True)

    def test_complex_with_resets(self):
        reset = np.zeros((2, 37), bool)
        reset[0, [0, 9, 20]] = True
        reset[1, 33] = True
        self.check((2, 37, 5), complex_=True, reset=jnp.asarray(reset))

    def test_bfloat16(self):
        self.check((2, 37, 5), dtype=jnp.bfloat16)

    def test_negative_gates(self):
        """Issue 18 item 9: gates of both signs, exact (the kernel multiplies, no logs)."""
        self.check((2, 37, 5), gate_range=(-1.0, 1.0))


class TestInterpret(LinearScanTestBase):
    """Generic Pallas interpreter: the Triton-form kernel on CPU."""

    interpret = True
    block_sizes = BlockSizes(16, 16)

    def test_complex_reverse_no_h0(self):
        self.check((1, 21, 4), complex_=True, reverse=True, h0=False)

    def test_broadcast_gates(self):
        """a (B, L, 1, 1) broadcasts over the features, as in ``jaxar.ops.linear_scan``."""
        a, x, h0, dh = _inputs((2, 37, 3, 7), jnp.float32)
        a = a[:, :, :1, :1]

        def fwd_bwd(fn):
            def run(a, x, h0, dh):
                out, vjp = jax.vjp(lambda a, x, h0: fn(a, x, h0), a, x, h0)
                return out, vjp((dh, h0))

            return run

        got = jax.jit(fwd_bwd(self.call))(a, x, h0, dh)
        want = testing.reference_x64(fwd_bwd(_reference), a, x, h0, dh)
        testing.assert_allclose(got[0], want[0], kind="fwd")
        testing.assert_allclose(got[1], want[1], kind="grad")

    def test_pallas_impl_of_the_reference(self):
        """``jaxar.ops.linear_scan(impl="pallas")`` reaches this kernel (interpret on CPU,
        default block sizes)."""
        a, x, h0, _ = _inputs((2, 21, 4), jnp.complex64, complex_=True)
        got = ops.linear_scan(a, x, h0, reverse=True, impl="pallas")
        testing.assert_allclose(got, testing.reference_x64(_reference, a, x, h0, True))


class TestTpuInterpret(LinearScanTestBase):
    """The Mosaic kernel in the TPU interpreter (feature tiles of 128)."""

    interpret = pltpu.InterpretParams()
    block_sizes = BlockSizes(16, 128)

    @pytest.mark.slow  # same kernel code for any sign; the generic mode runs it
    def test_negative_gates(self):
        super().test_negative_gates()

    @pytest.mark.slow
    def test_three_feature_tiles_of_1024(self):
        self.block_sizes = BlockSizes(8, 1024)
        self.check((1, 20, 2100))


@pytest.mark.gpu
class TestGpu(LinearScanTestBase):
    interpret = False
    block_sizes = BlockSizes(16, 32)


@pytest.mark.tpu
class TestTpu(LinearScanTestBase):
    interpret = False
    block_sizes = BlockSizes(16, 128)


# ---------------------------------------------------------------------- lowering, API


@pytest.mark.parametrize("platform,target", [("tpu", "tpu_custom_call"), ("cuda", "triton")])
def test_compiled_lowerings(platform, target, tpu_info_on_cpu):
    """Both compiled lowerings lower the forward and the backward scan (complex, bf16)."""
    shapes = [
        jax.ShapeDtypeStruct((2, 300, 4, 64), jnp.complex64),
        jax.ShapeDtypeStruct((2, 300, 4, 64), jnp.bfloat16),
    ]

    def loss(a, x):
        h, last = linear_scan(a, x, reverse=True)
        return jnp.abs(h).astype(jnp.float32).sum() + jnp.abs(last).astype(jnp.float32).sum()

    for s in shapes:
        with mock.patch.object(jax, "default_backend", lambda: platform):
            lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(s, s)
            text = lowered.lower(lowering_platforms=(platform,)).as_text()
        assert text.count(target) >= 2


def test_errors_name_the_argument():
    a = jnp.zeros((1, 8, 4))
    with pytest.raises(ValueError, match="broadcasting"):
        linear_scan(a, a[:, :4], interpret=True)
    with pytest.raises(ValueError, match="h0 has shape"):
        linear_scan(a, a, jnp.zeros((1, 8)), interpret=True)
    with pytest.raises(ValueError, match="reset"):
        linear_scan(a, a, reset=jnp.zeros((1, 8), jnp.int32), interpret=True)
    with pytest.raises(ValueError, match="multiple of 128"):
        linear_scan(a, a, interpret=pltpu.InterpretParams(), block_sizes=BlockSizes(16, 64))
    wide = jnp.zeros((1, 8, 2048))
    with pytest.raises(ValueError, match="multiple of 1024"):
        linear_scan(wide, wide, interpret=pltpu.InterpretParams(), block_sizes=BlockSizes(8, 512))
    with pytest.raises(ValueError, match="powers of two"):
        linear_scan(a, a, interpret=True, block_sizes=BlockSizes(16, 24))
    with pytest.raises(ValueError, match="BlockSizes.block_l"):
        BlockSizes(0, 16)


def test_bench_refuses_interpret_mode(capsys):
    from pallas_kernels.linear_scan import bench

    assert bench.run(quick=True) == []
    assert "never timed" in capsys.readouterr().out
