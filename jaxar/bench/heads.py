"""Per-token diffusion heads and MAR generation orders (jaxar/MATHS.md s.7).

``jaxar bench heads [--quick]``. Two groups of rows, each with in-run ratios
(baseline median / row median; > 1: the row is faster):

* ``head`` cases: drawing M tokens from a :class:`DiffusionHead` of each size by DDPM with
  25 / 50 / 100 steps (and DDIM, flow Euler / Heun at the smallest step count), baseline
  ``ddpm-25`` of the same head; ``extra`` gives tokens/s and the head's parameter count.
  The sampler cost is linear in steps (expect ratios ~25/S; Heun costs two calls a step).
* ``mar`` cases: a whole MAR generation (small backbone, diffusion head with 25 DDPM
  steps) in masked random order with ``num_iter`` 16 / 64 / 256, baseline
  ``masked-16``, and causal raster order with a KV cache (one step per token). Each masked
  step runs the backbone over all L tokens and the head on the tokens revealed at that
  step, so the backbone's share grows with ``num_iter``.

``--quick``: heads tiny/small with M=64 and 25/50 steps; MAR with L=64, num_iter 16/64.
Full: heads tiny/small/mar_b/mar_l/mar_h with M=256; MAR with L=256 (slow on a CPU).

References:
  Li et al. 2024, "Autoregressive Image Generation without Vector Quantization",
    arXiv:2406.11838.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.bench import harness
from jaxar.nn.diffusion_head import DiffusionHead, DiffusionHeadConfig
from jaxar.sampling import diffusion_head as dh

_TOKEN_DIM = 16  # a KL-16 latent token, as in MAR
_COND_DIM = 256


def _head_rows(preset: str, num_tokens: int, steps_list, repeats: int):
    cfg = DiffusionHeadConfig.preset(preset, token_dim=_TOKEN_DIM, cond_dim=_COND_DIM)
    head = DiffusionHead(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(head)
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(head, nnx.Param)))
    cond = jax.random.normal(jax.random.key(1), (num_tokens, _COND_DIM))
    key = jax.random.key(2)

    def make(method, steps):
        flow = method in dh.FLOW_METHODS

        @jax.jit
        def run(state, key, cond):
            h = nnx.merge(graphdef, state)
            kw = dict(shape=(num_tokens, _TOKEN_DIM), num_steps=steps, method=method)
            if flow:
                return dh.flow_sample(key, lambda x, s, c: h(x, s * 1000.0, c), cond, **kw)
            return dh.sample(key, h, cond, **kw)

        return run

    plan = [("ddpm", s) for s in steps_list]
    plan += [("ddim", steps_list[0]), ("euler", steps_list[0]), ("heun", steps_list[0])]
    rows = []
    for method, steps in plan:
        t = harness.timeit(make(method, steps), state, key, cond, repeats=repeats)
        rows.append(
            harness.Result(
                bench="heads",
                case=f"head={preset} W={cfg.width} depth={cfg.depth} M={num_tokens}",
                impl=f"{method}-{steps}",
                dtype="float32",
                median_ms=t.median_s * 1e3,
                compile_s=t.compile_s,
                extra={"tokens_per_s": num_tokens / t.median_s, "params": num_params},
            )
        )
    return harness.with_ratios(rows, baseline=f"ddpm-{steps_list[0]}")


def _mar_rows(image_size: int, iters, repeats: int, batch: int = 2):
    from jaxar.models import mar
    from jaxar.sampling import mar as mar_sampling

    rows = []
    case = None
    for order, num_iter in [("masked", n) for n in iters] + [("causal", None)]:
        cfg = mar.MARConfig(
            image_size=image_size,
            channels=3,
            patch_size=2,
            order=order,
            d_model=128,
            num_layers=4,
            num_heads=4,
            head_width=128,
            head_depth=2,
        )
        model = mar.MAR(cfg, rngs=nnx.Rngs(0))
        kw = dict(num_steps=25, num_iter=num_iter or 1, labels=jnp.zeros(batch, jnp.int32))
        fn = lambda key, model=model, kw=kw: mar_sampling.sample_tokens(model, key, batch, **kw)
        t = harness.timeit(fn, jax.random.key(0), repeats=repeats)
        case = f"B={batch} L={cfg.seq_len} N={cfg.token_dim} D=128x4 head=128x2 ddpm-25"
        rows.append(
            harness.Result(
                bench="heads",
                case=case,
                impl=f"masked-{num_iter}" if order == "masked" else "causal-kvcache",
                dtype="float32",
                median_ms=t.median_s * 1e3,
                compile_s=t.compile_s,
                extra={"backbone_calls": num_iter if order == "masked" else cfg.seq_len + 1},
            )
        )
    return harness.with_ratios(rows, baseline=f"masked-{iters[0]}")


def run(quick: bool) -> list[harness.Result]:
    if quick:
        heads, tokens, steps = ("tiny", "small"), 64, (25, 50)
    else:
        heads, tokens, steps = ("tiny", "small", "mar_b", "mar_l", "mar_h"), 256, (25, 50, 100)
    results = []
    for preset in heads:
        results += _head_rows(preset, tokens, steps, repeats=3)
    try:
        import jaxar.models.lm  # noqa: F401
    except ImportError:  # the backbone is another issue's; the head rows still run
        return results
    if quick:
        results += _mar_rows(16, (16, 64), repeats=2)
    else:
        results += _mar_rows(32, (16, 64, 256), repeats=2)
    return results
