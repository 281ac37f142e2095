"""Speculative decoding speed (jaxar/MATHS.md s.9): tokens/s against plain ``generate``.

``jaxar bench decoding [--quick]``. A target (8 layers x 128 with 3 multi-token heads) and
a draft (1 layer x 128) trained on the embedded ``stdlib`` corpus
(``experiments/speculative``, variants ``deep_target`` / ``deep_draft``): loaded from
``jaxar_runs/speculative_deep_{target,draft}`` when those runs exist (or from
``$JAXAR_SPECULATIVE_RUNS/{target,draft}``), otherwise trained here first (full: the
experiment's steps; ``--quick``: 30 steps, in a temporary folder). ``--quick``: T = 32
new bytes, heads K = 3 only; full: T = 128, K = 1..3; best (and median) of 5 timed runs
after a compiling one.

Rows per batch size B in (1, 8), greedy decoding of T new bytes after a code prompt:
``generate`` (the baseline), ``spec-K`` (the draft proposes K = 2, 4, 8), ``self-K``
(the target's heads propose, K = 1..3) and ``tree-2x2x2`` (:mod:`jaxar.sampling.tree`:
the heads' top-2 per depth, 15 nodes verified in one call) and ``dtree-2x2x2`` (the same
tree from the draft's top-2 along its greedy chain). ``extra`` holds tokens/s, the
acceptance probability ``alpha`` (accepted / (accepted + rejections)), the cost ratio ``c``
(the draft's ``generate`` time over the target's, per token), tokens per target call, the
predicted speed-up ``(1 - alpha^(K+1)) / ((1 - alpha) (c K + 1))`` (Leviathan et al.,
arXiv:2211.17192; c = 0 for the heads, whose cost is inside the target call), the best
time ``min_ms`` with ``speedup_min`` (baseline best / this best: the figure least disturbed
by a shared machine) and the 1-minute load average ``load1`` when the row was timed.

The formula prices a (K + 1)-token verification like a one-token call (true where a decode
step is bound by reading the weights, as on an accelerator). ``v`` measures that price: the
target's (K + 1)-token ``decode`` over its one-token ``decode`` (best CPU time of 5 jitted
scans of :data:`COST_CALLS` calls, same cache size), and ``predicted_v`` = tokens per call / (v + c K)
is the formula with it; ``round_ms`` is the measured time per target call (``min_ms`` /
``target_calls``) and ``step_ms`` (on ``generate`` rows) the time per generated token.
``cpu_ms``: the best process CPU time of a call, ``speedup_cpu`` the baseline's over it (a
loaded machine slows wall time more than CPU time).
"""

from __future__ import annotations

import functools
import os
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.bench import harness
from jaxar.sampling import generate, speculative, tree
from jaxar.train import config as config_lib
from jaxar.train import experiments, loop

PROMPT = b"def __init__(self, "
TREES = ((2, 2, 2),)  # tree verification of the heads' / draft's top-k (greedy)
VARIANTS = ("deep_target", "deep_draft")  # experiments/speculative
COST_CALLS = 32  # decode calls per timed scan in verify_cost


def predicted_speedup(alpha: float, k: int, c: float, v: float = 1.0) -> float:
    """``(1 - alpha^(K+1)) / ((1 - alpha)(c K + v))``: expected tokens per call over the
    cost of a round in one-token target calls (MATHS.md s.9 has ``v = 1``: a (K + 1)-token
    verification priced like a one-token call)."""
    tokens = k + 1.0 if alpha >= 1.0 else (1.0 - alpha ** (k + 1)) / (1.0 - alpha)
    return tokens / (c * k + v)


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _decode_scan(graphdef, params, batch: int, t: int, max_len: int):
    """COST_CALLS ``decode`` calls of ``t`` tokens each on one growing state."""
    model = nnx.merge(graphdef, params)
    state = model.init_state(batch, max_len)

    def step(s, i):
        tok = jnp.full((batch, t), i, jnp.int32)
        pos = jnp.broadcast_to(i * t + jnp.arange(t, dtype=jnp.int32)[None], (batch, t))
        logits, s = model.decode(tok, s, positions=pos)
        return s, logits[:, -1, 0]

    return jax.lax.scan(step, state, jnp.arange(COST_CALLS, dtype=jnp.int32))[1]


def verify_cost(model, k: int, batch: int, repeats: int = 5) -> float:
    """``v``: time of a (K + 1)-token ``decode`` over a one-token ``decode`` of ``model``
    (best process CPU time of ``repeats`` jitted scans each, interleaved, the same cache
    size)."""
    graphdef, params = nnx.split(model)
    max_len = COST_CALLS * (k + 1)
    fns = [functools.partial(_decode_scan, graphdef, params, batch, t, max_len) for t in (1, k + 1)]
    best = [float("inf")] * 2
    for fn in fns:
        jax.block_until_ready(fn())  # compile
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.process_time()
            jax.block_until_ready(fn())
            best[i] = min(best[i], time.process_time() - t0)
    return best[1] / best[0]


def _workdir(variant: str) -> pathlib.Path:
    root = os.environ.get("JAXAR_SPECULATIVE_RUNS")
    if root:
        return pathlib.Path(root) / variant.split("_")[-1]
    return pathlib.Path("jaxar_runs") / f"speculative_{variant}"


def _trained(variant: str) -> bool:
    return (_workdir(variant) / "checkpoints").is_dir()


def _model(variant: str, steps: int | None, tmp: pathlib.Path | None):
    """A trained run's model: loaded when its workdir has checkpoints, else trained (in
    ``tmp`` when given)."""
    workdir = _workdir(variant) if tmp is None else tmp / variant.split("_")[-1]
    if not (workdir / "checkpoints").is_dir():
        cfg_dict = experiments.load_config(experiments.resolve(f"speculative:{variant}"))
        if steps is not None:
            config_lib.apply_overrides(
                cfg_dict,
                [
                    f"steps={steps}",
                    f"eval_every={steps}",
                    f"checkpoint_every={steps}",
                    "log_every=10",
                ],
            )
        print(f"[bench decoding] training {variant} into {workdir}", flush=True)
        loop.train(config_lib.from_config_dict(cfg_dict), str(workdir))
    return loop.load_run(str(workdir)).model(), str(workdir)


def _cpu_best(fn, repeats: int) -> float:
    """Best process CPU seconds of ``fn()`` (all threads; less disturbed than wall time by
    other processes on a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        jax.block_until_ready(fn())
        best = min(best, time.process_time() - t0)
    return best


def _alpha(stats) -> float:
    acc = float(np.sum(np.asarray(stats["accepted"])))
    rej = float(np.sum(np.asarray(stats["rejections"])))
    return acc / max(acc + rej, 1.0)


def run(quick: bool) -> list[harness.Result]:
    tmp = None
    if quick and not all(_trained(v) for v in VARIANTS):
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="jaxar_bench_decoding_"))
    steps = 30 if quick else None
    target, t_dir = _model(VARIANTS[0], steps, tmp)
    draft, d_dir = _model(VARIANTS[1], steps, tmp)
    new = 32 if quick else 128
    batches = (1, 8)
    ks = (2, 4, 8)
    self_ks = (3,) if quick else (1, 2, 3)
    repeats = 5
    key = jax.random.key(0)
    rows = []
    for b in batches:
        prompt = jnp.broadcast_to(
            jnp.asarray(np.frombuffer(PROMPT, np.uint8), jnp.int32)[None], (b, len(PROMPT))
        )
        case = f"B={b} P={len(PROMPT)} T={new} target=8x128+3heads draft=1x128 greedy"

        def plain(model, prompt=prompt):
            return generate(key, model, prompt, max_new_tokens=new, temperature=0.0)

        t_target = harness.timeit(plain, target, repeats=repeats)
        t_draft = harness.timeit(plain, draft, repeats=repeats)
        c = t_draft.min_s / t_target.min_s
        base_min = t_target.min_s
        base_cpu = _cpu_best(lambda: plain(target), repeats)
        extra = {"c": c, "step_ms": t_target.min_s * 1e3 / new, "cpu_ms": base_cpu * 1e3}
        rows.append(_row(case, "generate", t_target, b * new, extra, base_min))
        plans = [(f"spec-{k}", draft, k) for k in ks] + [(f"self-{k}", None, k) for k in self_ks]
        for name, d, k in plans:

            def spec(d=d, k=k, prompt=prompt):
                return speculative.generate(
                    key, target, d, prompt, max_new_tokens=new, num_draft=k, temperature=0.0,
                    return_stats=True,
                )  # fmt: skip

            t = harness.timeit(spec, repeats=repeats)
            cpu = _cpu_best(spec, repeats)
            _, stats = spec()
            alpha = _alpha(stats)
            cost = 0.0 if d is None else c
            v = verify_cost(target, k, b)
            extra = {
                "alpha": alpha,
                "c": cost,
                "v": v,
                "tokens_per_call": float(np.mean(np.asarray(stats["tokens_per_call"]))),
                "predicted": predicted_speedup(alpha, k, cost),
                "predicted_v": predicted_speedup(alpha, k, cost, v),
                "target_calls": int(stats["target_calls"]),
                "round_ms": t.min_s * 1e3 / max(int(stats["target_calls"]), 1),
                "cpu_ms": cpu * 1e3,
                "speedup_cpu": base_cpu / cpu,
            }
            rows.append(_row(case, name, t, b * new, extra, base_min))
        for shape, d in [(s, None) for s in TREES] + [(s, draft) for s in TREES]:

            def tree_fn(shape=shape, d=d, prompt=prompt):
                return tree.generate(
                    target, prompt, max_new_tokens=new, tree=shape, draft=d, return_stats=True
                )

            t = harness.timeit(tree_fn, repeats=repeats)
            _, stats = tree_fn()
            extra = {
                "tokens_per_call": float(np.mean(np.asarray(stats["tokens_per_call"]))),
                "nodes": int(stats["tree_size"]),
            }
            name = ("tree-" if d is None else "dtree-") + "x".join(map(str, shape))
            rows.append(_row(case, name, t, b * new, extra, base_min))
    rows = harness.with_ratios(rows, baseline="generate")
    for r in rows:
        r.extra["workdirs"] = f"{t_dir},{d_dir}"
    return rows


def _row(case, impl, t, tokens, extra, base_min_s):
    extra = {
        **extra,
        "min_ms": t.min_s * 1e3,
        "speedup_min": base_min_s / t.min_s,
        "load1": os.getloadavg()[0],
    }
    return harness.Result(
        bench="decoding",
        case=case,
        impl=impl,
        dtype="float32",
        median_ms=t.median_s * 1e3,
        compile_s=t.compile_s,
        extra={"tokens_per_s": tokens / t.median_s, **extra},
    )
