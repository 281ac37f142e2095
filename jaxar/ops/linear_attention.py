"""One chunked core for gated linear attention (jaxar/MATHS.md s.12).

    S_t = G_t S_{t-1} + k_t v_t^T,    y_t = Re(S_t^T q_t),    G_t = diag(a_t) or a_t I

with the gate given in log space, ``log_a <= 0`` (real part), per key dimension
(``gate="diag"``: GLA, GateLoop with complex ``log_a = log|a| + i arg a``) or one scalar
per head (``gate="scalar"``: Mamba-2's SSD, RetNet). ``reset`` drops the state before a
position (``a_t := 0``): packed rows with document boundaries.

Implementations (``impl``, ``jaxar.dispatch.LinearAttentionImpl``):
  * ``"recurrent"``: ``lax.scan`` over t with a float32 (complex64) state; the reference.
  * ``"chunked"``: chunks of C positions; the state enters and leaves each chunk through
    matmuls and is carried over the L / C chunk boundaries by ``lax.scan``. Inside a chunk:

    - scalar gates: ``(Q K^T o exp(segsum(log a))) V``, a (C, C) decay matrix per head.
    - diagonal gates: a binary split of the chunk (C a power of two). At the level of
      half-width m = 1, 2, ..., C/2, a block of 2m positions is a left half l and a right
      half r, and every pair (t in r, s in l) is
      ``sum_k (q_tk exp(sum_{m<=u<=t} log a_uk)) (k_sk exp(sum_{s<u<m} log a_uk))``:
      a batched (m, K) x (K, m) matmul whose factors are both exp(<= 0) <= 1, the reference
      being the split point (flash-linear-attention's secondary chunking applied
      recursively, down to single positions). Elementwise work per position: about
      K log2(C) exponentials, against K C for a (C, C, K) decay tensor; no
      log-space tensor at all. The exponents of each level are prefix / suffix sums
      within its halves: (m, m) 0/1 matmuls on the halves, block-local. The levels'
      (m, m) blocks are assembled bottom-up into the chunk's (C, C) lower-triangular
      score matrix, applied to v by one matmul.

  * ``"pallas"``: ``pallas_kernels.gateloop.linear_attention``, one kernel for the three
    gate kinds (a scalar gate broadcast over K before it), log-gates floored at e^-30;
    float32 / complex64. Reached through ``jaxar.dispatch.kernel``.

Complex diagonal gates ``|a| e^{i phi}``: the unit-modulus phases are folded into q and k
once per chunk (``q_t e^{i theta_t}``, ``k_s e^{-i theta_s}``, theta the running phase from
the chunk start; no magnitude > 1 arises), the magnitudes go through the real machinery.

Stability and exactness: every decay is ``exp`` of a sum of exactly its own log-gates
(local cumulative sums and segment sums, never a difference of running sums and never a
ratio ``P_t / P_s``), so every factor is at most 1, gates down to 0 (``log_a`` down to
``-inf``, clamped at ``LOG_ZERO``) underflow to the exact limit and nothing overflows, at any
length.

References:
  Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training",
    arXiv:2312.06635 (secondary chunking).
  Dao and Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
    Through Structured State Space Duality", arXiv:2405.21060.
  Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language
    Models", arXiv:2307.08621.
  Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
    arXiv:2311.01927.
"""

from __future__ import annotations

import functools
import itertools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxar import dispatch
from jaxar.dispatch import LinearAttentionImpl
from jaxar.ops.checks import positive_int

__all__ = ["LOG_ZERO", "GateKind", "linear_attention", "segment_sum"]

GateKind = Literal["diag", "scalar"]
# log-gate of a = 0 (resets, -inf): exp(LOG_ZERO) is exactly 0 in float32 and float64, and
# sums of up to ~1e300 / 1e4 such terms stay finite, so 0 * LOG_ZERO = 0 inside matmuls.
LOG_ZERO = -1e4
# blocks up to this many positions sum their log-gates by explicit adds (chosen by A/B)
SMALL_BLOCK = 4


def linear_attention(
    q,
    k,
    v,
    log_a,
    *,
    gate: GateKind = "diag",
    state0=None,
    reset=None,
    impl: LinearAttentionImpl = "auto",
    chunk_size: int = 32,
):
    """Gated linear attention ``y_t = Re(S_t^T q_t)`` (module docstring for the maths).

    Args:
      q, k: (B, L, H, K) real queries and keys.
      v: (B, L, H, E) real values.
      log_a: log-gates, real part <= 0: (B, L, H, K) for ``gate="diag"`` (real, or complex
        ``log|a| + i arg a``), (B, L, H) real for ``gate="scalar"``. ``-inf`` is a = 0.
        A concrete positive real part is an error (under ``jit`` it is not checked).
      gate: "diag" (a gate per key dimension) or "scalar" (one per head).
      state0: optional (B, H, K, E) state before position 0 (real or complex).
      reset: optional bool (B, L): True where a document starts; the state before that
        position is dropped (at t = 0 this drops ``state0``).
      impl: "auto", "recurrent", "chunked" or "pallas" (``pallas_kernels.gateloop``, log
        gates floored at e^-30 there; float32 / complex64 only) (resolved in
        ``jaxar.dispatch``).
      chunk_size: C of "chunked", an int >= 1 (capped near L); diagonal gates round it
        up to a power of two.

    Returns:
      ``(y, state)``: y (B, L, H, E) in the dtype of q / k / v; the final (B, H, K, E)
      state in float32 (complex64 for complex gates or state0; float64 / complex128 for
      float64 inputs).
    """
    q, k, v, log_a = (jnp.asarray(t) for t in (q, k, v, log_a))
    reset = None if reset is None else jnp.asarray(reset)
    _validate(q, k, v, log_a, gate, state0, reset)
    impl = dispatch.resolve("linear_attention", impl)
    chunk_size = positive_int("chunk_size", chunk_size)
    out_dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    real = jnp.promote_types(out_dtype, jnp.float32)
    cplx = jnp.iscomplexobj(log_a) or (state0 is not None and jnp.iscomplexobj(state0))
    sdt = jnp.promote_types(real, jnp.complex64) if cplx else real
    q, k, v = q.astype(real), k.astype(real), v.astype(real)
    la = log_a.astype(sdt if jnp.iscomplexobj(log_a) else real)
    la = _clamp(la)
    if reset is not None:
        r = reset.reshape(reset.shape + (1,) * (la.ndim - 2))
        la = jnp.where(r, jnp.asarray(LOG_ZERO, la.dtype), la)
    b, length, h, kk = q.shape
    e = v.shape[-1]
    s0 = jnp.zeros((b, h, kk, e), sdt) if state0 is None else jnp.asarray(state0).astype(sdt)
    if impl == "recurrent":
        y, s = _recurrent(q, k, v, la, s0)
    elif impl == "pallas":  # pallas_kernels.gateloop: one kernel for the three gate kinds
        y, s = dispatch.kernel("linear_attention")(
            q, k, v, la, gate=gate, state0=s0, chunk_size=chunk_size
        )
    else:
        y, s = _chunked(q, k, v, la, s0, gate, chunk_size)
    return y.astype(out_dtype), s


def _clamp(la):
    """Real part clamped at ``LOG_ZERO`` (so -inf is a finite a = 0); phase kept."""
    if jnp.iscomplexobj(la):
        re = jnp.maximum(la.real, LOG_ZERO)
        return lax.complex(re, jnp.where(la.real > LOG_ZERO, la.imag, 0.0))
    return jnp.maximum(la, LOG_ZERO)


def _validate(q, k, v, log_a, gate, state0, reset):
    if gate not in ("diag", "scalar"):
        raise ValueError(f"gate={gate!r} is not supported; accepted: 'diag', 'scalar'")
    if q.ndim != 4:
        raise ValueError(f"q must be (B, L, H, K), got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape (B, L, H, K) = {q.shape}, got {k.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, L, H, E) with (B, L, H) = {q.shape[:3]}, got {v.shape}")
    want = q.shape if gate == "diag" else q.shape[:3]
    if log_a.shape != want:
        raise ValueError(
            f"log_a must be {'(B, L, H, K)' if gate == 'diag' else '(B, L, H)'} = {want} "
            f"for gate={gate!r}, got {log_a.shape}"
        )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(t.dtype, jnp.floating):
            raise ValueError(f"{name} must be real floating, got dtype {t.dtype}")
    if not jnp.issubdtype(log_a.dtype, jnp.inexact):
        raise ValueError(f"log_a must be real or complex floating, got dtype {log_a.dtype}")
    if gate == "scalar" and jnp.iscomplexobj(log_a):
        raise ValueError("log_a must be real for gate='scalar' (complex gates are per key dim)")
    b, _, h, kk = q.shape
    want_s = (b, h, kk, v.shape[-1])
    if state0 is not None and jnp.shape(state0) != want_s:
        raise ValueError(f"state0 must be (B, H, K, E) = {want_s}, got {jnp.shape(state0)}")
    if reset is not None and (reset.shape != q.shape[:2] or reset.dtype != jnp.bool_):
        raise ValueError(
            f"reset must be bool (B, L) = {q.shape[:2]}, got {reset.dtype} {reset.shape}"
        )
    if not isinstance(log_a, jax.core.Tracer) and log_a.size:
        re = np.asarray(jnp.real(log_a), np.float64)
        if np.isnan(re).any():
            raise ValueError("log_a holds NaN; accepted: real parts in [-inf, 0]")
        top = float(re.max())
        if top > 0.0:
            raise ValueError(
                f"log_a holds log-gates, whose real part must be <= 0 (|a| <= 1); got a "
                f"maximum of {top}"
            )


def _recurrent(q, k, v, la, s0):
    a = jnp.exp(la)
    if a.ndim == 3:
        a = a[..., None]

    def step(s, inp):
        q_t, k_t, v_t, a_t = inp  # (B, H, K) / (B, H, E) / (B, H, K|1)
        s = a_t[..., None] * s + (k_t[..., None] * v_t[..., None, :]).astype(s.dtype)
        return s, jnp.einsum("bhk,bhke->bhe", q_t, jnp.real(s))

    xs = tuple(jnp.moveaxis(t, 1, 0) for t in (q, k, v, a))
    s, y = lax.scan(step, s0, xs)
    return jnp.moveaxis(y, 0, 1), s


def segment_sum(x):
    """``out[..., t, s] = sum_{s < u <= t} x[..., u]`` for t >= s, ``-inf`` for t < s.

    Each entry sums exactly its own terms (a masked matmul with a 0/1 matrix; no
    difference of running sums, so no cancellation): ``exp(segment_sum(log a))`` is the
    causal decay matrix ``prod_{s<u<=t} a_u`` with every entry in [0, 1].
    """
    c = x.shape[-1]
    lead = (1,) * (x.ndim - 1)
    lower = jnp.tril(jnp.ones((c, c), bool)).reshape(*lead, c, c)
    strict = jnp.tril(jnp.ones((c, c), bool), -1).reshape(*lead, c, c)
    terms = jnp.where(strict, x[..., :, None], jnp.zeros((), x.dtype))  # [u, s] = x_u, u > s
    ones = jnp.tril(jnp.ones((c, c), x.dtype))
    out = jnp.einsum("tu,...us->...ts", ones, terms, precision=lax.Precision.HIGHEST)
    return jnp.where(lower, out, jnp.asarray(-jnp.inf, x.dtype))


@functools.cache
def _block_sum_matrices(m: int) -> np.ndarray:
    """(2, m, m) 0/1 matrices on a block of m positions: row 0 sums [0, t] (inclusive
    prefix), row 1 sums (t, m) (exclusive suffix)."""
    ones = np.ones((m, m), np.float32)
    return np.stack([np.tril(ones), np.triu(ones, 1)])


def _block_sums(x, which: int):
    """Exact prefix (``which=0``) or exclusive suffix (``which=1``) sums of ``x`` (..., m, K)
    along its m axis: one matmul with 0/1 weights, each entry adding exactly its own
    terms (no difference of running sums); for m <= SMALL_BLOCK, explicit adds of slices
    (a fused loop: the matmul would first transpose x to put m last)."""
    m = x.shape[-2]
    if m <= SMALL_BLOCK:
        rows = [x[..., i, :] for i in range(m)]
        if which == 0:
            return jnp.stack(list(itertools.accumulate(rows)), axis=-2)
        tails = list(itertools.accumulate(rows[:0:-1]))[::-1]  # sums over (t, m) for t < m - 1
        return jnp.stack(tails + [jnp.zeros_like(rows[-1])], axis=-2)
    mat = jnp.asarray(_block_sum_matrices(m)[which], jnp.real(x).dtype)
    return jnp.einsum("tu,...uk->...tk", mat, x, precision=lax.Precision.HIGHEST)


def _swap(x):
    return jnp.swapaxes(x, -1, -2)


def _dot_nt(a, b):
    return jnp.einsum("...mk,...nk->...mn", a, b)


def _dot_nn(a, b):
    return jnp.einsum("...mk,...kn->...mn", a, b)


@jax.custom_jvp
def _matmul_nt(a, b):
    """``a @ b^T`` over leading batch axes, with a JVP whose transpose (the backward pass)
    contracts the last axis of every left operand.

    XLA's CPU backend hands a batched dot to its fast library only when the left operand
    contracts its last axis; the plain autodiff transpose of ``a @ b^T`` w.r.t. ``b`` is
    ``g^T @ a`` with the transpose folded into the dot (a slow generic loop for these
    small blocks). Here that term is written so that its transpose is
    ``barrier(g^T) @ a``: the small ``g^T`` is materialised and the dot is canonical.
    Same values; forward mode keeps working (a JVP, not a VJP).
    """
    return _dot_nt(a, b)


def _tangent(out, da_term, db_term):
    """The sum of the tangent terms present (None: that input's tangent is a symbolic zero)."""
    terms = [t for t in (da_term, db_term) if t is not None]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


def _live(t):
    return not isinstance(t, SymbolicZero)


def _matmul_nt_jvp(primals, tangents):
    (a, b), (da, db) = primals, tangents
    out = _dot_nt(a, b)
    return out, _tangent(
        out,
        _dot_nt(da, b) if _live(da) else None,  # transpose: g @ b
        _swap(lax.optimization_barrier(_dot_nt(db, a))) if _live(db) else None,  # g^T @ a
    )


_matmul_nt.defjvp(_matmul_nt_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _matmul_nn(a, b):
    """``a @ b`` over leading batch axes; the backward pass's ``a^T @ g`` runs on a
    materialised ``a^T`` (see :func:`_matmul_nt`)."""
    return _dot_nn(a, b)


def _matmul_nn_jvp(primals, tangents):
    (a, b), (da, db) = primals, tangents
    out = _dot_nn(a, b)
    return out, _tangent(
        out,
        _dot_nn(da, b) if _live(da) else None,  # transpose: g @ b^T
        # the left factor equals a; its transpose reads barrier(a^T): barrier(a^T) @ g
        _dot_nn(_swap(lax.optimization_barrier(_swap(a))), db) if _live(db) else None,
    )


_matmul_nn.defjvp(_matmul_nn_jvp, symbolic_zeros=True)


def _edge_sums(la):
    """``(in, out)`` of ``la`` (..., C, K): the inclusive running sum over [0, t] (the
    decay from the chunk start to t) and the sum over (t, C - 1] (from t to the end)."""
    return _block_sums(la, 0), _block_sums(la, 1)


def _intra_diag(q, k, v, la):
    """Within-chunk outputs for diagonal gates, by the binary split (module docstring).

    q, k (..., C, R K) real; v (..., C, E); la (..., C, K) real log-gates; C a power of
    two; R = 2 for complex gates as real pairs ``[q cos theta, q sin theta]``, ``[k cos
    theta, k sin theta]`` (theta the phase from the chunk start). At half-width m the
    exponents are block-local: the prefix sums of each right half and the exclusive suffix
    sums of each left half, (m, m) 0/1 matmuls on those halves only (m C K multiply-adds
    per level and no (levels, C, K) tensor to assemble in the backward pass).

    The levels' (m, m) score blocks are assembled bottom-up into the chunk's lower
    triangular (C, C) score matrix (a block of 2m is ``[[A, 0], [scores, B]]`` with A, B
    the blocks of m below it) and applied to v by one (C, C) x (C, E) matmul: the
    outputs are written once, not added level by level, and no half of v is copied out.
    Returns (..., C, E).
    """
    reps = q.shape[-1] // la.shape[-1]
    cc = q.shape[-2]
    lead = q.shape[:-2]

    def tile(f):  # a factor per key dimension, repeated over the R parts of q / k
        return jnp.concatenate([f] * reps, axis=-1) if reps > 1 else f

    blocks = jnp.sum(q * k, axis=-1)[..., None, None]  # (..., C, 1, 1): s = t, decay 1
    m = 1
    while m < cc:
        nb = cc // (2 * m)

        def split(t, nb=nb, m=m):
            return t.reshape(*lead, nb, 2, m, t.shape[-1])

        halves = split(la)
        # q's factor on right halves exp(sum_{mid<=u<=t}), k's on left exp(sum_{s<u<mid})
        q_r = split(q)[..., 1, :, :] * tile(jnp.exp(_block_sums(halves[..., 1, :, :], 0)))
        k_l = split(k)[..., 0, :, :]
        if m > 1:  # a left half of one position has an empty sum: factor 1
            k_l = k_l * tile(jnp.exp(_block_sums(halves[..., 0, :, :], 1)))
        scores = _matmul_nt(q_r, k_l)  # (..., nb, m, m): right-half rows, left-half columns
        pairs = blocks.reshape(*lead, nb, 2, m, m)
        upper, lower = pairs[..., 0, :, :], pairs[..., 1, :, :]
        blocks = jnp.concatenate(
            [
                jnp.concatenate([upper, jnp.zeros_like(upper)], axis=-1),
                jnp.concatenate([scores, lower], axis=-1),
            ],
            axis=-2,
        )  # (..., nb, 2m, 2m)
        m *= 2
    return _matmul_nn(blocks.reshape(*lead, cc, cc), v)


def _intra_scalar(q, k, v, la):
    """Within-chunk outputs for scalar gates: ``(Q K^T o D) V`` with the (C, C) decay
    ``D_ts = exp(b_t - b_s)`` (t >= s, b the running log-gate sum; the exponent is masked
    before the exp, so it is <= 0), and ``D_ts = 0`` when a zero gate (a reset) lies in
    (s, t]: zero gates are taken out of b and counted instead, so b stays O(|log a| C)."""
    c = la.shape[-1]
    zero = la <= 0.5 * LOG_ZERO
    b = _block_sums(jnp.where(zero, 0.0, la)[..., None], 0)[..., 0]
    n0 = jnp.cumsum(zero, axis=-1, dtype=jnp.int32)
    causal = jnp.tril(jnp.ones((c, c), bool)).reshape((1,) * (la.ndim - 1) + (c, c))
    keep = (n0[..., :, None] == n0[..., None, :]) & causal
    diff = jnp.where(keep, b[..., :, None] - b[..., None, :], -jnp.inf)
    scores = jnp.einsum("...tk,...sk->...ts", q, k) * jnp.exp(diff)
    return jnp.einsum("...ts,...se->...te", scores, v)


def _chunked(q, k, v, la, s0, gate, chunk_size):
    b, length, h, kk = q.shape
    e = v.shape[-1]
    if gate == "diag":  # a power of two >= min(C, L)
        c = 1 << max(0, (min(chunk_size, length) - 1).bit_length())
    else:
        c = min(chunk_size, length)
    pad = -length % c
    n = (length + pad) // c

    def chunks(t):  # (B, L, H, ...) -> (B, H, N, C, ...); padding: a = 1, k = v = q = 0
        t = jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
        return jnp.moveaxis(t.reshape(b, n, c, *t.shape[2:]), 3, 1)

    qc, kc, vc, lc = chunks(q), chunks(k), chunks(v), chunks(la)
    if gate == "scalar":
        y = _intra_scalar(qc, kc, vc, lc)
        sum_in, sum_out = _edge_sums(lc[..., None])  # (B, H, N, C, 1)
    elif jnp.iscomplexobj(lc):
        return _chunked_complex(qc, kc, vc, lc, s0, (b, length, h, e))
    else:
        sum_in, sum_out = _edge_sums(lc)
        y = _intra_diag(qc, kc, vc, lc)
    # state in / out of each chunk: S_out = exp(sum la) S_in + sum_s (k_s exp(la_{s<u<=C})) v_s^T
    q_in = qc * jnp.exp(sum_in)
    k_out = kc * jnp.exp(sum_out)
    g = jnp.exp(sum_in[..., -1, :])  # (B, H, N, K|1)
    u = jnp.einsum("bhnsk,bhnse->bhnke", k_out, vc.astype(k_out.dtype)).astype(s0.dtype)

    def step(s, inp):
        g_n, u_n = inp
        return g_n[..., None].astype(s.dtype) * s + u_n, s

    s_last, s_in = lax.scan(step, s0, (jnp.moveaxis(g, 2, 0), jnp.moveaxis(u, 2, 0)))
    s_in = jnp.moveaxis(s_in, 0, 2)  # (B, H, N, K, E): the state entering each chunk
    if jnp.iscomplexobj(s_in):  # a complex state0 with real gates
        q_in = q_in.astype(s_in.dtype)
        y_in = jnp.concatenate([q_in.real, q_in.imag], -1)
        s_cat = jnp.concatenate([s_in.real, -s_in.imag], -2)
        y = y + jnp.einsum("bhntk,bhnke->bhnte", y_in, s_cat)
    else:
        y = y + jnp.einsum("bhntk,bhnke->bhnte", q_in, s_in)
    y = jnp.moveaxis(y, 1, 3).reshape(b, n * c, h, e)[:, :length]
    return y, s_last


def _chunked_complex(qc, kc, vc, lc, s0, shape):
    """The chunked form for complex diagonal gates ``|a| e^{i phi}``, in real arithmetic.

    qc, kc, vc (B, H, N, C, K|E) real; lc (B, H, N, C, K) complex; s0 (B, H, K, E) complex.
    With theta_t the running phase from the chunk start (unit-modulus factors only):
    within the chunk ``Re(q_t e^{i theta_t} . k_s e^{-i theta_s})`` is one real contraction
    over 2K of ``[q cos, q sin]`` and ``[k cos, k sin]``; the chunk's write is
    ``U = sum_s (k_s |a|_{s<u<=C} e^{i (theta_C - theta_s)}) v_s^T`` (two real matmuls, v is
    real), the carry ``S <- |a|_C e^{i theta_C} S + U`` runs on (real, imaginary) pairs,
    and the state's read is ``Re((q |a|_{<=t} e^{i theta_t})^T S)``.
    """
    b, length, h, e = shape
    n, c = qc.shape[2], qc.shape[3]
    theta = _block_sums(lc.imag, 0)  # (B, H, N, C, K): running phase from the chunk start
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    sum_in, sum_out = _edge_sums(lc.real)
    q2 = jnp.concatenate([qc * cos, qc * sin], axis=-1)
    k2 = jnp.concatenate([kc * cos, kc * sin], axis=-1)
    y = _intra_diag(q2, k2, vc, lc.real)
    k_out = kc * jnp.exp(sum_out)  # e^{i (theta_C - theta_s)}: cos_C cos + sin_C sin, ...
    cos_c, sin_c = cos[..., -1:, :], sin[..., -1:, :]
    u_re = jnp.einsum("bhnsk,bhnse->bhnke", k_out * (cos_c * cos + sin_c * sin), vc)
    u_im = jnp.einsum("bhnsk,bhnse->bhnke", k_out * (sin_c * cos - cos_c * sin), vc)
    mag = jnp.exp(sum_in[..., -1, :])  # (B, H, N, K)
    g_re, g_im = mag * cos[..., -1, :], mag * sin[..., -1, :]

    def step(s, inp):
        s_re, s_im = s
        gr, gi, ur, ui = (t[..., None] if t.ndim == 3 else t for t in inp)
        return (gr * s_re - gi * s_im + ur, gr * s_im + gi * s_re + ui), s

    xs = tuple(jnp.moveaxis(t, 2, 0) for t in (g_re, g_im, u_re, u_im))
    real = jnp.real(s0).dtype
    (last_re, last_im), (in_re, in_im) = lax.scan(
        step, (jnp.real(s0), jnp.imag(s0)), tuple(t.astype(real) for t in xs)
    )
    q_in = qc * jnp.exp(sum_in)
    y_in = jnp.concatenate([q_in * cos, q_in * sin], -1)  # Re(q_in^T S) = [qr, qi] [Sr; -Si]
    s_cat = jnp.moveaxis(jnp.concatenate([in_re, -in_im], -2), 0, 2)  # (B, H, N, 2K, E)
    y = y + jnp.einsum("bhntk,bhnke->bhnte", y_in, s_cat)
    y = jnp.moveaxis(y, 1, 3).reshape(b, n * c, h, e)[:, :length]
    return y, lax.complex(last_re, last_im)
