"""The LM experiment configs (transformer, GateLoop, GSS, GSS-Hybrid) load, convert and
build, with the documented parameter counts; ``model.mixer`` sequences (hybrids)."""

import pathlib

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxar.data.sources import DataInfo
from jaxar.models import lm
from jaxar.nn.attention import AttentionConfig
from jaxar.nn.gateloop import GateLoopConfig
from jaxar.nn.gss import GSSConfig
from jaxar.train import config as config_lib
from jaxar.train import experiments, tasks
from jaxar.train.config import ModelConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]

# (experiment, variant) -> exact parameter count quoted in the config docstrings/READMEs
PARAMS = {
    ("transformer_lm", "tiny"): 426_624,
    ("gateloop_lm", "tiny"): 427_136,
    ("gss_lm", "tiny"): 433_024,
    ("gss_hybrid_lm", "tiny"): 422_592,
    ("transformer_lm", "full"): 106_388_736,
    ("transformer_lm", "full_code"): 151_282_688,
    ("gateloop_lm", "full"): 106_402_560,
    ("gss_lm", "full"): 156_525_568,
    ("gss_hybrid_lm", "full"): 184_709_120,
}
MIXERS = {
    "transformer_lm": (AttentionConfig,),
    "gateloop_lm": (GateLoopConfig,),
    "gss_lm": (GSSConfig,),
    "gss_hybrid_lm": (GSSConfig, AttentionConfig),
}


def _load(name: str, variant: str):
    cfg_dict = experiments.load_config(ROOT / f"experiments/{name}/config.py:{variant}")
    return config_lib.from_config_dict(cfg_dict)


def _lm_config(cfg):
    return _model_config(cfg.model)


def _model_config(model_cfg: ModelConfig):
    return tasks.get("lm").make_config(model_cfg, DataInfo("text"), jnp.float32)


def _count(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name,variant", sorted(PARAMS))
def test_config_loads_converts_and_has_documented_size(name, variant):
    cfg = _load(name, variant)
    assert cfg.model.family == "lm"
    # the TrainConfig round-trips through config.json's layout
    assert config_lib.from_config_dict(cfg.to_dict()) == cfg
    lm_cfg = _lm_config(cfg)
    assert tuple(type(m) for m in lm_cfg.layer_mixers) == MIXERS[name]
    model = nnx.eval_shape(lambda: lm.LM(lm_cfg, rngs=nnx.Rngs(0)))
    assert _count(model) == PARAMS[(name, variant)]
    if variant == "tiny":
        assert cfg.data.name == "stdlib"
        assert cfg.steps * cfg.batch_size * cfg.data.seq_len == 300 * 8 * 256
    if name in ("gss_lm", "gss_hybrid_lm") and variant == "full":
        assert cfg.data.seq_len == 4096  # the paper's GitHub-code length


def test_tiny_models_match_parameter_count_and_build():
    """The comparison's premise: the same size (within 2%) and budget; each tiny model
    traces on a packed batch to (B, L, 256) float32 logits."""
    base = PARAMS[("transformer_lm", "tiny")]
    tokens = jnp.zeros((2, 16), jnp.int32)
    seg = jnp.ones((2, 16), jnp.int32).at[:, 9:].set(2)
    for name in MIXERS:
        assert abs(PARAMS[(name, "tiny")] / base - 1) < 0.02, name
        model = lm.LM(_lm_config(_load(name, "tiny")), rngs=nnx.Rngs(0))
        out = jax.eval_shape(lambda t, s, m=model: m(t, segment_ids=s), tokens, seg)
        assert out.shape == (2, 16, 256) and out.dtype == jnp.float32


def test_unknown_variant_is_an_error_naming_the_accepted():
    with pytest.raises(ValueError, match="tiny"):
        experiments.load_config(ROOT / "experiments/gss_lm/config.py:huge")


def test_mixer_sequence_cycles_with_per_mixer_options():
    mc = ModelConfig(
        "lm",
        "tiny",
        (
            ("mixer", ["gss", "attention", "gateloop"]),  # a list, as after config.json
            ("mixer_options", {"attention": {"window": 8}, "gss": {"state_size": 4}}),
            ("num_heads", 2),
            ("num_layers", 3),
        ),
    )
    cfg = _model_config(mc)
    assert [type(cfg.layer_mixer(i)) for i in range(4)] == [
        GSSConfig, AttentionConfig, GateLoopConfig, GSSConfig,
    ]  # fmt: skip
    mixers = cfg.layer_mixers
    assert mixers[0].state_size == 4 and mixers[1].window == 8
    assert mixers[1].num_heads == 2 and mixers[2].num_heads == 2
    bad = ModelConfig(
        "lm", "tiny", (("mixer", ("gss", "attention")), ("mixer_options", {"gateloop": {}}))
    )
    with pytest.raises(ValueError, match="gateloop"):
        _model_config(bad)


def test_gateloop_mixer_takes_model_num_heads():
    """``model.num_heads`` (or the preset's heads) reaches the GateLoop mixer; an explicit
    ``mixer_options.num_heads`` wins."""
    mc = ModelConfig("lm", "medium", (("mixer", "gateloop"),))
    assert _model_config(mc).layer_mixers[0].num_heads == 8
    mc = ModelConfig("lm", "tiny", (("mixer", "gateloop"), ("num_heads", 2)))
    assert _model_config(mc).layer_mixers[0].num_heads == 2
    mc = ModelConfig("lm", "tiny", (("mixer", "gateloop"), ("mixer_options", {"num_heads": 1})))
    assert _model_config(mc).layer_mixers[0].num_heads == 1
