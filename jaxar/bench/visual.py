"""Discrete visual tokens: VAR vs raster token-AR sampling, tokenizer throughput and
codebook usage (jaxar/MATHS.md s.10).

``jaxar bench visual [--quick]`` (or ``python -m jaxar.bench.visual --size base`` for the
sampling rows of one size):

* ``sampling``: one image (B=1, and B=8 without ``--quick``) of a 16x16 code grid from the
  same transformer for both, on KV caches, no guidance: raster token-AR (256 transformer
  calls, one position each) vs VAR's next-scale sampling (scales 1, 2, 3, 4, 5, 6, 8, 10,
  13, 16: 10 calls over 680 positions), at two backbone sizes (``SIZES``): ``tiny`` (D=128,
  4 layers, 4 heads, 1024 codes) and ``base`` (D=768, 12 layers, 12 heads, 4096 codes:
  the LlamaGen-B / VAR-d12 width and depth; untrained weights, which do not change the
  time of a fixed-length sampler). At ``tiny`` a token-AR step is compute-trivial and
  VAR's 680 positions (2.6x token-AR's 257) dominate; at ``base`` a token-AR step reads
  every weight to process one position, while VAR reads them once per scale. The two
  run in alternating rounds (best of 3 with ``--quick``, else 5): ``ratio`` = token-AR
  best / VAR best, ``extra`` has the per-round ``paired_ratio`` (median),
  ``calls_ratio`` and the 1-minute load average. Targets (issue): >= 5x fewer calls and
  >= 3x faster.
* ``tokenizer``: encode (images -> codes) and decode (codes -> images) of the ``photos``
  VQ preset (32x32x3 -> 8x8 codes) on a batch of 64, in images per second.
* ``usage``: a tiny tokenizer (``vq_tokenizer:tiny_<q>`` shapes, 64 codes) trained here
  with Adam for a few hundred steps on the embedded digits through the trainer's pure
  step (``--quick``: vq only, 150 steps; else vq, vq_ema, fsq and lfq, 400 steps);
  held-out codebook usage (target >= 90%), perplexity and MSE.

References:
  Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
    Next-Scale Prediction", arXiv:2404.02905.
  Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable Image
    Generation", arXiv:2406.06525.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxar.bench import harness
from jaxar.data import corpora
from jaxar.models import token_ar, var, vq
from jaxar.ops import quantize as qops
from jaxar.sampling import token_ar as tas
from jaxar.sampling import var as vs
from jaxar.train import step as step_lib

SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
# size -> (backbone fields shared by token-AR and VAR, code count)
SIZES = {
    "tiny": (dict(d_model=128, num_layers=4, num_heads=4), 1024),
    "base": (dict(d_model=768, num_layers=12, num_heads=12), 4096),
}


def _block(x):
    return jax.tree.map(lambda a: a.block_until_ready(), x)


def _sampling(batch: int, repeats: int, size: str = "tiny") -> list[harness.Result]:
    """Token-AR and VAR at backbone ``size`` timed in alternating rounds (so load changes
    hit both alike): ``median_ms`` per model, ``best_ms`` (best of ``repeats``) in
    ``extra``; ``ratio`` = token-AR best / VAR best, ``paired_ratio`` the median of the
    per-round ratios."""
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not supported; accepted: {tuple(SIZES)}")
    fields, codes = SIZES[size]
    labels = jnp.zeros((batch,), jnp.int32)
    options = (False, "constant", 1.0, None, None)
    scale = jnp.ones((), jnp.float32)
    tar = token_ar.TokenAR(
        token_ar.TokenARConfig(num_codes=codes, grid=16, num_classes=10, **fields),
        rngs=nnx.Rngs(0),
    )
    vm = var.VAR(
        var.VARConfig(num_codes=codes, latent_dim=8, scales=SCALES, num_classes=10, **fields),
        rngs=nnx.Rngs(0),
    )
    n_params = {
        name: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
        for name, m in (("token_ar", tar), ("var", vm))
    }
    cases = {
        "token_ar": (tar, tas._codes, 256, 257),
        "var": (vm, vs._codes, len(SCALES), sum(s * s for s in SCALES)),
    }
    runs, compile_s = {}, {}
    key = jax.random.key(0)
    for name, (model, fn, _, _) in cases.items():
        graphdef, state = nnx.split(model)
        runs[name] = functools.partial(fn, graphdef, state, key, labels, scale, options, True)
        t0 = time.perf_counter()
        _block(runs[name]())
        compile_s[name] = time.perf_counter() - t0
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, f in runs.items():
            t0 = time.perf_counter()
            _block(f())
            times[name].append(time.perf_counter() - t0)
    best = {name: min(t) for name, t in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["token_ar"], times["var"], strict=True))
    load = os.getloadavg()[0]
    rows = []
    for name, (_, _, calls, positions) in cases.items():
        med = statistics.median(times[name])
        rows.append(
            harness.Result(
                bench="visual",
                case=(
                    f"sample 16x16 codes B={batch} {size}: D={fields['d_model']} "
                    f"{fields['num_layers']} layers K={codes}"
                ),
                impl=name,
                dtype="float32",
                median_ms=med * 1e3,
                compile_s=max(compile_s[name] - med, 0.0),
                baseline="token_ar",
                ratio=best["token_ar"] / best[name],
                extra={"size": size, "params_M": round(n_params[name] / 1e6, 1),
                       "backbone_calls": calls, "positions": positions,
                       "best_ms": round(best[name] * 1e3, 2), "repeats": repeats,
                       "ms_per_image": round(best[name] * 1e3 / batch, 2),
                       "paired_ratio": round(paired if name == "var" else 1.0, 2),
                       "calls_ratio": round(256 / calls, 2), "loadavg_1m": round(load, 2)},
            )
        )  # fmt: skip
    return rows


def _tokenizer(repeats: int) -> list[harness.Result]:
    model = vq.VQ(vq.VQConfig.preset("photos", image_size=32, channels=3), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    images = jnp.asarray(corpora.photos("test")["image"][:64])

    @jax.jit
    def encode(state, images):
        return nnx.merge(graphdef, state).encode_ids(images)

    @jax.jit
    def decode(state, ids):
        return nnx.merge(graphdef, state).decode_ids(ids)

    ids = encode(state, images)
    rows = []
    for name, fn, arg in (("encode", encode, images), ("decode", decode, ids)):
        t = harness.timeit(fn, state, arg, repeats=repeats)
        rows.append(
            harness.Result(
                bench="visual",
                case="tokenizer photos 32x32x3 -> 8x8 codes, B=64",
                impl=name,
                dtype="float32",
                median_ms=t.median_s * 1e3,
                compile_s=t.compile_s,
                extra={"images_per_s": 64 / t.median_s},
            )
        )
    return rows


_AT_64 = {
    "vq": dict(quantizer="vq", latent_dim=4, codebook_size=64),
    "vq_ema": dict(quantizer="vq_ema", latent_dim=4, codebook_size=64),
    "fsq": dict(quantizer="fsq", latent_dim=3, levels=(4, 4, 4)),
    "lfq": dict(quantizer="lfq", latent_dim=6),
}


def train_tiny_tokenizer(quantizer: str, steps: int, *, batch: int = 32, seed: int = 0):
    """A tiny digits tokenizer (64 codes) trained with Adam 2e-3 by the trainer's pure step
    (vq_ema's codebook updated as model state); returns the model."""
    model = vq.VQ(vq.VQConfig.preset("tiny", **_AT_64[quantizer]), rngs=nnx.Rngs(seed))
    graphdef, params, model_state, rest = step_lib.split_model(model)
    tx = optax.adam(2e-3)
    state = step_lib.init_state(params, tx, seed=seed, ema=False, model_state=model_state)
    step = jax.jit(step_lib.make_train_step(graphdef, rest, vq.loss, tx), donate_argnums=(0,))
    train = corpora.digits("train")["image"]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        state, _ = step(state, {"image": train[rng.integers(0, len(train), batch)]})
    if "model_state" in state:
        return nnx.merge(graphdef, state["params"], state["model_state"], rest)
    return nnx.merge(graphdef, state["params"], rest)


def _usage(quick: bool) -> list[harness.Result]:
    rows = []
    test = jnp.asarray(corpora.digits("test")["image"])
    steps = 150 if quick else 400
    for q in ("vq",) if quick else ("vq", "vq_ema", "fsq", "lfq"):
        t0 = time.perf_counter()
        model = train_tiny_tokenizer(q, steps)
        wall = time.perf_counter() - t0
        _, metrics = vq.loss(model, {"image": test})
        usage, ppl = qops.codebook_usage(model.encode_ids(test), 64)
        rows.append(
            harness.Result(
                bench="visual",
                case=f"tiny tokenizer, 64 codes, {steps} steps on digits; held-out 297",
                impl=q,
                dtype="float32",
                median_ms=wall * 1e3,
                extra={"usage": round(float(usage), 4), "perplexity": round(float(ppl), 2),
                       "mse": round(float(metrics["mse"]), 4), "train_s": round(wall, 1)},
            )
        )  # fmt: skip
    return rows


def run(quick: bool) -> list[harness.Result]:
    rows = []
    for size in SIZES:
        rows += _sampling(1, 3 if quick else 5, size)
        if not quick:
            rows += _sampling(8, 3, size)
    rows += _tokenizer(3)
    rows += _usage(quick)
    return rows


def main(argv=None) -> None:
    """``python -m jaxar.bench.visual [--size tiny|base] [--batch B] [--repeats N]``: the
    sampling rows of one size, as a table."""
    p = argparse.ArgumentParser(prog="python -m jaxar.bench.visual")
    p.add_argument("--size", choices=tuple(SIZES), default="base")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    for r in _sampling(args.batch, args.repeats, args.size):
        e = r.extra
        print(f"{r.case} | {r.impl}: best {e['best_ms']} ms, median {r.median_ms:.1f} ms, "
              f"compile {r.compile_s:.1f} s, {e['params_M']}M params, calls "
              f"{e['backbone_calls']}, ratio vs token_ar {r.ratio:.2f} (paired "
              f"{e['paired_ratio']}), load {e['loadavg_1m']}")  # fmt: skip


if __name__ == "__main__":
    main()
