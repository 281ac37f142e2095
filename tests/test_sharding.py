import pytest
from jax.sharding import PartitionSpec as P

from jaxar import sharding


def test_logical_to_mesh():
    assert sharding.logical_to_mesh(("embed", "mlp")) == P("fsdp", "tensor")
    assert sharding.logical_to_mesh(("batch", None)) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="'bogus'"):
        sharding.logical_to_mesh(("bogus",))


@pytest.mark.parametrize("sizes", [(8, 1, 1), (2, 4, 1), (2, 1, 4), (-1, 2, 2)])
def test_make_mesh(sizes):
    mesh = sharding.make_mesh(*sizes)
    assert mesh.axis_names == sharding.MESH_AXES
    assert mesh.devices.size == 8


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="needs 24 devices"):
        sharding.make_mesh(2, 3, 4)
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(-1, -1, 1)
