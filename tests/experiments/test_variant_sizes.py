"""Every experiment variant builds (abstractly, through the trainer's family table) the model
it built when its results were recorded: the parameter counts below were measured on the
code before the model seam (configs giving a preset plus real overrides only) and are
unchanged by it."""

import pathlib

import jax
import pytest
from flax import nnx

from jaxar.data.sources import DataInfo
from jaxar.train import config as config_lib
from jaxar.train import experiments, tasks

ROOT = pathlib.Path(__file__).resolve().parents[2]

# experiment:variant -> parameters (aliases such as bd3lm:tiny = bd3lm:tiny_l16 left out)
PARAMS = {
    "ar_bd3_mdlm:full_ar": 85_150_464,
    "ar_bd3_mdlm:full_bd3_l4": 85_151_232,
    "ar_bd3_mdlm:full_bd3_l16": 85_151_232,
    "ar_bd3_mdlm:full_mdlm": 85_151_232,
    "ar_bd3_mdlm:tiny_ar": 426_624,
    "ar_bd3_mdlm:tiny_bd3_l4": 426_752,
    "ar_bd3_mdlm:tiny_bd3_l16": 426_752,
    "ar_bd3_mdlm:tiny_mdlm": 426_752,
    "axial_imagenet32:full": 245_218_304,
    "axial_imagenet32:tiny": 231_360,
    "bd3lm:full_l4": 85_151_232,
    "bd3lm:full_l8": 85_151_232,
    "bd3lm:full_l16": 85_151_232,
    "bd3lm:tiny_l4": 426_752,
    "bd3lm:tiny_l8": 426_752,
    "bd3lm:tiny_l16": 426_752,
    "gateloop_lm:full": 106_402_560,
    "gateloop_lm:tiny": 427_136,
    "gss_hybrid_lm:full": 184_709_120,
    "gss_hybrid_lm:tiny": 422_592,
    "gss_lm:full": 156_525_568,
    "gss_lm:tiny": 433_024,
    "mar:full_causal": 205_897_228,
    "mar:full_masked": 205_897_228,
    "mar:tiny_causal": 176_324,
    "mar:tiny_masked": 176_324,
    "mdlm_lm1b:full": 85_151_232,
    "mdlm_lm1b:tiny": 426_752,
    "mdlm_text8:full": 85_151_232,
    "mdlm_text8:tiny": 426_752,
    "quickstart": 426_624,
    "transformer_lm:full": 106_388_736,
    "transformer_lm:full_code": 151_282_688,
    "transformer_lm:tiny": 426_624,
}
# the data each variant's model is built for (image shape and classes come from the data)
INFOS = {
    "digits": DataInfo("image", image_shape=(8, 8, 1), num_classes=10),
    "tfds:imagenet_resized/32x32": DataInfo("image", image_shape=(32, 32, 3), num_classes=1000),
    "tfds:cifar10": DataInfo("image", image_shape=(32, 32, 3), num_classes=10),
}


@pytest.mark.parametrize(
    "name",  # the accelerator-scale variants' deep graphs take seconds each: slow
    [pytest.param(n, marks=pytest.mark.slow) if ":full" in n else n for n in sorted(PARAMS)],
)
def test_variant_builds_its_recorded_model(name):
    exp, _, variant = name.partition(":")
    path = ROOT / "experiments" / exp / "config.py"
    cfg = config_lib.from_config_dict(
        experiments.load_config(f"{path}:{variant}" if variant else path)
    )
    info = INFOS.get(cfg.data.name, DataInfo("text"))
    family = tasks.get(cfg.model.family)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(
            lambda: family.build(cfg.model, info, jax.numpy.float32, nnx.Rngs(0))
        )
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == PARAMS[name]
