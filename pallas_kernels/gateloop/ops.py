"""Public wrapper: chunked GateLoop with a Pallas forward and a Pallas backward."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxar.ops.checks import positive_int
from jaxar.ops.gateloop import LOG_FLOOR, fold_gate_signs, log_gate
from pallas_kernels.gateloop import kernel
from pallas_kernels.gateloop.kernel import BlockSizes

__all__ = ["gateloop", "linear_attention"]

_REAL = ("float32", "bfloat16", "float16")


def gateloop(
    q,
    k,
    v,
    a,
    *,
    state0=None,
    chunk_size: int = 64,
    interpret=False,
    block_sizes: BlockSizes | None = None,
):
    """GateLoop: ``S_t = diag(a_t) S_{t-1} + k_t v_t^T``, ``y_t = Re(q_t^T S_t)``, chunked.

    The key-value state S (K x E per head) stays on chip in float32 across chunks; inside
    a chunk the sequence is processed in sub-chunks whose log-gates are cumulated locally,
    so no exponent is positive (no overflow for any gates with |a| <= 1).
    Gradients: a custom VJP with a Pallas backward (dq in a forward-direction kernel
    carrying S, dk / dv / dstate0 in a reverse-direction kernel carrying dL/dS; da from
    ``dL/dlog a_r = sum_{t>=r} (q_t dq_t - k_t dk_t)``, see the README).

    Args:
      q, k: (B, L, H, K), real (float32 / bfloat16 / float16) or complex64 (complex q, k
        go beyond ``jaxar.ops.gateloop``, whose q, k are real).
      v: (B, L, H, E), real.
      a: (B, L, H, K) gates with |a| <= 1: real (negative gates exact: their signs move
        into q and k, ``jaxar.ops.gateloop.fold_gate_signs``) or complex64; log|a| is
        floored at ``jaxar.ops.gateloop.LOG_FLOOR`` (-30), as in the XLA reference.
      state0: optional (B, H, K, E) initial state.
      chunk_size: sequence rows per grid step (the TPU tile), rounded up to a multiple of
        the sub-chunk (16); it does not change the maths (``jaxar.ops.gateloop`` passes its
        own default, 16).
      interpret: False (compiled: Mosaic on TPU, Triton on GPU), True (generic
        interpreter) or ``pltpu.InterpretParams()`` (the Mosaic kernel, TPU interpreter).
      block_sizes: overrides ``chunk_size`` and the sub-chunk size.

    Returns:
      ``(y, state)``: y (B, L, H, E) in the (real) result dtype of q, k, v, as
      ``jaxar.ops.gateloop``; state (B, H, K, E) float32, or
      complex64 when q, k, a or state0 is complex.
    """
    q, k, v, a = map(jnp.asarray, (q, k, v, a))
    if q.ndim != 4 or k.shape != q.shape or a.shape != q.shape or v.ndim != 4:
        raise ValueError(
            f"q, k, v, a have shapes {q.shape}, {k.shape}, {v.shape}, {a.shape}; accepted: "
            "q, k, a (B, L, H, K) and v (B, L, H, E)"
        )
    B, L, H, K = q.shape
    E = v.shape[-1]
    if v.shape[:3] != (B, L, H):
        raise ValueError(f"v has shape {v.shape}; accepted: {(B, L, H)} + (E,)")
    for name, u in (("q", q), ("k", k), ("a", a)):
        if jnp.dtype(u.dtype).name not in (*_REAL, "complex64"):
            raise ValueError(f"{name} has dtype {u.dtype}; accepted: {(*_REAL, 'complex64')}")
    if jnp.dtype(v.dtype).name not in _REAL:
        raise ValueError(f"v has dtype {v.dtype}; accepted: {_REAL}")
    if state0 is not None and state0.shape != (B, H, K, E):
        raise ValueError(f"state0 has shape {state0.shape}; accepted: {(B, H, K, E)}")
    positive_int("chunk_size", chunk_size)
    cplx = any(jnp.iscomplexobj(u) for u in (q, k, a)) or (
        state0 is not None and jnp.iscomplexobj(state0)
    )
    static, S0 = _setup(q, v, state0, cplx, chunk_size, interpret, block_sizes)
    if jnp.iscomplexobj(a):
        return _gateloop(static, q, k, v, _log_a(a), S0)
    q, k, a, sign = fold_gate_signs(q, k, a)
    y, S = _gateloop(static, q, k, v, _log_a(a), S0)
    return y, S * sign[..., None].astype(S.dtype)


def linear_attention(
    q,
    k,
    v,
    log_a,
    *,
    gate: str = "diag",
    state0=None,
    reset=None,
    chunk_size: int = 64,
    interpret=False,
    block_sizes: BlockSizes | None = None,
):
    """Gated linear attention from log-gates: the kernel of ``jaxar.ops.linear_attention``.

    ``S_t = G_t S_{t-1} + k_t v_t^T``, ``y_t = Re(S_t^T q_t)`` with ``G_t = diag(exp(log_a_t))``
    (``gate="diag"``: GLA, or GateLoop with complex ``log|a| + i arg a``) or
    ``exp(log_a_t) I`` (``gate="scalar"``: Mamba-2's SSD, RetNet). One kernel serves the
    three gate kinds: a scalar gate is broadcast over the K lanes before the kernel (its
    gradient is the sum over K of the diagonal one, by autodiff of the broadcast), a real
    gate runs with one component, a complex gate with two. Log-gates are floored at
    ``jaxar.ops.gateloop.LOG_FLOOR`` (-30), as in :func:`gateloop`: a gate below e^-30
    (resets included, which set it to 0) acts as e^-30, a relative 1e-13 on the state.

    Args:
      q, k: (B, L, H, K) real (float32 / bfloat16 / float16).
      v: (B, L, H, E) real.
      log_a: log-gates with real part <= 0: (B, L, H, K) real or complex64 for "diag",
        (B, L, H) real for "scalar"; ``-inf`` is a = 0.
      gate: "diag" or "scalar".
      state0: optional (B, H, K, E) state before position 0 (real or complex64).
      reset: optional bool (B, L), True where a document starts (the state before it is
        dropped).
      chunk_size, interpret, block_sizes: as :func:`gateloop`.

    Returns:
      ``(y, state)``: y (B, L, H, E) in the result dtype of q, k, v; state (B, H, K, E)
      float32, or complex64 for complex gates or state0.
    """
    q, k, v, log_a = map(jnp.asarray, (q, k, v, log_a))
    if gate not in ("diag", "scalar"):
        raise ValueError(f"gate={gate!r} is not supported; accepted: 'diag', 'scalar'")
    if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; accepted: q, k (B, L, H, K) "
            "and v (B, L, H, E)"
        )
    want = q.shape if gate == "diag" else q.shape[:3]
    if log_a.shape != want:
        raise ValueError(f"log_a has shape {log_a.shape}; accepted for gate={gate!r}: {want}")
    for name, u in (("q", q), ("k", k), ("v", v)):
        if jnp.dtype(u.dtype).name not in _REAL:
            raise ValueError(f"{name} has dtype {u.dtype}; accepted: {_REAL}")
    if jnp.dtype(log_a.dtype).name not in ("float32", "bfloat16", "float16", "complex64"):
        raise ValueError(f"log_a has dtype {log_a.dtype}; accepted: float32, bf16, f16, complex64")
    if gate == "scalar" and jnp.iscomplexobj(log_a):
        raise ValueError("log_a must be real for gate='scalar'")
    B, L, H, K = q.shape
    E = v.shape[-1]
    if state0 is not None and jnp.shape(state0) != (B, H, K, E):
        raise ValueError(f"state0 has shape {jnp.shape(state0)}; accepted: {(B, H, K, E)}")
    if reset is not None and (jnp.shape(reset) != (B, L) or jnp.asarray(reset).dtype != bool):
        raise ValueError(f"reset has shape {jnp.shape(reset)}; accepted: bool {(B, L)}")
    positive_int("chunk_size", chunk_size)
    cplx = jnp.iscomplexobj(log_a) or (state0 is not None and jnp.iscomplexobj(state0))
    static, S0 = _setup(q, v, state0, cplx, chunk_size, interpret, block_sizes)
    la = log_a.astype(jnp.complex64 if jnp.iscomplexobj(log_a) else jnp.float32)
    if reset is not None:
        r = jnp.asarray(reset).reshape((B, L) + (1,) * (la.ndim - 2))
        la = jnp.where(r, jnp.asarray(LOG_FLOOR, la.dtype), la)
    if jnp.iscomplexobj(la):
        above = la.real > LOG_FLOOR
        la = jax.lax.complex(jnp.where(above, la.real, LOG_FLOOR), jnp.where(above, la.imag, 0.0))
    else:
        la = jnp.maximum(la, LOG_FLOOR)
    if gate == "scalar":
        la = jnp.broadcast_to(la[..., None], q.shape)
    return _gateloop(static, q, k, v, la, S0)


def _setup(q, v, state0, cplx, chunk_size, interpret, block_sizes):
    """The kernel's static configuration and the initial state (float32 / complex64)."""
    B, L, H, K = q.shape
    E = v.shape[-1]
    lowering = kernel.select_lowering(interpret)
    bs = block_sizes or BlockSizes.default(lowering, chunk_size, L, K * E * (2 if cplx else 1))
    static = kernel.Static(lowering, interpret, bs.chunk, bs.sub, bs.num_warps, 2 if cplx else 1)
    st = jnp.complex64 if cplx else jnp.float32
    S0 = jnp.zeros((B, H, K, E), st) if state0 is None else jnp.asarray(state0).astype(st)
    return static, S0


def _log_a(a):
    """``log a`` (floored, ``jaxar.ops.gateloop.log_gate``) as one array: real for real
    gates (a >= 0 after the sign fold), complex ``log|a| + i arg a`` for complex gates."""
    if jnp.iscomplexobj(a):
        log_mag, phase = log_gate(a.astype(jnp.complex64))
        return jax.lax.complex(log_mag, phase)
    return log_gate(a.astype(jnp.float32))[0]


def _layout(static: kernel.Static, q, k, v, la, dy=None):
    """Padded head-major kernel inputs (name -> (B, H, Lp, width)) and the padded widths."""
    B, L, H, K = q.shape
    E = v.shape[-1]
    c, C = static.sub, static.chunk
    if static.lowering == "mosaic":
        kp, ep = kernel.round_up(K, kernel.LANES), kernel.round_up(E, kernel.LANES)
    else:
        kp, ep = max(16, kernel.pow2(K)), max(16, kernel.pow2(E))
    lp = kernel.round_up(L, C)

    def head_major(u, width):  # (B, L, H, w) -> (B, H, Lp, width), zero padded
        u = jnp.pad(u, ((0, 0), (0, lp - L), (0, 0), (0, width - u.shape[-1])))
        return u.transpose(0, 2, 1, 3)

    def local_cumsum(u):  # cumulative inside sub-chunks of c steps (padding: log a = 0)
        u = head_major(u.astype(jnp.float32), kp)
        return jnp.cumsum(u.reshape(B, H, lp // c, c, kp), axis=3).reshape(B, H, lp, kp)

    inputs = {}
    for i, u in enumerate(_parts(static, q)):
        inputs[f"q{i}"] = head_major(u, kp)
    for i, u in enumerate(_parts(static, k)):
        inputs[f"k{i}"] = head_major(u, kp)
    inputs["v"] = head_major(v, ep)
    inputs["lam"] = local_cumsum(jnp.real(la))
    if static.ncomp == 2:
        inputs["th"] = local_cumsum(jnp.imag(la))
    if dy is not None:
        inputs["dy"] = head_major(dy, ep)
    return inputs, kp, ep


def _parts(static, u):
    if static.ncomp == 1:
        return (u,)
    if jnp.iscomplexobj(u):
        return (jnp.real(u), jnp.imag(u))
    return (u, jnp.zeros_like(u))


def _state_in(static, S, kp, ep):  # (B, H, K, E) -> tuple of (B, H, Ep, Kp) float32
    K, E = S.shape[2:]
    pad = ((0, 0), (0, 0), (0, kp - K), (0, ep - E))
    return tuple(jnp.pad(u.astype(jnp.float32), pad).swapaxes(2, 3) for u in _parts(static, S))


def _state_out(static, St, K, E):
    S = tuple(u.swapaxes(2, 3)[:, :, :K, :E] for u in St)
    return jax.lax.complex(*S) if static.ncomp == 2 else S[0]


def _seq_out(static, parts, L, width):  # tuple of (B, H, Lp, w) -> (B, L, H, width)
    parts = tuple(u[:, :, :L, :width].transpose(0, 2, 1, 3) for u in parts)
    return jax.lax.complex(*parts) if len(parts) == 2 else parts[0]


def _forward(static: kernel.Static, q, k, v, la, S0):
    B, L, H, K = q.shape
    E = v.shape[-1]
    inputs, kp, ep = _layout(static, q, k, v, la)
    y_dtype = jnp.result_type(*(jnp.finfo(u.dtype).dtype for u in (q, k, v)))
    y, St = kernel.forward(static, inputs, _state_in(static, S0, kp, ep), y_dtype)
    return _seq_out(static, (y,), L, E), _state_out(static, St, K, E)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gateloop(static, q, k, v, la, S0):
    """The kernel on log-gates ``la`` (B, L, H, K), float32 or complex64, real part in
    [LOG_FLOOR, 0]."""
    return _forward(static, q, k, v, la, S0)


def _gateloop_fwd(static, q, k, v, la, S0):
    y, S = _forward(static, q, k, v, la, S0)
    return (y, S), (q, k, v, la, S0, S)


def _gateloop_bwd(static, res, cts):
    """Pallas backward: dq (forward direction, from the states), dk, dv, dS0 (reverse
    direction, from the adjoint state); the gates' gradient from the identity
    d/dLambda_t = q_t dq_t - k_t dk_t (+ S_L dS_L at the end), cumulated from the end."""
    q, k, v, la, S0, S = res
    dy, dS = cts
    B, L, H, K = q.shape
    E = v.shape[-1]
    inputs, kp, ep = _layout(static, q, k, v, la, dy)
    dq = _seq_out(
        static,
        kernel.backward_dq(
            static,
            {n: inputs[n] for n in inputs if not n.startswith("q")},
            _state_in(static, S0, kp, ep),
        ),
        L,
        K,
    )
    dk, dv, dS0 = kernel.backward_dkv(static, inputs, _state_in(static, dS, kp, ep))
    dk, dv = _seq_out(static, dk, L, K), _seq_out(static, (dv,), L, E)
    dS0 = _state_out(static, dS0, K, E)
    ct = jnp.complex64 if static.ncomp == 2 else jnp.float32
    dlam = q.astype(ct) * dq - k.astype(ct) * dk  # (B, L, H, K)
    final = jnp.sum(dS.astype(ct) * S, axis=-1)  # (B, H, K)
    dlam = dlam.at[:, -1].add(final)
    dloga = jnp.flip(jnp.cumsum(jnp.flip(dlam, 1), axis=1), 1)

    def like(g, x):
        g = g if jnp.iscomplexobj(x) else jnp.real(g)
        return g.astype(x.dtype)

    return like(dq, q), like(dk, k), like(dv, v), like(dloga, la), like(dS0, S0)


_gateloop.defvjp(_gateloop_fwd, _gateloop_bwd)
