"""Mosaic-form kernels (TPU): grid (B, H, q tiles, list slots), list in SMEM, VMEM scratch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.flash_attention import masks
from pallas_kernels.flash_attention.kernel import (
    LANES,
    NEG_INF,
    Static,
    dot_nn,
    dot_nt,
    finish,
    online_step,
    tile_mask,
)


def _mosaic_call(kernel, grid, num_prefetch, in_specs, out_specs, out_shape, scratch, static):
    return pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=num_prefetch,
            grid=grid,
            in_specs=in_specs,
            out_specs=out_specs,
            scratch_shapes=scratch,
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=static.interpret or False,
    )


def _tile_iotas(shape, q_axis, q0, k0):
    q_pos = q0 + lax.broadcasted_iota(jnp.int32, shape, q_axis)
    k_pos = k0 + lax.broadcasted_iota(jnp.int32, shape, 1 - q_axis)
    return q_pos, k_pos


def _fwd_grid_kernel(idx_ref, kind_ref, q_ref, k_ref, v_ref, *refs, static: Static, nq, width):
    qseg_ref, kseg_ref, mask_ref, rest = static.optional_refs(refs)
    o_ref, lse_ref, m_scr, l_scr, acc_scr = rest
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    slot = (b * nq + i) * width + j
    kind = kind_ref[slot]

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, NEG_INF, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    def step(masked: bool):
        s = dot_nt(q_ref[...], k_ref[...]) * static.scale
        if masked:
            q_pos, k_pos = _tile_iotas(
                s.shape, 0, i * static.block_q, idx_ref[slot] * static.block_k
            )
            q_seg = qseg_ref[...][:, :1] if static.has_segments else None
            k_seg = kseg_ref[...] if static.has_segments else None
            dense = None if mask_ref is None else mask_ref[...]
            s = jnp.where(tile_mask(static, q_pos, k_pos, q_seg, k_seg, dense), s, NEG_INF)
        m, l, acc = online_step(m_scr[...][:, :1], l_scr[...][:, :1], acc_scr[...], s, v_ref[...])
        m_scr[...] = jnp.broadcast_to(m, m_scr.shape)
        l_scr[...] = jnp.broadcast_to(l, l_scr.shape)
        acc_scr[...] = acc

    pl.when(kind == masks.PARTIAL)(lambda: step(True))
    pl.when(kind == masks.FULL)(lambda: step(False))

    @pl.when(j == width - 1)
    def _end():
        out, lse = finish(m_scr[...][:, :1], l_scr[...][:, :1], acc_scr[...])
        o_ref[...] = out.astype(o_ref.dtype)
        lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def forward(static: Static, tiles, q, k, v, q_seg, k_seg, dense):
    (B, H, Lq, K), (_, G, _, E) = q.shape, v.shape
    rep, bq, bk = H // G, static.block_q, static.block_k
    idx, kind = tiles[0], tiles[1]
    nq, width = idx.shape[1], idx.shape[2]
    kv_tile = lambda b, h, i, j, idx, kind: (b, lax.div(h, rep), idx[(b * nq + i) * width + j], 0)
    q_tile = lambda b, h, i, j, idx, kind: (b, h, i, 0)
    in_specs = [
        pl.BlockSpec((None, None, bq, K), q_tile),
        pl.BlockSpec((None, None, bk, K), kv_tile),
        pl.BlockSpec((None, None, bk, E), kv_tile),
    ]
    args = [idx.reshape(-1), kind.reshape(-1), q, k, v]
    if static.has_segments:
        in_specs += [
            pl.BlockSpec((None, bq, LANES), lambda b, h, i, j, idx, kind: (b, i, 0)),
            pl.BlockSpec(
                (None, 1, bk), lambda b, h, i, j, idx, kind: (b, 0, idx[(b * nq + i) * width + j])
            ),
        ]
        args += [jnp.broadcast_to(q_seg[:, :, None], (B, Lq, LANES)), k_seg[:, None, :]]
    if dense is not None:
        in_specs.append(
            pl.BlockSpec(
                (None, None, bq, bk),
                lambda b, h, i, j, idx, kind: (
                    *static.mask_index(b, h),
                    i,
                    idx[(b * nq + i) * width + j],
                ),
            )
        )
        args.append(dense)
    out, lse = _mosaic_call(
        functools.partial(_fwd_grid_kernel, static=static, nq=nq, width=width),
        (B, H, nq, width),
        2,
        in_specs,
        [
            pl.BlockSpec((None, None, bq, E), q_tile),
            pl.BlockSpec((None, None, bq, LANES), q_tile),
        ],
        [
            jax.ShapeDtypeStruct((B, H, Lq, E), q.dtype),
            jax.ShapeDtypeStruct((B, H, Lq, LANES), jnp.float32),
        ],
        [
            pltpu.VMEM((bq, LANES), jnp.float32),
            pltpu.VMEM((bq, LANES), jnp.float32),
            pltpu.VMEM((bq, E), jnp.float32),
        ],
        static,
    )(*args)
    return out, lse[..., 0]


def _grad_tile(static, q, k, v, do, lse_row, delta_row, positions, segments, mask_ref):
    """Transposed scores (k rows, q lanes): returns p^T and ds^T, both (bk, bq) float32."""
    s = dot_nt(k, q) * static.scale
    if positions is not None:
        q_pos, k_pos = _tile_iotas(s.shape, 1, *positions)
        dense = None if mask_ref is None else mask_ref[...]
        s = jnp.where(tile_mask(static, q_pos, k_pos, *segments, dense), s, NEG_INF)
    p = jnp.exp(s - lse_row)
    ds = p * (dot_nt(v, do) - delta_row)
    return p, ds


def _dq_grid_kernel(
    idx_ref, kind_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, static, nq, width
):
    qseg_ref, kseg_ref, mask_ref, (dq_ref, acc_scr) = static.optional_refs(refs)
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    slot = (b * nq + i) * width + j
    kind = kind_ref[slot]

    @pl.when(j == 0)
    def _init():
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    def step(masked: bool):
        positions = (i * static.block_q, idx_ref[slot] * static.block_k) if masked else None
        segments = (qseg_ref[...], kseg_ref[...][:, :1]) if static.has_segments else (None, None)
        k = k_ref[...]
        _, ds = _grad_tile(
            static, q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
            positions, segments, mask_ref,
        )  # fmt: skip
        acc_scr[...] += dot_nn(ds.T.astype(k.dtype), k)

    pl.when(kind == masks.PARTIAL)(lambda: step(True))
    pl.when(kind == masks.FULL)(lambda: step(False))

    @pl.when(j == width - 1)
    def _end():
        dq_ref[...] = (acc_scr[...] * static.scale).astype(dq_ref.dtype)


def _dkv_grid_kernel(
    idx_ref, kind_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, static, nk, width,
    steps,
):  # fmt: skip
    qseg_ref, kseg_ref, mask_ref, (dk_ref, dv_ref, dk_scr, dv_scr) = static.optional_refs(refs)
    b, kb, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    slot = (b * nk + kb) * width + lax.rem(t, width)
    kind = kind_ref[slot]

    @pl.when(t == 0)
    def _init():
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

    def step(masked: bool):
        positions = (idx_ref[slot] * static.block_q, kb * static.block_k) if masked else None
        segments = (qseg_ref[...], kseg_ref[...][:, :1]) if static.has_segments else (None, None)
        q, do = q_ref[...], do_ref[...]
        p, ds = _grad_tile(
            static, q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...], positions,
            segments, mask_ref,
        )  # fmt: skip
        dv_scr[...] += dot_nn(p.astype(do.dtype), do)
        dk_scr[...] += dot_nn(ds.astype(q.dtype), q)

    pl.when(kind == masks.PARTIAL)(lambda: step(True))
    pl.when(kind == masks.FULL)(lambda: step(False))

    @pl.when(t == steps - 1)
    def _end():
        dk_ref[...] = (dk_scr[...] * static.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def backward(static: Static, tiles, q, k, v, q_seg, k_seg, dense, do, lse, delta):
    (B, H, _, K), (_, G, Lk, E) = q.shape, v.shape
    rep, bq, bk = H // G, static.block_q, static.block_k
    idx, kind, _, idx_t, kind_t, _ = tiles
    nq, width = idx.shape[1], idx.shape[2]
    nk, width_t = idx_t.shape[1], idx_t.shape[2]
    lse_row, delta_row = lse[:, :, None, :], delta[:, :, None, :]
    seg_args = []
    if static.has_segments:
        seg_args = [q_seg[:, None, :], jnp.broadcast_to(k_seg[:, :, None], (B, Lk, LANES))]
    if dense is not None:  # transposed tiles (k rows, q lanes), like the scores
        seg_args.append(dense.transpose(0, 1, 3, 2))

    # dq: grid (B, H, q tiles, k slots).
    kv_tile = lambda b, h, i, j, idx, kind: (b, lax.div(h, rep), idx[(b * nq + i) * width + j], 0)
    q_tile = lambda b, h, i, j, idx, kind: (b, h, i, 0)
    row_tile = lambda b, h, i, j, idx, kind: (b, h, 0, i)
    seg_specs = []
    if static.has_segments:
        seg_specs = [
            pl.BlockSpec((None, 1, bq), lambda b, h, i, j, idx, kind: (b, 0, i)),
            pl.BlockSpec(
                (None, bk, LANES),
                lambda b, h, i, j, idx, kind: (b, idx[(b * nq + i) * width + j], 0),
            ),
        ]
    if dense is not None:
        seg_specs.append(
            pl.BlockSpec(
                (None, None, bk, bq),
                lambda b, h, i, j, idx, kind: (
                    *static.mask_index(b, h),
                    idx[(b * nq + i) * width + j],
                    i,
                ),
            )
        )
    dq = _mosaic_call(
        functools.partial(_dq_grid_kernel, static=static, nq=nq, width=width),
        (B, H, nq, width),
        2,
        [
            pl.BlockSpec((None, None, bq, K), q_tile),
            pl.BlockSpec((None, None, bk, K), kv_tile),
            pl.BlockSpec((None, None, bk, E), kv_tile),
            pl.BlockSpec((None, None, bq, E), q_tile),
            pl.BlockSpec((None, None, 1, bq), row_tile),
            pl.BlockSpec((None, None, 1, bq), row_tile),
            *seg_specs,
        ],
        pl.BlockSpec((None, None, bq, K), q_tile),
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        [pltpu.VMEM((bq, K), jnp.float32)],
        static,
    )(idx.reshape(-1), kind.reshape(-1), q, k, v, do, lse_row, delta_row, *seg_args)

    # dk, dv: grid (B, G, k tiles, rep * q slots); the q heads of group g are g*rep + r.
    steps = rep * width_t

    def q_of(b, g, kb, t, idx, kind):
        return idx[(b * nk + kb) * width_t + lax.rem(t, width_t)]

    qt_tile = lambda b, g, kb, t, idx, kind: (
        b,
        g * rep + lax.div(t, width_t),
        q_of(b, g, kb, t, idx, kind),
        0,
    )
    rowt_tile = lambda b, g, kb, t, idx, kind: (
        b,
        g * rep + lax.div(t, width_t),
        0,
        q_of(b, g, kb, t, idx, kind),
    )
    k_tile = lambda b, g, kb, t, idx, kind: (b, g, kb, 0)
    if static.has_segments:
        seg_specs = [
            pl.BlockSpec(
                (None, 1, bq), lambda b, g, kb, t, idx, kind: (b, 0, q_of(b, g, kb, t, idx, kind))
            ),
            pl.BlockSpec((None, bk, LANES), lambda b, g, kb, t, idx, kind: (b, kb, 0)),
        ]
    else:
        seg_specs = []
    if dense is not None:
        seg_specs.append(
            pl.BlockSpec(
                (None, None, bk, bq),
                lambda b, g, kb, t, idx, kind: (
                    *static.mask_index(b, g * rep + lax.div(t, width_t)),
                    kb,
                    q_of(b, g, kb, t, idx, kind),
                ),
            )
        )
    dk, dv = _mosaic_call(
        functools.partial(_dkv_grid_kernel, static=static, nk=nk, width=width_t, steps=steps),
        (B, G, nk, steps),
        2,
        [
            pl.BlockSpec((None, None, bq, K), qt_tile),
            pl.BlockSpec((None, None, bk, K), k_tile),
            pl.BlockSpec((None, None, bk, E), k_tile),
            pl.BlockSpec((None, None, bq, E), qt_tile),
            pl.BlockSpec((None, None, 1, bq), rowt_tile),
            pl.BlockSpec((None, None, 1, bq), rowt_tile),
            *seg_specs,
        ],
        [pl.BlockSpec((None, None, bk, K), k_tile), pl.BlockSpec((None, None, bk, E), k_tile)],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        [pltpu.VMEM((bk, K), jnp.float32), pltpu.VMEM((bk, E), jnp.float32)],
        static,
    )(idx_t.reshape(-1), kind_t.reshape(-1), q, k, v, do, lse_row, delta_row, *seg_args)
    return dq, dk, dv
