"""The vq family's reconstruction grid (``jaxar sample`` / the trainer's samples) shows the
evaluation images as the model trains on them: resized and cropped by ``data.image_size``."""

import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.data import sources
from jaxar.train import config as config_lib
from jaxar.train import tasks


def test_reconstruction_grid_uses_the_training_crops():
    """digits are 8x8; ``data.image_size=4`` trains the tokenizer on 4x4 crops, and the grid
    holds those crops and their reconstructions (the raw 8x8 set alone is refused)."""
    cfg = config_lib.from_config_dict(
        dict(
            model=dict(family="vq", preset="tiny", width=8, codebook_size=16),
            data=dict(name="digits", image_size=4),
        )
    )
    train, info = sources.load("digits", "train", seq_len=1, image=cfg.data.image_prep(train=True))
    held_out, _ = sources.load("digits", "test", seq_len=1, image=cfg.data.image_prep(train=False))
    family = tasks.get("vq")
    model = family.build(cfg.model, info, jnp.float32, nnx.Rngs(0))
    assert train[0]["image"].shape == (4, 4, 1) == (model.config.image_size,) * 2 + (1,)
    run = types.SimpleNamespace(eval_source=held_out)  # what Family.sample reads of a Run
    prepared = np.stack([held_out[i]["image"] for i in range(3)])
    grid = family.sample(model, None, 3, run=run)
    assert grid.shape == (6, 4, 4, 1) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:3], prepared)
    np.testing.assert_array_equal(grid[3:], np.asarray(model.reconstruct(prepared)))
    with pytest.raises(ValueError, match=r"'digits' images are \(8, 8, 1\).*accepted: images="):
        family.sample(model, None, 3)
    with pytest.raises(ValueError, match=r"images=float32\(3, 4, 4, 1\) is not supported"):
        family.sample(model, None, 3, images=prepared.astype(np.float32))
