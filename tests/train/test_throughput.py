"""Honest throughput: the step timer, FLOPs per step and MFU (jaxar.train.throughput)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxar.models.lm import LM, LMConfig, lm_loss
from jaxar.train import throughput


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_step_timer_counts_only_timed_stretches():
    clock = FakeClock()
    timer = throughput.StepTimer(clock)
    clock.t = 5.0  # the first step compiled for 5 s: not timed
    assert timer.take(1) == (0, 0.0)
    timer.resume(1)
    clock.t = 7.0  # steps 2-3 in 2 s
    timer.pause(3)
    clock.t = 100.0  # evaluation
    timer.resume(3)
    clock.t = 101.0  # step 4 in 1 s
    assert timer.take(4) == (3, 3.0)
    clock.t = 101.5
    assert timer.take(5) == (1, 0.5)
    timer.pause(5)
    timer.pause(5)  # pausing twice is harmless
    assert (timer.total_steps, timer.total_seconds) == (4, 3.5)


def test_mfu_rejects_zero_time():
    assert throughput.mfu(2e9, 0.5, 8e9) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="seconds_per_step=0"):
        throughput.mfu(1.0, 0.0, 1.0)


def test_flops_estimate_agrees_with_cost_analysis():
    """6 N T + attention is within 25% of XLA's count for a loop-free LM step; a step with
    a scan is refused by cost_flops (XLA counts a loop body once)."""
    cfg = LMConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2)
    model = nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0)))  # abstract: cheap
    graphdef, params = nnx.split(model)
    tokens = jnp.zeros((2, 65), jnp.int32)

    def loss(p):
        return lm_loss(nnx.merge(graphdef, p), {"tokens": tokens})[0]

    lowered = jax.jit(jax.grad(loss)).lower(params)
    flops, source = throughput.step_flops(lowered, model, 2 * 64, 64)
    assert source == "cost_analysis"
    estimate = throughput.estimate_flops(model, 2 * 64, 64)
    assert 0.75 < estimate / flops < 1.25, (estimate, flops)

    def scanned(p):
        return jax.lax.scan(lambda c, _: (c + loss(p), None), 0.0, None, length=3)[0]

    assert throughput.cost_flops(jax.jit(jax.grad(scanned)).lower(params)) is None


def test_mfu_above_one_is_flagged_not_reported():
    assert throughput.mfu_fields(4e9, 0.5, 8e9) == {"mfu": pytest.approx(1.0)}
    assert throughput.mfu_fields(1e10, 0.5, 8e9) == {"mfu_implausible": pytest.approx(2.5)}
    assert throughput.mfu_fields(None, 0.5, 8e9) == {}


def test_loops_that_xla_cannot_count():
    """A scan or while over float work (or a Pallas kernel) is named; integer loops, a
    length-1 scan and PRNG draws (threefry: a while only after lowering) are not."""
    x = jnp.ones((4, 4))

    def why(f, *args):
        return throughput.uncounted_work(jax.jit(f).trace(*args).jaxpr)

    def body(c, _):
        return c @ c, None

    assert why(lambda a: jax.lax.scan(body, a, None, length=3)[0], x).startswith("a scan of")
    assert why(lambda a: jax.lax.scan(body, a, None, length=1)[0], x) is None

    def power(a):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ c[1]), (0, a))

    assert why(lambda a: power(a)[1], x).startswith("a while loop")
    count = jnp.int32(5)
    assert why(lambda n: jax.lax.while_loop(lambda i: i < n, lambda i: i + 1, 0), count) is None

    def draw(k, a):
        return jax.random.normal(k, a.shape) @ a

    key = jax.random.key(0)
    traced = jax.jit(draw).trace(key, x)
    assert "stablehlo.while" in traced.lower().as_text()  # threefry rounds
    assert throughput.uncounted_work(traced.jaxpr) is None
    flops = throughput.cost_flops(traced.lower(), jaxpr=traced.jaxpr)
    assert flops is not None and flops >= 2 * 4**3
    assert throughput.cost_flops(traced.lower()) is None  # text only: refused


def test_vq_ema_step_uses_xla_count():
    """The vq_ema tokenizer's train step draws restarts (threefry loops after lowering):
    its FLOPs are XLA's count, not 6 N T (which does not describe convolutions)."""
    from jaxar.data import pipeline
    from jaxar.train import config as config_lib
    from jaxar.train import loop

    model = dict(family="vq", preset="tiny", width=8, quantizer="vq_ema", codebook_size=16)
    cfg = config_lib.from_config_dict(
        dict(model=model, data=dict(name="digits"), batch_size=8, num_samples=0)
    )
    run = loop.build(cfg)
    batch = run.put_batch(next(iter(pipeline.batched(run.train_source, 8, seed=0))))
    traced = run.train_step.trace(run.state, batch)
    lowered = traced.lower()
    tokens = 8 * run.tokens_per_row()
    flops, source = throughput.step_flops(
        lowered, run.model(), tokens, run.tokens_per_row(), jaxpr=traced.jaxpr
    )
    assert source == "cost_analysis" and flops == lowered.cost_analysis()["flops"]
    with pytest.raises(ValueError, match="has convolutions"):
        throughput.estimate_flops(run.model(), tokens, run.tokens_per_row())
    flops, reason = throughput.step_flops(None, run.model(), tokens, run.tokens_per_row())
    assert flops is None and "convolutions" in reason
