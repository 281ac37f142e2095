"""Every family's ``Config.preset("tiny")`` is one model: built through ``jaxar.models`` and
through the trainer's table (data fields from the data) it has the same parameter tree;
unknown fields are errors from the config naming them and every accepted field."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxar import models
from jaxar.data.sources import DataInfo
from jaxar.train import tasks
from jaxar.train.config import ModelConfig

TEXT = DataInfo("text")
DIGITS = DataInfo("image", image_shape=(8, 8, 1), num_classes=10)
# family -> (its config and model in jaxar.models, the data the trainer builds it for)
CASES = {
    "lm": (models.LMConfig, models.LM, TEXT),
    "mdlm": (models.MDLMConfig, models.MDLM, TEXT),
    "bd3": (models.BD3Config, models.BD3, TEXT),
    "axial": (models.AxialTransformerConfig, models.AxialTransformer, DIGITS),
    "mar": (models.MARConfig, models.MAR, DIGITS),
}


def _shapes(make):
    with nnx.use_eager_sharding(False):
        params = nnx.state(nnx.eval_shape(make), nnx.Param)
    return {
        jax.tree_util.keystr(p): (x.shape, x.dtype) for p, x in jax.tree.leaves_with_path(params)
    }


@pytest.mark.parametrize("family", sorted(CASES))
def test_tiny_preset_is_one_model_through_library_and_trainer(family):
    config_cls, model_cls, info = CASES[family]
    direct = _shapes(lambda: model_cls(config_cls.preset("tiny"), rngs=nnx.Rngs(0)))
    trainer = _shapes(
        lambda: tasks.get(family).build(ModelConfig(family, "tiny"), info, jnp.float32, nnx.Rngs(0))
    )
    assert direct == trainer
    count = sum(int(jnp.prod(jnp.asarray(s))) for s, _ in direct.values())
    assert count > 1000, count


def test_tiny_sizes():
    """The one tiny of the text families: width 128, 2 layers, 4 heads (the trainer's, which
    every recorded tiny experiment used)."""
    for cls in (models.LMConfig, models.MDLMConfig, models.BD3Config):
        c = cls.preset("tiny")
        assert (c.d_model, c.num_layers, c.num_heads) == (128, 2, 4), cls


@pytest.mark.parametrize("family", sorted(CASES))
def test_unknown_field_names_it_and_all_accepted(family):
    config_cls, _, info = CASES[family]
    bad = ModelConfig(family, "tiny", (("d_modle", 3),))
    with pytest.raises(ValueError, match=r"no field\(s\) \['d_modle'\]; accepted: \[") as e:
        tasks.get(family).make_config(bad, info, jnp.float32)
    for field in ("d_model", "num_heads"):
        assert f"'{field}'" in str(e.value)
    with pytest.raises(ValueError, match=r"name='huge' is not supported; accepted: \['tiny'"):
        config_cls.preset("huge")


def test_lm_fields_include_mixer_and_sizes():
    with pytest.raises(ValueError) as e:
        models.LMConfig.preset("tiny", layers=3)
    for field in ("d_model", "num_layers", "num_heads", "mixer", "mixer_options"):
        assert f"'{field}'" in str(e.value)
    with pytest.raises(ValueError, match=r"mixer='lstm' is not supported; accepted: a name in"):
        models.LMConfig.preset("tiny", mixer="lstm")


def test_mixer_objects_stay_programmatic():
    from jaxar.nn import GSSConfig

    cfg = models.LMConfig(mixers=(GSSConfig(state_size=4),), mlp_ratio=0.0)
    assert cfg.layer_mixers == (GSSConfig(state_size=4),)
    with pytest.raises(ValueError, match="mixer_options=.* is unused with mixers="):
        models.LMConfig(mixers=(GSSConfig(),), mixer_options={"state_size": 4})
