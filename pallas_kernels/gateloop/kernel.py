"""Pallas kernels of chunked GateLoop, in two lowerings chosen in one place.

Layout inside (head-major, padded): q, k (B, H, L, K) per component, v (B, H, L, E), and
the log-gates cumulated inside sub-chunks of ``sub`` steps (computed in XLA):
``lam_t = sum_{r<=t} log|a_r|`` and, for complex gates, ``th_t = sum_{r<=t} arg a_r``.
The state is kept transposed, ``St = S^T`` (E x K) per component, in float32 on chip.
Per sub-chunk (rows t, s in 0..c-1), with ``P_t = exp(lam_t + i th_t)``:

    y_t  = Re( (q_t * P_t) St^T )                                     (matmul, state)
         + sum_{s<=t} Re( sum_k q_tk k_sk exp(lam_t - lam_s) e^{i(th_t - th_s)} ) v_s
    St  <- St * P_c + v^T (k * P_c / P_s)                             (matmul)

Every exponent is <= 0 when |a| <= 1, so nothing overflows whatever the gates (the
"bounded per chunk" rule of jaxar/MATHS.md s.1). The intra-sub-chunk term is elementwise
(c rank-1 updates of (c, K) + (c, E)): it needs no exp of a positive number, unlike the
factorised ``(q P) (k / P)^T`` matmul.

Lowerings (chosen in ``select_lowering``, the one place):
- "mosaic" (TPU): grid (B, H, L / chunk) with the chunk axis "arbitrary"; St in VMEM
  scratch across grid steps; each chunk tile (``chunk`` rows) is walked in sub-chunks.
- "triton" (GPU, and the generic interpreter): grid (B, H); one program loops over all
  sub-chunks with St in registers; generic Pallas, so it also runs under ``interpret=True``.

References:
  Martin and Cundy 2018, "Parallelizing Linear Recurrent Neural Nets Over Sequence Length",
    arXiv:1709.04057.
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


def select_lowering(interpret: Any = False) -> str:
    """The lowering for this call (see ``pallas_kernels._common.select_lowering``)."""
    return _common.select_lowering(interpret, "gateloop")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """``chunk``: sequence rows per grid step (the DMA tile on TPU; ``chunk_size`` of the
    API); ``sub``: rows per sub-chunk, the unit of the state carry (a power of two >= 16,
    dividing ``chunk``); ``num_warps`` for Triton (None: 4)."""

    chunk: int = 64
    sub: int = 16
    num_warps: int | None = None

    def __post_init__(self):
        if not isinstance(self.sub, int) or self.sub < 16 or self.sub != pow2(self.sub):
            raise ValueError(f"BlockSizes.sub={self.sub!r}; accepted: a power of two >= 16")
        if not isinstance(self.chunk, int) or self.chunk < self.sub or self.chunk % self.sub:
            raise ValueError(
                f"BlockSizes.chunk={self.chunk!r}; accepted: a multiple of sub={self.sub}"
            )
        _common.check_block_sizes(self, ())

    @classmethod
    def default(
        cls, lowering: str, chunk_size: int, length: int, state_elems: int = 4096
    ) -> BlockSizes:
        """``chunk`` = chunk_size (at most the padded length); ``sub`` 16 (the elementwise
        intra-sub-chunk work grows like sub^2 K per sub-chunk, the matmuls like sub K E);
        on GPU 8 warps once the register-resident state (K E per component) passes 64 x 64
        float32, to keep it out of local memory."""
        sub = 16
        chunk = max(sub, min(round_up(chunk_size, sub), round_up(length, sub)))
        if lowering == "mosaic":
            return cls(chunk, sub)
        return cls(chunk, sub, 4 if state_elems <= 4096 else 8)


@dataclasses.dataclass(frozen=True)
class Static:
    lowering: str
    interpret: Any
    chunk: int
    sub: int
    num_warps: int | None
    ncomp: int  # 1 real, 2 complex (q, k, state as pairs; gates with a phase)


def _dot(a, b, contract):
    return lax.dot_general(
        a,
        b,
        (contract, ((), ())),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


def _cmul(a, b):
    if len(a) == 1 and len(b) == 1:
        return (a[0] * b[0],)
    if len(b) == 1:
        return tuple(u * b[0] for u in a)
    if len(a) == 1:
        return tuple(a[0] * u for u in b)
    (ar, ai), (br, bi) = a, b
    return (ar * br - ai * bi, ar * bi + ai * br)


def _re_sum(a, b):
    """Re(sum over lanes of a * b), a column (rows, 1)."""
    prod = a[0] * b[0] if len(a) == 1 else a[0] * b[0] - a[1] * b[1]
    return jnp.sum(prod, axis=1, keepdims=True)


def _phase(lam, th):
    """exp(lam + i th) as a component tuple (th None: real)."""
    m = jnp.exp(lam)
    return (m,) if th is None else (m * jnp.cos(th), m * jnp.sin(th))


def _add(a, b):
    return tuple(u + v for u, v in zip(a, b, strict=True))


class _Tile:
    """Access to one sub-chunk: ``tile(name)`` (c, width) float32; ``row(name, s)`` (1, width)
    (s static on Mosaic, a traced index on Triton); component tuples by prefix."""

    def __init__(self, static: Static, load, row):
        self.static, self.load, self.row_fn = static, load, row

    def __call__(self, name):
        return self.load(name)

    def row(self, name, s):
        return self.row_fn(name, s)

    def comps(self, prefix, s=None):
        get = (lambda n: self.load(n)) if s is None else (lambda n: self.row_fn(n, s))
        return tuple(get(f"{prefix}{i}") for i in range(self.static.ncomp))

    def gates(self, s=None):
        """(lam, th) of all rows, or of row s; th None for real gates."""
        get = (lambda n: self.load(n)) if s is None else (lambda n: self.row_fn(n, s))
        return get("lam"), (get("th") if self.static.ncomp == 2 else None)


def _rel(lam_a, th_a, lam_b, th_b, keep=None):
    """exp((lam_a + i th_a) - (lam_b + i th_b)), zero where ``keep`` is False (masked
    before the exp, so no positive exponent is ever evaluated)."""
    d = lam_a - lam_b
    if keep is not None:
        d = jnp.where(keep, d, -jnp.inf)
    return _phase(d, None if th_a is None else th_a - th_b)


def _loop(static: Static, n: int, body, init):
    """Mosaic: a static (unrolled) loop, rows by static slices; Triton: a fori_loop."""
    if static.lowering == "mosaic":
        for s in range(n):
            init = body(s, init)
        return init
    return lax.fori_loop(0, n, body, init)


def _state_step(static, t: _Tile, St):
    """St <- St * P_c + v^T (k * P_c / P_s) (the forward carry)."""
    c = static.sub
    lam, th = t.gates()
    lam_c, th_c = t.gates(c - 1)
    kd = _cmul(t.comps("k"), _rel(lam_c, th_c, lam, th))
    St = _cmul(St, _phase(lam_c, th_c))
    return tuple(s + _dot(t("v"), u, ((0,), (0,))) for s, u in zip(St, kd, strict=True))


def fwd_step(static: Static, t: _Tile, St):
    """Forward: y (c, E) from q, k, v and the state before the sub-chunk."""
    c = static.sub
    lam, th = t.gates()
    q = t.comps("q")
    qp = _cmul(q, _phase(lam, th))
    y = _dot(qp[0], St[0], ((1,), (1,)))
    if static.ncomp == 2:
        y = y - _dot(qp[1], St[1], ((1,), (1,)))
    t_idx = lax.broadcasted_iota(jnp.int32, (c, 1), 0)

    def intra(s, y):  # column s of the masked intra-sub-chunk scores, times v_s
        lam_s, th_s = t.gates(s)
        qk = _cmul(q, t.comps("k", s))
        col = _re_sum(_rel(lam, th, lam_s, th_s, t_idx >= s), qk)
        return y + col * t.row("v", s)

    y = _loop(static, c, intra, y)
    return {"y": y}, _state_step(static, t, St)


def dq_step(static: Static, t: _Tile, St):
    """Backward, forward direction: dq_t = P_t (S_prev dy_t) + sum_{s<=t} (P_t/P_s) k_s <v_s, dy_t>."""
    c = static.sub
    lam, th = t.gates()
    dy = t("dy")
    dq = _cmul(tuple(_dot(dy, u, ((1,), (0,))) for u in St), _phase(lam, th))
    t_idx = lax.broadcasted_iota(jnp.int32, (c, 1), 0)

    def intra(s, dq):
        lam_s, th_s = t.gates(s)
        vd = jnp.sum(dy * t.row("v", s), axis=1, keepdims=True)  # <v_s, dy_t> over t
        kr = _cmul(_rel(lam, th, lam_s, th_s, t_idx >= s), t.comps("k", s))
        return _add(dq, tuple(vd * u for u in kr))

    dq = _loop(static, c, intra, dq)
    return {f"dq{i}": u for i, u in enumerate(dq)}, _state_step(static, t, St)


def dkv_step(static: Static, t: _Tile, Gt):
    """Backward, reverse direction; Gt = (dL/dS after the sub-chunk)^T (E, K).

    dk_s = (P_c/P_s)(G v_s) + sum_{t>=s} (P_t/P_s) q_t <v_s, dy_t>,
    dv_s = Re(k_s P_c/P_s . G) + sum_{t>=s} A_ts dy_t,  G <- G P_c + (q P)^T dy.
    """
    c = static.sub
    lam, th = t.gates()
    lam_c, th_c = t.gates(c - 1)
    q, k, v, dy = t.comps("q"), t.comps("k"), t("v"), t("dy")
    decay = _rel(lam_c, th_c, lam, th)  # P_c / P_s
    dk = _cmul(tuple(_dot(v, g, ((1,), (0,))) for g in Gt), decay)
    kd = _cmul(k, decay)
    dv = _dot(kd[0], Gt[0], ((1,), (1,)))
    if static.ncomp == 2:
        dv = dv - _dot(kd[1], Gt[1], ((1,), (1,)))
    s_idx = lax.broadcasted_iota(jnp.int32, (c, 1), 0)

    def intra(r, carry):  # row t = r of the scores, over s <= t
        dk, dv = carry
        lam_t, th_t = t.gates(r)
        qr = _cmul(t.comps("q", r), _rel(lam_t, th_t, lam, th, s_idx <= r))  # (P_t/P_s) q_t
        dy_t = t.row("dy", r)
        vd = jnp.sum(v * dy_t, axis=1, keepdims=True)
        dk = _add(dk, tuple(vd * u for u in qr))
        return dk, dv + _re_sum(qr, k) * dy_t

    dk, dv = _loop(static, c, intra, (dk, dv))
    qp = _cmul(q, _phase(lam, th))
    Gt = _cmul(Gt, _phase(lam_c, th_c))
    Gt = tuple(g + _dot(dy, u, ((0,), (0,))) for g, u in zip(Gt, qp, strict=True))
    return {**{f"dk{i}": u for i, u in enumerate(dk)}, "dv": dv}, Gt


# --------------------------------------------------------------------------- Mosaic (TPU)


def _mosaic_kernel(*refs, static: Static, step, names, outs, reverse):
    n, nc, no = len(names), static.ncomp, len(outs)
    ins = dict(zip(names, refs[:n], strict=True))
    s0_refs = refs[n : n + nc]
    out_refs = dict(zip(outs, refs[n + nc : n + nc + no], strict=True))
    sout_refs = refs[n + nc + no : n + 2 * nc + no]
    st_refs = refs[n + 2 * nc + no :]
    j = pl.program_id(2)
    c = static.sub
    groups = static.chunk // c

    @pl.when(j == 0)
    def _init():
        for st, s0 in zip(st_refs, s0_refs, strict=True):
            st[...] = s0[...]

    def body(i, St):
        g = groups - 1 - i if reverse else i
        sl = pl.ds(pl.multiple_of(g * c, c), c)
        tile = {name: ref[sl, :].astype(jnp.float32) for name, ref in ins.items()}
        t = _Tile(static, tile.__getitem__, lambda name, s: tile[name][s : s + 1, :])
        res, St = step(static, t, St)
        for name, value in res.items():
            out_refs[name][sl, :] = value.astype(out_refs[name].dtype)
        return St

    St = lax.fori_loop(0, groups, body, tuple(r[...] for r in st_refs))
    for st, value in zip(st_refs, St, strict=True):
        st[...] = value

    @pl.when(j == pl.num_programs(2) - 1)
    def _end():
        for out, value in zip(sout_refs, St, strict=True):
            out[...] = value


def _mosaic(static: Static, step, inputs: dict, St0, outs: dict, reverse: bool):
    names = list(inputs)
    B, H, L, _ = inputs["v"].shape
    E, K = St0[0].shape[2:]
    C = static.chunk
    nl = L // C
    seq = (lambda b, h, j: (b, h, nl - 1 - j, 0)) if reverse else (lambda b, h, j: (b, h, j, 0))
    state = pl.BlockSpec((None, None, E, K), lambda b, h, j: (b, h, 0, 0))
    res = pl.pallas_call(
        functools.partial(
            _mosaic_kernel,
            static=static,
            step=step,
            names=names,
            outs=list(outs),
            reverse=reverse,
        ),  # fmt: skip
        grid=(B, H, nl),
        in_specs=[pl.BlockSpec((None, None, C, u.shape[-1]), seq) for u in inputs.values()]
        + [state] * static.ncomp,
        out_specs=[pl.BlockSpec((None, None, C, w), seq) for w, _ in outs.values()]
        + [state] * static.ncomp,
        out_shape=[jax.ShapeDtypeStruct((B, H, L, w), dt) for w, dt in outs.values()]
        + [jax.ShapeDtypeStruct((B, H, E, K), jnp.float32)] * static.ncomp,
        scratch_shapes=[pltpu.VMEM((E, K), jnp.float32)] * static.ncomp,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=static.interpret or False,
    )(*inputs.values(), *St0)
    return dict(zip(outs, res[: len(outs)], strict=True)), tuple(res[len(outs) :])


# --------------------------------------------------------------------------- Triton (GPU)


def _triton_kernel(*refs, static: Static, step, names, outs, reverse, length):
    n, nc, no = len(names), static.ncomp, len(outs)
    ins = dict(zip(names, refs[:n], strict=True))
    s0_refs = refs[n : n + nc]
    out_refs = dict(zip(outs, refs[n + nc : n + nc + no], strict=True))
    sout_refs = refs[n + nc + no :]
    c = static.sub
    groups = length // c

    def body(i, St):
        r0 = (groups - 1 - i if reverse else i) * c
        sl = pl.ds(pl.multiple_of(r0, c), c)
        t = _Tile(
            static,
            lambda name: ins[name][sl, :].astype(jnp.float32),
            lambda name, s: ins[name][pl.ds(r0 + s, 1), :].astype(jnp.float32),
        )
        res, St = step(static, t, St)
        for name, value in res.items():
            out_refs[name][sl, :] = value.astype(out_refs[name].dtype)
        return St

    St = lax.fori_loop(0, groups, body, tuple(r[...] for r in s0_refs))
    for out, value in zip(sout_refs, St, strict=True):
        out[...] = value


def _triton(static: Static, step, inputs: dict, St0, outs: dict, reverse: bool):
    from jax.experimental.pallas import triton as plgpu

    B, H, L, _ = inputs["v"].shape
    E, K = St0[0].shape[2:]
    whole = lambda w: pl.BlockSpec((None, None, L, w), lambda b, h: (b, h, 0, 0))
    state = pl.BlockSpec((None, None, E, K), lambda b, h: (b, h, 0, 0))
    params = None
    if not static.interpret:
        params = plgpu.CompilerParams(num_warps=static.num_warps or 4, num_stages=1)
    res = pl.pallas_call(
        functools.partial(
            _triton_kernel,
            static=static,
            step=step,
            names=list(inputs),
            outs=list(outs),
            reverse=reverse,
            length=L,
        ),  # fmt: skip
        grid=(B, H),
        in_specs=[whole(u.shape[-1]) for u in inputs.values()] + [state] * static.ncomp,
        out_specs=[whole(w) for w, _ in outs.values()] + [state] * static.ncomp,
        out_shape=[jax.ShapeDtypeStruct((B, H, L, w), dt) for w, dt in outs.values()]
        + [jax.ShapeDtypeStruct((B, H, E, K), jnp.float32)] * static.ncomp,
        compiler_params=params,
        interpret=bool(static.interpret),
    )(*inputs.values(), *St0)
    return dict(zip(outs, res[: len(outs)], strict=True)), tuple(res[len(outs) :])


def _run(static, step, inputs, St0, outs, reverse=False):
    fn = _mosaic if static.lowering == "mosaic" else _triton
    return fn(static, step, inputs, St0, outs, reverse)


def forward(static: Static, inputs: dict, St0, y_dtype):
    """y (B, H, L, E) and the final St. ``inputs``: name -> (B, H, L, width) padded arrays:
    q0[, q1], k0[, k1], v, lam[, th]; St0: tuple of (B, H, E, K) float32."""
    E = inputs["v"].shape[-1]
    res, St = _run(static, fwd_step, inputs, St0, {"y": (E, y_dtype)})
    return res["y"], St


def backward_dq(static: Static, inputs: dict, St0):
    """dq component tuple (B, H, L, K) float32 (complex dq as a pair), forward direction.
    ``inputs``: k0[, k1], v, lam[, th], dy."""
    K = inputs["lam"].shape[-1]
    outs = {f"dq{i}": (K, jnp.float32) for i in range(static.ncomp)}
    res, _ = _run(static, dq_step, inputs, St0, outs)
    return tuple(res[f"dq{i}"] for i in range(static.ncomp))


def backward_dkv(static: Static, inputs: dict, Gt):
    """(dk tuple (B, H, L, K), dv (B, H, L, E), dS0^T tuple), reverse direction.
    ``inputs``: q0[, q1], k0[, k1], v, lam[, th], dy; Gt: (dL/dS_final)^T."""
    K, E = inputs["lam"].shape[-1], inputs["v"].shape[-1]
    outs = {f"dk{i}": (K, jnp.float32) for i in range(static.ncomp)}
    outs["dv"] = (E, jnp.float32)
    res, G0 = _run(static, dkv_step, inputs, Gt, outs, reverse=True)
    return tuple(res[f"dk{i}"] for i in range(static.ncomp)), res["dv"], G0
