"""Per-token decode latency at long context: KV-cache attention vs O(1)-state recurrences.

``jaxar bench decode [--quick]``. For every LM preset kind (``jaxar.models.lm.PRESET_KINDS``:
the transformer with its KV cache, GateLoop, GSS, GSS-Hybrid and any kind added later) at
size ``small``, batch B in {1, 8} and context in {1k, 8k, 32k} (``--quick``: batch 1):
the decode state is filled directly as if ``context`` tokens had been
decoded (caches hold random keys and values with ``index = context``; recurrent states are
random; prefill is not timed), then one jitted call runs ``STEPS`` greedy one-token
``LM.decode`` steps in a ``lax.scan`` (the state donated and threaded from call to call,
so the cache is never copied). A model's contexts are timed round-robin, ``REPEATS``
calls each. ``best_ms`` is the fastest call divided by ``STEPS`` (the latency of one
token for the whole batch, least disturbed by other load), ``median_ms`` the median;
``tokens/s`` = B / best. A cache is allocated for ``context + (REPEATS + 1) x STEPS``
slots, and attention decode reads every slot, so the cache's length is what a row pays
for.

Rows carry ``ratio`` (the transformer's median / this median at the same batch and
context; > 1 = faster) and ``vs_1k`` (this best / its own best at 1k; 1.0 = flat).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.bench import harness
from jaxar.models.lm import LM, PRESET_KINDS, LMConfig

STEPS = 64  # decode steps per jitted call (one lax.scan): dispatch is amortised
REPEATS = 7  # timed calls per context; the best is the figure, the median is kept too
GROWING = (4, 3)  # (steps, repeats) for a state that grows with the context (KV cache)
CONTEXTS = (1024, 8192, 32768)


def fill_state(state, context: int, key):
    """A decode state as if ``context`` tokens had been decoded: integer leaves (cache
    indices) = context, float and complex leaves random (scale 0.1)."""
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    out = []
    for leaf, k in zip(leaves, keys, strict=True):
        if jnp.issubdtype(leaf.dtype, jnp.integer):
            out.append(jnp.full(leaf.shape, context, leaf.dtype))
        elif jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            re, im = jax.random.normal(k, (2,) + leaf.shape)
            out.append((0.1 * (re + 1j * im)).astype(leaf.dtype))
        else:
            out.append((0.1 * jax.random.normal(k, leaf.shape)).astype(leaf.dtype))
    return jax.tree.unflatten(treedef, out)


def decode_steps(graphdef, steps: int):
    """``f(params, state, tokens_B) -> (state, tokens_B)``: ``steps`` greedy decode steps."""

    def f(params, state, tok):
        model = nnx.merge(graphdef, params)

        def body(carry, _):
            state, tok = carry
            logits, state = model.decode(tok[:, None], state)
            return (state, jnp.argmax(logits[:, -1], axis=-1).astype(tok.dtype)), None

        (state, tok), _ = jax.lax.scan(body, (state, tok), None, length=steps)
        return state, tok

    return jax.jit(f, donate_argnums=(1,))


def _model(config: LMConfig):
    """``(graphdef, params)`` of a fresh ``LM(config)``."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: LM(config, rngs=nnx.Rngs(0))))
    params = jax.jit(lambda: nnx.split(LM(config, rngs=nnx.Rngs(0)))[1])()
    return graphdef, params


def _filled(graphdef, params, batch: int, context: int, slots: int):
    """A decode state filled to ``context`` with ``slots`` free slots after it."""
    init = lambda: nnx.merge(graphdef, params).init_state(batch, context + slots)
    return jax.jit(lambda: fill_state(init(), context, jax.random.key(1)))()


def latencies(config: LMConfig, batch: int, contexts, *, steps: int = STEPS,
              repeats: int = REPEATS) -> dict[int, tuple[list[float], float]]:  # fmt: skip
    """``{context: (seconds per decode step of each round, compile seconds)}``.

    The contexts are timed round-robin, ``repeats`` rounds of one ``steps``-step call each,
    so that load on the machine falls on all of them alike (contexts whose states have the
    same shapes, as every recurrent LM's, share one compiled program).
    """
    slots = (repeats + 1) * steps
    graphdef, params = _model(config)
    f = decode_steps(graphdef, steps)
    runs = {}
    for ctx in contexts:
        state = _filled(graphdef, params, batch, ctx, slots)
        tok = jnp.zeros((batch,), jnp.int32)
        t0 = time.perf_counter()
        state, tok = jax.block_until_ready(f(params, state, tok))
        runs[ctx] = dict(f=f, params=params, state=state, tok=tok,
                         first=time.perf_counter() - t0, times=[])  # fmt: skip
    for _ in range(repeats):
        for r in runs.values():
            t0 = time.perf_counter()
            r["state"], r["tok"] = jax.block_until_ready(r["f"](r["params"], r["state"], r["tok"]))
            r["times"].append((time.perf_counter() - t0) / steps)
    out = {}
    for ctx, r in runs.items():
        best = min(r["times"])
        out[ctx] = (r["times"], max(r["first"] - best * steps, 0.0))
    return out


def latency(config: LMConfig, batch: int, context: int, *, steps: int = STEPS,
            repeats: int = REPEATS) -> tuple[float, float]:  # fmt: skip
    """``(best seconds per decode step, compile seconds)`` after a filled ``context``."""
    times, compile_s = latencies(config, batch, (context,), steps=steps, repeats=repeats)[context]
    return min(times), compile_s


def state_grows(config: LMConfig) -> bool:
    """Whether the decode state's shapes depend on the context length (a KV cache)."""
    model = nnx.eval_shape(lambda: LM(config, rngs=nnx.Rngs(0)))
    shapes = lambda n: jax.tree.map(jnp.shape, jax.eval_shape(lambda: model.init_state(1, n)))
    return shapes(16) != shapes(32)


def measure(kinds, batches, contexts, *, size: str = "small", steps: int = STEPS,
            repeats: int = REPEATS) -> list[harness.Result]:  # fmt: skip
    """Rows per batch x kind x context. A model whose state grows with the context (a KV
    cache: 10 ms to seconds per step here) is timed with ``GROWING`` (steps, repeats)
    instead, where dispatch is negligible and the long contexts would take minutes."""
    rows = []
    for b in batches:
        for kind in kinds:
            cfg = LMConfig.preset(f"{kind}-{size}")
            n, reps = GROWING if state_grows(cfg) else (steps, repeats)
            per_ctx = latencies(cfg, b, contexts, steps=n, repeats=reps)
            for ctx in contexts:
                times, compile_s = per_ctx[ctx]
                rows.append(
                    harness.Result(
                        "decode",
                        f"{size} B={b} context={ctx}",
                        kind,
                        "float32",
                        statistics.median(times) * 1e3,
                        compile_s,
                        extra={
                            "best_ms": round(min(times) * 1e3, 4),
                            "tokens/s": round(b / min(times), 1),
                        },
                    )  # fmt: skip
                )
    harness.with_ratios(rows, "transformer")
    key = lambda r: (r.impl, r.case.split(" context")[0])
    first = {key(r): r.extra["best_ms"] for r in rows
             if r.case.endswith(f"context={min(contexts)}")}  # fmt: skip
    for r in rows:
        r.extra["vs_1k" if min(contexts) == 1024 else "vs_first"] = round(
            r.extra["best_ms"] / first[key(r)], 3
        )
    return rows


def run(quick: bool) -> list[harness.Result]:
    if quick:
        return measure(PRESET_KINDS, (1,), CONTEXTS)
    return measure(PRESET_KINDS, (1, 8), CONTEXTS)
