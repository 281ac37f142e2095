"""The trainer's validated, frozen configuration, and its conversion from ``ml_collections``.

Experiment configs (``get_config()`` in ``jaxar.experiments.<name>.config``, found by
:mod:`jaxar.train.experiments`) return an ``ml_collections.ConfigDict``;
:func:`from_config_dict` converts it once into :class:`TrainConfig` (errors name the field,
the value and what is accepted); :func:`apply_overrides` applies ``--config.a.b=value``
command-line overrides to the ConfigDict first. Run recipes live with the experiments
(``jaxar.experiments.common``), not here.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

NONFINITE_POLICIES = ("skip", "stop")
DTYPES = ("float32", "bfloat16")


def _err(field: str, value, accepted: str) -> ValueError:
    return ValueError(f"config.{field}={value!r} is invalid; accepted: {accepted}")


def _positive_int(obj, *names: str, allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(obj, n)
        ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
        if not ok:
            raise _err(f"{obj._prefix}{n}", v, "an integer " + (">= 0" if allow_zero else "> 0"))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which model: ``family`` (a name in ``jaxar.train.tasks.FAMILIES``), a ``preset`` of
    the family's config, and ``overrides`` of its fields (e.g. ``mixer="gateloop"``,
    ``d_model=256``). The trainer builds ``Config.preset(preset, **data_fields,
    **overrides)``; an unknown field is an error from the family's config."""

    family: str = "lm"
    preset: str = "tiny"
    overrides: tuple[tuple[str, Any], ...] = ()
    _prefix = "model."

    def __post_init__(self):
        if not isinstance(self.family, str) or not self.family:
            raise _err("model.family", self.family, "a family name (jaxar.train.tasks.FAMILIES)")
        if not isinstance(self.preset, str) or not self.preset:
            raise _err("model.preset", self.preset, "a preset name of the family's config")
        object.__setattr__(self, "overrides", tuple(sorted(dict(self.overrides).items())))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data: ``name`` (``stdlib``, ``digits`` or ``tfds:<name>``), rows of
    ``seq_len`` tokens for text, ``packing`` (``concat`` with segment ids or ``pad``).

    Images: ``image_size`` S > 0 resizes the short side to ``round(image_ratio * S)`` and
    crops S x S (``jaxar.data.images.ImagePrep``; 0 keeps the stored images); the training
    split may take a ``random_crop`` and a ``random_flip``, evaluation takes the centre."""

    name: str = "stdlib"
    seq_len: int = 128
    packing: str = "concat"
    train_split: str = "train"
    eval_split: str = "test"
    data_dir: str | None = None
    prefetch: int = 2
    image_size: int = 0
    image_ratio: float = 1.0
    random_crop: bool = False
    random_flip: bool = False
    resample: str = "bicubic"
    _prefix = "data."

    def __post_init__(self):
        from jaxar.data.sources import EMBEDDED

        if not isinstance(self.name, str) or not (
            self.name in EMBEDDED or self.name.startswith("tfds:")
        ):
            raise _err("data.name", self.name, f"{EMBEDDED} or 'tfds:<dataset>'")
        _positive_int(self, "seq_len")
        _positive_int(self, "prefetch", allow_zero=True)
        if self.seq_len < 2:
            raise _err("data.seq_len", self.seq_len, "an integer >= 2")
        if self.packing not in ("concat", "pad"):
            raise _err("data.packing", self.packing, "'concat' or 'pad'")
        _positive_int(self, "image_size", allow_zero=True)
        for n in ("random_crop", "random_flip"):
            if not isinstance(getattr(self, n), bool):
                raise _err(f"data.{n}", getattr(self, n), "True or False")
        r = self.image_ratio
        if isinstance(r, bool) or not isinstance(r, int | float) or not 1 <= r <= 4:
            raise _err("data.image_ratio", r, "a number in [1, 4]")
        from jaxar.data.images import RESAMPLE

        if self.resample not in RESAMPLE:
            raise _err("data.resample", self.resample, str(RESAMPLE))
        if self.image_size == 0 and (self.random_crop or self.random_flip):
            raise _err(
                "data.image_size", 0, "an integer > 0 when data.random_crop/random_flip is set"
            )

    def image_prep(self, *, train: bool):
        """The :class:`jaxar.data.images.ImagePrep` of the training (``train``) or
        evaluation split, or None (``image_size`` 0)."""
        if not self.image_size:
            return None
        from jaxar.data.images import ImagePrep

        return ImagePrep(
            self.image_size,
            float(self.image_ratio),
            random_crop=self.random_crop and train,
            flip=self.random_flip and train,
            resample=self.resample,
        )


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; ``-1`` takes the remaining devices (see ``jaxar.sharding``)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    _prefix = "mesh."

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        for n, v in zip(("data", "fsdp", "tensor"), sizes, strict=True):
            if not isinstance(v, int) or isinstance(v, bool) or (v < 1 and v != -1):
                raise _err(f"mesh.{n}", v, "an integer >= 1, or -1 for the remaining devices")
        if sizes.count(-1) > 1:
            raise _err("mesh", sizes, "at most one axis size -1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs (see the field comments)."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()
    steps: int = 1000
    batch_size: int = 32  # global rows per optimizer step
    seed: int = 0
    # optimisation: AdamW, linear warmup then cosine decay to min_lr_ratio * learning_rate
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0  # global-norm clipping; 0 disables
    grad_accum: int = 1  # micro-batches per step (batch_size must divide)
    ema_decay: float = 0.0  # 0 disables the EMA of weights
    compute_dtype: str = "float32"  # "bfloat16": mixed precision (params stay float32)
    # host loop
    log_every: int = 50
    eval_every: int = 500
    eval_batches: int = 8
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    nonfinite: str = "skip"  # non-finite loss or gradients: "skip" the update or "stop"
    max_consecutive_skips: int = 10  # "skip" gives up (an error) after this many in a row
    num_samples: int = 4  # samples written at the end of training (0 = none)
    sample_length: int = 256
    _prefix = ""

    def __post_init__(self):
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("mesh", MeshConfig)):
            if not isinstance(getattr(self, name), cls):
                raise _err(name, getattr(self, name), f"a {cls.__name__}")
        _positive_int(self, "steps", "batch_size", "grad_accum", "log_every", "eval_every")
        _positive_int(self, "checkpoint_every", "keep_checkpoints", "sample_length")
        _positive_int(self, "max_consecutive_skips")
        _positive_int(self, "seed", "warmup_steps", "eval_batches", "num_samples", allow_zero=True)
        for n in ("learning_rate", "weight_decay", "grad_clip", "min_lr_ratio", "b1", "b2"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise _err(n, v, "a number >= 0")
        if self.learning_rate <= 0:
            raise _err("learning_rate", self.learning_rate, "a number > 0")
        for n in ("b1", "b2", "min_lr_ratio"):
            if getattr(self, n) > 1:
                raise _err(n, getattr(self, n), "a number in [0, 1]")
        if not (isinstance(self.ema_decay, int | float) and 0 <= self.ema_decay < 1):
            raise _err("ema_decay", self.ema_decay, "a number in [0, 1) (0 disables the EMA)")
        if self.batch_size % self.grad_accum:
            raise _err("grad_accum", self.grad_accum, f"a divisor of batch_size={self.batch_size}")
        if self.compute_dtype not in DTYPES:
            raise _err("compute_dtype", self.compute_dtype, str(DTYPES))
        if self.nonfinite not in NONFINITE_POLICIES:
            raise _err("nonfinite", self.nonfinite, str(NONFINITE_POLICIES))
        if not isinstance(self.async_checkpoints, bool):
            raise _err("async_checkpoints", self.async_checkpoints, "True or False")

    def to_dict(self) -> dict:
        """A nested dict in the experiment-config layout (model options flattened), which
        :func:`from_config_dict` turns back into an equal TrainConfig."""
        d = dataclasses.asdict(self)
        d["model"] = {"family": self.model.family, "preset": self.model.preset}
        d["model"].update(self.model.overrides)
        return d


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "mesh": MeshConfig}


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_config_dict(cfg: Mapping) -> TrainConfig:
    """Converts an ``ml_collections.ConfigDict`` (or a nested dict) into a TrainConfig.

    Unknown keys are errors naming the key and the accepted ones; ``model`` accepts
    ``family``, ``preset`` and any further keys, which become ``ModelConfig.overrides``.
    """
    d = _to_dict(cfg)
    top = _fields(TrainConfig)
    unknown = sorted(set(d) - set(top))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; accepted: {top}")
    kw = {}
    for k, v in d.items():
        if k in _SECTIONS:
            if not isinstance(v, Mapping):
                raise _err(k, v, "a nested config")
            v = dict(v)
            if k == "model":
                family = v.pop("family", "lm")
                preset = v.pop("preset", "tiny")
                kw[k] = ModelConfig(family=family, preset=preset, overrides=tuple(v.items()))
                continue
            accepted = _fields(_SECTIONS[k])
            bad = sorted(set(v) - set(accepted))
            if bad:
                raise ValueError(
                    f"unknown config field(s) {[f'{k}.{b}' for b in bad]}; "
                    f"accepted: {[f'{k}.{a}' for a in accepted]}"
                )
            kw[k] = _SECTIONS[k](**v)
        else:
            kw[k] = v
    return TrainConfig(**kw)


def _to_dict(cfg) -> dict:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return {k: (_to_dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}


def parse_value(text: str):
    """A Python literal (``3``, ``1e-3``, ``True``, ``None``, ``(1, 2)``) or else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(cfg, overrides: Sequence[str]):
    """Applies ``a.b=value`` overrides to a ConfigDict in place and returns it.

    Raises:
      ValueError: naming the field and the accepted fields (or the expected type).
    """
    import ml_collections

    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like --config.field=value")
        path, text = item.split("=", 1)
        parts = path.split(".")
        node = cfg
        for i, p in enumerate(parts[:-1]):
            if p not in node or not isinstance(node[p], Mapping | ml_collections.ConfigDict):
                raise ValueError(
                    f"unknown config field {'.'.join(parts[: i + 1])!r}; accepted: "
                    f"{sorted(node.keys())}"
                )
            node = node[p]
        leaf = parts[-1]
        is_model = len(parts) == 2 and parts[0] == "model"
        if leaf not in node and not is_model:
            prefix = ".".join(parts[:-1])
            prefix = prefix + "." if prefix else ""
            raise ValueError(
                f"unknown config field {path!r}; accepted: {[prefix + k for k in sorted(node)]}"
            )
        value = parse_value(text)
        old = node[leaf] if leaf in node else None
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, str) and not isinstance(value, str):
            value = text
        try:
            if isinstance(node, ml_collections.ConfigDict) and leaf not in node:
                with node.unlocked():
                    node[leaf] = value
            else:
                node[leaf] = value
        except TypeError as e:
            raise ValueError(
                f"config.{path}={text!r} has the wrong type; expected {type(old).__name__} ({e})"
            ) from e
    return cfg
