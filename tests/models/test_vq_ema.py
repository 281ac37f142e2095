"""The EMA-codebook quantizer (``quantizer="vq_ema"``) and the trainer's model state."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxar import testing
from jaxar.models import vq
from jaxar.train import checkpoint, loop
from jaxar.train import config as config_lib
from jaxar.train import step as step_lib

DECAY = 0.9


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)


@pytest.fixture(scope="module")
def one_step():
    """A tiny vq_ema tokenizer, its split state and the state after one jitted train step
    (restarts off, so the step is the plain EMA rule)."""
    cfg = vq.VQConfig.preset(
        "tiny", width=8, quantizer="vq_ema", normalize=False, ema_decay=DECAY,
        dead_threshold=0.0,
    )  # fmt: skip
    model = _build(cfg, 0)
    graphdef, params, model_state, rest = step_lib.split_model(model)
    tx = optax.adam(1e-2)
    state = step_lib.init_state(params, tx, seed=0, ema=False, model_state=model_state)
    batch = {"image": _images(4)}
    z = np.asarray(nnx.jit(lambda m, x: m.encode(x))(model, batch["image"]), np.float64)
    train_step = jax.jit(step_lib.make_train_step(graphdef, rest, vq.loss, tx))
    before = _pure(state)
    after, metrics = train_step(state, batch)
    return cfg, before, _pure(after), metrics, z


def _build(cfg, seed):
    # rbg keys: threefry's per-initializer compiles would cost more than the whole test
    return vq.VQ(cfg, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))


def _pure(state):
    """The train state as nested dicts of numpy arrays."""
    out = {k: nnx.to_pure_dict(v) if isinstance(v, nnx.State) else v for k, v in state.items()}
    return jax.tree.map(np.asarray, out)


def test_one_train_step_moves_the_codebook_by_the_ema_rule(one_step):
    cfg, before, after, metrics, z = one_step
    k, eps = cfg.codebook_size, cfg.ema_eps
    book = before["model_state"]["codebook"].astype(np.float64)
    zf = z.reshape(-1, cfg.latent_dim)
    ids = np.argmin(((zf[:, None, :] - book[None]) ** 2).sum(-1), 1)  # brute force, float64
    onehot = np.eye(k)[ids]
    n = DECAY * before["model_state"]["ema_count"] + (1 - DECAY) * onehot.sum(0)
    m = DECAY * before["model_state"]["ema_sum"] + (1 - DECAY) * onehot.T @ zf
    smoothed = (n + eps) / (n.sum() + k * eps) * n.sum()
    got = after["model_state"]
    testing.assert_allclose(got["ema_count"], n, dtype=np.float32)
    testing.assert_allclose(got["ema_sum"], m, dtype=np.float32)
    testing.assert_allclose(got["codebook"], m / smoothed[:, None], dtype=np.float32)
    assert float(metrics["finite"]) == 1.0 and float(metrics["restarted"]) == 0.0


def test_the_optimizer_never_sees_the_codebook(one_step):
    _, before, after, _, _ = one_step
    assert "codebook" not in before["params"]
    book_shape = before["model_state"]["codebook"].shape
    shapes = {x.shape for x in jax.tree.leaves(before["opt_state"])}
    assert book_shape not in shapes  # no Adam moments for it
    # the commitment loss still trains the encoder; the decoder trains on reconstruction
    for name in ("enc_out", "dec_out"):
        delta = after["params"][name]["kernel"] - before["params"][name]["kernel"]
        assert np.abs(delta).max() > 0, name


def test_dead_codes_restart_at_batch_latents():
    cfg = vq.VQConfig.preset(
        "tiny", width=8, quantizer="vq_ema", normalize=False, dead_threshold=1e9
    )
    model = _build(cfg, 1)
    z = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, cfg.latent_dim)), jnp.float32)
    ids = jnp.zeros((2, 4, 4), jnp.int32)
    restarted = model.ema_update(z, ids, jax.random.key(3))
    assert int(restarted) == cfg.codebook_size  # every code is under the threshold
    book = np.asarray(model.codebook[...])
    dist = np.abs(book[:, None, :] - np.asarray(z).reshape(1, -1, cfg.latent_dim)).max(-1)
    np.testing.assert_array_equal(dist.min(1), np.zeros(cfg.codebook_size))
    np.testing.assert_array_equal(np.asarray(model.ema_count[...]), 1.0)
    # a frozen tokenizer keeps nothing the trainer would update
    vq.freeze(model)
    assert not jax.tree.leaves(nnx.state(model, step_lib.MODEL_STATE))


def test_vq_ema_config_errors():
    with pytest.raises(ValueError, match=r"ema_decay=1\.0 is invalid; accepted: a float in"):
        vq.VQConfig(quantizer="vq_ema", ema_decay=1.0)
    with pytest.raises(ValueError, match=r"dead_threshold=-1\.0 is invalid"):
        vq.VQConfig(quantizer="vq_ema", dead_threshold=-1.0)


def _run_config(**kw):
    model = dict(
        family="vq", preset="tiny", width=8, quantizer="vq_ema", codebook_size=16,
        ema_decay=0.8,
    )  # fmt: skip
    return config_lib.from_config_dict(
        dict(
            model=model,
            data=dict(name="digits"),
            steps=4,
            batch_size=8,
            learning_rate=1e-2,
            warmup_steps=1,
            log_every=2,
            eval_every=100,
            eval_batches=1,
            checkpoint_every=2,
            keep_checkpoints=2,
            async_checkpoints=False,
            num_samples=0,
            **kw,
        )  # fmt: skip
    )


@pytest.mark.slow
def test_exact_resume_of_a_vq_ema_run(tmp_path):
    """A 4-step run, and the same run resumed from its step-2 checkpoint, end bitwise equal:
    parameters, optimizer state and the EMA codebook (the model state)."""
    cfg = _run_config()
    ref = loop.train(cfg, tmp_path / "ref", quiet=True)
    shutil.copytree(tmp_path / "ref", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "4")
    resumed = loop.train(cfg, tmp_path / "resumed", quiet=True)
    assert resumed["start_step"] == 2
    for key in ("params", "model_state"):
        want, got = jax.tree.leaves(ref[key]), jax.tree.leaves(resumed[key])
        assert len(want) == len(got) > 0
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=key)
    assert np.isfinite(ref["loss"]) and resumed["loss"] == ref["loss"]


def test_a_checkpoint_without_model_state_fails_in_one_line(tmp_path):
    """A step saved by a model without model state, restored into one that keeps it."""
    state = {"params": {"w": jnp.ones(3)}, "step": jnp.zeros((), jnp.int32)}
    ckpt = checkpoint.Checkpointer(tmp_path, async_save=False)
    ckpt.save(1, state, {})
    ckpt.close()
    ckpt = checkpoint.Checkpointer(tmp_path, read_only=True)
    with pytest.raises(checkpoint.CheckpointError, match="saved without the model state") as e:
        ckpt.restore(dict(state, model_state={"codebook": jnp.zeros(2)}), step=1)
    assert "\n" not in str(e.value)
    restored, _ = ckpt.restore(state, step=1)  # the same step restores without it
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.ones(3))
    ckpt.close()
