"""Pallas kernels of the diagonal linear scan, in two lowerings chosen in one place.

Layout inside: (B, L, D) per component (a complex array is a (real, imag) pair of
float32 arrays; "ncomp" is 1 or 2). One kernel body computes, along L, either

    pre  (forward scan):   h_t = a_t * c + x_t,  c = h_t          (out h, final c = h_L)
    post (its transpose):  g_t = x_t + c,        c = a_t * g_t    (out g, final c = a_1 g_1)

with the carry ``c`` initialised from ``h0`` and kept in float32 on chip. The post form
is the backward of the pre form run the other way: ``g_t = dh_t + a_{t+1} g_{t+1}``
without materialising a shifted ``a``.

Lowerings (chosen in ``select_lowering``, the one place):
- "mosaic" (TPU): features laid out as (D / 128, 128) vreg rows (a free reshape), so one
  time step of a tile is whole (8, 128) vregs; grid (B, D tiles, L tiles) with the L axis
  "arbitrary" (sequential); the carry lives in VMEM scratch across L tiles; inside a tile
  a loop over steps indexes the leading (untiled) axis.
- "triton" (GPU, and the generic interpreter): grid (B, D tiles); one program walks the
  whole sequence with the carry in registers, loading one row of ``block_d`` features per
  step (coalesced); generic Pallas, so it also runs under ``interpret=True``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import _common
from pallas_kernels._common import pow2, round_up

LANES = 128
LOWERINGS = ("mosaic", "triton")


def select_lowering(interpret: Any = False) -> str:
    """The lowering for this call (see ``pallas_kernels._common.select_lowering``)."""
    return _common.select_lowering(interpret, "linear_scan")


def sublanes(dtype) -> int:
    """Rows of one TPU sublane group: 8 for 32-bit, 16 for 16-bit dtypes."""
    return 8 * max(1, 4 // jnp.dtype(dtype).itemsize)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles: ``block_l`` sequence steps per grid step (Mosaic; Triton walks all steps in
    one program and ignores it), ``block_d`` features per program (Mosaic: a multiple of
    128 whose number of 128-lane rows is a multiple of 8 (16 for 16-bit dtypes) unless
    one tile covers all features; Triton: a power of two >= 16)."""

    block_l: int
    block_d: int
    num_warps: int | None = None

    def __post_init__(self):
        _common.check_block_sizes(self, ("block_l", "block_d"))

    @classmethod
    def default(
        cls, lowering: str, batch: int, length: int, features: int, dtype=jnp.float32
    ) -> BlockSizes:
        """Heuristic. TPU: one step is a whole (8, 128) vreg of features (16 rows for 16-bit),
        so tiles of 1024 features (2048 for 16-bit; all features when fewer) and 256 steps:
        1 MiB per array and buffer, about 12 MiB of VMEM for a complex scan, under v5e's
        16 MiB scoped default. GPU: the widest feature block (<= 256) that still gives about
        two programs per SM of an H100 (132 SMs)."""
        if lowering == "mosaic":
            unit = LANES * sublanes(dtype)
            return cls(min(256, length), min(round_up(features, LANES), unit))
        bd = min(256, max(16, pow2(features)))
        while bd > 32 and batch * (-(-features // bd)) < 264:
            bd //= 2
        return cls(16, bd, num_warps=4 if bd <= 128 else 8)

    def validate(self, lowering: str, features: int, dtype=jnp.float32) -> None:
        if lowering == "mosaic":
            rows = self.block_d // LANES
            whole = self.block_d >= round_up(features, LANES)
            if self.block_d % LANES or not (whole or rows % sublanes(dtype) == 0):
                raise ValueError(
                    f"BlockSizes.block_d={self.block_d} is not supported by the Mosaic (TPU) "
                    f"lowering for {features} features of {jnp.dtype(dtype).name}; accepted: "
                    f"a multiple of {LANES} that covers all features or is a multiple of "
                    f"{LANES * sublanes(dtype)}"
                )
        elif self.block_d < 16 or self.block_d != pow2(self.block_d):
            raise ValueError(
                f"BlockSizes.block_d={self.block_d} is not supported by the Triton (GPU) "
                "lowering; accepted: powers of two >= 16"
            )


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything static about one kernel call (hashable)."""

    lowering: str
    interpret: Any
    block_l: int
    block_d: int
    num_warps: int | None
    reverse: bool
    post: bool


# --------------------------------------------------------------------------- row maths


def _mul(a, c):
    """Complex (or real) product of component tuples."""
    if len(a) == 1:
        return (a[0] * c[0],)
    (ar, ai), (cr, ci) = a, c
    return (ar * cr - ai * ci, ar * ci + ai * cr)


def _add(a, b):
    return tuple(u + v for u, v in zip(a, b, strict=True))


def _step(post: bool, a, x, c):
    """One row: returns (output row, new carry)."""
    if post:
        g = _add(x, c)
        return g, _mul(a, g)
    h = _add(_mul(a, c), x)
    return h, h


# --------------------------------------------------------------------------- Mosaic (TPU)


def _mosaic_kernel(*refs, static: Static, ncomp: int):
    a_refs, x_refs, h0_refs = refs[:ncomp], refs[ncomp : 2 * ncomp], refs[2 * ncomp : 3 * ncomp]
    h_refs, last_refs = refs[3 * ncomp : 4 * ncomp], refs[4 * ncomp : 5 * ncomp]
    carry_refs = refs[5 * ncomp :]
    j, nl = pl.program_id(2), pl.num_programs(2)
    bl = static.block_l

    @pl.when(j == 0)
    def _init():
        for c_ref, h0_ref in zip(carry_refs, h0_refs, strict=True):
            c_ref[...] = h0_ref[...]

    def body(i, carry):  # one step: whole (rows, 128) vregs of features
        t = bl - 1 - i if static.reverse else i
        a = tuple(r[t].astype(jnp.float32) for r in a_refs)
        x = tuple(r[t].astype(jnp.float32) for r in x_refs)
        out, carry = _step(static.post, a, x, carry)
        for h_ref, o in zip(h_refs, out, strict=True):
            h_ref[t] = o.astype(h_ref.dtype)
        return carry

    carry = tuple(r[...] for r in carry_refs)
    carry = lax.fori_loop(0, bl, body, carry, unroll=min(8, bl))
    for c_ref, c in zip(carry_refs, carry, strict=True):
        c_ref[...] = c

    @pl.when(j == nl - 1)
    def _end():
        for last_ref, c in zip(last_refs, carry, strict=True):
            last_ref[...] = c


def _mosaic(static: Static, a, x, h0):
    """Features as (D / 128, 128) vreg rows: arrays (B, L, D/128, 128), h0 (B, D/128, 128)."""
    ncomp = len(a)
    B, L, D = a[0].shape
    bl, rows = static.block_l, static.block_d // LANES
    nl, nd = L // bl, D // static.block_d
    tiles = lambda u: u.reshape(B, L, D // LANES, LANES)
    seq = (
        (lambda b, d, j: (b, nl - 1 - j, d, 0))
        if static.reverse
        else (lambda b, d, j: (b, j, d, 0))
    )
    tile = pl.BlockSpec((None, bl, rows, LANES), seq)
    row = pl.BlockSpec((None, rows, LANES), lambda b, d, j: (b, d, 0))
    outs = pl.pallas_call(
        functools.partial(_mosaic_kernel, static=static, ncomp=ncomp),
        grid=(B, nd, nl),
        in_specs=[tile] * (2 * ncomp) + [row] * ncomp,
        out_specs=[tile] * ncomp + [row] * ncomp,
        out_shape=[jax.ShapeDtypeStruct((B, L, D // LANES, LANES), x[0].dtype)] * ncomp
        + [jax.ShapeDtypeStruct((B, D // LANES, LANES), jnp.float32)] * ncomp,
        scratch_shapes=[pltpu.VMEM((rows, LANES), jnp.float32)] * ncomp,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=static.interpret or False,
    )(*map(tiles, a), *map(tiles, x), *(u.reshape(B, D // LANES, LANES) for u in h0))
    h = tuple(u.reshape(B, L, D) for u in outs[:ncomp])
    return h, tuple(u.reshape(B, 1, D) for u in outs[ncomp:])


# --------------------------------------------------------------------------- Triton (GPU)


def _triton_kernel(*refs, static: Static, ncomp: int, length: int):
    a_refs, x_refs, h0_refs = refs[:ncomp], refs[ncomp : 2 * ncomp], refs[2 * ncomp : 3 * ncomp]
    h_refs, last_refs = refs[3 * ncomp : 4 * ncomp], refs[4 * ncomp : 5 * ncomp]

    def body(i, carry):
        t = length - 1 - i if static.reverse else i
        sl = pl.ds(t, 1)
        a = tuple(r[sl, :].astype(jnp.float32) for r in a_refs)
        x = tuple(r[sl, :].astype(jnp.float32) for r in x_refs)
        out, carry = _step(static.post, a, x, carry)
        for h_ref, o in zip(h_refs, out, strict=True):
            h_ref[sl, :] = o.astype(h_ref.dtype)
        return carry

    carry = tuple(r[...].astype(jnp.float32) for r in h0_refs)
    carry = lax.fori_loop(0, length, body, carry)
    for last_ref, c in zip(last_refs, carry, strict=True):
        last_ref[...] = c


def _triton(static: Static, a, x, h0):
    from jax.experimental.pallas import triton as plgpu

    ncomp = len(a)
    B, L, D = a[0].shape
    bd = static.block_d
    tile = pl.BlockSpec((None, L, bd), lambda b, d: (b, 0, d))
    row = pl.BlockSpec((None, 1, bd), lambda b, d: (b, 0, d))
    params = None
    if not static.interpret:
        params = plgpu.CompilerParams(num_warps=static.num_warps or 4, num_stages=1)
    outs = pl.pallas_call(
        functools.partial(_triton_kernel, static=static, ncomp=ncomp, length=L),
        grid=(B, D // bd),
        in_specs=[tile] * (2 * ncomp) + [row] * ncomp,
        out_specs=[tile] * ncomp + [row] * ncomp,
        out_shape=[jax.ShapeDtypeStruct((B, L, D), x[0].dtype)] * ncomp
        + [jax.ShapeDtypeStruct((B, 1, D), jnp.float32)] * ncomp,
        compiler_params=params,
        interpret=bool(static.interpret),
    )(*a, *x, *h0)
    return tuple(outs[:ncomp]), tuple(outs[ncomp:])


def scan(static: Static, a, x, h0):
    """Runs the kernel on padded component tuples: a, x (B, L, D); h0 (B, 1, D) float32.

    Returns ``(out, last)``: out per component (B, L, D) in x's dtype, last (B, 1, D)
    float32 (the final carry).
    """
    fn = _mosaic if static.lowering == "mosaic" else _triton
    return fn(static, a, x, h0)
