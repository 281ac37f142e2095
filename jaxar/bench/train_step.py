"""Train-step time, tokens/s and MFU of every family's presets, as the trainer runs them.

``jaxar bench train_step [--quick]``. Each case is ``jaxar.train.loop.build`` of a
``TrainConfig`` (the embedded ``stdlib`` corpus in packed rows of 256 bytes with
``segment_ids``, batch 8, float32, one device; image families on ``digits``, whose 8x8x1
images fix the grid), compiled ahead of time once (``compile_s``; the executable's
temporary memory as ``temp_MiB``), then stepped on one fixed batch. The cases are timed
round-robin, ``rounds`` x ``steps`` steps each, so that other load on the machine falls on
all of them alike; ``median_ms`` is the median step time over the rounds. ``tokens/s`` =
batch x row tokens / step time; ``mfu`` as in ``jaxar.train.throughput`` (on CPU over the
measured matmul roofline); ``vs_transformer`` = this case's tokens/s / the
``transformer-<size>`` LM's (same run).

Cases: the LM preset kinds (``jaxar.models.lm.PRESET_KINDS``) and MDLM / BD3 at sizes
``tiny`` and ``small``, the Axial Transformer at ``tiny`` and ``small``, MAR at ``tiny`` (its
other presets are ImageNet latents); the remat choices (``LMConfig.remat``) for the
transformer and GSS LMs at ``small``. ``--quick``: size ``tiny`` only, the remat rows for
the tiny transformer, fewer rounds.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from jaxar.bench import harness
from jaxar.data import pipeline
from jaxar.models import lm
from jaxar.train import config as config_lib
from jaxar.train import loop, throughput

SEQ_LEN, BATCH = 256, 8


def cases(quick: bool) -> list[tuple[str, str, dict]]:
    """``(family, preset, model overrides)`` per row."""
    sizes = ("tiny",) if quick else ("tiny", "small")
    out = []
    for size in sizes:
        out += [("lm", f"{kind}-{size}", {}) for kind in lm.PRESET_KINDS]
        out += [("mdlm", size, {}), ("bd3", size, {}), ("axial", size, {})]
    out.append(("mar", "tiny", {}))
    remat_size = "tiny" if quick else "small"
    remat_kinds = ("transformer",) if quick else ("transformer", "gss")
    for kind in remat_kinds:
        out += [("lm", f"{kind}-{remat_size}", {"remat": r}) for r in lm.REMAT if r != "none"]
    return out


def build_case(family: str, preset: str, overrides: dict, *, seq_len: int = SEQ_LEN,
               batch_size: int = BATCH):  # fmt: skip
    """``(run, batch, tokens per step)`` of one case (the run's step not yet compiled)."""
    image = family in ("axial", "mar")
    cfg = config_lib.TrainConfig(
        model=config_lib.ModelConfig(family, preset, tuple(overrides.items())),
        data=config_lib.DataConfig(name="digits" if image else "stdlib", seq_len=seq_len),
        batch_size=batch_size,
    )
    run = loop.build(cfg, devices=jax.devices()[:1], check_memory=False)
    ds = pipeline.batched(run.train_source, batch_size, seed=0)
    batch = run.put_batch(ds[0])
    return run, batch, batch_size * run.tokens_per_row()


def _step_all(entries, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of every entry, ``rounds`` round-robin rounds of ``steps`` steps."""
    times = {name: [] for name in entries}
    for _ in range(rounds):
        for name, e in entries.items():
            state = e["state"]
            t0 = time.perf_counter()
            for _ in range(steps):
                state, metrics = e["step"](state, e["batch"])
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - t0) / steps)
            e["state"] = state
    return times


def measure(case_list, *, rounds: int, steps: int, seq_len: int = SEQ_LEN,
            batch_size: int = BATCH) -> list[harness.Result]:  # fmt: skip
    peak, peak_source = throughput.peak_flops(jnp.float32)
    entries = {}
    for family, preset, overrides in case_list:
        name = f"{family}/{preset}" + "".join(f" {k}={v}" for k, v in overrides.items())
        run, batch, tokens = build_case(
            family, preset, overrides, seq_len=seq_len, batch_size=batch_size
        )
        t0 = time.perf_counter()
        traced = run.train_step.trace(run.state, batch)
        lowered = traced.lower()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        flops, source = throughput.step_flops(
            lowered, run.model(), tokens, run.tokens_per_row(), jaxpr=traced.jaxpr
        )
        mem = compiled.memory_analysis()
        state, metrics = compiled(run.state, batch)  # one warm step
        jax.block_until_ready(metrics)
        entries[name] = dict(
            step=compiled, state=state, batch=batch, tokens=tokens, flops=flops,
            source=source, compile_s=compile_s,
            temp=None if mem is None else mem.temp_size_in_bytes,
            remat=overrides.get("remat", "none"),
        )  # fmt: skip
    times = _step_all(entries, rounds, steps)
    rows = []
    for name, e in entries.items():
        med = statistics.median(times[name])
        extra = {
            "tokens/s": round(e["tokens"] / med),
            **{k: round(v, 4) for k, v in throughput.mfu_fields(e["flops"], med, peak).items()},
            "GFLOP/step": None if e["flops"] is None else round(e["flops"] / 1e9, 3),
            "flops": e["source"],
        }
        if e["temp"] is not None:
            extra["temp_MiB"] = round(e["temp"] / 2**20, 1)
        rows.append(
            harness.Result(
                "train_step",
                name,
                f"remat={e['remat']}",
                "float32",
                med * 1e3,
                e["compile_s"],
                extra=extra,
            )  # fmt: skip
        )
    _vs_transformer(rows)
    for r in rows:
        r.extra["peak_TFLOP/s"] = round(peak / 1e12, 4)
        r.extra["peak"] = peak_source
    return rows


def _vs_transformer(rows: list[harness.Result]) -> None:
    base = {r.case.split("-")[-1]: r.extra["tokens/s"] for r in rows
            if r.case.startswith("lm/transformer-") and " " not in r.case}  # fmt: skip
    for r in rows:
        size = r.case.split(" ")[0].split("-")[-1]
        if r.case.startswith("lm/") and size in base:
            r.extra["vs_transformer"] = round(r.extra["tokens/s"] / base[size], 3)


def run(quick: bool) -> list[harness.Result]:
    return measure(cases(quick), rounds=3 if quick else 5, steps=5 if quick else 10)
