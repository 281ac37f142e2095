"""Pallas kernels of the chunked delta rule: the state carry over chunks, forward and reverse.

The chunk-local WY / UT terms (``jaxar.ops.delta_rule.chunk_terms``, XLA, parallel over
chunks) give per chunk n, with S_n the (K, V) state entering it:

    U_n = Ut_n - W_n S_n,   Y_n = Qg_n S_n + P_n U_n,   S_{n+1} = ge_n S_n + Kd_n^T U_n

(P_n the causal (C, C) scores ``QK^T o D``, ge_n the chunk's total decay). The forward
kernel carries S on chip across the N chunks and writes Y (and, for the backward, each
S_n). The reverse kernel carries the adjoint G = dL/dS_{n+1} from dL/dS_N:

    dU_n = P_n^T dY_n + Kd_n G,   G <- Qg_n^T dY_n + ge_n G - W_n^T dU_n

and writes dU_n and each G (= dL/dS_{n+1}); the remaining gradients are chunk-parallel
matmuls in XLA (``ops.py``). Lowerings as ``pallas_kernels.gateloop``: "mosaic" (TPU):
grid (B, H, N) with the chunk axis "arbitrary" and the state in VMEM scratch; "triton"
(GPU, and the generic interpreter): grid (B, H), one program loops over the chunks with
the state in registers.
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

LANES = 128


def select_lowering(interpret: Any = False) -> str:
    """The lowering for this call (see ``pallas_kernels._common.select_lowering``)."""
    return _common.select_lowering(interpret, "delta_rule")


@dataclasses.dataclass(frozen=True)
class Static:
    lowering: str
    interpret: Any
    chunk: int  # C rows per chunk (a power of two >= 16)
    num_warps: int | None = None


def _dot(a, b, contract):
    return lax.dot_general(
        a,
        b,
        (contract, ((), ())),
        precision=lax.Precision.HIGHEST,
        preferred_element_type=jnp.float32,
    )


def fwd_step(t, S):
    """One chunk forward: Y and the next state; ``t`` name -> (C, width) float32 tiles
    (``ge`` (1, 1): its first row, read from the ref; Triton has no value slices)."""
    U = t["ut"] - _dot(t["w"], S, ((1,), (0,)))
    Y = _dot(t["qg"], S, ((1,), (0,))) + _dot(t["sc"], U, ((1,), (0,)))
    S_next = t["ge"] * S + _dot(t["kd"], U, ((0,), (0,)))
    return {"y": Y}, S_next


def bwd_step(t, G):
    """One chunk in reverse: dU and the adjoint before the chunk."""
    dY = t["dy"]
    dU = _dot(t["sc"], dY, ((0,), (0,))) + _dot(t["kd"], G, ((1,), (0,)))
    G_prev = _dot(t["qg"], dY, ((0,), (0,))) + t["ge"] * G - _dot(t["w"], dU, ((0,), (0,)))
    return {"du": dU}, G_prev


# --------------------------------------------------------------------------- Mosaic (TPU)


def _mosaic_kernel(*refs, step, names, outs, keep_states):
    n, no = len(names), len(outs)
    ins = dict(zip(names, refs[:n], strict=True))
    s0_ref = refs[n]
    out_refs = dict(zip(outs, refs[n + 1 : n + 1 + no], strict=True))
    rest = refs[n + 1 + no :]
    states_ref = rest[0] if keep_states else None
    last_ref, st_ref = rest[-2], rest[-1]
    j = pl.program_id(2)

    @pl.when(j == 0)
    def _init():
        st_ref[...] = s0_ref[...]

    S = st_ref[...]
    if keep_states:
        states_ref[...] = S
    tiles = {name: r[...].astype(jnp.float32) for name, r in ins.items() if name != "ge"}
    tiles["ge"] = ins["ge"][0:1, :].astype(jnp.float32)  # (1, 1): the chunk's total decay
    res, S = step(tiles, S)
    for name, value in res.items():
        out_refs[name][...] = value.astype(out_refs[name].dtype)
    st_ref[...] = S

    @pl.when(j == pl.num_programs(2) - 1)
    def _end():
        last_ref[...] = S


def _mosaic(static, step, inputs, S0, outs, reverse, keep_states):
    B, H, L, _ = next(iter(inputs.values())).shape
    KP, VP = S0.shape[2:]
    C = static.chunk
    nl = L // C
    idx = (lambda j: nl - 1 - j) if reverse else (lambda j: j)
    seq = lambda b, h, j: (b, h, idx(j), 0)
    state = pl.BlockSpec((None, None, KP, VP), lambda b, h, j: (b, h, 0, 0))
    out_specs = [pl.BlockSpec((None, None, C, w), seq) for w, _ in outs.values()]
    out_shape = [jax.ShapeDtypeStruct((B, H, L, w), dt) for w, dt in outs.values()]
    if keep_states:
        out_specs.append(pl.BlockSpec((None, None, KP, VP), seq))
        out_shape.append(jax.ShapeDtypeStruct((B, H, nl * KP, VP), jnp.float32))
    res = pl.pallas_call(
        functools.partial(
            _mosaic_kernel, step=step, names=list(inputs), outs=list(outs), keep_states=keep_states
        ),
        grid=(B, H, nl),
        in_specs=[pl.BlockSpec((None, None, C, u.shape[-1]), seq) for u in inputs.values()]
        + [state],
        out_specs=out_specs + [state],
        out_shape=out_shape + [jax.ShapeDtypeStruct((B, H, KP, VP), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((KP, VP), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=static.interpret or False,
    )(*inputs.values(), S0)
    return _split(res, outs, keep_states)


# --------------------------------------------------------------------------- Triton (GPU)


def _triton_kernel(*refs, static, step, names, outs, reverse, length, keep_states):
    n, no = len(names), len(outs)
    ins = dict(zip(names, refs[:n], strict=True))
    s0_ref = refs[n]
    out_refs = dict(zip(outs, refs[n + 1 : n + 1 + no], strict=True))
    rest = refs[n + 1 + no :]
    states_ref = rest[0] if keep_states else None
    last_ref = rest[-1]
    C = static.chunk
    nl = length // C
    KP = s0_ref.shape[0]

    def body(i, S):
        j = nl - 1 - i if reverse else i
        sl = pl.ds(pl.multiple_of(j * C, C), C)
        if keep_states:
            states_ref[pl.ds(pl.multiple_of(j * KP, KP), KP), :] = S
        tiles = {name: r[sl, :].astype(jnp.float32) for name, r in ins.items() if name != "ge"}
        tiles["ge"] = ins["ge"][pl.ds(j * C, 1), :].astype(jnp.float32)  # (1, 1)
        res, S = step(tiles, S)
        for name, value in res.items():
            out_refs[name][sl, :] = value.astype(out_refs[name].dtype)
        return S

    last_ref[...] = lax.fori_loop(0, nl, body, s0_ref[...])


def _triton(static, step, inputs, S0, outs, reverse, keep_states):
    from jax.experimental.pallas import triton as plgpu

    B, H, L, _ = next(iter(inputs.values())).shape
    KP, VP = S0.shape[2:]
    nl = L // static.chunk
    whole = lambda rows, w: pl.BlockSpec((None, None, rows, w), lambda b, h: (b, h, 0, 0))
    out_specs = [whole(L, w) for w, _ in outs.values()]
    out_shape = [jax.ShapeDtypeStruct((B, H, L, w), dt) for w, dt in outs.values()]
    if keep_states:
        out_specs.append(whole(nl * KP, VP))
        out_shape.append(jax.ShapeDtypeStruct((B, H, nl * KP, VP), jnp.float32))
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
            keep_states=keep_states,
        ),  # fmt: skip
        grid=(B, H),
        in_specs=[whole(L, u.shape[-1]) for u in inputs.values()] + [whole(KP, VP)],
        out_specs=out_specs + [whole(KP, VP)],
        out_shape=out_shape + [jax.ShapeDtypeStruct((B, H, KP, VP), jnp.float32)],
        compiler_params=params,
        interpret=bool(static.interpret),
    )(*inputs.values(), S0)
    return _split(res, outs, keep_states)


def _split(res, outs, keep_states):
    seqs = dict(zip(outs, res[: len(outs)], strict=True))
    states = res[len(outs)] if keep_states else None
    return seqs, states, res[-1]


def _run(static, step, inputs, S0, outs, *, reverse=False, keep_states=False):
    fn = _mosaic if static.lowering == "mosaic" else _triton
    return fn(static, step, inputs, S0, outs, reverse, keep_states)


def forward(static: Static, inputs: dict, S0, y_dtype, keep_states: bool):
    """``inputs``: ut, w, sc, qg, kd, ge as (B, H, N C, width) padded arrays; S0 (B, H, KP,
    VP) float32. Returns (y (B, H, N C, VP), the states entering each chunk (B, H, N KP,
    VP) or None, the final state)."""
    VP = S0.shape[-1]
    seqs, states, last = _run(static, fwd_step, inputs, S0, {"y": (VP, y_dtype)},
                              keep_states=keep_states)  # fmt: skip
    return seqs["y"], states, last


def backward(static: Static, inputs: dict, G):
    """``inputs``: sc, qg, kd, w, ge, dy; G = dL/dS_N. Returns (dU (B, H, N C, VP),
    dL/dS_{n+1} per chunk (B, H, N KP, VP), dL/dS_0)."""
    VP = G.shape[-1]
    seqs, states, first = _run(static, bwd_step, inputs, G, {"du": (VP, jnp.float32)},
                               reverse=True, keep_states=True)  # fmt: skip
    return seqs["du"], states, first
