"""Generation with the recurrent state and logits processing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.models.lm import LM, LMConfig
from jaxar.nn.gateloop import GateLoopConfig
from jaxar.sampling.generate import generate
from jaxar.sampling.logits import process

V = 11


def _model():
    cfg = LMConfig(
        vocab_size=V, d_model=16, num_layers=2, mixers=(GateLoopConfig(num_heads=2),), mlp_ratio=2.0
    )
    return LM(cfg, rngs=nnx.Rngs(0))


def test_greedy_equals_argmax_of_full_forward():
    model = _model()
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    out = generate(jax.random.key(0), model, prompt, max_new_tokens=4, temperature=0.0)
    assert out.shape == (2, 7) and out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out[:, :3]), np.asarray(prompt))
    full = nnx.jit(lambda m, t: m(t))(model, out)
    want = np.asarray(jnp.argmax(full[:, 2:-1], -1))
    np.testing.assert_array_equal(np.asarray(out[:, 3:]), want)


def test_top_k_sampling_stays_in_top_k_and_is_reproducible():
    model = _model()
    prompt = jnp.zeros((3, 2), jnp.int32)
    a = generate(jax.random.key(1), model, prompt, max_new_tokens=4, top_k=1, temperature=0.7)
    g = generate(jax.random.key(1), model, prompt, max_new_tokens=4, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(g))  # top-1 == greedy
    b = generate(jax.random.key(2), model, prompt, max_new_tokens=4, top_k=3, top_p=0.9)
    c = generate(jax.random.key(2), model, prompt, max_new_tokens=4, top_k=3, top_p=0.9)
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    assert int(b.min()) >= 0 and int(b.max()) < V


def test_process_top_k_top_p_temperature():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.15, 0.1]]))
    x = process(logits, temperature=2.0)
    np.testing.assert_allclose(np.asarray(x), np.asarray(logits) / 2.0, rtol=1e-6)
    x = np.asarray(process(logits, top_k=2))
    assert np.isfinite(x[0, :2]).all() and np.isneginf(x[0, 2:]).all()
    # top_p = 0.7: mass above token 2 is 0.75 >= 0.7 -> keep {0, 1}
    x = np.asarray(process(logits, top_p=0.7))
    assert np.isfinite(x[0, :2]).all() and np.isneginf(x[0, 2:]).all()
    # top_p = 0.5 keeps only the most likely token (mass above token 1 is 0.5, not < 0.5)
    x = np.asarray(process(logits, top_p=0.5))
    assert np.isfinite(x[0, 0]) and np.isneginf(x[0, 1:]).all()
    with pytest.raises(ValueError, match="top_p"):
        process(logits, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        process(logits, top_k=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(jax.random.key(0), _model(), jnp.zeros((1, 1), jnp.int32), max_new_tokens=0)


def test_prompt_ids_dtype_and_shape_are_validated():
    model = _model()
    key = jax.random.key(0)
    for bad in ([[999, 1]], [[1, -1]], [[1, V]]):
        with pytest.raises(ValueError, match=r"prompt_BxP holds 1 id\(s\) outside .*\[0, 11\)"):
            generate(key, model, jnp.asarray(bad, jnp.int32), max_new_tokens=3)
    with pytest.raises(ValueError, match="prompt_BxP must be integer ids"):
        generate(key, model, jnp.ones((1, 2), jnp.float32), max_new_tokens=3)
    with pytest.raises(ValueError, match=r"prompt_BxP must be \(B, P\)"):
        generate(key, model, jnp.ones((2,), jnp.int32), max_new_tokens=3)
    # traced prompt: the bad row comes back as -1, the good row is generated as usual
    prompt = jnp.asarray([[1, 2], [3, 999]], jnp.int32)
    run = jax.jit(lambda p: generate(key, model, p, max_new_tokens=3, temperature=0.0))
    out = np.asarray(run(prompt))
    np.testing.assert_array_equal(out[1, 2:], [-1, -1, -1])
    good = generate(key, model, prompt[:1], max_new_tokens=3, temperature=0.0)
    np.testing.assert_array_equal(out[0], np.asarray(good)[0])


class _NaNAt(nnx.Module):
    """Uniform logits, except row 1 at position ``bad_pos`` (NaN) and row 2 (all -inf)."""

    def __init__(self, bad_pos):
        self.bad_pos = bad_pos
        self.w = nnx.Param(jnp.zeros((V,)))

    def init_state(self, batch, max_len):
        return jnp.zeros((), jnp.int32)

    def decode(self, tokens, state, *, positions):
        logits = jnp.broadcast_to(self.w[...], (*tokens.shape, V))
        rows = jnp.arange(tokens.shape[0])[:, None, None]
        nan = (rows == 1) & (positions[..., None] == self.bad_pos)
        logits = jnp.where(nan, jnp.nan, logits)
        return jnp.where(rows == 2, -jnp.inf, logits), state


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_garbage_logits_never_become_tokens(temperature):
    model = _NaNAt(bad_pos=3)
    prompt = jnp.zeros((3, 2), jnp.int32)
    kw = dict(max_new_tokens=4, temperature=temperature, top_k=5 if temperature else None)
    with pytest.raises(ValueError, match=r"generate: no token could be drawn in 2 of 3 row"):
        generate(jax.random.key(0), model, prompt, **kw)
    out = np.asarray(jax.jit(lambda p: generate(jax.random.key(0), model, p, **kw))(prompt))
    assert ((out[0, 2:] >= 0) & (out[0, 2:] < V)).all()
    # row 1: NaN logits at position 3 produce the token at 4; it and every later one are -1
    assert (out[1, 2:4] >= 0).all()
    np.testing.assert_array_equal(out[1, 4:], [-1, -1])
    np.testing.assert_array_equal(out[2, 2:], [-1] * 4)
