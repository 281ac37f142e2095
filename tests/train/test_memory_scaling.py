"""Per-device memory falls with the mesh: under FSDP over N devices each device holds
about 1/N of the parameters and optimizer state (compiled abstractly: nothing is
allocated). The base-preset figures are in jaxar/bench/README.md ("Pod scale"); the
tiny case runs in tests/test_sharding.py."""

import jax
import pytest

from jaxar import sharding
from jaxar.data.sources import DataInfo
from jaxar.train import compile as compile_lib
from jaxar.train import config as config_lib


def memory(preset: str, fsdp: int, *, seq_len: int = 64, batch: int = 8):
    """``(per-device argument bytes, per-device temporaries, total argument bytes)``."""
    cfg = config_lib.TrainConfig(
        model=config_lib.ModelConfig(family="lm", preset=preset),
        data=config_lib.DataConfig(seq_len=seq_len),
        batch_size=batch,
        compute_dtype="bfloat16",
    )
    mesh = sharding.make_mesh(8 // fsdp, fsdp, 1)
    step, state, batch_ = compile_lib.abstract_train_step(cfg, mesh, DataInfo("text"))
    mem = step.lower(state, batch_).compile().memory_analysis()
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((state, batch_)))
    return mem.argument_size_in_bytes, mem.temp_size_in_bytes, total


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["transformer-base", "gateloop-base"])
def test_fsdp_divides_the_base_train_state(preset):
    args, _, total = memory(preset, fsdp=8)
    assert args <= 1.15 * total / 8, f"{args / 2**20:.2f} MiB per device of {total / 2**20:.2f}"
    replicated, _, _ = memory(preset, fsdp=1)
    assert replicated >= 0.95 * total  # pure data parallel: every device holds it all
