"""A trained image tokenizer read back from its run directory, for the token families.

``load_tokenizer(workdir)`` reads ``workdir/config.json`` (a ``vq`` family run), rebuilds
its :class:`jaxar.models.vq.VQConfig` exactly as the trainer did, and restores the
newest good checkpoint's weights (the EMA weights when the run kept them). The weights
are read once per process (cached by path) as host arrays, so building a token model
under ``jit`` / ``eval_shape`` reads no file twice.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.models.vq import VQ, VQConfig
from jaxar.train import optim
from jaxar.train import step as step_lib
from jaxar.train.checkpoint import Checkpointer
from jaxar.train.config import from_config_dict

__all__ = ["vq_fields", "tokenizer_config", "load_tokenizer"]


def vq_fields(info, dtype) -> dict[str, Any]:
    """The vq family's data fields: square image side, channels, classes, dtype."""
    h, w, c = info.image_shape
    if h != w:
        raise ValueError(f"the image tokenizer needs square images; the data's are {h}x{w}")
    return dict(image_size=h, channels=c, num_classes=info.num_classes, dtype=dtype)


def _run_config(workdir: str):
    if not workdir:
        raise ValueError(
            "config.model.tokenizer_workdir='' is required; accepted: the run directory of a "
            "trained tokenizer (e.g. jaxar train --config vq_tokenizer:tiny)"
        )
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(
            f"config.model.tokenizer_workdir={workdir!r} holds no config.json; accepted: the "
            "run directory of a trained vq tokenizer"
        )
    cfg = from_config_dict(json.loads(path.read_text()))
    if cfg.model.family != "vq":
        raise ValueError(
            f"config.model.tokenizer_workdir={workdir!r} is a {cfg.model.family!r} run; "
            "accepted: a 'vq' family run"
        )
    return cfg


def tokenizer_config(workdir: str) -> VQConfig:
    """The VQConfig of the tokenizer trained in ``workdir`` (no weights are read)."""
    from jaxar.data import sources  # the data layer is imported lazily, as by the trainer

    cfg = _run_config(workdir)
    d = cfg.data
    _, info = sources.load(
        d.name, d.train_split, seq_len=d.seq_len, packing=d.packing, data_dir=d.data_dir
    )
    fields = {**vq_fields(info, jnp.float32), **dict(cfg.model.overrides)}
    return VQConfig.preset(cfg.model.preset, **fields)


@functools.cache
def _weights(workdir: str):
    cfg = _run_config(workdir)
    vq_cfg = tokenizer_config(workdir)
    with jax.ensure_compile_time_eval():
        params = nnx.state(VQ(vq_cfg, rngs=nnx.Rngs(0)), nnx.Param)
        state = step_lib.init_state(params, optim.make(cfg), seed=cfg.seed, ema=cfg.ema_decay > 0)
        directory = pathlib.Path(workdir) / "checkpoints"
        if not directory.is_dir():
            raise ValueError(
                f"config.model.tokenizer_workdir={workdir!r} has no checkpoints/ (train it first)"
            )
        ckpt = Checkpointer(directory, read_only=True)
        try:
            restored, _ = ckpt.restore(state)
        finally:
            ckpt.close()
        weights = restored.get("ema", restored["params"])
        return vq_cfg, jax.tree.map(np.asarray, weights)


def load_tokenizer(workdir: str) -> VQ:
    """The trained :class:`VQ` of ``workdir`` (a ``vq`` family run)."""
    key = str(pathlib.Path(workdir).absolute()) if workdir else workdir
    vq_cfg, weights = _weights(key)
    model = VQ(vq_cfg, rngs=nnx.Rngs(0))
    nnx.update(model, jax.tree.map(jnp.asarray, weights))
    return model
