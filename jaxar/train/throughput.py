"""Honest training throughput: time only train-step intervals, and model FLOPs utilisation.

``StepTimer`` accumulates wall time only while the host loop is stepping: it starts after
the first (compiling) step has finished and is paused around evaluation and checkpoint
saves, so steps/s and tokens/s measure the train step (with its data feeding) alone.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with
Pathways", arXiv:2204.02311, appendix B)::

    mfu = flops_per_step / (step_seconds * peak_flops)

``flops_per_step`` is XLA's cost analysis of the lowered (unpartitioned, so global) train
step when its jaxpr has no loop over floating-point work; XLA counts a loop body once
whatever its trip count (and a Pallas kernel not at all), so a step with a ``scan``
(gradient accumulation, a recurrent mixer) falls back to the estimate
``6 N T + 12 S_att D_att T`` (N parameters, T tokens per step, per attention layer
``D_att = heads x head_dim`` over ``S_att`` keys, fwd+bwd). Loops that XLA's lowering adds
for integer work (the PRNG's threefry rounds, e.g. a vq_ema restart draw) do not count as
loops. The estimate describes token models; a model with convolutions (whose layers see
fewer positions after each downsampling) gets no estimate, hence no MFU, and the reason is
logged. An MFU above 1 means the count or the peak is wrong: :func:`mfu_fields` reports it
as ``mfu_implausible``, never as ``mfu``. ``peak_flops`` is the published
bf16 peak times the device count on GPU/TPU; on CPU, where every (possibly fake) device
shares the host's cores, it is the host's matmul FLOP/s measured once per process in the
step's compute dtype (the ``roofline`` benchmark's matmul).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
from flax import nnx

from jaxar.nn.attention import MultiHeadAttention
from pallas_kernels._bench import published_peak, timeit

__all__ = [
    "StepTimer",
    "cost_flops",
    "estimate_flops",
    "matmul_flops",
    "mfu",
    "mfu_fields",
    "peak_flops",
    "step_flops",
    "uncounted_work",
]


class StepTimer:
    """Wall time of train-step intervals only (paused around compile, eval and saves).

    The loop calls ``resume(step)`` once ``step``'s results are ready and timing should
    (re)start, ``pause(step)`` when ``step``'s results are ready and non-training work
    follows, and ``take(step)`` at a log line: it returns ``(steps, seconds)`` timed since
    the previous ``take`` (``(0, 0.0)`` when nothing was timed) and keeps timing.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self._since: float | None = None  # start of the running stretch (None: paused)
        self._from = 0  # step whose completion started the running stretch
        self.steps = 0  # timed steps not yet taken
        self.seconds = 0.0
        self.total_steps = 0  # every timed step of the run
        self.total_seconds = 0.0

    @property
    def running(self) -> bool:
        return self._since is not None

    def resume(self, step: int) -> None:
        if self._since is None:
            self._since, self._from = self.clock(), int(step)

    def pause(self, step: int) -> None:
        if self._since is None:
            return
        now = self.clock()
        n, dt = int(step) - self._from, now - self._since
        self.steps += n
        self.seconds += dt
        self.total_steps += n
        self.total_seconds += dt
        self._since = None

    def take(self, step: int) -> tuple[int, float]:
        running = self.running
        self.pause(step)
        out = (self.steps, self.seconds)
        self.steps, self.seconds = 0, 0.0
        if running:
            self.resume(step)
        return out


def _has_loop(lowered) -> bool:
    try:
        text = lowered.as_text()
    except Exception:  # noqa: BLE001 - no text: assume the worst
        return True
    return "stablehlo.while" in text


def _float_work(jaxpr) -> bool:
    """Whether any equation of ``jaxpr`` (or of its sub-jaxprs) makes a float or complex
    value."""
    for eqn in jaxpr.eqns:
        if any(jnp.issubdtype(v.aval.dtype, jnp.inexact) for v in eqn.outvars):
            return True
        if any(_float_work(_open(j)) for j in jax_core.jaxprs_in_params(eqn.params)):
            return True
    return False


def _open(jaxpr):
    return getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr -> its Jaxpr


def uncounted_work(jaxpr) -> str | None:
    """Why XLA's cost analysis of ``jaxpr``'s program would not be its true FLOP count, or
    None when it would be.

    Reasons: a loop over floating-point work (a ``scan`` of length > 1 or a ``while``: XLA
    counts the body once) or a Pallas kernel (a custom call XLA does not count, or an
    interpreted loop). Integer-only loops are fine: their FLOPs are not model FLOPs, and the
    PRNG's loops (threefry rounds) appear only after lowering.
    """
    for eqn in _open(jaxpr).eqns:
        name = eqn.primitive.name
        if name == "pallas_call":
            return "a Pallas kernel (not counted by XLA)"
        subs = [_open(j) for j in jax_core.jaxprs_in_params(eqn.params)]
        if name == "scan" and eqn.params.get("length", 1) > 1 and any(map(_float_work, subs)):
            return f"a scan of length {eqn.params['length']} (XLA counts its body once)"
        if name == "while" and any(map(_float_work, subs)):
            return "a while loop (XLA counts its body once)"
        for sub in subs:
            reason = uncounted_work(sub)
            if reason is not None:
                return reason
    return None


def cost_flops(lowered, *, jaxpr=None) -> float | None:
    """FLOPs of a lowered (unpartitioned) program from XLA's cost analysis; None when it
    has a loop (counted once by XLA, so not the true count) or no analysis.

    With the program's ``jaxpr`` (``jax.jit(f).trace(*args).jaxpr``) the loop test is
    :func:`uncounted_work`; without it any ``while`` in the lowered text refuses (also the
    PRNG's integer loops)."""
    refused = _has_loop(lowered) if jaxpr is None else uncounted_work(jaxpr) is not None
    if refused:
        return None
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends have no cost model
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def estimate_flops(model, tokens_per_step: int, seq_len: int) -> float:
    """``6 N T + 12 S_att D_att T`` summed over attention layers (fwd + bwd), N = every
    parameter of ``model``; ``S_att = min(seq_len, window)`` keys per query.

    Raises:
      ValueError: ``model`` has convolutions (``6 N T`` does not describe them).
    """
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    flops = 6.0 * n * tokens_per_step
    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.Conv):
            raise ValueError(
                f"{type(model).__name__} has convolutions: 6 N T (every parameter once per "
                "token) does not count their FLOPs"
            )
        if isinstance(m, MultiHeadAttention):
            window = getattr(m.config, "window", None)
            keys = min(seq_len, window) if window else seq_len
            flops += 12.0 * keys * m.num_heads * m.head_dim * tokens_per_step
    return flops


def step_flops(
    lowered, model, tokens_per_step: int, seq_len: int, *, jaxpr=None
) -> tuple[float | None, str]:
    """``(flops per step, source)``: source "cost_analysis" or "estimate"; ``(None,
    reason)`` when neither counts this step (a loop XLA cannot count in a model the
    estimate does not describe). ``jaxpr`` as in :func:`cost_flops`."""
    flops = cost_flops(lowered, jaxpr=jaxpr) if lowered is not None else None
    if flops is not None:
        return flops, "cost_analysis"
    try:
        return estimate_flops(model, tokens_per_step, seq_len), "estimate"
    except ValueError as e:
        why = (uncounted_work(jaxpr) if jaxpr is not None else None) or "a loop or no analysis"
        return None, f"XLA's count is refused ({why}) and {e}"


_MEASURED: dict[tuple[str, str], float] = {}


def matmul_flops(dtype=jnp.float32, n: int = 1024, repeats: int = 5) -> float:
    """Measured FLOP/s of an (n x n) @ (n x n) matmul on the default device (median)."""
    x = jnp.ones((n, n), dtype)
    t = timeit(jax.jit(lambda a: a @ a), x, repeats=repeats)
    return 2 * n**3 / t.median_s


def peak_flops(dtype=jnp.float32, devices=None) -> tuple[float, str]:
    """``(peak FLOP/s of the devices together, source)``.

    GPU/TPU: the published bf16 peak per chip times the number of chips ("published").
    CPU (and unknown chips): the host's measured matmul FLOP/s in ``dtype`` ("measured"),
    measured once per process and dtype.
    """
    devices = list(devices) if devices is not None else jax.devices()
    if devices[0].platform != "cpu":
        peak = published_peak(devices[0])
        if peak is not None:
            return peak[0] * len(devices), "published"
    key = (devices[0].platform, jnp.dtype(dtype).name)
    if key not in _MEASURED:
        _MEASURED[key] = matmul_flops(dtype)
    return _MEASURED[key], "measured"


def mfu(flops_per_step: float, seconds_per_step: float, peak: float) -> float:
    """``flops_per_step / (seconds_per_step * peak)``."""
    if seconds_per_step <= 0 or peak <= 0:
        raise ValueError(f"seconds_per_step={seconds_per_step} and peak={peak} must both be > 0")
    return flops_per_step / (seconds_per_step * peak)


def mfu_fields(flops_per_step: float | None, seconds_per_step: float, peak: float) -> dict:
    """``{"mfu": u}`` for a plausible ``u = mfu(...)`` (``0 < u <= 1``); ``{"mfu_implausible":
    u}`` when ``u > 1`` (the FLOP count or the peak is wrong, so ``u`` is no utilisation);
    ``{}`` when there is no count."""
    if flops_per_step is None:
        return {}
    u = mfu(flops_per_step, seconds_per_step, peak)
    return {"mfu": u} if u <= 1.0 else {"mfu_implausible": u}
