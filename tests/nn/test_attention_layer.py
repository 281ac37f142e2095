"""The attention mixer: cached decode == full forward, bidirectional blocks, names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar import testing
from jaxar.nn.attention import AttentionConfig
from jaxar.ops import masks
from jaxar.sharding import variable_names

D, B, L = 16, 2, 8


def _x(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, L, D))


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [
        AttentionConfig(num_heads=4, num_kv_heads=2),
        AttentionConfig(num_heads=2, window=3, rope=False),
    ],
)
def test_decode_matches_full(cfg):
    mixer = cfg.make(D, rngs=nnx.Rngs(0))
    x = _x()
    full = mixer(x)
    state = mixer.init_state(B, L + 2)
    y0, state = mixer.decode(x[:, :3], state)  # prefill
    ys = [y0]
    for t in range(3, L):
        y, state = mixer.decode(x[:, t : t + 1], state)
        ys.append(y)
    assert int(state["index"]) == L
    testing.assert_allclose(jnp.concatenate(ys, axis=1), full)


@pytest.mark.parametrize("window", [None, 2])
def test_per_row_index_rolls_rows_back(window):
    """A (B,) index: row 1 rolled back from 5 to 3 cached tokens, then both decode 2 more."""
    mixer = AttentionConfig(num_heads=2, window=window).make(D, rngs=nnx.Rngs(0))
    x = _x()
    full = mixer(x)
    _, state = mixer.decode(x[:, :5], mixer.init_state(B, L))
    state = dict(state, index=jnp.asarray([5, 3], jnp.int32))
    starts = np.array([5, 3])
    x_new = jnp.stack([x[b, s : s + 2] for b, s in enumerate(starts)])
    y, state = mixer.decode(x_new, state)
    np.testing.assert_array_equal(np.asarray(state["index"]), starts + 2)
    want = jnp.stack([full[b, s : s + 2] for b, s in enumerate(starts)])
    testing.assert_allclose(y, want)


def test_bidirectional_blocks_match_block_causal_mask():
    cfg = AttentionConfig(num_heads=2, causal=False)
    mixer = cfg.make(D, rngs=nnx.Rngs(1))
    x = _x(1)
    blk = 2
    full = mixer(x, mask=masks.block_causal_mask(L, blk)[None, None])
    state = mixer.init_state(B, L)
    ys = []
    for s in range(0, L, blk):
        peek, _ = mixer.decode(x[:, s : s + blk] * 0.5, state, bidirectional=True)  # discarded
        y, state = mixer.decode(x[:, s : s + blk], state, bidirectional=True)
        ys.append(y)
    testing.assert_allclose(jnp.concatenate(ys, axis=1), full)
    assert peek.shape == (B, blk, D)


def test_causal_config_bidirectional_decode():
    """A causal model decoding a block bidirectionally == full forward under the BD mask."""
    cfg = AttentionConfig(num_heads=2)
    mixer = cfg.make(D, rngs=nnx.Rngs(2))
    x = _x(2)
    bd = masks.block_causal_mask(L, 4)
    want = AttentionConfig(num_heads=2, causal=False).make(D, rngs=nnx.Rngs(2))(
        x, mask=bd[None, None]
    )
    state = mixer.init_state(B, L)
    y1, state = mixer.decode(x[:, :4], state, bidirectional=True)
    y2, _ = mixer.decode(x[:, 4:], state, bidirectional=True)
    testing.assert_allclose(jnp.concatenate([y1, y2], axis=1), want)


@pytest.mark.slow
def test_segments_equal_separate_sequences():
    mixer = AttentionConfig(num_heads=2).make(D, rngs=nnx.Rngs(3))
    x = _x(3)[:1]
    seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 2]])
    pos = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4]])
    packed = mixer(x, segment_ids=seg, positions=pos)
    testing.assert_allclose(packed[:, :3], mixer(x[:, :3]))
    testing.assert_allclose(packed[:, 3:], mixer(x[:, 3:]))


def test_logical_names_and_errors():
    mixer = AttentionConfig(num_heads=4, num_kv_heads=2).make(D, rngs=nnx.Rngs(0))
    names = {
        "/".join(map(str, p)): variable_names(v) for p, v in nnx.to_flat_state(nnx.state(mixer))
    }
    assert names["wq"] == ("embed", "heads", "head_dim")
    assert names["wk"] == ("embed", "kv_heads", "head_dim")
    assert names["wo"] == ("heads", "head_dim", "embed")
    for bad in (dict(num_heads=0), dict(num_heads=4, num_kv_heads=3), dict(num_heads=2, impl="x")):
        with pytest.raises(ValueError, match="AttentionConfig"):
            AttentionConfig(**bad)
    assert np.isfinite(np.asarray(mixer(_x()))).all()
