"""Public wrapper: the diagonal linear scan as a Pallas kernel with a custom VJP."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels.linear_scan import kernel
from pallas_kernels.linear_scan.kernel import BlockSizes

_DTYPES = ("float32", "bfloat16", "float16", "complex64")


def linear_scan(
    a,
    x,
    h0=None,
    *,
    reverse: bool = False,
    reset=None,
    interpret=False,
    block_sizes: BlockSizes | None = None,
):
    """Diagonal linear recurrence along axis 1: ``h_t = a_t * h_{t-1} + x_t``, h_0 = h0.

    With ``reverse=True``: ``h_t = a_t * h_{t+1} + x_t`` from the end, h_{L+1} = h0.
    ``reset`` (bool (B, L)) sets ``a_t = 0`` where True (a document starts there).
    The carry stays on chip in float32 across sequence tiles; complex values travel as
    (real, imag) float32 pairs. The VJP is the same kernel run the other way.

    Args:
      a, x: x (B, L, ...); a of the same rank, broadcasting to x (size-1 axes); float32,
        bfloat16, float16 or complex64 (each may be real or complex; the result is their
        common dtype).
      h0: optional (B, ...) initial state (default zeros).
      reverse: scan from the end.
      reset: optional bool (B, L).
      interpret: False (compiled: Mosaic on TPU, Triton on GPU), True (the generic kernel
        in the Pallas interpreter) or ``pltpu.InterpretParams()`` (the Mosaic kernel in the
        TPU interpreter).
      block_sizes: tiles; default ``BlockSizes.default`` for the chosen lowering.

    Returns:
      ``(h, h_last)``: h (B, L, ...) in the common dtype of a and x, and the final state
      (B, ...) (h_L, or h_1 when reversed) in float32 / complex64 (as
      ``jaxar.ops.linear_scan``).
    """
    a, x = jnp.asarray(a), jnp.asarray(x)
    try:
        ok = a.ndim == x.ndim >= 2 and jnp.broadcast_shapes(a.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"a and x have shapes {a.shape}, {x.shape}; accepted: x (B, L, ...) and a of the "
            "same rank broadcasting to it"
        )
    dtype = jnp.result_type(a, x)
    if h0 is not None and jnp.iscomplexobj(h0) and not jnp.iscomplexobj(x):
        dtype = jnp.promote_types(dtype, jnp.complex64)
    if jnp.dtype(dtype).name not in _DTYPES:
        raise ValueError(
            f"a, x (and h0) have dtypes {a.dtype}, {x.dtype}; accepted: {_DTYPES} (one common "
            "dtype; use complex64 for complex values)"
        )
    carry = jnp.complex64 if jnp.issubdtype(dtype, jnp.complexfloating) else jnp.float32
    a = jnp.broadcast_to(a, x.shape)
    B, L, *rest = a.shape
    if h0 is not None and h0.shape != (B, *rest):
        raise ValueError(f"h0 has shape {h0.shape}; accepted: {(B, *rest)} (a without axis 1)")
    if reset is not None:
        reset = jnp.asarray(reset)
        if reset.shape != (B, L) or reset.dtype != jnp.bool_:
            raise ValueError(
                f"reset has shape {reset.shape} and dtype {reset.dtype}; accepted: bool {(B, L)}"
            )
        a = jnp.where(reset.reshape(B, L, *([1] * len(rest))), jnp.zeros((), a.dtype), a)
    lowering = kernel.select_lowering(interpret)
    D = math.prod(rest)
    part = jnp.float32 if jnp.issubdtype(dtype, jnp.complexfloating) else dtype
    bs = block_sizes or BlockSizes.default(lowering, B, L, D, part)
    bs.validate(lowering, D, part)
    static = kernel.Static(
        lowering, interpret, bs.block_l, bs.block_d, bs.num_warps, bool(reverse), post=False
    )
    a = a.astype(dtype).reshape(B, L, D)
    x = x.astype(dtype).reshape(B, L, D)
    h0 = jnp.zeros((B, D), carry) if h0 is None else h0.astype(carry).reshape(B, D)
    h, last = _scan(static, a, x, h0)
    return h.reshape(B, L, *rest), last.reshape(B, *rest)


# --------------------------------------------------------------------------- plumbing


def _split(z):
    if jnp.iscomplexobj(z):
        return (jnp.real(z).astype(jnp.float32), jnp.imag(z).astype(jnp.float32))
    return (z,)


def _merge(parts, dtype):
    if len(parts) == 2:
        return jax.lax.complex(parts[0], parts[1]).astype(dtype)
    return parts[0].astype(dtype)


def _run(static: kernel.Static, a, x, init):
    """The kernel on (B, L, D) arrays of one dtype: out (B, L, D) in that dtype, final carry
    (B, D) float32 / complex64.

    Pads L with (a=1, x=0) rows, which leave the carry unchanged in either direction and
    either form, and D with zeros.
    """
    B, L, D = a.shape
    dtype = x.dtype
    if static.lowering == "mosaic":
        lp, dp = kernel.round_up(L, static.block_l), kernel.round_up(D, static.block_d)
    else:
        lp, dp = L, kernel.round_up(D, static.block_d)
    pad = ((0, 0), (0, lp - L), (0, dp - D))
    a_ = tuple(jnp.pad(u, pad, constant_values=1 if i == 0 else 0) for i, u in enumerate(_split(a)))
    x_ = tuple(jnp.pad(u, pad) for u in _split(x))
    h0_ = tuple(
        jnp.pad(u.astype(jnp.float32), ((0, 0), (0, dp - D)))[:, None] for u in _split(init)
    )
    out, last = kernel.scan(static, a_, x_, h0_)
    out = _merge(tuple(u[:, :L, :D] for u in out), dtype)
    last = _merge(tuple(u[:, 0, :D] for u in last), init.dtype)
    return out, last


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(static, a, x, h0):
    return _run(static, a, x, h0)


def _scan_fwd(static, a, x, h0):
    h, last = _run(static, a, x, h0)
    return (h, last), (a, h, h0)


def _scan_bwd(static, res, cts):
    a, h, h0 = res
    dh, dlast = cts
    back = dataclasses.replace(static, reverse=not static.reverse, post=True)
    g, dh0 = _run(back, a, dh.astype(h.dtype), dlast.astype(h0.dtype))
    # da_t = g_t * h_{t-1} (h_{t+1} when reversed), with h0 beyond the end.
    if static.reverse:
        h_prev = jnp.concatenate([h[:, 1:], h0[:, None].astype(h.dtype)], axis=1)
    else:
        h_prev = jnp.concatenate([h0[:, None].astype(h.dtype), h[:, :-1]], axis=1)
    da = g * h_prev
    return da.astype(a.dtype), g, dh0


_scan.defvjp(_scan_fwd, _scan_bwd)
