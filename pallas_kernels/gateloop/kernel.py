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
"bounded per chunk" rule of REFERENCES.md s.1). The intra-sub-chunk term is elementwise
(c rank-1 updates of (c, K) + (c, E)): it needs no exp of a positive number, unlike the
factorised ``(q P) (k / P)^T`` matmul.

Lowerings (chosen in ``select_lowering``, the one place):
- "mosaic" (TPU): grid (B, H, L / chunk) with the chunk axis "arbitrary"; St in VMEM
  scratch across grid steps; each chunk tile (``chunk`` rows) is walked in sub-chunks.
- "triton" (GPU, and the generic interpreter): grid (B, H); one program loops over all
  sub-chunks with St in registers; generic Pallas, so it also runs under ``interpret=True``.
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

LANES = 128


def select_lowering(interpret: Any = False) -> str:
    """The lowering for this call: the one place that looks at the platform."""
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
        f"gateloop has no compiled lowering for platform {backend!r}; accepted: tpu, gpu, or "
        "interpret=True / pltpu.InterpretParams() on CPU"
    )


def pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


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
        if self.num_warps is not None and self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(
                f"BlockSizes.num_warps={self.num_warps!r}; accepted: None, 1, 2, 4, 8, 16"
            )

    @classmethod
    def default(cls, lowering: str, chunk_size: int, length: int) -> BlockSizes:
        """``chunk`` = chunk_size (at most the padded length); ``sub`` 16 (the elementwise
        intra-sub-chunk work grows like sub^2 K per sub-chunk, the matmuls like sub K E)."""
        sub = 16
        chunk = max(sub, min(round_up(chunk_size, sub), round_up(length, sub)))
        return cls(chunk, sub, None if lowering == "mosaic" else 4)


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
    if len(a) == 1:
        return (a[0] * b[0],)
    (ar, ai), (br, bi) = a, b
    return (ar * br - ai * bi, ar * bi + ai * br)


def _phase(lam, th):
    """exp(lam + i th) as a component tuple (th None: real)."""
    m = jnp.exp(lam)
    return (m,) if th is None else (m * jnp.cos(th), m * jnp.sin(th))


def _subchunk(static: Static, q, k, v, lam, th, St, row):
    """One sub-chunk. q, k: component tuples (c, K); v (c, E); lam, th (c, K) (th None when
    real); St: tuple (E, K); ``row(name, s)`` returns row s (1, width) of an input.
    Returns (y (c, E) float32, new St)."""
    c = static.sub
    qp = _cmul(q, _phase(lam, th))
    y = _dot(qp[0], St[0], ((1,), (1,)))
    if static.ncomp == 2:
        y = y - _dot(qp[1], St[1], ((1,), (1,)))
    t_idx = lax.broadcasted_iota(jnp.int32, (c, 1), 0)

    def diag(s, y):
        lam_s = row("lam", s)
        keep = t_idx >= s
        w = jnp.exp(jnp.where(keep, lam - lam_s, -jnp.inf))
        k_s = tuple(row(f"k{i}", s) for i in range(static.ncomp))
        prod = _cmul(q, k_s)
        if th is None:
            re = prod[0]
        else:
            phi = th - row("th", s)
            re = prod[0] * jnp.cos(phi) - prod[1] * jnp.sin(phi)
        col = jnp.sum(w * re, axis=1, keepdims=True)  # (c, 1)
        return y + col * row("v", s)

    y = static_or_fori(static, c, diag, y)
    lam_c = lam[c - 1 :, :] if static.lowering == "mosaic" else row("lam", c - 1)
    th_c = None
    if th is not None:
        th_c = th[c - 1 :, :] if static.lowering == "mosaic" else row("th", c - 1)
    kd = _cmul(k, _phase(lam_c - lam, None if th is None else th_c - th))
    pc = _phase(lam_c, th_c)  # (1, K)
    St = _cmul(St, pc)
    St = tuple(s + _dot(v, u, ((0,), (0,))) for s, u in zip(St, kd, strict=True))
    return y, St


def static_or_fori(static: Static, n: int, body, init):
    """Mosaic: a static (unrolled) loop, rows by static slices; Triton: a fori_loop."""
    if static.lowering == "mosaic":
        for s in range(n):
            init = body(s, init)
        return init
    return lax.fori_loop(0, n, body, init)


def _names(ncomp: int, has_th: bool):
    names = [f"q{i}" for i in range(ncomp)] + [f"k{i}" for i in range(ncomp)] + ["v", "lam"]
    return names + (["th"] if has_th else [])


# --------------------------------------------------------------------------- Mosaic (TPU)


def _mosaic_kernel(*refs, static: Static, names):
    n, nc = len(names), static.ncomp
    ins = dict(zip(names, refs[:n], strict=True))
    s0_refs = refs[n : n + nc]
    y_ref = refs[n + nc]
    sout_refs = refs[n + nc + 1 : n + 2 * nc + 1]
    st_refs = refs[n + 2 * nc + 1 :]
    j = pl.program_id(2)

    @pl.when(j == 0)
    def _init():
        for st, s0 in zip(st_refs, s0_refs, strict=True):
            st[...] = s0[...]

    c = static.sub

    def body(i, St):
        sl = pl.ds(pl.multiple_of(i * c, c), c)
        tile = {name: ref[sl, :].astype(jnp.float32) for name, ref in ins.items()}
        row = lambda name, s: tile[name][s : s + 1, :]
        q = tuple(tile[f"q{i}"] for i in range(static.ncomp))
        k = tuple(tile[f"k{i}"] for i in range(static.ncomp))
        y, St = _subchunk(static, q, k, tile["v"], tile["lam"], tile.get("th"), St, row)
        y_ref[sl, :] = y.astype(y_ref.dtype)
        return St

    St = lax.fori_loop(0, static.chunk // c, body, tuple(r[...] for r in st_refs))
    for st, value in zip(st_refs, St, strict=True):
        st[...] = value

    @pl.when(j == pl.num_programs(2) - 1)
    def _end():
        for out, value in zip(sout_refs, St, strict=True):
            out[...] = value


def _mosaic(static: Static, inputs: dict, St0, y_dtype):
    names = list(inputs)
    B, H, L, _ = inputs["v"].shape
    E, K = St0[0].shape[2:]
    C = static.chunk
    specs = [
        pl.BlockSpec((None, None, C, inputs[name].shape[-1]), lambda b, h, j: (b, h, j, 0))
        for name in names
    ]
    state = pl.BlockSpec((None, None, E, K), lambda b, h, j: (b, h, 0, 0))
    outs = pl.pallas_call(
        functools.partial(_mosaic_kernel, static=static, names=names),
        grid=(B, H, L // C),
        in_specs=specs + [state] * static.ncomp,
        out_specs=[pl.BlockSpec((None, None, C, E), lambda b, h, j: (b, h, j, 0))]
        + [state] * static.ncomp,
        out_shape=[jax.ShapeDtypeStruct((B, H, L, E), y_dtype)]
        + [jax.ShapeDtypeStruct((B, H, E, K), jnp.float32)] * static.ncomp,
        scratch_shapes=[pltpu.VMEM((E, K), jnp.float32)] * static.ncomp,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=static.interpret or False,
    )(*inputs.values(), *St0)
    return outs[0], tuple(outs[1:])


# --------------------------------------------------------------------------- Triton (GPU)


def _triton_kernel(*refs, static: Static, names, length):
    n, nc = len(names), static.ncomp
    ins = dict(zip(names, refs[:n], strict=True))
    s0_refs = refs[n : n + nc]
    y_ref = refs[n + nc]
    sout_refs = refs[n + nc + 1 :]
    c = static.sub

    def body(i, St):
        r0 = i * c
        sl = pl.ds(pl.multiple_of(r0, c), c)
        load = lambda name: ins[name][sl, :].astype(jnp.float32)
        row = lambda name, s: ins[name][pl.ds(r0 + s, 1), :].astype(jnp.float32)
        q = tuple(load(f"q{i}") for i in range(nc))
        k = tuple(load(f"k{i}") for i in range(nc))
        th = load("th") if "th" in ins else None
        y, St = _subchunk(static, q, k, load("v"), load("lam"), th, St, row)
        y_ref[sl, :] = y.astype(y_ref.dtype)
        return St

    St = lax.fori_loop(0, length // c, body, tuple(r[...] for r in s0_refs))
    for out, value in zip(sout_refs, St, strict=True):
        out[...] = value


def _triton(static: Static, inputs: dict, St0, y_dtype):
    from jax.experimental.pallas import triton as plgpu

    names = list(inputs)
    B, H, L, _ = inputs["v"].shape
    E, K = St0[0].shape[2:]
    specs = [
        pl.BlockSpec((None, None, L, inputs[name].shape[-1]), lambda b, h: (b, h, 0, 0))
        for name in names
    ]
    state = pl.BlockSpec((None, None, E, K), lambda b, h: (b, h, 0, 0))
    params = None
    if not static.interpret:
        params = plgpu.CompilerParams(num_warps=static.num_warps or 4, num_stages=1)
    outs = pl.pallas_call(
        functools.partial(_triton_kernel, static=static, names=names, length=L),
        grid=(B, H),
        in_specs=specs + [state] * static.ncomp,
        out_specs=[pl.BlockSpec((None, None, L, E), lambda b, h: (b, h, 0, 0))]
        + [state] * static.ncomp,
        out_shape=[jax.ShapeDtypeStruct((B, H, L, E), y_dtype)]
        + [jax.ShapeDtypeStruct((B, H, E, K), jnp.float32)] * static.ncomp,
        compiler_params=params,
        interpret=bool(static.interpret),
    )(*inputs.values(), *St0)
    return outs[0], tuple(outs[1:])


def forward(static: Static, inputs: dict, St0, y_dtype):
    """Runs the kernel. ``inputs``: name -> (B, H, L, width) padded arrays in the order of
    ``names`` (q0[, q1], k0[, k1], v, lam[, th]); St0: tuple of (B, H, E, K) float32.

    Returns (y (B, H, L, E) in ``y_dtype``, St tuple of (B, H, E, K) float32).
    """
    fn = _mosaic if static.lowering == "mosaic" else _triton
    return fn(static, inputs, St0, y_dtype)


names = _names
