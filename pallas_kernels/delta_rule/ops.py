"""Public wrapper: the chunked (gated) delta rule with Pallas state carries, forward and
backward (custom VJP)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxar.ops.checks import positive_int
from jaxar.ops.delta_rule import chunk_terms
from pallas_kernels._common import pow2, round_up
from pallas_kernels.delta_rule import kernel

__all__ = ["delta_rule"]

_REAL = ("float32", "bfloat16", "float16")
LOG_ZERO = -1e30  # the log-gate of g = 0 (as jaxar.ops.delta_rule): finite, 0 * it = 0


def delta_rule(q, k, v, beta, *, log_gate=None, state0=None, chunk_size: int = 16, interpret=False):
    """(Gated) DeltaNet ``S_t = g_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``,
    ``y_t = S_t^T q_t``, chunked: the kernel of ``jaxar.ops.delta_rule(impl="pallas")``.

    The chunk-local WY / UT terms come from ``jaxar.ops.delta_rule.chunk_terms`` (XLA, all
    chunks at once); the sequential part, the (K, V) state carried over the L / C chunks,
    runs in a Pallas kernel with the state on chip (float32), and so does the reverse carry
    of its adjoint in the backward pass (a custom VJP; the other gradients are
    chunk-parallel matmuls, then autodiff through ``chunk_terms``). Keys are used as
    given: ``jaxar.ops.delta_rule`` L2-normalises them and applies resets first.

    Args:
      q, k: (B, L, H, K) real (float32 / bfloat16 / float16).
      v: (B, L, H, V) real.
      beta: (B, L, H) write strengths.
      log_gate: optional (B, L, H) log-gates ``log g_t <= 0`` (None: g = 1, DeltaNet);
        values below -1e30 (``-inf`` included) act as g = 0.
      state0: optional (B, H, K, V) state before position 0.
      chunk_size: C, rounded up to a power of two >= 16 (the matmul tiles' minimum).
      interpret: False (compiled: Mosaic on TPU, Triton on GPU), True (generic
        interpreter) or ``pltpu.InterpretParams()`` (the Mosaic kernel, TPU interpreter).

    Returns:
      ``(y, state)``: y (B, L, H, V) in the result dtype of q, k, v; the final (B, H, K, V)
      state in float32.
    """
    q, k, v, beta = map(jnp.asarray, (q, k, v, beta))
    if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; accepted: q, k (B, L, H, K) "
            "and v (B, L, H, V)"
        )
    B, L, H, K = q.shape
    V = v.shape[-1]
    for name, u in (("beta", beta), ("log_gate", log_gate)):
        if u is not None and jnp.shape(u) != (B, L, H):
            raise ValueError(f"{name} has shape {jnp.shape(u)}; accepted: {(B, L, H)}")
    for name, u in (("q", q), ("k", k), ("v", v), ("beta", beta), ("log_gate", log_gate)):
        if u is not None and jnp.dtype(jnp.asarray(u).dtype).name not in _REAL:
            raise ValueError(f"{name} has dtype {jnp.asarray(u).dtype}; accepted: {_REAL}")
    if state0 is not None and jnp.shape(state0) != (B, H, K, V):
        raise ValueError(f"state0 has shape {jnp.shape(state0)}; accepted: {(B, H, K, V)}")
    positive_int("chunk_size", chunk_size)
    lowering = kernel.select_lowering(interpret)
    static = kernel.Static(lowering, interpret, max(16, pow2(chunk_size)))
    y_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    f32 = lambda u: jnp.asarray(u).astype(jnp.float32)
    q, k, v, beta = map(f32, (q, k, v, beta))
    lg = jnp.zeros((B, L, H), jnp.float32) if log_gate is None else f32(log_gate)
    lg = jnp.maximum(lg, LOG_ZERO)
    S0 = jnp.zeros((B, H, K, V), jnp.float32) if state0 is None else f32(state0)
    terms = chunk_terms(q, k, v, beta, lg, static.chunk)  # each (B, H, N, C, ...)
    y, S = _scan(static, *terms, S0)
    N, C = y.shape[2:4]
    y = jnp.moveaxis(y, 1, 3).reshape(B, N * C, H, V)[:, :L]
    return y.astype(y_dtype), S


def _widths(static, K, V):
    if static.lowering == "mosaic":
        return round_up(K, kernel.LANES), round_up(V, kernel.LANES)
    return max(16, pow2(K)), max(16, pow2(V))


def _flat(u, width):
    """(B, H, N, C, w) -> (B, H, N C, width), zero padded."""
    B, H, N, C, w = u.shape
    u = jnp.pad(u, ((0, 0),) * 4 + ((0, width - w),))
    return u.reshape(B, H, N * C, width)


def _inputs(static, ut, w, sc, qg, kd, ge):
    B, H, N, C, K = w.shape
    KP, VP = _widths(static, K, ut.shape[-1])
    return {
        "ut": _flat(ut, VP),
        "w": _flat(w, KP),
        "sc": _flat(sc, C),
        "qg": _flat(qg, KP),
        "kd": _flat(kd, KP),
        "ge": jnp.broadcast_to(ge[..., None, None], (B, H, N, C, 1)).reshape(B, H, N * C, 1),
    }


def _pad_state(S, KP, VP):
    K, V = S.shape[2:]
    return jnp.pad(S, ((0, 0), (0, 0), (0, KP - K), (0, VP - V)))


def _forward(static, ut, w, sc, qg, kd, ge, S0, keep_states):
    B, H, N, C, K = w.shape
    V = ut.shape[-1]
    inputs = _inputs(static, ut, w, sc, qg, kd, ge)
    KP, VP = inputs["w"].shape[-1], inputs["ut"].shape[-1]
    y, states, S = kernel.forward(static, inputs, _pad_state(S0, KP, VP), jnp.float32, keep_states)
    y = y.reshape(B, H, N, C, VP)[..., :V]
    if states is not None:
        states = states.reshape(B, H, N, KP, VP)[..., :K, :V]
    return y, S[:, :, :K, :V], states


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(static, ut, w, sc, qg, kd, ge, S0):
    """Per chunk: ``U = ut - w S``, ``y = qg S + sc U``, ``S <- ge S + kd^T U``; returns y
    (B, H, N, C, V) and the final state."""
    y, S, _ = _forward(static, ut, w, sc, qg, kd, ge, S0, keep_states=False)
    return y, S


def _scan_fwd(static, ut, w, sc, qg, kd, ge, S0):
    y, S, states = _forward(static, ut, w, sc, qg, kd, ge, S0, keep_states=True)
    return (y, S), (ut, w, sc, qg, kd, ge, states)


def _scan_bwd(static, res, cts):
    """The adjoint carry in Pallas (dU, dL/dS_{n+1}, dL/dS_0); then per chunk, with S_n the
    state entering it and G_n = dL/dS_{n+1}: d ut = dU, dw = -dU S_n^T, dqg = dy S_n^T,
    dsc = dy U^T, dkd = U G_n^T, dge = <S_n, G_n>."""
    ut, w, sc, qg, kd, ge, states = res
    dy, dS = cts
    B, H, N, C, K = w.shape
    V = ut.shape[-1]
    inputs = _inputs(static, ut, w, sc, qg, kd, ge)
    KP, VP = inputs["w"].shape[-1], inputs["ut"].shape[-1]
    del inputs["ut"]
    inputs["dy"] = _flat(dy.astype(jnp.float32), VP)
    du, G, dS0 = kernel.backward(static, inputs, _pad_state(dS.astype(jnp.float32), KP, VP))
    du = du.reshape(B, H, N, C, VP)[..., :V]
    G = G.reshape(B, H, N, KP, VP)[..., :K, :V]
    hi = jax.lax.Precision.HIGHEST
    mm = functools.partial(jnp.einsum, precision=hi)
    U = ut - mm("bhnck,bhnkv->bhncv", w, states)
    d_w = -mm("bhncv,bhnkv->bhnck", du, states)
    d_qg = mm("bhncv,bhnkv->bhnck", dy, states)
    d_sc = mm("bhncv,bhnsv->bhncs", dy, U)
    d_kd = mm("bhncv,bhnkv->bhnck", U, G)
    d_ge = jnp.sum(states * G, axis=(-2, -1))
    return du, d_w, d_sc, d_qg, d_kd, d_ge, dS0[:, :, :K, :V]


_scan.defvjp(_scan_fwd, _scan_bwd)
