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
