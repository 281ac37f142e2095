"""The trainer's one table: a config's ``model.family`` -> :class:`Family`.

A model is built with one conversion at this boundary::

    config = Family.config.preset(model.preset, **data_fields, **model.overrides)
    model = Family.model(config, rngs=rngs)

where ``data_fields`` come from the data (vocabulary, image shape, classes) and the run's
compute dtype, and ``model.overrides`` are the experiment config's other ``model.*`` keys
(overrides win over data fields). Unknown fields are errors from the family's config.
``register`` adds a family (tests register tiny private ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

from jaxar import models
from jaxar.models import axial, bd3, lm, mar, mdlm, token_ar, var, vq
from jaxar.sampling import samplers
from jaxar.train import tokenizer as tokenizer_lib
from jaxar.train.config import ModelConfig

__all__ = ["Family", "FAMILIES", "register", "families", "get", "text_fields", "text_sample_bytes"]


def text_fields(info, dtype) -> dict[str, Any]:
    """A text family's data fields: the vocabulary and the compute dtype."""
    return dict(vocab_size=info.vocab_size, dtype=dtype)


def _axial_fields(info, dtype) -> dict[str, Any]:
    h, w, c = info.image_shape
    return dict(height=h, width=w, channels=c, dtype=dtype)


def _mar_fields(info, dtype) -> dict[str, Any]:
    h, w, c = info.image_shape
    if h != w:
        raise ValueError(f"the MAR family needs square images; the data's are {h}x{w}")
    return dict(image_size=h, channels=c, num_classes=info.num_classes, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class Family:
    """How the trainer drives one model family.

    Attributes:
      kind: the data it trains on.
      config: the family's frozen config class, with ``preset(name, **fields)``.
      model: the model class, ``model(config, rngs=...)``.
      loss: ``(model, batch, key) -> (scalar, dict of scalars)``, pure and jit-able.
      sampler: a :class:`jaxar.sampling.Sampler` (``sampler(model, key, num, **options)``):
        int tokens (B, L) for text, uint8 images (B, H, W, C) for images.
      data_fields: ``(DataInfo, dtype) -> dict`` of config fields set by the data.
      eval_keys: metrics reported by ``jaxar eval``, the first present is the headline.
      sample_bytes: ``(config, num, length) -> bytes`` a text sampler needs at least (so
        ``jaxar sample`` refuses an impossible length up front), or None.
    """

    kind: Literal["text", "image"]
    config: type
    model: Callable[..., Any]
    loss: Callable[..., Any]
    sampler: samplers.Sampler
    data_fields: Callable[[Any, Any], Mapping[str, Any]] = text_fields
    eval_keys: tuple[str, ...] = ("bits_per_token", "loss")
    sample_bytes: Callable[[Any, int, int], int] | None = None

    def make_config(self, model_cfg: ModelConfig, info, dtype):
        """``config.preset(model_cfg.preset, **data_fields, **model_cfg.overrides)``."""
        fields = {**self.data_fields(info, dtype), **dict(model_cfg.overrides)}
        return self.config.preset(model_cfg.preset, **fields)

    def build(self, model_cfg: ModelConfig, info, dtype, rngs):
        """The model of ``model_cfg`` for data ``info``; ``dtype`` is the compute dtype."""
        return self.model(self.make_config(model_cfg, info, dtype), rngs=rngs)

    def source(self, model_cfg: ModelConfig, source, *, data: str, split: str):
        """The rows the loss reads from a data ``source`` (here: the source itself)."""
        del model_cfg, data, split
        return source

    def sample(self, model, key, num: int, **options) -> np.ndarray:
        """``self.sampler(model, key, num, **options)`` as a host array."""
        return np.asarray(self.sampler(model, key, num, **options))


def text_sample_bytes(config, num: int, length: int) -> int:
    """float32 logits of ``num`` rows of ``length`` tokens plus a key/value cache per layer:
    ``4 num length (V + 2 layers D)`` bytes (a lower bound for the text families)."""
    return 4 * num * length * (config.vocab_size + 2 * config.num_layers * config.d_model)


def _text(config, model, loss, sampler) -> Family:
    return Family("text", config, model, loss, sampler, sample_bytes=text_sample_bytes)


FAMILIES: dict[str, Family] = {
    "lm": _text(models.LMConfig, models.LM, lm.loss, samplers.sample_lm),
    "mdlm": _text(models.MDLMConfig, models.MDLM, mdlm.loss, samplers.sample_mdlm),
    "bd3": _text(models.BD3Config, models.BD3, bd3.loss, samplers.sample_bd3),
    "axial": Family(
        "image",
        models.AxialTransformerConfig,
        models.AxialTransformer,
        axial.loss,
        samplers.sample_axial,
        _axial_fields,
        ("bits_per_dim", "loss"),
    ),
    "mar": Family(
        "image",
        models.MARConfig,
        models.MAR,
        mar.loss,
        samplers.sample_mar,
        _mar_fields,
        ("bits_per_dim", "loss"),
    ),
}


def register(name: str, family: Family) -> None:
    """Adds (or replaces) the family ``name``."""
    FAMILIES[name] = family


def families() -> tuple[str, ...]:
    return tuple(FAMILIES)


def get(name: str) -> Family:
    """The Family ``name``; ValueError naming the accepted families if unknown."""
    if name not in FAMILIES:
        raise ValueError(f"config.model.family={name!r} is not supported; accepted: {families()}")
    return FAMILIES[name]


# --------------------------------------------------------------------------- image tokens


def _vq_reconstructions(model, key, num, *, split):
    """``num`` held-out images of ``model.config.data`` then their reconstructions: a
    (2 num, H, W, C) uint8 grid (originals in the first half). Stored images of another
    size than the tokenizer's ``image_size`` (a run with ``data.image_size``) are resized
    on the short side and centre-cropped to it first (``jaxar.data.images.ImagePrep``)."""
    from jaxar.data import corpora  # lazily, as by the trainer
    from jaxar.data import images as images_lib

    del key
    sets = {"digits": corpora.digits, "photos": corpora.photos}
    name = model.config.data
    if name not in sets:
        raise ValueError(
            f"config.model.data={name!r}: reconstruction grids need an embedded image set; "
            f"accepted: {tuple(sets)}"
        )
    images = sets[name](split)["image"][:num]
    size = model.config.image_size
    if images.shape[1:3] != (size, size):
        prep = images_lib.ImagePrep(size)
        images = np.stack([prep(im) for im in images])
    return np.concatenate([images, np.asarray(model.reconstruct(images))], 0)


sample_vq = samplers.Sampler("sample_vq", _vq_reconstructions, dict(split="test"))


def _token_fields(info, dtype) -> dict[str, Any]:
    h, w, c = info.image_shape
    return dict(image_size=h, channels=c, num_classes=info.num_classes, dtype=dtype)


# token family -> the tokenizer's fields it copies (token field name, tokenizer value)
_FROM_TOKENIZER = {
    "token_ar": lambda t: dict(num_codes=t.num_codes, grid=t.grid),
    "var": lambda t: dict(num_codes=t.num_codes, latent_dim=t.latent_dim, scales=t.scales),
}


@dataclasses.dataclass(frozen=True)
class TokenFamily(Family):
    """A family over a trained tokenizer's codes (``model.tokenizer_workdir``): the code
    count, grid / scales and code dimension come from the tokenizer; an override that
    disagrees with it, or data of another image shape, is an error."""

    name: str = "token_ar"

    def make_config(self, model_cfg: ModelConfig, info, dtype, *, tokenizer=None):
        """As :meth:`Family.make_config`, with the code fields of the tokenizer in
        ``model.tokenizer_workdir`` (or of the VQConfig ``tokenizer``, for shapes only)."""
        overrides = dict(model_cfg.overrides)
        workdir = overrides.get("tokenizer_workdir", "")
        tok = tokenizer_lib.tokenizer_config(workdir) if tokenizer is None else tokenizer
        for k, v in _FROM_TOKENIZER[self.name](tok).items():
            given = overrides.get(k, v)
            if (tuple(given) if isinstance(given, list | tuple) else given) != v:
                raise ValueError(
                    f"config.model.{k}={given!r} does not match the tokenizer in "
                    f"{workdir!r} ({k} = {v!r}); accepted: {v!r} or unset"
                )
            overrides[k] = v
        if (tok.image_size, tok.image_size, tok.channels) != tuple(info.image_shape):
            raise ValueError(
                f"the tokenizer in {workdir!r} takes {tok.image_size}x{tok.image_size}x"
                f"{tok.channels} images; the data's are {info.image_shape}"
            )
        if self.name == "token_ar" and tok.quantizer not in ("vq", "vq_ema", "fsq", "lfq"):
            raise ValueError(
                f"token_ar needs one code per position (quantizer vq, vq_ema, fsq or lfq); the "
                f"tokenizer in {workdir!r} uses {tok.quantizer!r}"
            )
        return self.config.preset(
            model_cfg.preset, **{**self.data_fields(info, dtype), **overrides}
        )

    def source(self, model_cfg: ModelConfig, source, *, data: str, split: str):
        """The split's codes, encoded once by the frozen tokenizer and cached in its run
        directory (``jaxar.train.tokenizer.code_source``)."""
        workdir = dict(model_cfg.overrides).get("tokenizer_workdir", "")
        return tokenizer_lib.code_source(workdir, source, data=data, split=split)


def _with_tokenizer(cls):
    def build(config, *, rngs):
        return cls(
            config, rngs=rngs, tokenizer=tokenizer_lib.load_tokenizer(config.tokenizer_workdir)
        )

    return build


FAMILIES["vq"] = Family(
    "image", vq.VQConfig, vq.VQ, vq.loss, sample_vq, tokenizer_lib.vq_fields,
    ("mse", "recon", "loss"),
)  # fmt: skip
FAMILIES["token_ar"] = TokenFamily(
    "image", token_ar.TokenARConfig, _with_tokenizer(token_ar.TokenAR), token_ar.loss,
    samplers.sample_token_ar, _token_fields, ("bits_per_token", "loss"), name="token_ar",
)  # fmt: skip
FAMILIES["var"] = TokenFamily(
    "image", var.VARConfig, _with_tokenizer(var.VAR), var.loss, samplers.sample_var,
    _token_fields, ("bits_per_token", "loss"), name="var",
)  # fmt: skip
