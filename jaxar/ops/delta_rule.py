"""The (gated) delta rule: a key-value memory that overwrites instead of only adding.

    S_t = g_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,    y_t = S_t^T q_t

with ``S_t`` a (K, V) state per head, keys L2-normalised (so ``I - beta k k^T`` is a
contraction for ``beta`` in [0, 2]). ``g_t = 1`` is DeltaNet (Yang et al. 2024,
"Parallelizing Linear Transformers with the Delta Rule over Sequence Length",
arXiv:2406.06484); a data-dependent ``g_t`` in (0, 1] is Gated DeltaNet (Yang et al. 2024,
"Gated Delta Networks: Improving Mamba2 with Delta Rule", arXiv:2412.06464).

Implementations (``impl``):
  * ``"recurrent"``: ``lax.scan`` over t with a float32 state; the reference.
  * ``"chunked"``: the WY / UT form over chunks of C positions. Writing
    ``S_t = g_t S_{t-1} + k_t u_t^T`` with ``u_t = beta_t (v_t - g_t S_{t-1}^T k_t)``, the
    u's of a chunk solve the unit-lower-triangular system
    ``(I + A) U = diag(beta) V - diag(beta gamma) K S_0`` with
    ``A_tj = beta_t (gamma_t / gamma_j) k_t . k_j`` (j < t) and ``gamma_t`` the decay from the
    chunk start; so ``U = U~ - W S_0`` where ``[U~, W] = (I + A)^-1 [diag(beta) V,
    diag(beta gamma) K]`` does not depend on the state (the inverse by recursive 2x2
    blocks, i.e. matmuls: on CPU a batched ``solve_triangular`` is no faster at C = 16
    and several times slower at C = 32; the solve's gradient is its adjoint, two matmuls,
    not autodiff of the blocks). Then
    ``Y = diag(gamma) Q S_0 + (QK^T o D) U`` and
    ``S_C = gamma_C S_0 + (diag(gamma_C / gamma) K)^T U``, all matmuls; only the (K, V)
    state is carried across chunks (``lax.scan``).
  * ``"pallas"``: ``pallas_kernels.delta_rule``: the same chunk terms (:func:`chunk_terms`),
    the state carried over the chunks in a Pallas kernel, and its adjoint in a reverse
    kernel (custom VJP). Reached through ``jaxar.dispatch.kernel``.
Decays are exponentials of sums of log-gates over the exact index ranges (a segment sum,
never a difference of cumulative sums and never a ratio), so every factor is
``exp(<= 0) <= 1``: gates down to 0 underflow to the exact limit and nothing overflows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxar import dispatch
from jaxar.dispatch import DeltaRuleImpl
from jaxar.ops.checks import positive_int
from jaxar.ops.linear_attention import segment_sum

__all__ = ["delta_rule", "chunk_terms", "DeltaRuleImpl", "IMPLS"]

# "auto" is resolved by jaxar.dispatch (AUTO["delta_rule"]: "chunked", about 2x "recurrent"
# fwd+bwd on CPU at B=4, L=4096, H=4, K=V=32; decode uses the recurrence).
IMPLS = dispatch.CHOICES["delta_rule"]
_KEY_EPS = 1e-6
_LOG_ZERO = -1e30  # log g of a reset (g = 0): finite, so 0 * log g = 0 inside matmuls


def delta_rule(
    q,
    k,
    v,
    beta,
    *,
    gate=None,
    initial_state=None,
    reset=None,
    impl: DeltaRuleImpl = "auto",
    chunk_size: int = 16,
    normalize_keys: bool = True,
    return_state: bool = False,
):
    """(Gated) DeltaNet outputs ``y_t = S_t^T q_t`` (module docstring for the recurrence).

    Args:
      q, k: (B, L, H, K) queries and keys (keys are L2-normalised over K when
        ``normalize_keys``: ``k / sqrt(|k|^2 + 1e-6)``).
      v: (B, L, H, V) values.
      beta: (B, L, H) write strengths, usually in (0, 1) (a sigmoid).
      gate: optional (B, L, H) LOG-gates ``log g_t <= 0``, e.g. ``-softplus(x) * exp(A)``
        as in Gated DeltaNet; None is ``g = 1`` (DeltaNet); values below ``-1e30``
        (``-inf`` included) act as ``g = 0``. A concrete positive log-gate is an error;
        under ``jit`` it is not checked.
      initial_state: optional (B, H, K, V) state before position 0.
      reset: optional bool (B, L): True where a document starts; the state before that
        position is dropped (``S_{t-1} := 0``; at t = 0 this drops ``initial_state``).
      impl: ``"recurrent"``, ``"chunked"``, ``"pallas"`` (``pallas_kernels.delta_rule``:
        the chunk carries in a kernel, C rounded up to a power of two >= 16; float32) or
        ``"auto"`` (= ``"chunked"``).
      chunk_size: C of ``"chunked"`` (a positive int; capped at L); 16 measured best for
        fwd+bwd on a 2-core CPU at K = V = 32 (32: 1.2x slower, 64: 1.7x).
      normalize_keys: L2-normalise ``k`` (as in both papers); False uses ``k`` as given.
      return_state: also return the final state.

    Returns:
      y (B, L, H, V) in the inputs' dtype (computed in float32, or float64 for float64
      inputs); with ``return_state``, ``(y, state)`` with the (B, H, K, V) float32 state
      (float64 for float64 inputs).
    """
    q, k, v, beta = (jnp.asarray(t) for t in (q, k, v, beta))
    gate = None if gate is None else jnp.asarray(gate)
    reset = None if reset is None else jnp.asarray(reset)
    _validate(q, k, v, beta, gate, initial_state, reset)
    impl = dispatch.resolve("delta_rule", impl)
    positive_int("chunk_size", chunk_size)
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    real = jnp.promote_types(out_dtype, jnp.float32)
    q, k, v, beta = (t.astype(real) for t in (q, k, v, beta))
    if normalize_keys:
        k = k * lax.rsqrt(jnp.sum(k * k, axis=-1, keepdims=True) + _KEY_EPS)
    b, length, h, kk = q.shape
    log_gate = jnp.zeros((b, length, h), real) if gate is None else gate.astype(real)
    if reset is not None:
        log_gate = jnp.where(reset[..., None], _LOG_ZERO, log_gate)
    log_gate = jnp.maximum(log_gate, _LOG_ZERO)
    if initial_state is None:
        s0 = jnp.zeros((b, h, kk, v.shape[-1]), real)
    else:
        s0 = jnp.asarray(initial_state).astype(real)
    if impl == "recurrent":
        y, s = _recurrent(q, k, v, beta, log_gate, s0)
    elif impl == "pallas":  # pallas_kernels.delta_rule: the chunk carries in Pallas
        y, s = dispatch.kernel("delta_rule")(
            q, k, v, beta, log_gate=log_gate, state0=s0, chunk_size=chunk_size
        )
    else:
        y, s = _chunked(q, k, v, beta, log_gate, s0, min(chunk_size, length))
    y = y.astype(out_dtype)
    return (y, s) if return_state else y


def _validate(q, k, v, beta, gate, initial_state, reset):
    if q.ndim != 4:
        raise ValueError(f"q must be (B, L, H, K), got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape (B, L, H, K) = {q.shape}, got {k.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, L, H, V) with (B, L, H) = {q.shape[:3]}, got {v.shape}")
    for name, t in (("beta", beta), ("gate", gate)):
        if t is not None and t.shape != q.shape[:3]:
            raise ValueError(f"{name} must be (B, L, H) = {q.shape[:3]}, got {t.shape}")
    for name, t in (("q", q), ("k", k), ("v", v), ("beta", beta), ("gate", gate)):
        if t is not None and not jnp.issubdtype(t.dtype, jnp.floating):
            raise ValueError(f"{name} must be real floating, got dtype {t.dtype}")
    b, _, h, kk = q.shape
    want = (b, h, kk, v.shape[-1])
    if initial_state is not None and jnp.shape(initial_state) != want:
        raise ValueError(
            f"initial_state must be (B, H, K, V) = {want}, got {jnp.shape(initial_state)}"
        )
    if reset is not None and (reset.shape != q.shape[:2] or reset.dtype != jnp.bool_):
        raise ValueError(
            f"reset must be bool (B, L) = {q.shape[:2]}, got {reset.dtype} {reset.shape}"
        )
    if gate is not None and not isinstance(gate, jax.core.Tracer):
        top = float(np.max(np.asarray(gate, np.float32))) if gate.size else 0.0
        if not top <= 0.0:
            raise ValueError(
                f"gate holds log-gates log g_t, which must be <= 0 (g in (0, 1]); got a "
                f"maximum of {top}"
            )


def _recurrent(q, k, v, beta, log_gate, s0):
    def step(s, inp):
        q_t, k_t, v_t, beta_t, lg_t = inp  # (B, H, K) / (B, H, V) / (B, H)
        g = jnp.exp(lg_t)[..., None]  # 0 at a reset: S_{t-1} is dropped
        u = beta_t[..., None] * (v_t - g * jnp.einsum("bhk,bhkv->bhv", k_t, s))
        s = g[..., None] * s + k_t[..., :, None] * u[..., None, :]
        return s, jnp.einsum("bhk,bhkv->bhv", q_t, s)

    xs = tuple(jnp.moveaxis(t, 1, 0) for t in (q, k, v, beta, log_gate))
    s, y = lax.scan(step, s0, xs)
    return jnp.moveaxis(y, 0, 1), s


def _unit_lower_inverse(a):
    """``(I + a)^-1`` for strictly lower-triangular ``a`` (..., C, C), by recursive 2x2
    blocks: ``[[T11, 0], [-T22 M T11, T22]]`` for ``[[L11, 0], [M, L22]]``, all pairs of
    diagonal blocks of one size at once (log2 C levels of small batched matmuls; a
    batched ``solve_triangular`` is ~20x slower on CPU)."""
    c = a.shape[-1]
    size = 1 << (c - 1).bit_length()  # pad to a power of two with an identity block
    lead = a.shape[:-2]
    a = jnp.pad(a, [(0, 0)] * len(lead) + [(0, size - c), (0, size - c)])
    t = jnp.ones((*lead, size, 1, 1), a.dtype)  # the diagonal blocks of size m = 1
    m = 1
    while m < size:
        pairs = size // (2 * m)
        blocks = a.reshape(*lead, pairs, 2 * m, pairs, 2 * m)
        diag = jnp.moveaxis(jnp.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)
        low = diag[..., m:, :m]  # (..., pairs, m, m): M of each 2m diagonal block
        t11, t22 = t[..., 0::2, :, :], t[..., 1::2, :, :]
        t21 = -jnp.matmul(jnp.matmul(t22, low), t11)
        top = jnp.concatenate([t11, jnp.zeros_like(t11)], axis=-1)
        t = jnp.concatenate([top, jnp.concatenate([t21, t22], axis=-1)], axis=-2)
        m *= 2
    return t[..., 0, :c, :c]


@jax.custom_vjp
def _solve_unit_lower(a, rhs):
    """``(I + a)^-1 rhs`` for strictly lower-triangular ``a`` (..., C, C), rhs (..., C, R).

    Custom VJP (the adjoint of a triangular solve, two matmuls): with ``X = T rhs`` and
    ``T = (I + a)^-1``, ``d rhs = T^T dX`` and ``d a = -strict_lower(d rhs X^T)``, instead of
    differentiating through the log2 C levels of :func:`_unit_lower_inverse`.
    """
    return jnp.matmul(_unit_lower_inverse(a), rhs)


def _solve_fwd(a, rhs):
    t = _unit_lower_inverse(a)
    x = jnp.matmul(t, rhs)
    return x, (t, x)


def _solve_bwd(res, dx):
    t, x = res
    d_rhs = jnp.matmul(jnp.swapaxes(t, -1, -2), dx)
    c = t.shape[-1]
    strict = jnp.tril(jnp.ones((c, c), bool), -1)
    d_a = jnp.where(strict, -jnp.matmul(d_rhs, jnp.swapaxes(x, -1, -2)), 0.0)
    return d_a.astype(t.dtype), d_rhs


_solve_unit_lower.defvjp(_solve_fwd, _solve_bwd)


def chunk_terms(q, k, v, beta, log_gate, c, *, chunk_major=False):
    """The state-independent terms of the chunked (WY / UT) form, per chunk of ``c`` rows.

    Args:
      q, k: (B, L, H, K) (keys already normalised); v: (B, L, H, V); beta, log_gate:
        (B, L, H), log_gate in [``_LOG_ZERO``, 0]. Padded to a multiple of ``c`` with
        no-op steps (beta = 0, g = 1).
      c: the chunk size C.
      chunk_major: lay the terms out as (N, B, H, ...) (the chunk axis first, as a
        ``lax.scan`` over chunks reads them) instead of (B, H, N, ...).

    Returns:
      ``(u_tilde, w, scores, q_gamma, k_to_end, gamma_end)``, each (B, H, N, C, ...):
      u_tilde (C, V) and w (C, K) with ``U = u_tilde - w S_0``; scores (C, C) the causal
      ``QK^T o D``; q_gamma = diag(gamma) Q and k_to_end = diag(gamma_C / gamma) K (C, K);
      gamma_end (B, H, N). Per chunk: ``Y = q_gamma S_0 + scores U``,
      ``S_C = gamma_end S_0 + k_to_end^T U`` (module docstring).
    """
    b, length, h, kk = q.shape
    pad = -length % c
    n = (length + pad) // c

    def chunks(t):  # (B, L, H, ...) -> (B, H, N, C, ...) or (N, B, H, C, ...); padding: no-op
        t = jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
        t = t.reshape(b, n, c, *t.shape[2:])  # (B, N, C, H, ...)
        return jnp.moveaxis(t, (1, 3), (0, 2)) if chunk_major else jnp.moveaxis(t, 3, 1)

    vv = v.shape[-1]
    q_c, k_c, v_c = chunks(q), chunks(k), chunks(v)  # (..., C, K|V)
    beta_c, lg_c = chunks(beta), chunks(log_gate)  # (..., C)
    seg = segment_sum(lg_c)  # (..., C, C): log(gamma_t / gamma_j), t >= j
    decay = jnp.exp(seg)
    log_gamma = jnp.cumsum(lg_c, axis=-1)  # decay from the chunk start to t (inclusive)
    to_end = jnp.exp(seg[..., -1, :])  # gamma_C / gamma_j
    gamma_end = jnp.exp(log_gamma[..., -1])  # (B, H, N) or (N, B, H)
    gamma = jnp.exp(log_gamma)

    kkt = jnp.einsum("...ik,...jk->...ij", k_c, k_c)
    strict = jnp.tril(jnp.ones((c, c), bool), -1)
    a = jnp.where(strict, beta_c[..., :, None] * decay * kkt, 0.0)
    rhs = jnp.concatenate(
        [beta_c[..., None] * v_c, (beta_c * gamma)[..., None] * k_c], axis=-1
    )  # (..., C, V + K)
    x = _solve_unit_lower(a, rhs)
    u_tilde, w = x[..., :vv], x[..., vv:]
    scores = jnp.einsum("...ik,...jk->...ij", q_c, k_c) * decay  # -> 0 above the diagonal
    q_gamma = q_c * gamma[..., None]
    k_to_end = k_c * to_end[..., None]
    return u_tilde, w, scores, q_gamma, k_to_end, gamma_end


def _chunked(q, k, v, beta, log_gate, s0, c):
    b, length, h, _ = q.shape
    vv = v.shape[-1]
    terms = chunk_terms(q, k, v, beta, log_gate, c, chunk_major=True)  # (N, B, H, ...)
    n = terms[0].shape[0]

    def step(s, inp):  # s (B, H, K, V)
        u_t, w_n, sc, qg, kd, ge = inp
        u = u_t - jnp.einsum("bhck,bhkv->bhcv", w_n, s)
        y = jnp.einsum("bhck,bhkv->bhcv", qg, s) + jnp.einsum("bhij,bhjv->bhiv", sc, u)
        s = ge[..., None, None] * s + jnp.einsum("bhck,bhcv->bhkv", kd, u)
        return s, y

    s, y = lax.scan(step, s0, terms)  # y (N, B, H, C, V)
    y = jnp.transpose(y, (1, 0, 3, 2, 4)).reshape(b, n * c, h, vv)
    return y[:, :length], s
