"""Recurrences vs attention at one parameter count and one token budget, side by side.

Trains the ``tiny`` variants of ``transformer_lm``, ``gateloop_lm``, ``gss_lm`` and
``gss_hybrid_lm`` and the linear-attention LMs of ``config.py`` here (``gla``, ``retnet``,
``mamba2``, ``gated_deltanet``) one after another with the ``jaxar train`` command (same data, rows of
256 bytes, batch 8, 300 steps = 614k training bytes; ~0.43M parameters each), evaluates
each with ``jaxar eval`` and writes a JSON file and a markdown table: exact parameter
count, wall time, final train loss, held-out bits/byte and tokens/s.

    python experiments/lm_comparison/run.py                      # all eight, ~20-40 min
    python experiments/lm_comparison/run.py --only gss_lm --steps 50

Tokens/s is the median over the logged intervals after the first (the first one holds
the jit compile); it is measured on whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
# model -> its --config argument (an experiment's tiny variant, or this folder's config.py)
CONFIGS = {
    **{m: f"experiments/{m}/config.py:tiny" for m in ("transformer_lm", "gateloop_lm")},
    **{m: f"experiments/{m}/config.py:tiny" for m in ("gss_lm", "gss_hybrid_lm")},
    **{
        m: f"experiments/lm_comparison/config.py:{m}"
        for m in ("gla", "retnet", "mamba2", "gated_deltanet")
    },
}
MODELS = tuple(CONFIGS)


def param_count(name: str) -> int:
    """Exact number of parameters of ``experiments/<name>/config.py:tiny``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxar.data.sources import DataInfo
    from jaxar.train import config as config_lib
    from jaxar.train import experiments, tasks

    cfg_dict = experiments.load_config(str(ROOT / CONFIGS[name]))
    cfg = config_lib.from_config_dict(cfg_dict)
    family = tasks.get(cfg.model.family)
    model = nnx.eval_shape(
        lambda: family.build(cfg.model, DataInfo("text"), jnp.float32, nnx.Rngs(0))
    )
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _run(cmd: list[str], log: pathlib.Path) -> tuple[float, str]:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return wall, proc.stdout


def run_one(name: str, root: pathlib.Path, overrides: list[str]) -> dict:
    workdir = root / name
    if (workdir / "config.json").exists():  # a previous run: start afresh, never resume
        shutil.rmtree(workdir)
    cfg_arg = CONFIGS[name]
    train_cmd = ["jaxar", "train", "--config", cfg_arg, "--workdir", str(workdir), *overrides]
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(train_cmd)}", flush=True)
    wall, _ = _run(train_cmd, root / f"{name}.train.log")
    eval_wall, out = _run(["jaxar", "eval", "--workdir", str(workdir)], root / f"{name}.eval.log")
    head = next(line for line in out.splitlines() if "held-out" in line)
    bits = float(head.rsplit("=", 1)[1])
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if "tokens_per_sec" in m]
    tps = [m["tokens_per_sec"] for m in train[1:]] or [train[-1]["tokens_per_sec"]]
    result = dict(
        model=name,
        params=param_count(name),
        command=" ".join(["jaxar", "train", "--config", cfg_arg, *overrides]),
        train_wall_s=round(wall, 1),
        eval_wall_s=round(eval_wall, 1),
        steps=train[-1]["step"],
        final_train_loss_nats=round(train[-1]["loss"], 4),
        heldout_bits_per_byte=round(bits, 4),
        tokens_per_sec_median=round(statistics.median(tps)),
        tokens_per_sec_last=round(train[-1]["tokens_per_sec"]),
    )
    print(json.dumps(result), flush=True)
    return result


def throughput(names, *, rounds: int = 5, steps: int = 10) -> dict[str, int]:
    """Train-step tokens/s of each tiny model, timed round-robin (A, B, C, A, B, C, ...)
    in one process so that other load on the machine hits every model alike; the median
    over ``rounds`` rounds of ``steps`` steps on one fixed batch (compile excluded)."""
    import jax

    from jaxar.data import pipeline
    from jaxar.train import config as config_lib
    from jaxar.train import experiments, loop

    runs = {}
    for name in names:
        cfg_dict = experiments.load_config(str(ROOT / CONFIGS[name]))
        run = loop.build(config_lib.from_config_dict(cfg_dict))
        ds = pipeline.batched(run.train_source, run.cfg.batch_size, seed=0)
        batch = run.put_batch(ds[0])
        for _ in range(2):  # compile + one warm step
            run.state, m = run.train_step(run.state, batch)
        jax.block_until_ready(m)
        runs[name] = (run, batch, run.cfg.batch_size * run.cfg.data.seq_len)
    rates = {name: [] for name in names}
    for _ in range(rounds):
        for name, (run, batch, tokens) in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                run.state, m = run.train_step(run.state, batch)
            jax.block_until_ready(m)
            rates[name].append(steps * tokens / (time.perf_counter() - t0))
    return {name: round(statistics.median(r)) for name, r in rates.items()}


def table(results: list[dict]) -> str:
    rows = [
        "| model | params | train wall (s) | final train loss (nats/byte) | held-out bits/byte "
        "| tokens/s (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r['model']} | {r['params']:,} | {r['train_wall_s']} | "
            f"{r['final_train_loss_nats']} | {r['heldout_bits_per_byte']} | "
            f"{r['tokens_per_sec_median']:,} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="*", default=list(MODELS), choices=MODELS)
    p.add_argument("--root", default="/tmp/jaxar_lm_comparison", help="run directories")
    p.add_argument("--steps", type=int, default=None, help="override config.steps")
    p.add_argument("--seed", type=int, default=None, help="override config.seed")
    p.add_argument("--out", default=None, help="results JSON (default <root>/results.json)")
    p.add_argument(
        "--throughput",
        action="store_true",
        help="only time the train steps round-robin (no training runs)",
    )
    args = p.parse_args(argv)
    root = pathlib.Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    overrides = [] if args.steps is None else [f"--config.steps={args.steps}"]
    overrides += [] if args.seed is None else [f"--config.seed={args.seed}"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if args.throughput:
        rates = throughput(args.only)
        out = pathlib.Path(args.out) if args.out else root / "throughput.json"
        out.write_text(json.dumps(dict(commit=commit, tokens_per_sec=rates), indent=2) + "\n")
        print(json.dumps(rates))
        return 0
    results = [run_one(name, root, overrides) for name in args.only]
    out = pathlib.Path(args.out) if args.out else root / "results.json"
    out.write_text(json.dumps(dict(commit=commit, results=results), indent=2) + "\n")
    print(table(results))
    print(f"commit {commit}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
