"""Linear recurrences: every implementation, forward + backward (jaxar/MATHS.md s.1-2).

``jaxar bench recurrence [--quick]``. Cases (B=4): GateLoop with H=4, K=E=32 (impls
recurrent = the sequential baseline, parallel = the associative baseline, chunked with
C=16) and the diagonal ``linear_scan`` with D=256 (sequential, associative, chunked with
C=32); real and complex; L in {1024, 4096, 16384} (``--quick``: 4096 only, 3 repeats). Time is
``jax.grad`` of a scalar loss (fwd+bwd), jitted; ``compile_s`` is reported per row; rows
carry ``extra["vs_associative"]`` and ``extra["vs_sequential"]`` (baseline median /
this median, > 1 = faster, same run). Target (issue 3): chunked >= 3x associative and
>= 1.5x sequential at L=4096.

The linear-attention family (issue 16; :func:`linear_attention_rows`), fwd+bwd float32 at
B=4, L=4096, H=4: the chunked core (C=32: the fastest of C = 16, 32, 64 on this CPU for
both gate kinds at K=32, jaxar/bench/README.md) against
``lax.scan`` (impl "recurrent") and ``lax.associative_scan`` (GateLoop "parallel", K=32
only: its (B, L, H, K, E) state sequence is 1G elements at K=128), with real gates at
K=E=32, 64, 128, complex gates at 32, scalar gates at 32; and the chunked delta rule
against its recurrent form at K=32. The impls of each of these cases are timed round-robin
(``extra["min_ms"]``: the fastest run). Rows without a sequential loop carry
``extra["flops"]`` (XLA's cost analysis of the compiled fwd+bwd), the achieved FLOP/s and
``extra["of_roofline"]``, that as a fraction of the measured float32 matmul FLOP/s
(:mod:`jaxar.bench.roofline`); XLA counts a while loop's body once, so rows whose work sits
in a ``lax.scan`` (recurrent, the chunked delta rule) get no rate. Chunked rows carry the
issue's target ratio to "recurrent".

Skipped, with the reason in the row list: GateLoop "parallel" at L=16384 (its associative
scan materialises the B*L*H*K*E = 268M-element state sequence several times: > the
memory of the benchmark machine in the backward pass); the "attention" impl (O(L^2 K)
memory; it is the chunked code with one chunk).

References:
  Martin and Cundy 2018, "Parallelizing Linear Recurrent Neural Nets Over Sequence Length",
    arXiv:1709.04057.
  Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
    arXiv:2311.01927.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from jaxar.bench import harness, roofline
from jaxar.ops.delta_rule import delta_rule
from jaxar.ops.gateloop import gateloop
from jaxar.ops.linear_attention import linear_attention
from jaxar.ops.scan import linear_scan

B, H, K, E, D = 4, 4, 32, 32, 256
GATELOOP_CHUNK = 16
SCAN_CHUNK = 32


def _gateloop_inputs(length, cplx):
    ks = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(ks[0], (B, length, H, K))
    k = jax.random.normal(ks[1], (B, length, H, K)) / K**0.5
    v = jax.random.normal(ks[2], (B, length, H, E))
    a = jax.nn.sigmoid(2.0 + jax.random.normal(ks[3], (B, length, H, K)))
    if cplx:
        a = a * jnp.exp(0.1j * jax.random.normal(ks[4], (B, length, H, K)))
    return q, k, v, a


def _scan_inputs(length, cplx):
    ks = jax.random.split(jax.random.key(1), 3)
    a = jax.random.uniform(ks[0], (B, length, D), minval=0.8, maxval=1.0)
    x = jax.random.normal(ks[1], (B, length, D))
    if cplx:
        a = a * jnp.exp(0.1j * jax.random.normal(ks[2], (B, length, D)))
        x = x.astype(jnp.complex64)
    return a, x


def _gateloop_fn(impl):
    def loss(q, k, v, a):
        y, s = gateloop(q, k, v, a, impl=impl, chunk_size=GATELOOP_CHUNK)
        return jnp.sum(y * y) + jnp.sum(jnp.abs(s))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


def _scan_fn(impl):
    def loss(a, x):
        h, last = linear_scan(a, x, impl=impl, chunk_size=SCAN_CHUNK)
        return jnp.sum(jnp.abs(h) ** 2) + jnp.sum(jnp.abs(last))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _ratios(rows, seq, assoc):
    by = {r.impl: r.median_ms for r in rows}
    for r in rows:
        if seq in by:
            r.extra["vs_sequential"] = round(by[seq] / r.median_ms, 3)
        if assoc in by:
            r.extra["vs_associative"] = round(by[assoc] / r.median_ms, 3)
    return harness.with_ratios(rows, seq)


def run(quick: bool) -> list[harness.Result]:
    lengths = (4096,) if quick else (1024, 4096, 16384)
    results = []
    for length in lengths:
        repeats = 5 if length <= 4096 and not quick else 3
        for cplx in (False, True):
            dt = "complex64" if cplx else "float32"
            # GateLoop, key-value state
            case = f"gateloop B={B} L={length} H={H} K={K} E={E} fwd+bwd"
            args = _gateloop_inputs(length, cplx)
            rows = []
            for impl in ("recurrent", "parallel", "chunked"):
                if impl == "parallel" and length > 4096:
                    continue
                t = harness.timeit(_gateloop_fn(impl), *args, repeats=repeats)
                rows.append(
                    harness.Result(
                        "recurrence",
                        case,
                        impl,
                        dt,
                        t.median_s * 1e3,
                        t.compile_s,
                        extra={"chunk": GATELOOP_CHUNK} if impl == "chunked" else {},
                    )
                )
            results += _ratios(rows, "recurrent", "parallel")
            # diagonal scan
            case = f"linear_scan B={B} L={length} D={D} fwd+bwd"
            args = _scan_inputs(length, cplx)
            rows = []
            for impl in ("sequential", "associative", "chunked"):
                t = harness.timeit(_scan_fn(impl), *args, repeats=repeats)
                rows.append(
                    harness.Result(
                        "recurrence",
                        case,
                        impl,
                        dt,
                        t.median_s * 1e3,
                        t.compile_s,
                        extra={"chunk": SCAN_CHUNK} if impl == "chunked" else {},
                    )
                )
            results += _ratios(rows, "sequential", "associative")
    return results + linear_attention_rows(quick)


LA_DIAG_CHUNK, LA_SCALAR_CHUNK, DELTA_CHUNK = 32, 32, 16
# case -> the target for chunked / recurrent (and / associative where given)
TARGETS = {"real": (2.5, 8.0), "complex": (2.0, None), "wide": (3.0, None), "scalar": (4.0, None)}


def _la_inputs(kk, gate, cplx, length):
    ks = jax.random.split(jax.random.key(2), 5)
    q = jax.random.normal(ks[0], (B, length, H, kk))
    k = jax.random.normal(ks[1], (B, length, H, kk)) / kk**0.5
    v = jax.random.normal(ks[2], (B, length, H, kk))
    shape = (B, length, H) if gate == "scalar" else (B, length, H, kk)
    la = jax.nn.log_sigmoid(2.0 + jax.random.normal(ks[3], shape))
    if cplx:
        la = la + 0.1j * jax.random.normal(ks[4], shape)
    return q, k, v, la


def _la_fn(impl, gate):
    chunk = LA_SCALAR_CHUNK if gate == "scalar" else LA_DIAG_CHUNK

    def loss(q, k, v, la):
        if impl == "associative":
            y, s = gateloop(q, k, v, jnp.exp(la), impl="parallel")
        else:
            y, s = linear_attention(q, k, v, la, gate=gate, impl=impl, chunk_size=chunk)
        return jnp.sum(y * y) + jnp.sum(jnp.abs(s))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


def _delta_fn(impl):
    def loss(q, k, v, beta, lg):
        y, s = delta_rule(
            q, k, v, beta, gate=lg, impl=impl, chunk_size=DELTA_CHUNK, return_state=True
        )
        return jnp.sum(y * y) + jnp.sum(jnp.abs(s))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))


def _flops(fn, *args) -> float:
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


LA_CASES = ("real", "complex", "wide", "scalar", "delta")


def linear_attention_rows(
    quick: bool = False, length: int = 4096, cases: tuple[str, ...] = LA_CASES
) -> list[harness.Result]:
    """The issue-16 table: chunked core / delta rule vs their sequential and associative
    baselines, with FLOP/s as a fraction of the measured matmul roofline. ``cases``: a
    subset of ``LA_CASES`` (e.g. ``("delta",)`` for the delta rule alone)."""
    unknown = sorted(set(cases) - set(LA_CASES))
    if unknown:
        raise ValueError(f"cases={cases!r} names {unknown}; accepted: a subset of {LA_CASES}")
    peak = roofline.measure(quick=True)["matmul_float32_flops"]
    repeats = 3 if quick else 5
    la_cases = [("real", 32, "diag", False), ("complex", 32, "diag", True)]
    la_cases += [("wide", kk, "diag", False) for kk in (64, 128)]
    la_cases += [("scalar", 32, "scalar", False)]
    la_cases = [c for c in la_cases if c[0] in cases]
    results = []

    def rows_of(case, dt, args, impls):
        """impls: (impl, fn, target, loop) of one case, timed round-robin."""
        timings = _interleaved([(fn, args) for _, fn, _, _ in impls], repeats)
        out = []
        for (impl, fn, target, loop), t in zip(impls, timings, strict=True):
            extra = {"min_ms": round(t.min_s * 1e3, 1)}
            if not loop:  # XLA's cost analysis counts a while loop's body once: no rate
                flops = _flops(fn, *args)
                extra |= {"flops": flops, "gflop_per_s": round(flops / t.median_s / 1e9, 2)}
                extra["of_roofline"] = round(flops / t.median_s / peak, 4)
            if target is not None:
                extra["target_vs_sequential"] = target
            out.append(
                harness.Result(
                    "recurrence", case, impl, dt, t.median_s * 1e3, t.compile_s, extra=extra
                )
            )
        return _ratios(out, "recurrent", "associative")

    for name, kk, gate, cplx in la_cases:
        case = f"linear_attention {name} gate={gate} B={B} L={length} H={H} K=E={kk} fwd+bwd"
        dt = "complex64" if cplx else "float32"
        impls = ["recurrent", "chunked"] + (["associative"] if kk == 32 and gate == "diag" else [])
        impls = [
            (
                impl,
                _la_fn(impl, gate),
                TARGETS[name][0] if impl == "chunked" else None,
                impl == "recurrent",
            )
            for impl in impls
        ]
        results += rows_of(case, dt, _la_inputs(kk, gate, cplx, length), impls)
    if "delta" not in cases:
        return results
    ks = jax.random.split(jax.random.key(3), 5)
    q = jax.random.normal(ks[0], (B, length, H, K))
    k = jax.random.normal(ks[1], (B, length, H, K))
    v = jax.random.normal(ks[2], (B, length, H, E))
    beta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, length, H)))
    lg = jax.nn.log_sigmoid(3.0 + jax.random.normal(ks[4], (B, length, H)))
    case = f"delta_rule gated B={B} L={length} H={H} K=V={K} fwd+bwd"
    # both forms scan (the chunked one over chunks, matmuls inside): no FLOP rate
    impls = [
        (impl, _delta_fn(impl), 2.0 if impl == "chunked" else None, True)
        for impl in ("recurrent", "chunked")
    ]
    return results + rows_of(case, "float32", (q, k, v, beta, lg), impls)


def _interleaved(calls, repeats: int) -> list[harness.Timing]:
    """Times the ``(fn, args)`` of one case round-robin, so that a load changing during the
    case hits every impl alike; a first call each (the compile) before. One Timing each:
    the median and min of ``repeats`` runs."""
    firsts = []
    for fn, args in calls:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        firsts.append(time.perf_counter() - t0)
    times = [[] for _ in calls]
    for _ in range(repeats):
        for ts, (fn, args) in zip(times, calls, strict=True):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
    out = []
    for first, ts in zip(firsts, times, strict=True):
        med = statistics.median(ts)
        out.append(harness.Timing(med, min(ts), max(first - med, 0.0), len(ts)))
    return out
