"""Per-token decode latency at long context: KV-cache attention vs O(1)-state recurrences.

``jaxar bench decode [--quick]``. For every LM preset kind (``jaxar.models.lm.PRESET_KINDS``:
the transformer with its KV cache, GateLoop, GSS, GSS-Hybrid and any kind added later) at
size ``small``, batch B in {1, 8} and context in {1k, 8k, 32k} (``--quick``: batch 1,
contexts 1k and 8k): the decode state is filled directly as if ``context`` tokens had been
decoded (caches hold random keys and values with ``index = context``; recurrent states are
random; prefill is not timed), then one jitted call runs ``STEPS`` greedy one-token
``LM.decode`` steps in a ``lax.scan`` (the state donated and threaded from call to call,
so the cache is never copied). ``median_ms`` is the median time of a call divided by
``STEPS``: the latency of one token for the whole batch; ``tokens/s`` = B / latency.
A cache is allocated for ``context + (repeats + 1) x STEPS`` slots, and attention decode
reads every slot, so the cache's length is what a row pays for.

Rows carry ``vs_transformer`` (the transformer's latency / this latency at the same batch
and context; > 1 = faster) and ``vs_1k`` (this latency / its own at 1k; 1.0 = flat).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.bench import harness
from jaxar.models.lm import LM, PRESET_KINDS, LMConfig

STEPS = 8
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


def latency(config: LMConfig, batch: int, context: int, *, steps: int = STEPS,
            repeats: int = 3) -> tuple[float, float]:  # fmt: skip
    """``(seconds per decode step, compile seconds)`` after a filled ``context``."""
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: LM(config, rngs=nnx.Rngs(0))))
    params = jax.jit(lambda: nnx.split(LM(config, rngs=nnx.Rngs(0)))[1])()
    state = jax.jit(
        lambda: fill_state(
            nnx.merge(graphdef, params).init_state(batch, context + (repeats + 1) * steps),
            context,
            jax.random.key(1),
        )
    )()
    tok = jnp.zeros((batch,), jnp.int32)
    f = decode_steps(graphdef, steps)
    t0 = time.perf_counter()
    state, tok = jax.block_until_ready(f(params, state, tok))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, tok = jax.block_until_ready(f(params, state, tok))
        times.append((time.perf_counter() - t0) / steps)
    med = sorted(times)[len(times) // 2]
    return med, max(first - med * steps, 0.0)


def measure(kinds, batches, contexts, *, size: str = "small", steps: int = STEPS,
            repeats: int = 3) -> list[harness.Result]:  # fmt: skip
    rows = []
    for b in batches:
        for ctx in contexts:
            for kind in kinds:
                cfg = LMConfig.preset(f"{kind}-{size}")
                sec, compile_s = latency(cfg, b, ctx, steps=steps, repeats=repeats)
                rows.append(
                    harness.Result(
                        "decode",
                        f"{size} B={b} context={ctx}",
                        kind,
                        "float32",
                        sec * 1e3,
                        compile_s,
                        extra={"tokens/s": round(b / sec, 1)},
                    )  # fmt: skip
                )
    harness.with_ratios(rows, "transformer")
    first = {(r.impl, r.case.split(" context")[0]): r.median_ms for r in rows
             if r.case.endswith(f"context={min(contexts)}")}  # fmt: skip
    for r in rows:
        r.extra["vs_1k" if min(contexts) == 1024 else "vs_first"] = round(
            r.median_ms / first[(r.impl, r.case.split(" context")[0])], 3
        )
    return rows


def run(quick: bool) -> list[harness.Result]:
    if quick:
        return measure(PRESET_KINDS, (1,), CONTEXTS[:2])
    return measure(PRESET_KINDS, (1, 8), CONTEXTS)
