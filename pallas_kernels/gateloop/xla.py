"""The chunked GateLoop form in plain XLA: the kernel's maths without Pallas (a baseline).

Same maths and the same bounded exponents as the kernel: sub-chunks of ``sub`` steps,
log-gates cumulated inside a sub-chunk only (``lam_t = sum_{r<=t} log a_r``), so every
factor ``exp(lam_t - lam_s)`` (s <= t), ``exp(lam_t)`` and ``exp(lam_c - lam_s)`` has
modulus <= 1 for |a| <= 1; the K x E state is carried between sub-chunks by ``lax.scan``
(each step rematerialised in the backward, so memory stays O(B H L K)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

LOG_FLOOR = -80.0  # log|a| is floored here: gates below e^-80 (1.8e-35) act as e^-80


def safe_log(a):
    """log a with log|a| floored at LOG_FLOOR (finite value and gradient at a = 0)."""
    if jnp.iscomplexobj(a):
        mag = jnp.abs(a)
        tiny = mag < jnp.exp(LOG_FLOOR)
        safe = jnp.where(tiny, jnp.ones((), a.dtype), a)
        return jnp.where(tiny, jnp.asarray(LOG_FLOOR, a.dtype), jnp.log(safe))
    tiny = a < jnp.exp(LOG_FLOOR)
    return jnp.where(tiny, LOG_FLOOR, jnp.log(jnp.where(tiny, 1.0, a)))


def gateloop_chunked(q, k, v, a, state0=None, *, sub: int = 16):
    """GateLoop ``S_t = diag(a_t) S_{t-1} + k_t v_t^T``, ``y_t = Re(q_t^T S_t)``, chunked.

    Args:
      q, k, a: (B, L, H, K), real or complex (real gates in (0, 1]); v: (B, L, H, E) real.
      state0: optional (B, H, K, E).
      sub: steps per chunk.

    Returns:
      (y (B, L, H, E) in v's dtype, state (B, H, K, E) float32 or complex64).
    """
    B, L, H, K = q.shape
    E = v.shape[-1]
    cplx = any(jnp.iscomplexobj(u) for u in (q, k, a)) or (
        state0 is not None and jnp.iscomplexobj(state0)
    )
    ct = jnp.complex64 if cplx else jnp.float32
    n = -(-L // sub)
    pad = ((0, 0), (0, n * sub - L), (0, 0), (0, 0))

    def chunks(u, dtype, value=0):
        u = jnp.pad(u.astype(dtype), pad, constant_values=value)
        return u.reshape(B, n, sub, H, u.shape[-1]).transpose(1, 0, 3, 2, 4)  # (n, B, H, c, .)

    qc, kc = chunks(q, ct), chunks(k, ct)
    vc = chunks(v, jnp.float32)
    lc = chunks(safe_log(a.astype(ct)), ct)
    S0 = jnp.zeros((B, H, K, E), ct) if state0 is None else state0.astype(ct)
    causal = jnp.tril(jnp.ones((sub, sub), bool))[None, None, :, :, None]
    hi = lax.Precision.HIGHEST

    @jax.checkpoint
    def step(S, inp):
        q, k, v, la = inp
        lam = jnp.cumsum(la, axis=2)  # (B, H, c, K)
        y = jnp.einsum("bhtk,bhke->bhte", q * jnp.exp(lam), S.astype(ct), precision=hi)
        diff = lam[:, :, :, None, :] - lam[:, :, None, :, :]  # (B, H, t, s, K)
        w = jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0)), 0)
        att = jnp.einsum("bhtk,bhsk,bhtsk->bhts", q, k, w, precision=hi)
        y = y + jnp.einsum("bhts,bhse->bhte", att, v.astype(ct), precision=hi)
        last = lam[:, :, -1:, :]
        kd = k * jnp.exp(last - lam)
        S = jnp.exp(last[:, :, 0, :, None]) * S + jnp.einsum(
            "bhsk,bhse->bhke", kd, v.astype(ct), precision=hi
        )
        return S, jnp.real(y)

    S, y = lax.scan(step, S0, (qc, kc, vc, lc))
    y = y.transpose(1, 0, 3, 2, 4).reshape(B, n * sub, H, E)[:, :L]
    return y.astype(v.dtype), S
