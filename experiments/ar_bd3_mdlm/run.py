"""Trains AR, MDLM and BD3 (L' = 4, 16) at one backbone size and token budget, one after
another, then measures each side by side: held-out bits/byte (NLL for AR, NELBO bound for
the diffusion models), training tokens/s, and the cost of sampling a fixed length
(network calls and wall time).

    python experiments/ar_bd3_mdlm/run.py                   # tiny, workdirs under /tmp
    python experiments/ar_bd3_mdlm/run.py --out experiments/ar_bd3_mdlm/results.json

Trained workdirs are reused (``jaxar train`` resumes / does nothing when done), so a rerun
only re-measures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import time

HERE = pathlib.Path(__file__).resolve().parent
MODELS = ("ar", "bd3_l4", "bd3_l16", "mdlm")


def _block(x):
    import jax

    return jax.block_until_ready(x)


def _sampler(family: str, model, num: int, length: int):
    """``key -> (tokens, network calls)`` for a fixed ``length`` per row."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxar.sampling import block_diffusion, masked_diffusion, sample_lm

    if family == "lm":

        def run(key):  # 1 prefill call (gives token 2) + length - 2 one-token decode calls
            return sample_lm(model, key, num, length=length), jnp.int32(length - 1)

        return run
    graphdef, state = nnx.split(model)
    cfg = model.config
    if family == "mdlm":

        @jax.jit
        def mdlm_run(state, key):  # first-hitting: one full-row call per revealed token
            out = masked_diffusion.sample(
                key,
                nnx.merge(graphdef, state),
                batch_size=num,
                length=length,
                mask_id=cfg.mask_id,
                method="first_hitting",
            )
            return out.tokens, out.num_calls

        return lambda key: mdlm_run(state, key)

    @jax.jit
    def bd3_run(state, key):  # first-hitting inside each block + one cache-commit per block
        out = block_diffusion.sample_blocks(
            key,
            nnx.merge(graphdef, state),
            batch_size=num,
            max_len=length,
            block_size=cfg.block_size,
            mask_id=cfg.mask_id,
            vocab_size=cfg.data_vocab_size,
        )
        return out.tokens, out.num_calls + out.num_blocks

    return lambda key: bd3_run(state, key)


def measure(name: str, size: str, root: pathlib.Path, args) -> dict:
    import jax
    import numpy as np

    from jaxar.models.mdlm import unigram_entropy
    from jaxar.train import loop
    from jaxar.train.config import from_config_dict
    from jaxar.train.experiments import load_config

    variant = f"{size}_{name}"
    cfg = from_config_dict(load_config(f"ar_bd3_mdlm:{variant}"))
    workdir = root / variant
    t0 = time.time()
    summary = loop.train(cfg, workdir)
    trained_now = summary["start_step"] < cfg.steps
    train_wall = time.time() - t0 if trained_now else None
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    final_loss = next(r["loss"] for r in reversed(rows) if "loss" in r and "event" not in r)

    run = loop.load_run(workdir)
    ev = loop.evaluate(run, num_batches=args.eval_batches)
    head = next(k for k in run.task.eval_keys if k in ev)

    # training throughput: jitted steps on one batch, after two compile/warm-up steps
    from jaxar.data import pipeline

    ds = pipeline.batched(run.train_source, cfg.batch_size, seed=1, host=pipeline.HostShard(0, 1))
    batch = run.put_batch(ds[0])
    state = jax.tree.map(lambda x: x.copy(), run.state)
    for _ in range(2):
        state, m = run.train_step(state, batch)
    _block(m)
    t = time.perf_counter()
    for _ in range(args.time_steps):
        state, m = run.train_step(state, batch)
    _block(m)
    step_s = (time.perf_counter() - t) / args.time_steps
    tokens_per_s = cfg.batch_size * cfg.data.seq_len / step_s

    # sampling: compile once, then the median of timed runs of a fixed length
    sampler = _sampler(cfg.model.family, run.model(), args.sample_num, args.sample_len)
    t = time.perf_counter()
    tokens, calls = _block(sampler(jax.random.key(0)))
    first_s = time.perf_counter() - t
    times = []
    for i in range(args.sample_repeats):
        t = time.perf_counter()
        tokens, calls = _block(sampler(jax.random.key(i + 1)))
        times.append(time.perf_counter() - t)
    tokens = np.asarray(tokens)
    text = bytes(int(x) for x in tokens[0] if 0 <= int(x) < 256).decode("utf-8", "replace")
    return {
        "model": name,
        "family": cfg.model.family,
        "params": int(sum(x.size for x in jax.tree.leaves(run.state["params"]))),
        "steps": cfg.steps,
        "train_bytes": cfg.steps * cfg.batch_size * cfg.data.seq_len,
        "train_wall_s": train_wall,
        "final_train_loss_nats": final_loss,
        "heldout_metric": "NLL" if cfg.model.family == "lm" else "NELBO bound",
        "heldout_bits_per_byte": ev[head],
        "eval_batches": args.eval_batches,
        "train_step_ms": 1e3 * step_s,
        "train_tokens_per_s": tokens_per_s,
        "sample_num": args.sample_num,
        "sample_len": args.sample_len,
        "sample_network_calls": int(calls),
        "sample_wall_s": float(np.median(times)),
        "sample_first_call_s_incl_compile": first_s,
        "sample_unigram_entropy_nats": unigram_entropy(tokens),
        "sample_excerpt": text[:120],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="tiny", choices=("tiny", "full"))
    p.add_argument("--root", default="/tmp/ar_bd3_mdlm", help="parent of the workdirs")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--eval-batches", type=int, default=64)
    p.add_argument("--time-steps", type=int, default=10)
    p.add_argument("--sample-num", type=int, default=4)
    p.add_argument("--sample-len", type=int, default=128)
    p.add_argument("--sample-repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    import absl.flags

    if not absl.flags.FLAGS.is_parsed():
        absl.flags.FLAGS.mark_as_parsed()
    import jax

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    results = []
    for name in args.models.split(","):
        r = measure(name, args.size, pathlib.Path(args.root), args)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(
        "\n| model | held-out bits/byte | train tokens/s | sample calls | sample wall (s) "
        "| unigram entropy |\n|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['model']} | {r['heldout_bits_per_byte']:.3f} ({r['heldout_metric']}) "
            f"| {r['train_tokens_per_s']:,.0f} | {r['sample_network_calls']} "
            f"| {r['sample_wall_s']:.2f} | {r['sample_unigram_entropy_nats']:.2f} |"
        )
    if args.out:
        meta = {"commit": commit, "jax": jax.__version__, "device": str(jax.devices()[0])}
        pathlib.Path(args.out).write_text(json.dumps({**meta, "results": results}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
