"""experiments/lm_comparison/config.py: the linear-attention LMs load, build (shapes only) and
have the documented parameter counts, within 2% of the tiny transformer's."""

import pathlib

import jax
import pytest
from flax import nnx

from jaxar.data.sources import DataInfo
from jaxar.train import config as config_lib
from jaxar.train import experiments, tasks

ROOT = pathlib.Path(__file__).resolve().parents[2]
PARAMS = {"gla": 427_136, "retnet": 426_880, "mamba2": 425_944, "gated_deltanet": 432_016}
TRANSFORMER_TINY = 426_624


@pytest.mark.parametrize("variant", sorted(PARAMS))
def test_documented_size(variant):
    cfg_dict = experiments.load_config(str(ROOT / f"experiments/lm_comparison/config.py:{variant}"))
    cfg = config_lib.from_config_dict(cfg_dict)
    family = tasks.get(cfg.model.family)
    model = nnx.eval_shape(
        lambda: family.build(cfg.model, DataInfo("text"), jax.numpy.float32, nnx.Rngs(0))
    )
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == PARAMS[variant]
    assert abs(n / TRANSFORMER_TINY - 1) < 0.02
    assert cfg.steps * cfg.batch_size * cfg.data.seq_len == 300 * 8 * 256


def test_unknown_variant():
    with pytest.raises(ValueError, match="gla"):
        experiments.load_config(str(ROOT / "experiments/lm_comparison/config.py:s4"))
