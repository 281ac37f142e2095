"""GateLoop: data-controlled linear recurrence with a key-value state (jaxar/MATHS.md s.2).

    S_t = diag(a_t) S_{t-1} + k_t v_t^T,    y_t = Re(q_t^T S_t)

Implementations (``impl``): ``recurrent`` (``lax.scan`` over t), ``parallel`` (associative
scan over ``(a_t, k_t v_t^T)``), ``chunked`` (the shared linear-attention core,
:func:`jaxar.ops.linear_attention.linear_attention`, on ``log a``; chunks of C rounded up
to a power of two), ``attention`` (the same core with one chunk of the whole sequence) and
``pallas`` (the ``pallas_kernels.gateloop`` kernel, which reuses this module's gate maths).

Stability: every relative decay ``prod_{r=s+1}^t a_r`` is formed as ``exp`` of a sum of its
own log-gates (<= 0), never as a ratio ``P_t / P_s``; so gates near 0 underflow to the
exact limit 0 instead of overflowing, and nothing is divided.

One gate floor, ``LOG_FLOOR = -30``, for the attention / chunked forms and the Pallas
kernel (:func:`log_gate`): a gate with |a| < e^-30 (9.4e-14) acts as e^-30. Exact: that
changes the carried state by a relative 1e-13, far below float32's resolution (6e-8), so
float32 results equal those of the true gate, 0 included. Stable: ``d log a / da = 1/a``
stays below 1e13 (a floor of -80 allows 5.5e34, and ``dL/da`` then overflows float32's
3.4e38 once ``dL/dlog a`` passes ~1e4); ``|a|^2`` of a complex gate at the floor, e^-60,
is a normal float32 (e^-160 is not); and cumulated logs stay small, so the differences
``lam_t - lam_s`` lose less to cancellation.

Negative real gates: ``a_t = sigma'_t |a_t|`` with a sign ``sigma'_t = +-1``. With the
running sign ``sigma_t = prod_{r<=t} sigma'_r`` (exact: a parity count) and
``~S_t = sigma_t S_t``, the recurrence becomes ``~S_t = |a_t| ~S_{t-1} + (sigma_t k_t) v_t^T``
and ``y_t = (sigma_t q_t)^T ~S_t``: the log-space forms run on ``|a|`` with signed q, k
(:func:`fold_gate_signs`), and the final state is ``sigma_L ~S_L``. Exact, for every impl.

Gradient with respect to a itself: the log-space impls (attention, chunked, pallas) get it
as ``dL/da = dL/dlog|a| / a``, where ``dL/dlog|a|`` is a difference of O(1) terms: for
|a| << 1e-3 float32 rounding divided by |a| makes ``dL/da`` inaccurate, and it is 0 below
the log floor. Gradients of q, k, v, state0 and of a parametrisation such as
``a = sigmoid(m)`` (``dL/dm = (1 - a) dL/dlog a``) stay accurate; "recurrent" and
"parallel" differentiate the products directly and are exact at a = 0.

References:
  Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
    arXiv:2311.01927.
"""

from __future__ import annotations

import warnings

import jax.numpy as jnp
from jax import lax

from jaxar import dispatch
from jaxar.dispatch import GateLoopImpl
from jaxar.ops.linear_attention import linear_attention
from jaxar.ops.scan import check_chunk_size, linear_scan

__all__ = ["LOG_FLOOR", "fold_gate_signs", "gateloop", "log_gate"]

LOG_FLOOR = -30.0  # the one gate floor: see the module docstring


def _validate(q, k, v, a, state0):
    if q.ndim != 4:
        raise ValueError(f"q must be (B, L, H, K), got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {q.shape}, got {k.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, L, H, E) with (B, L, H) = {q.shape[:3]}, got {v.shape}")
    if a.shape != q.shape:
        raise ValueError(f"a must have q's shape {q.shape}, got {a.shape}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(t.dtype, jnp.floating):
            raise ValueError(f"{name} must be real floating, got dtype {t.dtype}")
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        raise ValueError(f"a must be real or complex floating, got dtype {a.dtype}")
    b, _, h, kk = q.shape
    want = (b, h, kk, v.shape[-1])
    if state0 is not None and state0.shape != want:
        raise ValueError(f"state0 must be (B, H, K, E) = {want}, got {state0.shape}")


def gateloop(
    q,
    k,
    v,
    a,
    *,
    state0=None,
    impl: GateLoopImpl = "auto",
    chunk_size: int = 16,
    mode: str | None = None,
):
    """GateLoop outputs and final state.

    Args:
      q, k: (B, L, H, K) real queries / keys.
      v: (B, L, H, E) real values.
      a: (B, L, H, K) real or complex transitions, |a| <= 1 (negative real gates included).
      state0: optional (B, H, K, E) initial state (real or complex).
      impl: "auto" | "recurrent" | "parallel" | "attention" | "chunked" | "pallas"
        (``jaxar.dispatch.GateLoopImpl``; "auto" resolved by platform in jaxar.dispatch).
      chunk_size: C for "chunked" (and the Pallas kernel), an int >= 1; 16 measured
        fastest on CPU.
      mode: deprecated alias of ``impl`` (warns; removed in the next release).

    Returns:
      ``(y, state)``: y (B, L, H, E) in the dtype of q/k/v; state (B, H, K, E) float32
      (complex64 for complex gates or state0).
    """
    if mode is not None:
        warnings.warn(
            "gateloop(mode=...) is deprecated; pass impl=... (same values)",
            DeprecationWarning,
            stacklevel=2,
        )
        if impl not in ("auto", mode):
            raise ValueError(f"mode={mode!r} and impl={impl!r} disagree; pass impl only")
        impl = mode
    q, k, v, a = (jnp.asarray(t) for t in (q, k, v, a))
    _validate(q, k, v, a, state0)
    impl = dispatch.resolve("gateloop", impl)
    check_chunk_size(chunk_size)
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    if impl == "pallas":
        return dispatch.kernel("gateloop")(q, k, v, a, state0=state0, chunk_size=chunk_size)
    real = jnp.promote_types(out_dtype, jnp.float32)
    cplx = jnp.issubdtype(a.dtype, jnp.complexfloating) or (
        state0 is not None and jnp.issubdtype(state0.dtype, jnp.complexfloating)
    )
    gate = jnp.promote_types(real, jnp.complex64) if cplx else real
    q, k, v = q.astype(real), k.astype(real), v.astype(real)
    b, length, h, kk = q.shape
    e = v.shape[-1]
    s0 = jnp.zeros((b, h, kk, e), gate) if state0 is None else state0.astype(gate)
    if impl == "recurrent":
        y, s = _recurrent(q, k, v, a.astype(gate), s0)
    elif impl == "parallel":
        y, s = _parallel(q, k, v, a.astype(gate), s0)
    else:
        sign = None
        if not jnp.iscomplexobj(a):
            q, k, a, sign = fold_gate_signs(q, k, a)
        log_mag, phase = log_gate(a.astype(gate))
        la = log_mag if phase is None else lax.complex(log_mag, phase)
        c = length if impl == "attention" else chunk_size
        y, s = linear_attention(q, k, v, la, state0=s0, impl="chunked", chunk_size=c)
        if sign is not None:
            s = s * sign[..., None].astype(s.dtype)
    return y.astype(out_dtype), s


def fold_gate_signs(q, k, a):
    """Moves the signs of real gates into q and k: ``(sigma q, sigma k, |a|, sigma_L)``.

    ``sigma_t = prod_{r<=t} sign(a_r)`` along axis 1 (a parity count, exact; a_r = 0 counts
    as positive). Then GateLoop on ``(sigma q, sigma k, v, |a|)`` gives the same y, and its
    final state times ``sigma_L`` (B, H, K) is the true final state (module docstring).
    Gradients pass through ``|a| = sign(a) a`` (the sign is piecewise constant).

    Args:
      q, k: (B, L, H, K) real or complex.
      a: (B, L, H, K) real gates.

    Returns:
      ``(q, k, |a|, sigma_L)``, q and k in their dtypes, sigma_L (B, H, K) int32 of +-1.
    """
    neg = a < 0
    sigma = 1 - 2 * (jnp.cumsum(neg, axis=1, dtype=jnp.int32) % 2)  # (B, L, H, K) +-1
    return (
        q * sigma.astype(q.dtype),
        k * sigma.astype(k.dtype),
        jnp.where(neg, -a, a),
        sigma[:, -1],
    )


def _recurrent(q, k, v, a, s0):
    def step(s, inp):
        qt, kt, vt, at = inp  # (B, H, K) / (B, H, E)
        s = at[..., None] * s + kt[..., None] * vt[..., None, :]
        y = jnp.einsum("bhk,bhke->bhe", qt, s.real if jnp.iscomplexobj(s) else s)
        return s, y

    xs = tuple(jnp.moveaxis(t, 1, 0) for t in (q, k, v, a))
    s, y = lax.scan(step, s0, xs)
    return jnp.moveaxis(y, 0, 1), s


def _parallel(q, k, v, a, s0):
    kv = (k[..., None] * v[..., None, :]).astype(a.dtype)  # (B, L, H, K, E)
    s, s_last = linear_scan(a[..., None], kv, s0, impl="associative")
    s_re = s.real if jnp.iscomplexobj(s) else s
    return jnp.einsum("blhk,blhke->blhe", q, s_re), s_last


def log_gate(a):
    """``(log|a|, arg a)`` with |a| floored at ``exp(LOG_FLOOR)``: finite values and
    gradients at a = 0.

    Real a must be >= 0 (fold negative gates first with :func:`fold_gate_signs`); its
    phase is None. Complex a: the phase in (-pi, pi] (0 below the floor).
    """
    if jnp.iscomplexobj(a):
        abs2 = a.real * a.real + a.imag * a.imag
        ok = abs2 > jnp.exp(2 * LOG_FLOOR)
        safe_re = jnp.where(ok, a.real, 1.0)
        safe_im = jnp.where(ok, a.imag, 0.0)
        log_mag = 0.5 * jnp.log(jnp.where(ok, abs2, jnp.exp(2 * LOG_FLOOR)))
        phase = jnp.where(ok, jnp.arctan2(safe_im, safe_re), 0.0)
        return log_mag, phase
    ok = a > jnp.exp(LOG_FLOOR)
    return jnp.log(jnp.where(ok, a, jnp.exp(LOG_FLOOR))), None
