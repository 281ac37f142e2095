"""Long convolutions and the diagonal state space (DSS) kernel (jaxar/MATHS.md s.3).

DSS-exp per channel c with N complex modes ``lambda_{c,n}`` (Re < 0), step
``delta_c = exp(log_step_c)`` and output weights ``w_{c,n}``:

    K[l, c] = Re( sum_n w_{c,n} exp(lambda_{c,n} delta_c l) ),   l = 0..L-1
    y = causal_conv(u, K)  ==  Re( sum_n w_{c,n} h_{t,c,n} ),  h_t = exp(lambda delta) h_{t-1} + u_t

Packed rows (documents separated by ``reset``) use :func:`dss_chunked`: chunks of C steps,
the in-chunk part as a (C x C) Toeplitz matmul masked to same-document pairs, the carried
part through the (B, H, N) state at chunk ends (a scan over L / C chunks with resets).
Exactly the recurrence with resets, in matmuls instead of L sequential steps.

References:
  Mehta et al. 2022, "Long Range Language Modeling via Gated State Spaces", arXiv:2206.13947.
  Gupta et al. 2022, "Diagonal State Spaces are as Effective as Structured State Spaces",
    arXiv:2203.14343.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxar.ops.checks import positive_int
from jaxar.ops.scan import check_chunk_size, linear_scan

__all__ = ["DEFAULT_DSS_CHUNK", "causal_conv", "dss_chunked", "dss_kernel", "dss_recurrent"]

DEFAULT_DSS_CHUNK = 32


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
    positive_int("length", length)
    dl = _discrete(lam_CxN, log_step_C)  # (C, N)
    pos = jnp.arange(length, dtype=jnp.real(dl).dtype)
    expo = jnp.exp(dl[None] * pos[:, None, None])  # (L, C, N)
    return _re_contract("lcn,cn->lc", expo, w_CxN.astype(expo.dtype))


def _re_contract(spec, a, b):
    """``Re(einsum(spec, a, b))`` for complex a and b as two real einsums (a complex dot
    is avoided: ``jax.checkpoint`` policies that save dots reject complex ones)."""
    return jnp.einsum(spec, jnp.real(a), jnp.real(b)) - jnp.einsum(spec, jnp.imag(a), jnp.imag(b))


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
    y = _re_contract("btcn,cn->btc", h, w_CxN.astype(h.dtype))
    if return_states:
        return y.astype(u.dtype), state, h.astype(state.dtype)
    return y.astype(u.dtype), state


def dss_chunked(u, lam_CxN, log_step_C, w_CxN, *, reset=None, chunk_size: int | None = None):
    """The DSS layer with document resets, chunk by chunk: equals :func:`dss_recurrent`.

    With ``a = exp(lam delta)``, ``K[l] = Re(sum_n w_n a_n^l)`` and ``same(t, s)`` = no reset
    in ``(s, t]``: ``y_t = sum_{s <= t, same(t, s)} K[t - s] u_s``. For a chunk of C steps
    starting at ``t0``, ``y_t = sum_{t0 <= s <= t} K[t - s] same(t, s) u_s`` (a masked
    Toeplitz matmul) ``+ Re(sum_n w_n a_n^{t - t0 + 1} S_n) same(t, t0 - 1)``, with ``S``
    the state after ``t0 - 1``; chunk-end states follow ``S' = a^C S [no reset in chunk] +
    sum_s a^{t1 - s} same(t1, s) u_s`` (an associative scan over the L / C chunks).

    Args:
      u: (B, L, H) real input.
      lam_CxN, log_step_C, w_CxN: as :func:`dss_kernel` (H channels, N modes).
      reset: optional bool (B, L), True at document starts (state zeroed before the token).
      chunk_size: C, None (default ``DEFAULT_DSS_CHUNK``) or an int >= 1. Memory holds a
        (B, L, C, H) masked Toeplitz tensor and (B, L / C, H, N) chunk states.

    Returns:
      y: (B, L, H) in u's dtype (computed in float32 or wider).
    """
    u = jnp.asarray(u)
    if u.ndim != 3:
        raise ValueError(f"u must be (B, L, H), got shape {u.shape}")
    b, length, hd = u.shape
    if reset is not None and jnp.shape(reset) != (b, length):
        raise ValueError(f"reset must have shape (B, L) = {(b, length)}, got {jnp.shape(reset)}")
    check_chunk_size(chunk_size, allow_none=True)
    c = min(DEFAULT_DSS_CHUNK if chunk_size is None else chunk_size, length)
    dl = _discrete(lam_CxN, log_step_C)  # (H, N)
    if dl.shape[0] != hd:
        raise ValueError(f"u has {hd} channels but lam has {dl.shape[0]}")
    work = jnp.promote_types(u.dtype, jnp.float32)
    w = w_CxN.astype(dl.dtype)
    k = -(-length // c)
    pad = k * c - length
    x = jnp.pad(u.astype(work), ((0, 0), (0, pad), (0, 0))).reshape(b, k, c, hd)
    # document index of every position (a reset starts a new one); padding continues the last
    r = jnp.zeros((b, length), jnp.int32) if reset is None else jnp.asarray(reset, jnp.int32)
    seg = jnp.pad(jnp.cumsum(r, axis=1), ((0, 0), (0, pad)), mode="edge").reshape(b, k, c)
    # previous chunk's last document index (-1 before the first chunk: nothing carried)
    prev = jnp.concatenate([jnp.full((b, 1), -1, jnp.int32), seg[:, :-1, -1]], axis=1)

    i = jnp.arange(c)
    pw = jnp.exp(dl[None] * jnp.arange(c + 1, dtype=jnp.real(dl).dtype)[:, None, None])
    kern = _re_contract("lhn,hn->lh", pw[:c], w)  # K[0..C-1], (C, H)
    causal = i[:, None] >= i[None, :]
    toeplitz = jnp.where(causal[..., None], kern[jnp.clip(i[:, None] - i[None, :], 0)], 0.0)
    same = seg[:, :, :, None] == seg[:, :, None, :]  # (B, K, C, C)
    y = jnp.einsum(
        "bkijh,bkjh->bkih", jnp.where(same[..., None], toeplitz[None, None].astype(work), 0.0), x
    )

    # chunk-end states: local sums, then a scan with decay a^C (zeroed by a reset)
    to_end = pw[c - 1 - i]  # a^(C-1-j), (C, H, N)
    x_end = jnp.where((seg == seg[:, :, -1:])[..., None], x, 0.0)
    s_re = jnp.einsum("jhn,bkjh->bkhn", jnp.real(to_end), x_end)
    s_im = jnp.einsum("jhn,bkjh->bkhn", jnp.imag(to_end), x_end)
    local = (s_re + 1j * s_im).astype(dl.dtype)
    ends, _ = linear_scan(
        pw[c][None, None], local, reset=seg[:, :, -1] != prev, impl="associative"
    )  # state after each chunk, (B, K, H, N)
    carried = jnp.concatenate([jnp.zeros_like(ends[:, :1]), ends[:, :-1]], axis=1)
    out_w = pw[1:] * w[None]  # w a^(i+1), (C, H, N)
    y_in = _re_contract("ihn,bkhn->bkih", out_w, carried)
    y = y + jnp.where((seg == prev[:, :, None])[..., None], y_in.astype(work), 0.0)
    return y.reshape(b, k * c, hd)[:, :length].astype(u.dtype)
