"""The masked-diffusion experiment configs: every variant loads and converts, the tiny
models build at the intended sizes, and BD3 samples through the trainer's task (what
``jaxar sample --workdir`` calls)."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from jaxar.data.sources import DataInfo
from jaxar.train import tasks
from jaxar.train.config import TrainConfig, from_config_dict
from jaxar.train.experiments import load_config

ROOT = pathlib.Path(__file__).resolve().parents[2] / "experiments"
VARIANTS = {
    "mdlm_lm1b": ("full", "tiny"),
    "mdlm_text8": ("full", "tiny"),
    "bd3lm": ("full", "tiny", "full_l4", "full_l8", "full_l16", "tiny_l4", "tiny_l8", "tiny_l16"),
    "ar_bd3_mdlm": tuple(
        f"{s}_{m}" for s in ("tiny", "full") for m in ("ar", "mdlm", "bd3_l4", "bd3_l16")
    )
    + ("tiny", "full"),
}
TEXT = DataInfo("text")


def _load(exp: str, variant: str | None = None) -> TrainConfig:
    path = ROOT / exp / "config.py"
    return from_config_dict(load_config(f"{path}:{variant}" if variant else path))


def _build(cfg: TrainConfig):
    return tasks.get(cfg.model.family).build(cfg.model, TEXT, jax.numpy.float32, nnx.Rngs(0))


def _abstract(cfg: TrainConfig):
    """The model's shapes only (``nnx.eval_shape``: no parameter is computed)."""
    return nnx.eval_shape(lambda: _build(cfg))


def _num_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("exp", sorted(VARIANTS))
def test_variants_load_and_convert(exp):
    for variant in VARIANTS[exp]:
        cfg = _load(exp, variant)
        block_size = dict(cfg.model.overrides).get("block_size", 1)
        assert cfg.data.seq_len % block_size == 0 and cfg.sample_length % block_size == 0
        if variant.startswith("tiny"):
            assert cfg.data.name == "stdlib" and cfg.steps <= 300
        else:
            assert cfg.data.name.startswith("tfds:") and cfg.model.preset == "base"
    assert _load(exp).to_dict() == _load(exp, "full").to_dict()  # the default is "full"
    with pytest.raises(ValueError, match="accepted"):
        _load(exp, "huge")


def test_bd3_block_sizes():
    for size in ("tiny", "full"):
        for block in (4, 8, 16):
            assert dict(_load("bd3lm", f"{size}_l{block}").model.overrides)["block_size"] == block
    assert dict(_load("ar_bd3_mdlm", "tiny_bd3_l16").model.overrides)["block_size"] == 16


def test_comparison_shares_backbone_and_budget():
    cfgs = {m: _load("ar_bd3_mdlm", f"tiny_{m}") for m in ("ar", "mdlm", "bd3_l4", "bd3_l16")}
    budgets = {(c.steps, c.batch_size, c.data.seq_len, c.learning_rate) for c in cfgs.values()}
    assert len(budgets) == 1
    counts = {m: _num_params(_abstract(c)) for m, c in cfgs.items()}
    d_model = _abstract(cfgs["ar"]).config.d_model
    # the diffusion models only add the [MASK] embedding row (tied output head)
    assert counts["mdlm"] == counts["bd3_l4"] == counts["bd3_l16"] == counts["ar"] + d_model
    # the standalone tiny experiments use the same backbone
    for exp, variant in (("mdlm_lm1b", "tiny"), ("mdlm_text8", "tiny"), ("bd3lm", "tiny_l8")):
        assert _num_params(_abstract(_load(exp, variant))) == counts["mdlm"]


def test_bd3_trainer_task_samples():
    """``Family.sample`` (the path of ``jaxar sample --workdir``) on an untrained tiny BD3:
    the cached block sampler once failed here with a mask-shape error (MDLM's sampler is
    covered by tests/models/test_mdlm.py). A length that is not a multiple of the block
    size samples whole blocks and is cut back."""
    cfg = _load("bd3lm", "tiny_l4")
    task = tasks.get(cfg.model.family)
    tokens = task.sample(_build(cfg), jax.random.key(0), 2, length=14)
    assert tokens.shape == (2, 14) and tokens.dtype.kind == "i"
    assert np.all((tokens >= 0) & (tokens < 256))  # no [MASK] left
