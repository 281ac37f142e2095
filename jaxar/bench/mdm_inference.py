"""Masked-diffusion inference: generative perplexity and entropy against denoiser calls and
wall time, for every method x steps x cache setting (jaxar/MATHS.md s.11: MDLM, Sahoo et al.
arXiv:2406.07524; Fast-dLLM, Wu et al. arXiv:2505.22618; ReMDM, Wang et al. arXiv:2503.00307).

``jaxar bench mdm_inference [--quick]``: trains (or reuses) the ``mdm_inference``
experiment's tiny MDLM and its AR judge (``experiments/mdm_inference/config.py``; workdirs
under ``$JAXAR_BENCH_ROOT`` or ``/tmp/jaxar_bench``), then per setting samples ``num`` rows
of the experiment's length and reports, in ``extra``: ``gen_ppl`` (perplexity of the
samples under the judge, per byte after the first), ``entropy`` (mean unigram entropy of a
row, nats), ``calls`` (denoiser calls for the batch) and ``ms_per_sample``. The reference
row ``data`` is held-out text scored the same way. ``median_ms`` is the whole batch's
sampling wall time (one timed run after the compile run); ``ratio`` is first hitting's
time over the setting's (> 1: faster).

A low perplexity with a low entropy is the collapse that makes a sampler look good: read
the two together.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time

import absl.flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.bench import harness
from jaxar.data import pipeline
from jaxar.models.mdlm import unigram_entropy
from jaxar.sampling import masked_diffusion as md
from jaxar.train import loop
from jaxar.train.config import from_config_dict
from jaxar.train.experiments import load_config

__all__ = ["judge_nll", "run", "settings"]

BENCH = "mdm_inference"


def settings(length: int, quick: bool) -> list[dict]:
    """The (method, steps, cache) grid: name -> sampler options."""
    quarter, block = max(length // 4, 1), max(length // 8, 1)
    threshold_block = dict(method="threshold", threshold=0.9, block_length=block)
    rows = [  # the targets first: threshold vs first hitting, dual cache vs none
        dict(name="first_hitting", method="first_hitting"),
        dict(name="threshold 0.9", method="threshold", threshold=0.9),
        dict(name=f"threshold 0.9 block={block}", **threshold_block),
        dict(name=f"threshold 0.9 block={block} dual", cache="dual", **threshold_block),
        dict(name=f"threshold 0.9 block={block} prefix", cache="prefix", **threshold_block),
        dict(name=f"confidence steps={quarter}", method="confidence", num_steps=quarter),
        dict(name=f"first_hitting steps={quarter}", method="first_hitting", num_steps=quarter),
        dict(name="remdm cap 0.02", method="remdm", remask="cap", eta=0.02),
        dict(name="threshold 0.7", method="threshold", threshold=0.7),
        dict(name=f"ancestral steps={quarter}", method="ancestral", num_steps=quarter),
        dict(name="remdm loop 0.02", method="remdm", remask="loop", eta=0.02),
    ]
    if quick:
        keep = ("first_hitting", "threshold 0.9", f"threshold 0.9 block={block} dual")
        rows = [r for r in rows if r["name"] in keep]
    return rows


def judge_nll(judge, tokens_BxL) -> float:
    """Mean NLL (nats per byte) of ``tokens[:, 1:]`` under the causal ``judge``."""
    logits = judge(tokens_BxL)[:, :-1].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens_BxL[:, 1:, None], axis=-1)[..., 0]
    return float(jnp.mean(nll))


def _trained(variant: str, root: pathlib.Path):
    cfg = from_config_dict(load_config(f"mdm_inference:{variant}"))
    workdir = root / f"mdm_inference_{variant}"
    loop.train(cfg, workdir)
    return loop.load_run(workdir), cfg


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def _sample(graphdef, state, key, options):
    model = nnx.merge(graphdef, state)
    out = md.sample(key, model, mask_id=model.config.mask_id, **dict(options))
    return out.tokens, out.num_calls


def run(quick: bool) -> list[harness.Result]:
    if not absl.flags.FLAGS.is_parsed():
        absl.flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    size = "quick" if quick else "tiny"
    root = pathlib.Path(os.environ.get("JAXAR_BENCH_ROOT", "/tmp/jaxar_bench"))
    mdlm_run, cfg = _trained(f"{size}_mdlm", root)
    judge_run, _ = _trained(f"{size}_judge", root)
    mdlm, judge = mdlm_run.model(), judge_run.model()
    length, num = cfg.data.seq_len, 4 if quick else 8
    repeats = 1
    judge_fn = jax.jit(lambda tokens: judge(tokens))
    case = f"L={length} num={num} V=256 ({size} MDLM, AR judge)"

    ds = pipeline.batched(mdlm_run.eval_source, num, shuffle=False, num_epochs=1)
    data = np.asarray(next(iter(ds))["tokens"])[:num, :length]
    reference = harness.Result(
        BENCH,
        case,
        "data",
        "float32",
        float("nan"),  # nothing is sampled
        extra=dict(
            gen_ppl=float(np.exp(judge_nll(judge_fn, jnp.asarray(data)))),
            entropy=unigram_entropy(data),
            calls=0,
        ),
    )
    print(f"[{BENCH}] data: {reference.extra}", flush=True)
    rows = []
    graphdef, state = nnx.split(mdlm)
    for setting in settings(length, quick):
        opts = {k: v for k, v in setting.items() if k != "name"}
        options = tuple(sorted(dict(batch_size=num, length=length, **opts).items()))
        t = time.perf_counter()
        tokens, calls = jax.block_until_ready(_sample(graphdef, state, jax.random.key(0), options))
        first = time.perf_counter() - t
        times = []
        for i in range(repeats):
            t = time.perf_counter()
            tokens, calls = jax.block_until_ready(
                _sample(graphdef, state, jax.random.key(i + 1), options)
            )
            times.append(time.perf_counter() - t)
        tokens = np.asarray(tokens)
        wall = float(np.median(times))
        rows.append(
            harness.Result(
                BENCH,
                case,
                setting["name"],
                "float32",
                wall * 1e3,
                compile_s=max(first - wall, 0.0),
                extra=dict(
                    gen_ppl=float(np.exp(judge_nll(judge_fn, jnp.asarray(tokens)))),
                    entropy=unigram_entropy(tokens),
                    calls=int(calls),
                    ms_per_sample=wall * 1e3 / num,
                ),
            )
        )
        print(f"[{BENCH}] {setting['name']}: {rows[-1].extra}", flush=True)
    return [reference, *harness.with_ratios(rows, "first_hitting")]
