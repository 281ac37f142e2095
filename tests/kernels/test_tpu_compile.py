"""Every Pallas kernel compiles for real TPU chips on this CPU host, forward and backward.

With libtpu installed (``pip install -e ".[tpu]"``), ``get_topology_desc`` describes a TPU
slice without one; jitting over its devices runs the whole TPU compiler, Mosaic kernels
included. The kernels are reached the way jaxar reaches them (``jaxar.ops.<op>(
impl="pallas")`` under ``jaxar.dispatch.target_platform("tpu")``). Skipped only where
libtpu cannot be imported.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxar import dispatch
from tests.kernels.test_lowering import KERNELS

pytest.importorskip("libtpu", reason="needs libtpu (pip install -e '.[tpu]')")

from jax.experimental import topologies  # noqa: E402

# one slice per generation; v5e is the fast one, the others run with -m slow
TOPOLOGIES = [
    pytest.param("v5e:2x2", "TPU v5 lite", id="v5e"),
    pytest.param("v4:2x2x1", "TPU v4", id="v4", marks=pytest.mark.slow),
    pytest.param("v5p:2x2x1", "TPU v5", id="v5p", marks=pytest.mark.slow),
    pytest.param("v6e:2x2", "TPU v6 lite", id="v6e", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("topology,kind", TOPOLOGIES)
def test_kernels_compile_for_tpu(topology, kind):
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    assert devices[0].platform == "tpu" and devices[0].device_kind == kind
    one_chip = NamedSharding(Mesh(np.array(devices[:1]), ("chip",)), PartitionSpec())
    for name in sorted(KERNELS):
        loss, args, kernels = KERNELS[name]()
        args = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one_chip) for a in args)
        fwd_bwd = jax.value_and_grad(
            lambda *t: loss(*t).astype(jnp.float32), argnums=tuple(range(len(args)))
        )
        with dispatch.target_platform("tpu"):
            lowered = jax.jit(fwd_bwd).lower(*args)
        assert lowered.as_text().count("tpu_custom_call") >= kernels, name
        compiled = lowered.compile()  # the TPU compiler, Mosaic included
        assert compiled.as_text().count('custom_call_target="tpu_custom_call"') >= kernels, name
        assert compiled.cost_analysis()["bytes accessed"] > 0, name
