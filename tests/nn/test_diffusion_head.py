"""Diffusion head (residual adaLN MLP): presets, logical names, forward vs a float64 formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar import sharding
from jaxar.nn.diffusion_head import DiffusionHead, DiffusionHeadConfig, timestep_embedding
from jaxar.testing import assert_allclose, reference_x64

N, C = 3, 5
fwd = nnx.jit(lambda head, x, t, cond: head(x, t, cond))  # one compile per shape, not per op


def test_presets_and_validation():
    sizes = {
        k: (c.width, c.depth)
        for k in ("mar_b", "MAR-L", "mar-h")
        for c in [DiffusionHeadConfig.preset(k, token_dim=16, cond_dim=768)]
    }
    assert sizes == {"mar_b": (1024, 6), "MAR-L": (1280, 8), "mar-h": (1536, 12)}
    assert DiffusionHeadConfig.preset("tiny", token_dim=1, cond_dim=1, depth=1).depth == 1
    with pytest.raises(ValueError, match="preset name='mar_xl'"):
        DiffusionHeadConfig.preset("mar_xl", token_dim=1, cond_dim=1)
    with pytest.raises(ValueError, match="DiffusionHeadConfig.width=0"):
        DiffusionHeadConfig(token_dim=1, cond_dim=1, width=0)
    with pytest.raises(ValueError, match="frequency_dim=7"):
        DiffusionHeadConfig(token_dim=1, cond_dim=1, frequency_dim=7)


def _head(**kw):
    cfg = DiffusionHeadConfig.preset("tiny", token_dim=N, cond_dim=C, width=16, **kw)
    return DiffusionHead(cfg, rngs=nnx.Rngs(0))


def test_params_carry_logical_names_and_fresh_head_is_zero():
    head = _head()
    known = {name for name, _ in sharding.RULES}
    params = nnx.state(head, nnx.Param)
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(leaves) == 8 + 2 * 8 + 4  # stem, 2 blocks, final (kernels and biases)
    for v in leaves:
        names = v.get_metadata()["out_sharding"]
        assert len(names) == v.ndim and set(names) - {None} <= known, names
        sharding.logical_to_mesh(names)
    x = jnp.ones((4, N))
    out = fwd(head, x, jnp.arange(4), jnp.ones((4, C)))
    assert out.shape == (4, N) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)
    with pytest.raises(ValueError, match="share leading shape"):
        head(x, jnp.arange(3), jnp.ones((4, C)))


def _randomize(head, key):
    graphdef, params, rest = nnx.split(head, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        0.3 * jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves, strict=True)
    ]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)


def _reference(p, x, t, cond):
    silu = lambda v: v / (1 + np.exp(-v))
    lin = lambda m, v: v @ m["kernel"] + m["bias"]

    def ln(v, m=None):
        mu = v.mean(-1, keepdims=True)
        out = (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
        return out if m is None else out * m["scale"] + m["bias"]

    half = 128
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / half)
    args = t[:, None] * freqs[None]
    freq = np.concatenate([np.cos(args), np.sin(args)], -1)
    y = silu(lin(p["time_fc2"], silu(lin(p["time_fc1"], freq))) + lin(p["cond_proj"], cond))
    h = lin(p["in_proj"], x)
    for b in p["blocks"].values():
        shift, scale, gate = np.split(lin(b["ada"], y), 3, -1)
        h = h + gate * lin(b["fc2"], silu(lin(b["fc1"], ln(h, b["norm"]) * (1 + scale) + shift)))
    shift, scale = np.split(lin(p["final_ada"], y), 2, -1)
    return lin(p["out_proj"], ln(h) * (1 + scale) + shift)


def test_forward_matches_float64_formula():
    head = _randomize(_head(), jax.random.key(1))
    kx, kc = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (6, N))
    cond = jax.random.normal(kc, (6, C))
    t = jnp.array([0, 1, 10, 100, 500, 999], jnp.int32)
    got = fwd(head, x, t, cond)
    params = nnx.to_pure_dict(nnx.state(head, nnx.Param))
    want = reference_x64(_reference, params, x, np.asarray(t, np.float64), cond)
    # float32 sinusoids of t up to 999 carry ~1e-4 absolute phase error: use the grad row.
    assert_allclose(got, want, kind="grad")
    # the condition and the time both steer the output
    assert not np.allclose(fwd(head, x, t, cond + 1.0), got)
    assert not np.allclose(fwd(head, x, t + 1, cond), got)


def test_leading_axes_and_bfloat16_compute():
    head32 = _randomize(_head(), jax.random.key(3))
    head16 = _randomize(_head(dtype=jnp.bfloat16), jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (2, 3, N))
    cond = jax.random.normal(jax.random.key(5), (2, 3, C))
    t = jnp.full((2, 3), 7, jnp.int32)
    out32 = fwd(head32, x, t, cond)
    np.testing.assert_allclose(
        out32.reshape(6, N),
        fwd(head32, x.reshape(6, N), t.reshape(6), cond.reshape(6, C)),
        rtol=1e-6,
        atol=1e-6,
    )
    out16 = fwd(head16, x, t, cond)
    assert out16.dtype == jnp.float32
    assert_allclose(out16, out32, dtype=jnp.bfloat16, kind="long")
    with pytest.raises(ValueError, match="axes=.*2 leading axes"):
        head32(x, t, cond, axes=("batch",))


def test_timestep_embedding_formula():
    e = timestep_embedding(jnp.array([0.0, 3.0]), 8)
    f = 10000.0 ** (-np.arange(4) / 4)
    want = np.concatenate([np.cos(np.outer([0, 3], f)), np.sin(np.outer([0, 3], f))], -1)
    assert_allclose(e, want)


@pytest.mark.slow
@pytest.mark.parametrize("target,schedule", [("eps", "linear"), ("v", "cosine")])
def test_trained_head_samples_its_data(target, schedule):
    """End to end: loss and sampler agree on conventions (t indexing, targets).

    Not eps on the cosine schedule: its last step (abar ~ 2e-9) makes the first respaced
    DDPM step multiply eps errors by ~300, so a briefly trained eps head diverges there.
    """
    import optax

    from jaxar import ops
    from jaxar.sampling import diffusion_head as dh

    acp = ops.diffusion_schedule(schedule, 1000)
    cfg = DiffusionHeadConfig(token_dim=1, cond_dim=1, width=64, depth=2)
    head = DiffusionHead(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(head)
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @jax.jit
    def train_step(params, opt_state, key):
        k_data, k_loss = jax.random.split(key)
        x0 = 2.0 + 0.5 * jax.random.normal(k_data, (256, 1))
        cond = jnp.zeros((256, 1))

        def loss_fn(p):
            f = nnx.merge(graphdef, p)
            return jnp.mean(
                ops.gaussian_diffusion_loss(
                    k_loss, f, x0, cond, alphas_cumprod=acp, target=target, num_draws=4
                )
            )

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(800):
        params, opt_state, _ = train_step(params, opt_state, jax.random.key(i))

    @jax.jit
    def draw(params, key):
        f = nnx.merge(graphdef, params)
        eps_fn = lambda x, t, c: ops.eps_from_prediction(f(x, t, c), x, t, acp, target)
        return dh.sample(
            key, eps_fn, jnp.zeros((4000, 1)), shape=(4000, 1), num_steps=100, alphas_cumprod=acp
        )

    x = np.asarray(draw(params, jax.random.key(123)))
    assert abs(x.mean() - 2.0) < 0.1 and abs(x.std() - 0.5) < 0.1, (x.mean(), x.std())
