"""First-order linear recurrence ``h_t = a_t * h_{t-1} + x_t`` (jaxar/MATHS.md s.1).

One entry point, :func:`linear_scan`, with implementations ``sequential`` (``lax.scan``,
the reference), ``associative`` (``lax.associative_scan``), ``chunked`` (cumulative
products inside chunks of C steps, state carried across chunks) and ``pallas``.
Carries are float32 (complex64) for low-precision inputs.

References:
  Martin and Cundy 2018, "Parallelizing Linear Recurrent Neural Nets Over Sequence Length",
    arXiv:1709.04057.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from jaxar import dispatch
from jaxar.dispatch import LinearScanImpl

__all__ = ["check_chunk_size", "linear_scan"]

DEFAULT_CHUNK = 32


def check_chunk_size(chunk_size, *, allow_none: bool = False) -> None:
    """Raises a one-line ValueError unless ``chunk_size`` is an int >= 1 (or None if allowed)."""
    if allow_none and chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        accepted = f"None (default {DEFAULT_CHUNK}) or an int >= 1" if allow_none else "an int >= 1"
        raise ValueError(f"chunk_size={chunk_size!r} is not supported; accepted: {accepted}")


def _carry_dtype(*dtypes):
    dt = jnp.result_type(*dtypes)
    if jnp.issubdtype(dt, jnp.complexfloating):
        return jnp.promote_types(dt, jnp.complex64)
    if jnp.issubdtype(dt, jnp.floating):
        return jnp.promote_types(dt, jnp.float32)
    raise ValueError(f"linear_scan needs float or complex inputs, got dtype {dt}")


def _validate(a, x, h0, reset):
    if x.ndim < 2:
        raise ValueError(f"x must have shape (B, L, ...), got {x.shape}")
    if a.ndim != x.ndim:
        raise ValueError(
            f"a must have the same rank as x (B, L, ...) with size-1 axes to broadcast; "
            f"got a.shape={a.shape}, x.shape={x.shape}"
        )
    try:
        shape = jnp.broadcast_shapes(a.shape, x.shape)
    except ValueError:
        raise ValueError(
            f"a.shape={a.shape} does not broadcast against x.shape={x.shape}"
        ) from None
    if shape != x.shape:
        raise ValueError(f"a.shape={a.shape} may broadcast to x.shape={x.shape}, not beyond it")
    if h0 is not None and h0.shape != (x.shape[0],) + x.shape[2:]:
        raise ValueError(
            f"h0 must have shape (B, ...) = {(x.shape[0],) + x.shape[2:]}, got {h0.shape}"
        )
    if reset is not None and reset.shape != x.shape[:2]:
        raise ValueError(f"reset must have shape (B, L) = {x.shape[:2]}, got {reset.shape}")


def linear_scan(
    a,
    x,
    h0=None,
    *,
    reverse: bool = False,
    reset=None,
    impl: LinearScanImpl = "auto",
    chunk_size: int | None = None,
):
    """``h_t = a_t * h_{t-1} + x_t`` along axis 1.

    Args:
      a: (B, L, ...) real or complex transition (any sign or phase); may have size-1 axes
        broadcasting to x.
      x: (B, L, ...) input.
      h0: optional (B, ...) initial state (default 0).
      reverse: run from t = L down to 1 (``h_t = a_t h_{t+1} + x_t``).
      reset: optional bool (B, L): True where a document starts (a_t := 0 there).
      impl: "auto" | "sequential" | "associative" | "chunked" | "pallas"
        (``jaxar.dispatch.LinearScanImpl``; "auto" resolved by platform in jaxar.dispatch).
      chunk_size: chunk length C for "chunked": None (default 32) or an int >= 1.

    Returns:
      ``(h, h_last)``: h (B, L, ...) in the inputs' result dtype, and the final state
      (B, ...) in the carry dtype (float32 / complex64 or wider).
    """
    a, x = jnp.asarray(a), jnp.asarray(x)
    _validate(a, x, h0, reset)
    impl = dispatch.resolve("linear_scan", impl)
    check_chunk_size(chunk_size, allow_none=True)
    out_dtype = jnp.result_type(a.dtype, x.dtype)
    carry = _carry_dtype(a.dtype, x.dtype, *(() if h0 is None else (h0.dtype,)))
    if impl == "pallas":
        return dispatch.kernel("linear_scan")(a, x, h0, reverse=reverse, reset=reset)
    a = a.astype(carry)
    x = x.astype(carry)
    if reset is not None:
        r = reset.reshape(reset.shape + (1,) * (x.ndim - 2))
        a = jnp.where(r, jnp.zeros((), carry), a)
    h0 = jnp.zeros((x.shape[0],) + x.shape[2:], carry) if h0 is None else h0.astype(carry)
    if reverse:
        a, x = jnp.flip(a, 1), jnp.flip(x, 1)
    if impl == "sequential":
        h = _sequential(a, x, h0)
    elif impl == "associative":
        h = _associative(a, x, h0)
    else:
        h = _chunked(a, x, h0, DEFAULT_CHUNK if chunk_size is None else chunk_size)
    h_last = h[:, -1]
    if reverse:
        h = jnp.flip(h, 1)
    return h.astype(out_dtype), h_last


def _sequential(a, x, h0):
    a_t = jnp.moveaxis(jnp.broadcast_to(a, x.shape) if a.shape != x.shape else a, 1, 0)

    def step(h, ax):
        at, xt = ax
        h = at * h + xt
        return h, h

    _, h = lax.scan(step, h0, (a_t, jnp.moveaxis(x, 1, 0)))
    return jnp.moveaxis(h, 0, 1)


def _combine(left, right):
    a1, x1 = left
    a2, x2 = right
    return a1 * a2, a2 * x1 + x2


def _associative(a, x, h0):
    # fold h0 into the first input: x_1 += a_1 h0
    x = x.at[:, 0].add(a[:, 0] * h0)
    a = jnp.broadcast_to(a, x.shape)
    _, h = lax.associative_scan(_combine, (a, x), axis=1)
    return h


def _chunked(a, x, h0, chunk):
    """Chunks of C: local scans inside every chunk at once (C dependent steps over all
    chunks in parallel), then one pass over the L/C chunk boundaries, then a fix-up
    ``h = h_local + A * h_in`` with ``A`` the within-chunk cumulative product (bounded
    by C factors of |a| <= 1 in practice; never divided by). Products, not logs: exact for
    gates of any sign or phase."""
    b, length = x.shape[:2]
    rest = x.shape[2:]
    c = min(chunk, length)
    n = -(-length // c)
    pad = n * c - length
    a = jnp.broadcast_to(a, x.shape)
    if pad:
        widths = [(0, 0), (0, pad)] + [(0, 0)] * len(rest)
        x = jnp.pad(x, widths)
        a = jnp.pad(a, widths, constant_values=1)
    # (C, B, N, ...) so the inner scan runs over the within-chunk position
    xc = jnp.moveaxis(x.reshape((b, n, c) + rest), 2, 0)
    ac = jnp.moveaxis(a.reshape((b, n, c) + rest), 2, 0)

    def inner(carry, ax):
        h, p = carry
        at, xt = ax
        h = at * h + xt
        p = at * p
        return (h, p), (h, p)

    zero = jnp.zeros(xc.shape[1:], x.dtype)
    one = jnp.ones(xc.shape[1:], x.dtype)
    _, (h_loc, p_loc) = lax.scan(inner, (zero, one), (ac, xc), unroll=min(c, 8))
    # boundary pass over chunks: h_in[n] = state entering chunk n
    last_h = jnp.moveaxis(h_loc[-1], 1, 0)  # (N, B, ...)
    last_p = jnp.moveaxis(p_loc[-1], 1, 0)

    def outer(h, pl):
        p, hl = pl
        return p * h + hl, h

    _, h_in = lax.scan(outer, h0, (last_p, last_h))  # (N, B, ...)
    h_in = jnp.moveaxis(h_in, 0, 1)[None]  # (1, B, N, ...)
    h = h_loc + p_loc * h_in  # (C, B, N, ...)
    h = jnp.moveaxis(h, 0, 2).reshape((b, n * c) + rest)
    return h[:, :length]
