"""A checkpoint saved on one mesh restores exactly on another: orbax reads each array
into the target's shardings (8x1x1 -> 2x2x2, FSDP 1x8x1 -> 2x2x2, -> one device)."""

import jax
import numpy as np
import pytest

from jaxar.train import checkpoint, loop
from jaxar.train.config import MeshConfig
from tests.train import toy


def _run(mesh: MeshConfig, *, seed: int, devices=None):
    return loop.build(toy.config(mesh=mesh, seed=seed), devices=devices, check_memory=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Train states saved from an 8x1x1 and a 1x8x1 (FSDP) mesh."""
    out = {}
    for name, mesh in (("data", MeshConfig(data=8)), ("fsdp", MeshConfig(data=1, fsdp=8))):
        run = _run(mesh, seed=1)
        ckpt = checkpoint.Checkpointer(tmp_path_factory.mktemp(name), async_save=False)
        ckpt.save(1, run.state, {"note": name})
        ckpt.close()
        out[name] = (ckpt.directory, jax.device_get(run.state))
    return out


@pytest.mark.parametrize(
    "source,target",
    [
        ("fsdp", "2x2x2"),
        ("data", "1 device"),
        pytest.param("data", "2x2x2", marks=pytest.mark.slow),
        pytest.param("fsdp", "1 device", marks=pytest.mark.slow),
    ],
)
def test_restores_exactly_on_another_mesh(saved, source, target):
    directory, want = saved[source]
    if target == "1 device":
        run = _run(MeshConfig(), seed=0, devices=jax.devices()[:1])
    else:
        run = _run(MeshConfig(data=2, fsdp=2, tensor=2), seed=0)
    ckpt = checkpoint.Checkpointer(directory, read_only=True)
    try:
        got, data_state = ckpt.restore(run.state)
    finally:
        ckpt.close()
    assert data_state == {"note": source}
    flat_got = jax.tree_util.tree_leaves_with_path(got)
    flat_target = jax.tree.leaves(run.state)
    flat_want = jax.tree.leaves(want)
    assert len(flat_got) == len(flat_want) == len(flat_target)
    for (path, g), t, w in zip(flat_got, flat_target, flat_want, strict=True):
        assert g.sharding == t.sharding, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(g), w, err_msg=jax.tree_util.keystr(path))
    sharded = [g for _, g in flat_got if not g.sharding.is_fully_replicated]
    assert bool(sharded) == (target != "1 device")  # the FSDP / tensor axes are used
