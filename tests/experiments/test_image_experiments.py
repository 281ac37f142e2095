"""The image experiment configs (Axial Transformer, MAR) load, convert and build through
the trainer's task registry with the data's image shape (abstractly: no weights)."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from jaxar.data import corpora
from jaxar.data.sources import DataInfo
from jaxar.train import config as config_lib
from jaxar.train import experiments, tasks

ROOT = pathlib.Path(__file__).resolve().parents[2]
CASES = [
    ("axial_imagenet32", "tiny", (8, 8, 1), 10),
    ("axial_imagenet32", "full", (32, 32, 3), 1000),
    ("mar", "tiny_masked", (8, 8, 1), 10),
    ("mar", "tiny_causal", (8, 8, 1), 10),
    ("mar", "full_causal", (32, 32, 3), 10),
]


def _load(name, variant):
    cfg_dict = experiments.load_config(ROOT / f"experiments/{name}/config.py:{variant}")
    return config_lib.from_config_dict(cfg_dict)


@pytest.mark.parametrize("name,variant,shape,classes", CASES)
def test_config_builds_for_its_data(name, variant, shape, classes):
    cfg = _load(name, variant)
    assert config_lib.from_config_dict(cfg.to_dict()) == cfg
    task = tasks.get(cfg.model.family)
    info = DataInfo("image", image_shape=shape, num_classes=classes)
    model = nnx.eval_shape(lambda: task.build(cfg.model, info, jax.numpy.float32, nnx.Rngs(0)))
    mc = model.config
    if name == "axial_imagenet32":
        assert (mc.height, mc.width, mc.channels) == shape
    else:
        assert (mc.image_size, mc.image_size, mc.channels) == shape
        assert mc.order == ("causal" if "causal" in variant else "masked")
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n > (1e7 if variant.startswith("full") else 1e4), n


@pytest.mark.slow  # the models' losses are tested in tests/models; this is the configs' sizes end to end
@pytest.mark.parametrize("name,variant", [(n, v) for n, v, *_ in CASES if v.startswith("tiny")])
def test_tiny_variant_loss_on_digits(name, variant):
    """The tiny model, built for real, gives a finite loss on two held-out digits; the axial
    model's untrained bits/dim is near 8 (uniform over 256 levels)."""
    cfg = _load(name, variant)
    task = tasks.get(cfg.model.family)
    test = corpora.digits("test")
    batch = {"image": test["image"][:2], "label": test["label"][:2]}
    info = DataInfo("image", image_shape=batch["image"].shape[1:], num_classes=10)
    model = task.build(cfg.model, info, jax.numpy.float32, nnx.Rngs(0))
    loss, metrics = nnx.jit(task.loss)(model, batch, jax.random.key(0))
    assert np.isfinite(float(loss)), (name, variant, metrics)
    if name == "axial_imagenet32":
        assert 6.0 < float(metrics["bits_per_dim"]) < 10.0, metrics


def test_unknown_variant_names_the_accepted_ones():
    with pytest.raises(ValueError, match="tiny_causal"):
        _load("mar", "tiny_sideways")
    with pytest.raises(ValueError, match="accepted"):
        _load("axial_imagenet32", "huge")


def test_image_families_registered():
    """Regression: the axial family's config class is AxialTransformerConfig (the task
    looked for 'AxialConfig' and failed with StopIteration)."""
    for family in ("axial", "mar"):
        assert tasks.get(family).kind == "image"
