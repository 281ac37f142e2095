"""GateLoop kernel vs the ``jaxar.ops.gateloop`` reference, one shared base per mode.

Modes: the generic Pallas interpreter (``interpret=True``, the Triton-form kernel), the
TPU interpreter (the Mosaic kernel), and compiled GPU / TPU (skipped here). A lowering
test checks that both compiled lowerings trace and lower on CPU.
"""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxar import ops, testing
from pallas_kernels.gateloop import BlockSizes, gateloop, linear_attention


def _reference(q, k, v, a, state0):
    """``jaxar.ops.gateloop`` with the recurrent (one step per token) implementation."""
    if jnp.iscomplexobj(q) or jnp.iscomplexobj(k):  # beyond jaxar.ops: its q, k are real
        return _formula(q, k, v, a, state0)
    return ops.gateloop(q, k, v, a, state0=state0, impl="recurrent")


def _formula(q, k, v, a, state0):
    """The recurrence itself, for complex q / k (which jaxar.ops.gateloop does not take)."""

    def step(S, inp):
        q, k, v, a = inp
        S = a[..., None] * S + k[..., None] * v[..., None, :]
        return S, jnp.real(jnp.einsum("bhk,bhke->bhe", q, S))

    mv = lambda u: jnp.moveaxis(u, 1, 0)
    S, y = jax.lax.scan(step, state0, (mv(q), mv(k), mv(v), mv(a)))
    return jnp.moveaxis(y, 0, 1), S


def _inputs(B, L, H, K, E, dtype, complex_=False, gate_range=(0.5, 1.0), seed=0, complex_qk=False):
    ks = jax.random.split(jax.random.key(seed), 9)
    q = jax.random.normal(ks[0], (B, L, H, K), jnp.float32) * K**-0.5
    k = jax.random.normal(ks[1], (B, L, H, K), jnp.float32) * K**-0.5
    v = jax.random.normal(ks[2], (B, L, H, E), jnp.float32)
    a = jax.random.uniform(ks[3], (B, L, H, K), jnp.float32, *gate_range)
    if gate_range[0] < 0:  # both signs, |a| in [0.3, 1] (gates near 0: a test of their own)
        a = jnp.sign(a) * (0.3 + 0.7 * jnp.abs(a))
    S0 = jax.random.normal(ks[4], (B, H, K, E), jnp.float32)
    dy = jax.random.normal(ks[5], (B, L, H, E), jnp.float32)
    dS = jax.random.normal(ks[6], (B, H, K, E), jnp.float32)
    cast = lambda u: u.astype(dtype)
    q, k, v, a, dy = map(cast, (q, k, v, a, dy))
    if complex_:
        a = a * jnp.exp(1j * jax.random.uniform(ks[7], a.shape, jnp.float32, -1.0, 1.0))
        a = a.astype(jnp.complex64)
        if complex_qk:
            k = k + 1j * jax.random.normal(ks[8], k.shape, jnp.float32) * K**-0.5
            q = (q + 0.5j * jnp.roll(q, 1, axis=-1)).astype(jnp.complex64)
            k = k.astype(jnp.complex64)
        S0, dS = S0.astype(jnp.complex64), (dS - 0.5j * S0).astype(jnp.complex64)
    return q, k, v, a, S0, dy, dS


class GateLoopTestBase:
    """The cases; subclasses set the execution mode and the tiles."""

    interpret = True
    block_sizes = BlockSizes(chunk=32, sub=16)

    def call(self, q, k, v, a, state0):
        return gateloop(
            q, k, v, a, state0=state0, interpret=self.interpret, block_sizes=self.block_sizes
        )

    def check(self, *, B=1, L=37, H=2, K=8, E=6, dtype=jnp.float32, complex_=False, grad=True,
              state0=True, gate_range=(0.5, 1.0), complex_qk=False):  # fmt: skip
        q, k, v, a, S0, dy, dS = _inputs(
            B, L, H, K, E, dtype, complex_, gate_range, complex_qk=complex_qk
        )
        if not state0:
            S0 = jnp.zeros_like(S0)
        if not grad:
            got = jax.jit(self.call)(q, k, v, a, S0 if state0 else None)
            want = testing.reference_x64(_reference, q, k, v, a, S0)
            testing.assert_allclose(got, want, dtype=dtype, kind="fwd")
            return got

        def fwd_bwd(fn):
            def run(q, k, v, a, S0, dy, dS):
                out, vjp = jax.vjp(fn, q, k, v, a, S0)
                return out, vjp((dy, dS))

            return run

        got = jax.jit(fwd_bwd(self.call))(q, k, v, a, S0, dy, dS)
        want = testing.reference_x64(fwd_bwd(_reference), q, k, v, a, S0, dy, dS)
        testing.assert_allclose(got[0], want[0], dtype=dtype, kind="fwd")
        testing.assert_allclose(got[1], want[1], dtype=dtype, kind="grad")
        return got

    # ------------------------------------------------------------------ cases

    def test_real_gates_state0_odd_length(self):
        self.check(B=2)

    @pytest.mark.slow
    def test_long_complex_wide_state(self):
        self.check(L=200, K=20, E=36, complex_=True)

    def test_complex_gates(self):
        self.check(complex_=True)

    def test_bfloat16(self):
        self.check(dtype=jnp.bfloat16, grad=False)

    def test_negative_real_gates(self):
        """Issue 18 item 9: real gates of both signs are exact (signs folded into q, k)."""
        self.check(L=21, H=1, gate_range=(-1.0, 1.0))

    def test_tiny_gates_stay_finite(self):
        """Gates near 0 would overflow a factorised (q P)(k / P)^T form; bounded here."""
        y, S = self.check(gate_range=(1e-6, 1e-3), grad=False, state0=False)
        assert np.isfinite(np.asarray(y)).all() and np.isfinite(np.asarray(S)).all()


class TestInterpret(GateLoopTestBase):
    """Generic Pallas interpreter: the Triton-form kernel on CPU."""

    interpret = True
    block_sizes = BlockSizes(chunk=32, sub=16)

    def test_bfloat16_grads(self):
        self.check(dtype=jnp.bfloat16, L=21)

    @pytest.mark.slow  # the bfloat16 forward is also checked by test_bfloat16_grads
    def test_bfloat16(self):
        super().test_bfloat16()

    @pytest.mark.slow  # signs in y, S, dq, dk, dv, dS0: test_gates_near_zero_match_the_reference
    def test_negative_real_gates(self):
        super().test_negative_real_gates()

    def test_complex_queries_and_keys(self):
        """An extension beyond jaxar.ops (real q, k there): against the recurrence itself."""
        self.check(complex_=True, complex_qk=True, L=21)

    def test_pallas_impl_of_the_reference(self):
        """``jaxar.ops.gateloop(impl="pallas")`` reaches this kernel (interpret on CPU,
        default block sizes)."""
        q, k, v, a, S0, _, _ = _inputs(1, 21, 2, 8, 6, jnp.float32, complex_=True)
        got = ops.gateloop(q, k, v, a, state0=S0, impl="pallas")
        testing.assert_allclose(got, testing.reference_x64(_reference, q, k, v, a, S0))


class TestTpuInterpret(GateLoopTestBase):
    """The Mosaic kernel in the TPU interpreter (K and E padded to 128 lanes)."""

    interpret = pltpu.InterpretParams()
    block_sizes = BlockSizes(chunk=32, sub=16)

    @pytest.mark.slow  # the sign fold is XLA around the kernel; the generic mode runs it
    def test_negative_real_gates(self):
        super().test_negative_real_gates()

    @pytest.mark.slow  # the generic mode runs it; slow in this interpreter
    def test_tiny_gates_stay_finite(self):
        super().test_tiny_gates_stay_finite()


@pytest.mark.gpu
class TestGpu(GateLoopTestBase):
    interpret = False


@pytest.mark.tpu
class TestTpu(GateLoopTestBase):
    interpret = False


def test_gates_near_zero_match_the_reference():
    """Kernel == float64 recurrence for real gates of both signs at, near and below the log
    floor shared with ``jaxar.ops.gateloop`` (e^-30), exact 0 included: outputs, final
    state and the gradients of q, k, v, state0 (dL/da near 0: see jaxar.ops.gateloop; the
    XLA chunked form's twin of this test is in tests/ops/test_gateloop.py)."""
    q, k, v, a, S0, dy, dS = _inputs(1, 37, 1, 8, 6, jnp.float32, gate_range=(0.5, 1.0))
    ks = jax.random.split(jax.random.key(7), 3)
    near0 = jnp.array([0.0, 1e-20, -1e-20, 1e-12, -1e-6, 1e-3])
    pick = near0[jax.random.randint(ks[0], a.shape, 0, near0.size)]
    a = jnp.where(jax.random.bernoulli(ks[1], 0.3, a.shape), pick, a)
    a = jnp.where(jax.random.bernoulli(ks[2], 0.3, a.shape), -a, a)

    def fwd_bwd(fn):
        def run(q, k, v, a, S0, dy, dS):
            out, vjp = jax.vjp(lambda q, k, v, S0: fn(q, k, v, a, S0), q, k, v, S0)
            return out, vjp((dy, dS))

        return run

    def kernel(q, k, v, a, S0):
        return gateloop(q, k, v, a, state0=S0, interpret=True, block_sizes=BlockSizes(32, 16))

    got = jax.jit(fwd_bwd(kernel))(q, k, v, a, S0, dy, dS)
    want = testing.reference_x64(fwd_bwd(_reference), q, k, v, a, S0, dy, dS)
    testing.assert_allclose(got[0], want[0], dtype=jnp.float32, kind="fwd")
    testing.assert_allclose(got[1], want[1], dtype=jnp.float32, kind="grad")


# ------------------------------------------- the same kernel on log-gates: linear_attention


def _la_inputs(kind, B=1, L=21, H=1, K=4, E=4, seed=0):
    """Inputs of ``jaxar.ops.linear_attention`` for gate kind "diag" (real), "complex" or
    "scalar", with state0, a reset mid-row and cotangents."""
    ks = jax.random.split(jax.random.key(seed), 8)
    q = 0.5 * jax.random.normal(ks[0], (B, L, H, K))
    k = 0.5 * jax.random.normal(ks[1], (B, L, H, K))
    v = jax.random.normal(ks[2], (B, L, H, E))
    shape = (B, L, H) if kind == "scalar" else (B, L, H, K)
    la = jax.nn.log_sigmoid(2.0 * jax.random.normal(ks[3], shape))
    s0 = jax.random.normal(ks[4], (B, H, K, E))
    if kind == "complex":
        la = (la + 1j * jax.random.normal(ks[5], shape)).astype(jnp.complex64)
        s0 = s0.astype(jnp.complex64)
    reset = jnp.zeros((B, L), bool).at[0, 7].set(True)
    dy = jax.random.normal(ks[6], (B, L, H, E))
    ds = jax.random.normal(ks[7], s0.shape).astype(s0.dtype)
    return q, k, v, la, s0, reset, dy, ds


class LinearAttentionKernelBase:
    """``linear_attention`` (real / complex diagonal and scalar gates, state0, a reset) vs
    ``jaxar.ops.linear_attention(impl="recurrent")`` in float64: y, final state and the
    gradients of q, k, v, the log-gates and state0."""

    interpret = True

    def check(self, kind):
        q, k, v, la, s0, reset, dy, ds = _la_inputs(kind)
        gate = "scalar" if kind == "scalar" else "diag"

        def fwd_bwd(fn):
            def run(q, k, v, la, s0, dy, ds):
                out, vjp = jax.vjp(fn, q, k, v, la, s0)
                return out, vjp((dy, ds))

            return run

        def kernel(q, k, v, la, s0):
            return linear_attention(
                q, k, v, la, gate=gate, state0=s0, reset=reset, interpret=self.interpret,
                block_sizes=BlockSizes(32, 16),
            )  # fmt: skip

        def reference(q, k, v, la, s0):
            return ops.linear_attention(
                q, k, v, la, gate=gate, state0=s0, reset=reset, impl="recurrent"
            )

        got = jax.jit(fwd_bwd(kernel))(q, k, v, la, s0, dy, ds)
        want = testing.reference_x64(fwd_bwd(reference), q, k, v, la, s0, dy, ds)
        testing.assert_allclose(got[0], want[0], dtype=jnp.float32, kind="fwd")
        testing.assert_allclose(got[1], want[1], dtype=jnp.float32, kind="grad")

    @pytest.mark.slow  # ~8 s alone; the fast suite runs the core kernel's own cases above
    def test_scalar_gates(self):
        self.check("scalar")

    @pytest.mark.slow
    def test_real_diagonal_gates(self):
        self.check("diag")

    @pytest.mark.slow
    def test_complex_diagonal_gates(self):
        self.check("complex")


class TestLinearAttentionInterpret(LinearAttentionKernelBase):
    interpret = True


@pytest.mark.slow  # ~20-30 s per case in the TPU interpreter on 2 cores
class TestLinearAttentionTpuInterpret(LinearAttentionKernelBase):
    interpret = pltpu.InterpretParams()


@pytest.mark.slow
def test_linear_attention_pallas_impl_of_the_op():
    """``jaxar.ops.linear_attention(impl="pallas")`` reaches this kernel (interpret on CPU)
    and matches the op's chunked form, scalar gates with a reset."""
    q, k, v, la, s0, reset, _, _ = _la_inputs("scalar")
    got = ops.linear_attention(q, k, v, la, gate="scalar", state0=s0, reset=reset, impl="pallas")
    want = ops.linear_attention(q, k, v, la, gate="scalar", state0=s0, reset=reset, impl="chunked")
    testing.assert_allclose(got, want)


# ---------------------------------------------------------------------- lowering, API


@pytest.mark.parametrize("platform,target", [("tpu", "tpu_custom_call"), ("cuda", "triton")])
def test_compiled_lowerings(platform, target, tpu_info_on_cpu):
    """Both compiled lowerings lower forward + backward: 3 kernels (y; dq; dk, dv)."""
    q = jax.ShapeDtypeStruct((2, 200, 4, 64), jnp.bfloat16)

    def loss(q, k, v, a):
        y, S = gateloop(q, k, v, a)
        return y.astype(jnp.float32).sum() + jnp.abs(S).sum()

    for a in (q, jax.ShapeDtypeStruct((2, 200, 4, 64), jnp.complex64)):
        with mock.patch.object(jax, "default_backend", lambda: platform):
            lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, q, q, a)
            text = lowered.lower(lowering_platforms=(platform,)).as_text()
        assert text.count(target) >= 3


def test_errors_name_the_argument():
    x = jnp.zeros((1, 16, 2, 8))
    with pytest.raises(ValueError, match="accepted: q, k, a"):
        gateloop(x, x[..., :4], x, x, interpret=True)
    with pytest.raises(ValueError, match="state0 has shape"):
        gateloop(x, x, x, x, state0=jnp.zeros((1, 2, 8, 4)), interpret=True)
    with pytest.raises(ValueError, match="chunk_size"):
        gateloop(x, x, x, x, chunk_size=0, interpret=True)
    with pytest.raises(ValueError, match="v has dtype"):
        gateloop(x, x, x.astype(jnp.complex64), x, interpret=True)
    with pytest.raises(ValueError, match="BlockSizes.chunk"):
        BlockSizes(chunk=24, sub=16)


def test_bench_refuses_interpret_mode(capsys):
    from pallas_kernels.gateloop import bench

    assert bench.run(quick=True) == []
    assert "never timed" in capsys.readouterr().out


def test_long_context_bench_refuses_interpret_and_its_candidates_agree(capsys):
    """``jaxar bench kernel_linear_attention``: never timed in interpret mode; its candidates
    (here through the interpreter, tiny shapes) give (B, L, H, D) outputs and gradients, the
    GLA kernel equal to the XLA chunked core, the baseline equal to the attention it names."""
    from jaxar.bench import BENCHMARKS
    from pallas_kernels.gateloop import bench_vs_attention as bva

    assert BENCHMARKS["kernel_linear_attention"] == bva.__name__
    assert bva.run(quick=True) == []
    assert "never timed" in capsys.readouterr().out
    q, k, v, la_d, la_s, beta, dy = bva.inputs(jax.random.key(1), 1, 32, 2, 16, jnp.float32)
    cands = bva.impls(la_d, la_s, beta, platform="cpu", interpret=True)
    assert list(cands) == [
        "jax.nn(xla)", "pallas-gla", "pallas-ssd", "pallas-gated-delta", "chunked-xla-gla"
    ]  # fmt: skip
    outs = {}
    for name, fn in cands.items():
        y, vjp = jax.vjp(fn, q, k, v)
        grads = vjp(dy)
        assert y.shape == q.shape and all(g.shape == q.shape for g in grads), name
        assert all(np.isfinite(np.asarray(t)).all() for t in (y, *grads)), name
        outs[name] = y
    # same maths, other summation orders (kernel sub-chunks vs the XLA split): grad tolerance
    testing.assert_allclose(outs["pallas-gla"], outs["chunked-xla-gla"], kind="grad")
    want = ops.dot_product_attention(q, k, v, causal=True, impl="reference")
    testing.assert_allclose(outs["jax.nn(xla)"], want, kind="grad")
