"""GateLoop and GSS mixers: full-sequence call == chunked decode with the carried state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.nn.gateloop import GateLoopConfig
from jaxar.nn.gss import GSSConfig

B, L, D = 2, 10, 16


def _x(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, L, D))


@nnx.jit
def _call(mixer, x, seg=None):
    return mixer(x, segment_ids=seg)


@nnx.jit
def _decode(mixer, x, state):
    return mixer.decode(x, state)


def _decode_in_halves(mixer, x):
    state = mixer.init_state(B, L)
    y1, state = _decode(mixer, x[:, : L // 2], state)
    y2, _ = _decode(mixer, x[:, L // 2 :], state)
    return jnp.concatenate([y1, y2], axis=1)


# float32 on both sides (no float64 reference of a whole layer): the "grad" row of the
# table (1e-4) covers one extra reduction of float32 rounding on each side.
CONFIGS = [
    GateLoopConfig(num_heads=2, chunk_size=4, impl="chunked"),
    GateLoopConfig(num_heads=2, complex_gates=False, head_norm=False, impl="recurrent"),
    GSSConfig(state_size=4),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["gateloop-complex", "gateloop-real", "gss"])
def test_full_equals_decode(cfg):
    mixer = cfg.make(D, rngs=nnx.Rngs(0))
    x = _x()
    full = _call(mixer, x)
    assert full.shape == (B, L, D)
    tol = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(_decode_in_halves(mixer, x)), np.asarray(full), **tol)
    # packed documents: segment ids == two separate runs
    h = L // 2
    seg = jnp.concatenate([jnp.ones((B, h), jnp.int32), 2 * jnp.ones((B, L - h), jnp.int32)], 1)
    packed = _call(mixer, x, seg)
    first, second = _decode(mixer, x[:, :h], mixer.init_state(B, L))[0], _call(mixer, x[:, h:])
    np.testing.assert_allclose(np.asarray(packed[:, :h]), np.asarray(first), **tol)
    np.testing.assert_allclose(np.asarray(packed[:, h:]), np.asarray(second), **tol)


def test_errors_and_logical_names():
    mixer = GateLoopConfig(num_heads=2).make(D, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mask"):
        mixer(_x(), mask=jnp.ones((1, 1, L, L), bool))
    with pytest.raises(ValueError, match="bidirectional"):
        mixer.decode(_x(), mixer.init_state(B, L), bidirectional=True)
    with pytest.raises(ValueError, match="num_heads"):
        GateLoopConfig(num_heads=0)
    with pytest.raises(ValueError, match="GateLoopConfig.impl='fast'"):
        GateLoopConfig(impl="fast")
    with pytest.raises(ValueError, match="GateLoopConfig.chunk_size=0 .*accepted"):
        GateLoopConfig(chunk_size=0)
    with pytest.warns(DeprecationWarning, match="impl="):  # the old name, for one release
        assert GateLoopConfig(mode="chunked").impl == "chunked"
    with pytest.raises(ValueError, match="state_size"):
        GSSConfig(state_size=0)
    for cfg in (GateLoopConfig(num_heads=2), GSSConfig(state_size=4)):
        params = nnx.state(cfg.make(D, rngs=nnx.Rngs(0)), nnx.Param)
        for path, var in nnx.to_flat_state(params):
            names = var.get_metadata().get("out_sharding") or var.get_metadata().get(
                "sharding_names"
            )
            assert names is not None and len(names) == var.get_value().ndim, path
