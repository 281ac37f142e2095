"""Triton-form kernels (GPU, and the generic interpreter): grid (B, H, q tiles), tile-list loop."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.flash_attention import masks
from pallas_kernels.flash_attention.kernel import (
    NEG_INF,
    Static,
    dot_nn,
    dot_nt,
    dot_tn,
    finish,
    online_step,
    tile_mask,
)


def _iota_col(n):
    return jnp.arange(n, dtype=jnp.int32)[:, None]


def _iota_row(n):
    return jnp.arange(n, dtype=jnp.int32)[None, :]


def _fwd_loop_kernel(idx_ref, kind_ref, cnt_ref, q_ref, k_ref, v_ref, *refs, static: Static):
    qseg_ref, kseg_ref, mask_ref, (o_ref, lse_ref) = static.optional_refs(refs)
    bq, bk = static.block_q, static.block_k
    q = q_ref[...]
    q_pos = pl.program_id(2) * bq + _iota_col(bq)
    q_seg = qseg_ref[...][:, None] if static.has_segments else None

    def body(j, carry):
        kb = idx_ref[j]
        sl = pl.ds(pl.multiple_of(kb * bk, bk), bk)
        k, v = k_ref[sl, :], v_ref[sl, :]
        s = dot_nt(q, k) * static.scale
        k_seg = kseg_ref[sl][None, :] if static.has_segments else None
        dense = None if mask_ref is None else mask_ref[:, sl]
        valid = tile_mask(static, q_pos, kb * bk + _iota_row(bk), q_seg, k_seg, dense)
        valid = valid | (kind_ref[j] == masks.FULL)
        return online_step(*carry, jnp.where(valid, s, NEG_INF), v)

    init = (
        jnp.full((bq, 1), NEG_INF, jnp.float32),
        jnp.zeros((bq, 1), jnp.float32),
        jnp.zeros((bq, o_ref.shape[-1]), jnp.float32),
    )
    out, lse = finish(*lax.fori_loop(0, cnt_ref[0], body, init))
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse[:, 0]


def _dq_loop_kernel(
    idx_ref, kind_ref, cnt_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, static
):
    qseg_ref, kseg_ref, mask_ref, (dq_ref,) = static.optional_refs(refs)
    bq, bk = static.block_q, static.block_k
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_pos = pl.program_id(2) * bq + _iota_col(bq)
    q_seg = qseg_ref[...][:, None] if static.has_segments else None

    def body(j, dq):
        kb = idx_ref[j]
        sl = pl.ds(pl.multiple_of(kb * bk, bk), bk)
        k, v = k_ref[sl, :], v_ref[sl, :]
        s = dot_nt(q, k) * static.scale
        k_seg = kseg_ref[sl][None, :] if static.has_segments else None
        dense = None if mask_ref is None else mask_ref[:, sl]
        valid = tile_mask(static, q_pos, kb * bk + _iota_row(bk), q_seg, k_seg, dense)
        valid = valid | (kind_ref[j] == masks.FULL)
        p = jnp.exp(jnp.where(valid, s, NEG_INF) - lse)
        ds = p * (dot_nt(do, v) - delta)
        return dq + dot_nn(ds.astype(k.dtype), k)

    dq = lax.fori_loop(0, cnt_ref[0], body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * static.scale).astype(dq_ref.dtype)


def _dkv_loop_kernel(
    idx_ref, kind_ref, cnt_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, static
):
    qseg_ref, kseg_ref, mask_ref, (dk_ref, dv_ref) = static.optional_refs(refs)
    bq, bk = static.block_q, static.block_k
    rep = q_ref.shape[0]
    k, v = k_ref[...], v_ref[...]
    k_pos = pl.program_id(2) * bk + _iota_row(bk)
    k_seg = kseg_ref[...][None, :] if static.has_segments else None
    cnt = cnt_ref[0]

    def head(r, carry):
        def body(j, carry):
            dk, dv = carry
            qi = idx_ref[j]
            sl = pl.ds(pl.multiple_of(qi * bq, bq), bq)
            q, do = q_ref[r, sl, :], do_ref[r, sl, :]
            lse, delta = lse_ref[r, sl][:, None], delta_ref[r, sl][:, None]
            s = dot_nt(q, k) * static.scale
            q_seg = qseg_ref[sl][:, None] if static.has_segments else None
            dense = None
            if mask_ref is not None:
                dense = mask_ref[r if static.dense[1] > 1 else 0, sl, :]
            valid = tile_mask(static, qi * bq + _iota_col(bq), k_pos, q_seg, k_seg, dense)
            valid = valid | (kind_ref[j] == masks.FULL)
            p = jnp.exp(jnp.where(valid, s, NEG_INF) - lse)
            dv = dv + dot_tn(p.astype(do.dtype), do)
            ds = p * (dot_nt(do, v) - delta)
            return dk + dot_tn(ds.astype(q.dtype), q), dv

        return lax.fori_loop(0, cnt, body, carry)

    init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    dk, dv = lax.fori_loop(0, rep, head, init)
    dk_ref[...] = (dk * static.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _triton_call(kernel, grid, in_specs, out_specs, out_shape, static: Static, head_dim):
    warps = static.num_warps or (4 if head_dim <= 64 else 8)
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=static.num_stages),
        interpret=static.interpret,
    )


def forward(static: Static, tiles, q, k, v, q_seg, k_seg, dense):
    (B, H, Lq, K), (_, G, Lk, E) = q.shape, v.shape
    rep, bq = H // G, static.block_q
    idx, kind, cnt = tiles[:3]
    width = idx.shape[-1]
    row = lambda b, h, i: (b, i, 0)
    in_specs = [
        pl.BlockSpec((None, None, width), row),
        pl.BlockSpec((None, None, width), row),
        pl.BlockSpec((None, None, 1), row),
        pl.BlockSpec((None, None, bq, K), lambda b, h, i: (b, h, i, 0)),
        pl.BlockSpec((None, None, Lk, K), lambda b, h, i: (b, lax.div(h, rep), 0, 0)),
        pl.BlockSpec((None, None, Lk, E), lambda b, h, i: (b, lax.div(h, rep), 0, 0)),
    ]
    args = [idx, kind, cnt[..., None], q, k, v]
    if static.has_segments:
        in_specs += [
            pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
            pl.BlockSpec((None, Lk), lambda b, h, i: (b, 0)),
        ]
        args += [q_seg, k_seg]
    if dense is not None:
        in_specs.append(
            pl.BlockSpec((None, None, bq, Lk), lambda b, h, i: (*static.mask_index(b, h), i, 0))
        )
        args.append(dense)
    out_specs = [
        pl.BlockSpec((None, None, bq, E), lambda b, h, i: (b, h, i, 0)),
        pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
    ]
    out_shape = [
        jax.ShapeDtypeStruct((B, H, Lq, E), q.dtype),
        jax.ShapeDtypeStruct((B, H, Lq), jnp.float32),
    ]
    call = _triton_call(
        functools.partial(_fwd_loop_kernel, static=static),
        (B, H, Lq // bq),
        in_specs,
        out_specs,
        out_shape,
        static,
        K,
    )
    return call(*args)


def backward(static: Static, tiles, q, k, v, q_seg, k_seg, dense, do, lse, delta):
    (B, H, Lq, K), (_, G, Lk, E) = q.shape, v.shape
    rep, bq, bk = H // G, static.block_q, static.block_k
    idx, kind, cnt, idx_t, kind_t, cnt_t = tiles
    row = lambda b, h, i: (b, i, 0)
    seg_specs, seg_args = [], []
    if static.has_segments:
        seg_specs = [
            pl.BlockSpec((None, bq), lambda b, h, i: (b, i)),
            pl.BlockSpec((None, Lk), lambda b, h, i: (b, 0)),
        ]
        seg_args = [q_seg, k_seg]
    if dense is not None:
        seg_specs.append(
            pl.BlockSpec((None, None, bq, Lk), lambda b, h, i: (*static.mask_index(b, h), i, 0))
        )
        seg_args = [*seg_args, dense]
    dq = _triton_call(
        functools.partial(_dq_loop_kernel, static=static),
        (B, H, Lq // bq),
        [
            pl.BlockSpec((None, None, idx.shape[-1]), row),
            pl.BlockSpec((None, None, idx.shape[-1]), row),
            pl.BlockSpec((None, None, 1), row),
            pl.BlockSpec((None, None, bq, K), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, Lk, K), lambda b, h, i: (b, lax.div(h, rep), 0, 0)),
            pl.BlockSpec((None, None, Lk, E), lambda b, h, i: (b, lax.div(h, rep), 0, 0)),
            pl.BlockSpec((None, None, bq, E), lambda b, h, i: (b, h, i, 0)),
            pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
            pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i)),
            *seg_specs,
        ],
        pl.BlockSpec((None, None, bq, K), lambda b, h, i: (b, h, i, 0)),
        jax.ShapeDtypeStruct(q.shape, q.dtype),
        static,
        K,
    )(idx, kind, cnt[..., None], q, k, v, do, lse, delta, *seg_args)

    if static.has_segments:
        seg_specs = [
            pl.BlockSpec((None, Lq), lambda b, g, j: (b, 0)),
            pl.BlockSpec((None, bk), lambda b, g, j: (b, j)),
        ]
    else:
        seg_specs = []
    if dense is not None:
        heads = rep if static.dense[1] > 1 else 1
        seg_specs.append(
            pl.BlockSpec((None, heads, Lq, bk), lambda b, g, j: (*static.mask_index(b, g), 0, j))
        )
    col = lambda b, g, j: (b, j, 0)
    dk, dv = _triton_call(
        functools.partial(_dkv_loop_kernel, static=static),
        (B, G, Lk // bk),
        [
            pl.BlockSpec((None, None, idx_t.shape[-1]), col),
            pl.BlockSpec((None, None, idx_t.shape[-1]), col),
            pl.BlockSpec((None, None, 1), col),
            pl.BlockSpec((None, rep, Lq, K), lambda b, g, j: (b, g, 0, 0)),
            pl.BlockSpec((None, None, bk, K), lambda b, g, j: (b, g, j, 0)),
            pl.BlockSpec((None, None, bk, E), lambda b, g, j: (b, g, j, 0)),
            pl.BlockSpec((None, rep, Lq, E), lambda b, g, j: (b, g, 0, 0)),
            pl.BlockSpec((None, rep, Lq), lambda b, g, j: (b, g, 0)),
            pl.BlockSpec((None, rep, Lq), lambda b, g, j: (b, g, 0)),
            *seg_specs,
        ],
        [
            pl.BlockSpec((None, None, bk, K), lambda b, g, j: (b, g, j, 0)),
            pl.BlockSpec((None, None, bk, E), lambda b, g, j: (b, g, j, 0)),
        ],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        static,
        K,
    )(idx_t, kind_t, cnt_t[..., None], q, k, v, do, lse, delta, *seg_args)
    return dq, dk, dv
