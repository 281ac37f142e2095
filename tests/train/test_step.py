"""The pure step: gradient accumulation, EMA, schedule, non-finite skip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxar.train import optim
from jaxar.train import step as step_lib
from tests.train import toy


class Linear(nnx.Module):
    def __init__(self):
        self.w = nnx.Param(jnp.arange(6.0).reshape(3, 2) / 10)


def _loss(model, batch, key):
    del key
    err = batch["x"] @ model.w[...] - batch["y"]
    loss = jnp.mean(err**2)
    return loss, {"mse": loss}


def _setup(**kw):
    graphdef, params, rest = nnx.split(Linear(), nnx.Param, ...)
    tx = optax.sgd(0.1)
    fn = jax.jit(step_lib.make_train_step(graphdef, rest, _loss, tx, **kw))
    state = step_lib.init_state(params, tx, seed=0, ema=kw.get("ema_decay", 0) > 0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
    batch = {"x": x, "y": jnp.sin(x[:, :2])}
    return fn, state, batch


def test_grad_accumulation_matches_full_batch(tol):
    fn1, s1, batch = _setup()
    fn4, s4, _ = _setup(grad_accum=4)
    for _ in range(3):
        s1, m1 = fn1(s1, batch)
        s4, m4 = fn4(s4, batch)
    np.testing.assert_allclose(s4["params"]["w"][...], s1["params"]["w"][...], **tol(np.float32))
    np.testing.assert_allclose(m4["loss"], m1["loss"], **tol(np.float32))


def test_ema_and_nonfinite_skip():
    fn, s0, batch = _setup(ema_decay=0.9)
    w0 = np.asarray(s0["params"]["w"][...])
    s1, m = fn(s0, batch)
    w1 = np.asarray(s1["params"]["w"][...])
    np.testing.assert_allclose(s1["ema"]["w"][...], 0.9 * w0 + 0.1 * w1, rtol=1e-6)
    bad = dict(batch, x=batch["x"].at[0, 0].set(jnp.nan))
    s2, m = fn(s1, bad)
    assert float(m["finite"]) == 0.0 and int(s2["step"]) == 2
    np.testing.assert_array_equal(s2["params"]["w"][...], w1)


def test_schedule_warmup_then_cosine():
    cfg = toy.config(steps=100, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    lr = optim.schedule(cfg)
    assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1.0) < 1e-6
    assert abs(float(lr(100)) - 0.1) < 1e-6 and float(lr(50)) < float(lr(20))


def test_mixed_precision_keeps_float32_params(tmp_path):
    from jaxar.train import loop

    kw = dict(steps=4, eval_every=100, checkpoint_every=100, num_samples=0)
    summary = loop.train(toy.config(compute_dtype="bfloat16", **kw), tmp_path, quiet=True)
    leaves = jax.tree.leaves(summary["params"])
    assert all(x.dtype == jnp.float32 for x in leaves)
    assert np.isfinite(summary["loss"])
