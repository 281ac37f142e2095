"""Pallas kernels of block-sparse flash attention: forward, dq and dk/dv, in two lowerings.

Layouts inside: q (B, H, Lq, K), k (B, G, Lk, K), v (B, G, Lk, E), lengths padded to the
tiles. Every pass walks a compressed tile list (``Plan``): for each q tile the k tiles
that are not EMPTY (and the transpose for dk/dv), so empty tiles are neither loaded nor
computed. Online softmax in float32 (m = running max, l = running sum):

    m' = max(m, rowmax s),  l' = e^{m-m'} l + sum e^{s-m'},  acc' = e^{m-m'} acc + e^{s-m'} v
    out = acc / l (0 where l = 0),  lse = m + log l (+inf where l = 0)

Backward with the saved lse: p = e^{s - lse}, dv = p^T do, dp = do v^T,
ds = p (dp - delta) with delta = rowsum(do * out), dq = scale ds k, dk = scale ds^T q.

Lowerings (chosen in ``select_lowering``, the one place):
- "triton": grid (B, H, q tiles), a ``fori_loop`` over the tile list inside the program,
  K/V of the head resident; generic Pallas, so it also runs under ``interpret=True``.
- "mosaic": grid (B, H, q tiles, list slots) with the list as scalar prefetch (SMEM)
  driving the K/V BlockSpec index maps, accumulators in VMEM scratch; the backward works
  on transposed scores (k rows, q lanes) so that lse and delta are lane vectors.
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
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.flash_attention import masks

LANES = 128
LOWERINGS = ("mosaic", "triton")
_NEG_INF = float("-inf")


def select_lowering(interpret: Any = False) -> str:
    """The lowering for this call: the one place that looks at the platform.

    ``interpret=True`` runs the generic ("triton") kernels in the Pallas interpreter;
    a ``pltpu.InterpretParams`` runs the Mosaic kernels in the TPU interpreter.
    """
    if isinstance(interpret, pltpu.InterpretParams):
        return "mosaic"
    if interpret is True:
        return "triton"
    if interpret is not False:
        raise ValueError(
            f"interpret={interpret!r} is not supported; accepted: False, True or "
            "jax.experimental.pallas.tpu.InterpretParams()"
        )
    backend = jax.default_backend()
    if backend == "tpu":
        return "mosaic"
    if backend in ("gpu", "cuda", "rocm"):
        return "triton"
    raise ValueError(
        f"flash_attention has no compiled lowering for platform {backend!r}; accepted: tpu, "
        "gpu, or interpret=True / pltpu.InterpretParams() on CPU"
    )


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes (shared by forward and backward) and GPU launch settings.

    On TPU both blocks must be multiples of 128 (the TPU interpreter too); on GPU powers
    of two >= 16. ``num_warps=None`` picks 4 for head widths <= 64, else 8.
    """

    block_q: int
    block_k: int
    num_warps: int | None = None
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_q", "block_k", "num_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockSizes.{name}={value!r}; accepted: an int >= 1")
        if self.num_warps is not None and self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(
                f"BlockSizes.num_warps={self.num_warps!r}; accepted: None, 1, 2, 4, 8, 16"
            )

    @classmethod
    def default(cls, lowering: str, q_len: int, k_len: int, head_dim: int) -> BlockSizes:
        """Heuristic defaults: 512 tiles on TPU (128 leaves v5e mostly idle), 64-128 on GPU."""
        if lowering == "mosaic":
            return cls(min(512, _round_up(q_len, LANES)), min(512, _round_up(k_len, LANES)))
        bq = 128 if head_dim <= 64 else 64
        return cls(max(16, min(bq, _pow2(q_len))), max(16, min(64, _pow2(k_len))))

    def validate(self, lowering: str) -> None:
        if lowering == "mosaic":
            for name in ("block_q", "block_k"):
                if getattr(self, name) % LANES:
                    raise ValueError(
                        f"BlockSizes.{name}={getattr(self, name)} is not supported by the Mosaic "
                        f"(TPU) lowering; accepted: multiples of {LANES}"
                    )
        elif lowering == "triton":
            for name in ("block_q", "block_k"):
                value = getattr(self, name)
                if value < 16 or value != _pow2(value):
                    raise ValueError(
                        f"BlockSizes.{name}={value} is not supported by the Triton (GPU) "
                        "lowering; accepted: powers of two >= 16"
                    )


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything static about one call (hashable: custom_vjp nondiff argument)."""

    spec: masks.BlockMask
    scale: float
    q_len: int  # true lengths (the arrays are padded)
    k_len: int
    block_q: int
    block_k: int
    num_warps: int | None
    num_stages: int
    lowering: str
    interpret: Any
    has_segments: bool


# --------------------------------------------------------------------------- tile lists


def plan(static: Static, batch: int, q_seg=None, k_seg=None):
    """Compressed tile lists (int32) for the forward/dq passes and the dk/dv pass.

    Returns ``(idx, kind, cnt, idx_t, kind_t, cnt_t)``: ``idx[b, i, j]`` is the j-th
    non-empty k tile of q tile i (slots past ``cnt[b, i]`` repeat the last one with kind
    EMPTY, so the TPU pipeline issues no new copy), ``kind`` is PARTIAL or FULL.
    """
    bq, bk = static.block_q, static.block_k
    table = masks.block_table(static.spec, static.q_len, static.k_len, bq, bk)
    width, width_t = max(1, int((table > 0).sum(1).max())), max(1, int((table > 0).sum(0).max()))
    d = jnp.broadcast_to(jnp.asarray(table, jnp.int32)[None], (batch, *table.shape))
    if q_seg is not None:
        qs, ks = q_seg.reshape(batch, -1, bq), k_seg.reshape(batch, -1, bk)
        qmin, qmax, kmin, kmax = qs.min(-1), qs.max(-1), ks.min(-1), ks.max(-1)
        overlap = (qmax[:, :, None] >= kmin[:, None, :]) & (kmax[:, None, :] >= qmin[:, :, None])
        single = ((qmin == qmax)[:, :, None] & (kmin == kmax)[:, None, :]) & (
            qmin[:, :, None] == kmin[:, None, :]
        )
        d = jnp.where(overlap, jnp.where(single, d, jnp.minimum(d, masks.PARTIAL)), masks.EMPTY)
    if static.lowering == "triton":
        width, width_t = _pow2(width), _pow2(width_t)
    return (*_compress(d, width), *_compress(d.transpose(0, 2, 1), width_t))


def _compress(d, width):
    order = jnp.argsort(d == masks.EMPTY, axis=-1, stable=True).astype(jnp.int32)
    if order.shape[-1] < width:
        order = jnp.pad(order, ((0, 0), (0, 0), (0, width - order.shape[-1])))
    order = order[..., :width]
    cnt = (d != masks.EMPTY).sum(-1).astype(jnp.int32)
    slot = jnp.arange(width, dtype=jnp.int32)[None, None, :]
    live = slot < cnt[..., None]
    last = jnp.take_along_axis(order, jnp.maximum(cnt - 1, 0)[..., None], axis=-1)
    idx = jnp.where(live, order, last)
    kind = jnp.where(live, jnp.take_along_axis(d, order, axis=-1), masks.EMPTY)
    return idx, kind.astype(jnp.int32), cnt


# --------------------------------------------------------------------------- tile maths


def _dot(a, b, contract):
    return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _nt(a, b):  # a @ b.T
    return _dot(a, b, ((1,), (1,)))


def _nn(a, b):  # a @ b
    return _dot(a, b, ((1,), (0,)))


def _tn(a, b):  # a.T @ b
    return _dot(a, b, ((0,), (0,)))


def _valid(static: Static, q_pos, k_pos, q_seg, k_seg):
    """Elementwise mask of a partial tile (positions/segments broadcast to the tile)."""
    valid = k_pos < static.k_len
    term = static.spec(q_pos, k_pos)
    if term is not None:
        valid = valid & term
    if q_seg is not None:
        valid = valid & (q_seg == k_seg)
    return valid


def _online_step(m, l, acc, s, v):
    """One online-softmax update with masked scores s = -inf; m, l (bq, 1)."""
    m_new = jnp.maximum(m, s.max(axis=-1, keepdims=True))
    m_use = jnp.where(m_new == _NEG_INF, 0.0, m_new)
    p = jnp.exp(s - m_use)
    alpha = jnp.exp(m - m_use)
    l_new = alpha * l + p.sum(axis=-1, keepdims=True)
    acc_new = alpha * acc + _nn(p.astype(v.dtype), v)
    return m_new, l_new, acc_new


def _finish(m, l, acc):
    empty = l == 0.0
    out = acc * jnp.where(empty, 0.0, 1.0 / jnp.where(empty, 1.0, l))
    lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
    return out, lse


# --------------------------------------------------------------------------- triton form


def _iota_col(n):
    return jnp.arange(n, dtype=jnp.int32)[:, None]


def _iota_row(n):
    return jnp.arange(n, dtype=jnp.int32)[None, :]


def _fwd_loop_kernel(idx_ref, kind_ref, cnt_ref, q_ref, k_ref, v_ref, *refs, static: Static):
    qseg_ref, kseg_ref = refs[:2] if static.has_segments else (None, None)
    o_ref, lse_ref = refs[-2:]
    bq, bk = static.block_q, static.block_k
    q = q_ref[...]
    q_pos = pl.program_id(2) * bq + _iota_col(bq)
    q_seg = qseg_ref[...][:, None] if static.has_segments else None

    def body(j, carry):
        kb = idx_ref[j]
        sl = pl.ds(pl.multiple_of(kb * bk, bk), bk)
        k, v = k_ref[sl, :], v_ref[sl, :]
        s = _nt(q, k) * static.scale
        k_seg = kseg_ref[sl][None, :] if static.has_segments else None
        valid = _valid(static, q_pos, kb * bk + _iota_row(bk), q_seg, k_seg)
        valid = valid | (kind_ref[j] == masks.FULL)
        return _online_step(*carry, jnp.where(valid, s, _NEG_INF), v)

    init = (
        jnp.full((bq, 1), _NEG_INF, jnp.float32),
        jnp.zeros((bq, 1), jnp.float32),
        jnp.zeros((bq, o_ref.shape[-1]), jnp.float32),
    )
    out, lse = _finish(*lax.fori_loop(0, cnt_ref[0], body, init))
    o_ref[...] = out.astype(o_ref.dtype)
    lse_ref[...] = lse[:, 0]


def _dq_loop_kernel(
    idx_ref, kind_ref, cnt_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, static
):
    qseg_ref, kseg_ref = refs[:2] if static.has_segments else (None, None)
    (dq_ref,) = refs[-1:]
    bq, bk = static.block_q, static.block_k
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_pos = pl.program_id(2) * bq + _iota_col(bq)
    q_seg = qseg_ref[...][:, None] if static.has_segments else None

    def body(j, dq):
        kb = idx_ref[j]
        sl = pl.ds(pl.multiple_of(kb * bk, bk), bk)
        k, v = k_ref[sl, :], v_ref[sl, :]
        s = _nt(q, k) * static.scale
        k_seg = kseg_ref[sl][None, :] if static.has_segments else None
        valid = _valid(static, q_pos, kb * bk + _iota_row(bk), q_seg, k_seg)
        valid = valid | (kind_ref[j] == masks.FULL)
        p = jnp.exp(jnp.where(valid, s, _NEG_INF) - lse)
        ds = p * (_nt(do, v) - delta)
        return dq + _nn(ds.astype(k.dtype), k)

    dq = lax.fori_loop(0, cnt_ref[0], body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * static.scale).astype(dq_ref.dtype)


def _dkv_loop_kernel(
    idx_ref, kind_ref, cnt_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, static
):
    qseg_ref, kseg_ref = refs[:2] if static.has_segments else (None, None)
    dk_ref, dv_ref = refs[-2:]
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
            s = _nt(q, k) * static.scale
            q_seg = qseg_ref[sl][:, None] if static.has_segments else None
            valid = _valid(static, qi * bq + _iota_col(bq), k_pos, q_seg, k_seg)
            valid = valid | (kind_ref[j] == masks.FULL)
            p = jnp.exp(jnp.where(valid, s, _NEG_INF) - lse)
            dv = dv + _tn(p.astype(do.dtype), do)
            ds = p * (_nt(do, v) - delta)
            return dk + _tn(ds.astype(q.dtype), q), dv

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


def _triton_forward(static: Static, tiles, q, k, v, q_seg, k_seg):
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


def _triton_backward(static: Static, tiles, q, k, v, q_seg, k_seg, do, lse, delta):
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


# --------------------------------------------------------------------------- mosaic form


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
    qseg_ref, kseg_ref = refs[:2] if static.has_segments else (None, None)
    o_ref, lse_ref, m_scr, l_scr, acc_scr = refs[-5:]
    b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    slot = (b * nq + i) * width + j
    kind = kind_ref[slot]

    @pl.when(j == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, _NEG_INF, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    def step(masked: bool):
        s = _nt(q_ref[...], k_ref[...]) * static.scale
        if masked:
            q_pos, k_pos = _tile_iotas(
                s.shape, 0, i * static.block_q, idx_ref[slot] * static.block_k
            )
            q_seg = qseg_ref[...][:, :1] if static.has_segments else None
            k_seg = kseg_ref[...] if static.has_segments else None
            s = jnp.where(_valid(static, q_pos, k_pos, q_seg, k_seg), s, _NEG_INF)
        m, l, acc = _online_step(m_scr[...][:, :1], l_scr[...][:, :1], acc_scr[...], s, v_ref[...])
        m_scr[...] = jnp.broadcast_to(m, m_scr.shape)
        l_scr[...] = jnp.broadcast_to(l, l_scr.shape)
        acc_scr[...] = acc

    pl.when(kind == masks.PARTIAL)(lambda: step(True))
    pl.when(kind == masks.FULL)(lambda: step(False))

    @pl.when(j == width - 1)
    def _end():
        out, lse = _finish(m_scr[...][:, :1], l_scr[...][:, :1], acc_scr[...])
        o_ref[...] = out.astype(o_ref.dtype)
        lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _mosaic_forward(static: Static, tiles, q, k, v, q_seg, k_seg):
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


def _grad_tile(static, q, k, v, do, lse_row, delta_row, positions, segments):
    """Transposed scores (k rows, q lanes): returns p^T and ds^T, both (bk, bq) float32."""
    s = _nt(k, q) * static.scale
    if positions is not None:
        q_pos, k_pos = _tile_iotas(s.shape, 1, *positions)
        s = jnp.where(_valid(static, q_pos, k_pos, *segments), s, _NEG_INF)
    p = jnp.exp(s - lse_row)
    ds = p * (_nt(v, do) - delta_row)
    return p, ds


def _dq_grid_kernel(
    idx_ref, kind_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, static, nq, width
):
    qseg_ref, kseg_ref = refs[:2] if static.has_segments else (None, None)
    dq_ref, acc_scr = refs[-2:]
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
            positions, segments,
        )  # fmt: skip
        acc_scr[...] += _nn(ds.T.astype(k.dtype), k)

    pl.when(kind == masks.PARTIAL)(lambda: step(True))
    pl.when(kind == masks.FULL)(lambda: step(False))

    @pl.when(j == width - 1)
    def _end():
        dq_ref[...] = (acc_scr[...] * static.scale).astype(dq_ref.dtype)


def _dkv_grid_kernel(
    idx_ref, kind_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, static, nk, width,
    steps,
):  # fmt: skip
    qseg_ref, kseg_ref = refs[:2] if static.has_segments else (None, None)
    dk_ref, dv_ref, dk_scr, dv_scr = refs[-4:]
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
            segments,
        )  # fmt: skip
        dv_scr[...] += _nn(p.astype(do.dtype), do)
        dk_scr[...] += _nn(ds.astype(q.dtype), q)

    pl.when(kind == masks.PARTIAL)(lambda: step(True))
    pl.when(kind == masks.FULL)(lambda: step(False))

    @pl.when(t == steps - 1)
    def _end():
        dk_ref[...] = (dk_scr[...] * static.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _mosaic_backward(static: Static, tiles, q, k, v, q_seg, k_seg, do, lse, delta):
    (B, H, _, K), (_, G, Lk, E) = q.shape, v.shape
    rep, bq, bk = H // G, static.block_q, static.block_k
    idx, kind, _, idx_t, kind_t, _ = tiles
    nq, width = idx.shape[1], idx.shape[2]
    nk, width_t = idx_t.shape[1], idx_t.shape[2]
    lse_row, delta_row = lse[:, :, None, :], delta[:, :, None, :]
    seg_args = []
    if static.has_segments:
        seg_args = [q_seg[:, None, :], jnp.broadcast_to(k_seg[:, :, None], (B, Lk, LANES))]

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


def forward(static: Static, tiles, q, k, v, q_seg, k_seg):
    """(out (B, H, Lq, E), lse (B, H, Lq) float32) on padded, head-major inputs."""
    fn = _mosaic_forward if static.lowering == "mosaic" else _triton_forward
    return fn(static, tiles, q, k, v, q_seg, k_seg)


def backward(static: Static, tiles, q, k, v, q_seg, k_seg, do, lse, delta):
    """(dq, dk, dv) on padded, head-major inputs; delta = rowsum(do * out) float32."""
    fn = _mosaic_backward if static.lowering == "mosaic" else _triton_backward
    return fn(static, tiles, q, k, v, q_seg, k_seg, do, lse, delta)
