"""Long convolutions and the diagonal state space (DSS) kernel (jaxar/MATHS.md s.3).

DSS-exp per channel c with N complex modes ``lambda_{c,n}`` (Re < 0), step
``delta_c = exp(log_step_c)`` and output weights ``w_{c,n}``:

    K[l, c] = Re( sum_n w_{c,n} exp(lambda_{c,n} delta_c l) ),   l = 0..L-1
    y = causal_conv(u, K)  ==  Re( sum_n w_{c,n} h_{t,c,n} ),  h_t = exp(lambda delta) h_{t-1} + u_t

References:
  Mehta et al. 2022, "Long Range Language Modeling via Gated State Spaces", arXiv:2206.13947.
  Gupta et al. 2022, "Diagonal State Spaces are as Effective as Structured State Spaces",
    arXiv:2203.14343.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxar.ops.scan import linear_scan

__all__ = ["causal_conv", "dss_kernel", "dss_recurrent"]


def causal_conv(u, kernel):
    """``y[b, t, c] = sum_{s <= t} kernel[t - s, c] * u[b, s, c]`` via an FFT of size >= 2L.

    Args:
      u: (B, L, C) real input.
      kernel: (L', C) real kernel with L' <= L (shorter kernels are zero-padded).

    Returns:
      (B, L, C) in the result dtype of u and kernel (computed in float32 or wider).
    """
    u, kernel = jnp.asarray(u), jnp.asarray(kernel)
    if u.ndim != 3:
        raise ValueError(f"u must be (B, L, C), got shape {u.shape}")
    if kernel.ndim != 2 or kernel.shape[1] != u.shape[2] or kernel.shape[0] > u.shape[1]:
        raise ValueError(
            f"kernel must be (L', C) with L' <= L = {u.shape[1]} and C = {u.shape[2]}, "
            f"got {kernel.shape}"
        )
    out_dtype = jnp.result_type(u.dtype, kernel.dtype)
    work = jnp.promote_types(out_dtype, jnp.float32)
    length = u.shape[1]
    n = 1 << (2 * length - 1).bit_length()  # power of two >= 2L
    uf = jnp.fft.rfft(u.astype(work), n=n, axis=1)
    kf = jnp.fft.rfft(kernel.astype(work), n=n, axis=0)
    y = jnp.fft.irfft(uf * kf[None], n=n, axis=1)[:, :length]
    return y.astype(out_dtype)


def _discrete(lam_CxN, log_step_C):
    lam = jnp.asarray(lam_CxN)
    step = jnp.exp(jnp.asarray(log_step_C))
    if lam.ndim != 2 or step.shape != lam.shape[:1]:
        raise ValueError(
            f"lam must be (C, N) complex and log_step (C,), got {lam.shape} and {step.shape}"
        )
    return lam * step[:, None].astype(lam.dtype)


def dss_kernel(lam_CxN, log_step_C, w_CxN, length: int):
    """DSS-exp kernel ``K[l, c] = Re(sum_n w_{c,n} exp(lam_{c,n} delta_c l))``, shape (L, C)."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length={length!r} must be a positive int")
    dl = _discrete(lam_CxN, log_step_C)  # (C, N)
    pos = jnp.arange(length, dtype=jnp.real(dl).dtype)
    expo = jnp.exp(dl[None] * pos[:, None, None])  # (L, C, N)
    return jnp.real(jnp.einsum("lcn,cn->lc", expo, w_CxN.astype(expo.dtype)))


def dss_recurrent(
    u, lam_CxN, log_step_C, w_CxN, *, state0=None, reset=None, impl="auto", return_states=False
):
    """The same DSS layer as a diagonal linear recurrence (O(1) per step).

    Args:
      u: (B, T, C) real input.
      lam_CxN, log_step_C, w_CxN: as :func:`dss_kernel`.
      state0: optional (B, C, N) complex state (what the previous tokens left).
      reset: optional bool (B, T), True at document starts (state zeroed before the token).
      impl: :func:`jaxar.ops.linear_scan` implementation.
      return_states: also return the state after every input, (B, T, C, N).

    Returns:
      ``(y, state)``: y (B, T, C) in u's dtype; state (B, C, N) complex64 (or wider);
      ``(y, state, states)`` with ``return_states``.
    """
    u = jnp.asarray(u)
    if u.ndim != 3:
        raise ValueError(f"u must be (B, T, C), got shape {u.shape}")
    a = jnp.exp(_discrete(lam_CxN, log_step_C))  # (C, N)
    x = jnp.broadcast_to(u[..., None], u.shape + (a.shape[1],)).astype(a.dtype)
    h, state = linear_scan(a[None, None], x, state0, reset=reset, impl=impl)
    y = jnp.real(jnp.einsum("btcn,cn->btc", h, w_CxN.astype(h.dtype)))
    if return_states:
        return y.astype(u.dtype), state, h.astype(state.dtype)
    return y.astype(u.dtype), state
