"""The task registry: a config's ``model.family`` -> how to build, train, sample, evaluate.

Each family's module ``jaxar.models.<family>`` provides ``loss(model, batch, key) ->
(loss, metrics)`` and ``sample(model, key, num, **kw)`` (the contract's training hooks)
and a config with presets; a :class:`Task` adapts them to the trainer. Modules are
imported lazily; a family whose module is missing is a clear error. ``register`` adds a
task (tests register tiny private models this way).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxar.train.config import FAMILIES, ModelConfig


@dataclasses.dataclass(frozen=True)
class Task:
    """How the trainer drives one model family.

    Attributes:
      kind: ``"text"`` or ``"image"`` (which data it trains on).
      build: ``(model_cfg, info, dtype, rngs) -> nnx.Module``; ``dtype`` is the compute dtype.
      loss: ``(model, batch, key) -> (scalar, dict of scalars)``, pure and jit-able.
      sample: ``(model, key, num, info, length) -> np.ndarray``: int tokens (B, L) for text,
        uint8 images (B, H, W, C) for images.
      eval_keys: metrics reported by ``jaxar eval``, the first present is the headline.
    """

    kind: str
    build: Callable[..., Any]
    loss: Callable[..., Any]
    sample: Callable[..., np.ndarray]
    eval_keys: tuple[str, ...] = ("bits_per_token", "loss")


_REGISTRY: dict[str, Task | Callable[[], Task]] = {}


def register(family: str, task: Task | Callable[[], Task]) -> None:
    """Registers a Task (or a zero-argument factory returning one) under ``family``."""
    _REGISTRY[family] = task


def families() -> tuple[str, ...]:
    return tuple(dict.fromkeys((*FAMILIES, *_REGISTRY)))


def get(family: str) -> Task:
    """The Task for ``family``; ValueError naming the accepted families if unknown."""
    if family not in _REGISTRY:
        raise ValueError(f"config.model.family={family!r} is not supported; accepted: {families()}")
    entry = _REGISTRY[family]
    return entry if isinstance(entry, Task) else entry()


def _module(family: str):
    name = f"jaxar.models.{family}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise ValueError(
                f"model family {family!r} needs module {name}, which is not available in "
                f"this version of jaxar"
            ) from e
        raise


def _dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _call_with(fn, options: dict, what: str, **fixed):
    """``fn(**fixed, **options)`` with an error naming a bad option and the accepted ones."""
    params = inspect.signature(fn).parameters
    takes_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    bad = [k for k in options if k not in params and not takes_kw]
    if bad:
        accepted = [k for k in params if k not in fixed and k != "self" and k != "cls"]
        raise ValueError(f"unknown {what} option(s) {bad}; accepted: {accepted}")
    try:
        return fn(**fixed, **options)
    except TypeError as e:
        raise ValueError(f"bad {what} options {options}: {e}") from e


# ----------------------------------------------------------------------------- lm

LM_SIZES = {  # preset -> (d_model, num_layers, num_heads)
    "tiny": (128, 2, 4),
    "small": (256, 4, 4),
    "medium": (512, 8, 8),
    "base": (768, 12, 12),
}


def _mixer(name: str, num_heads: int, options: dict):
    if name == "attention":
        from jaxar.nn.attention import AttentionConfig

        return _call_with(AttentionConfig, options, "attention mixer", num_heads=num_heads)
    if name == "gateloop":
        from jaxar.nn.gateloop import GateLoopConfig

        options = {"num_heads": num_heads, **options}
        return _call_with(GateLoopConfig, options, "gateloop mixer")
    if name == "gss":
        from jaxar.nn.gss import GSSConfig

        return _call_with(GSSConfig, options, "gss mixer")
    raise ValueError(
        f"config.model.mixer={name!r} is not supported; accepted: ('attention', 'gateloop', 'gss')"
    )


def lm_config(model_cfg: ModelConfig, vocab_size: int, dtype, *, causal: bool = True):
    """An ``LMConfig`` from a preset size and options: ``mixer`` ('attention' |
    'gateloop' | 'gss', or a sequence of them cycled over layers, e.g. ``("gss",
    "attention")`` for GSS-Hybrid), ``mixer_options`` (a dict; with several mixers a dict
    from mixer name to its options), ``num_heads``, and any ``LMConfig`` field."""
    lm = _module("lm")
    if model_cfg.preset not in LM_SIZES:
        raise ValueError(
            f"config.model.preset={model_cfg.preset!r} is not supported; accepted: "
            f"{tuple(LM_SIZES)}"
        )
    d, layers, heads = LM_SIZES[model_cfg.preset]
    opts = model_cfg.kwargs
    mixer = opts.pop("mixer", "attention")
    mixer_options = dict(opts.pop("mixer_options", {}) or {})
    heads = opts.pop("num_heads", heads)
    if mixer == "attention" and not causal:
        mixer_options.setdefault("causal", False)
    if isinstance(mixer, str):
        mixers = (_mixer(mixer, heads, mixer_options),)
    else:
        bad = sorted(set(mixer_options) - set(mixer))
        if bad:
            raise ValueError(
                f"config.model.mixer_options keys {bad} name no mixer in config.model.mixer="
                f"{tuple(mixer)}; with several mixers the options map a mixer name to a dict"
            )
        mixers = tuple(_mixer(m, heads, dict(mixer_options.get(m, {}) or {})) for m in mixer)
    fixed = dict(vocab_size=vocab_size, mixers=mixers)
    fixed.setdefault("d_model", d)
    fixed.setdefault("num_layers", layers)
    for k in ("d_model", "num_layers"):
        if k in opts:
            fixed[k] = opts.pop(k)
    fields = {f.name for f in dataclasses.fields(lm.LMConfig)}
    if "dtype" in fields:
        fixed["dtype"] = dtype
    return _call_with(lm.LMConfig, opts, "model", **fixed)


def _build_lm(model_cfg, info, dtype, rngs):
    lm = _module("lm")
    return lm.LM(lm_config(model_cfg, info.vocab_size, dtype), rngs=rngs)


def _lm_loss(model, batch, key):
    lm = _module("lm")
    return lm.loss(model, batch, key)


def _lm_sample(model, key, num, info, length):
    import jax.numpy as jnp

    lm = _module("lm")
    prompt = jnp.full((num, 1), ord("\n"), jnp.int32)
    out = lm.sample(model, key, num, max_new_tokens=length - 1, prompt=prompt)
    return np.asarray(getattr(out, "tokens", out))


def _lm_task() -> Task:
    return Task("text", _build_lm, _lm_loss, _lm_sample)


# ----------------------------------------------------------------------- mdlm, bd3


def _diffusion_task(family: str) -> Task:
    mod = _module(family)
    cfg_cls = mod.MDLMConfig if family == "mdlm" else mod.BD3Config
    model_cls = mod.MDLM if family == "mdlm" else mod.BD3

    def build(model_cfg, info, dtype, rngs):
        opts = model_cfg.kwargs
        lm_keys = ("d_model", "num_layers", "num_heads", "mixer", "mixer_options")
        lm_opts = {k: opts.pop(k) for k in lm_keys if k in opts}
        if lm_opts:  # the backbone from LM-style options (bidirectional attention)
            if lm_opts.get("mixer", "attention") != "attention":
                raise ValueError(
                    f"config.model.mixer={lm_opts['mixer']!r} is not supported for {family}; "
                    "accepted: 'attention'"
                )
            size = model_cfg.preset if model_cfg.preset in LM_SIZES else "tiny"
            extra = dict(opts.pop("lm_kwargs", {}) or {})
            lm_cfg = lm_config(
                ModelConfig("lm", size, tuple({**lm_opts, **extra}.items())),
                info.vocab_size + 1,
                dtype,
                causal=False,
            )
            cfg = _call_with(cfg_cls, opts, f"{family} model", lm=lm_cfg)
            return model_cls(cfg, rngs=rngs)
        lm_kwargs = dict(opts.pop("lm_kwargs", {}) or {})
        lm_kwargs.setdefault("dtype", dtype)
        cfg = _call_with(
            cfg_cls.preset,
            opts,
            f"{family} model",
            name=model_cfg.preset,
            vocab_size=info.vocab_size,
            lm_kwargs=lm_kwargs,
        )
        return model_cls(cfg, rngs=rngs)

    def sample(model, key, num, info, length):
        if family == "mdlm":
            kw = {"length": length}
        else:  # whole blocks, cut back to the asked length
            kw = {"max_len": -(-length // model.config.block_size) * model.config.block_size}
        out = mod.sample(model, key, num, **kw)
        return np.asarray(getattr(out, "tokens", out))[:, :length]

    return Task("text", build, mod.loss, sample, ("bits_per_token", "loss"))


# ----------------------------------------------------------------------- axial, mar


# image family -> its model class in jaxar.models.<family> (the config is "<class>Config")
IMAGE_MODELS = {"axial": "AxialTransformer", "mar": "MAR"}


def _image_task(family: str) -> Task:
    """Image families: ``<Model>Config.preset(name, **options)`` and the model class;
    image size and channels follow the data, ``dtype`` the compute dtype."""
    mod = _module(family)
    model_cls = getattr(mod, IMAGE_MODELS[family])
    cfg_cls = getattr(mod, f"{IMAGE_MODELS[family]}Config")
    fields = {f.name for f in dataclasses.fields(cfg_cls)}

    def build(model_cfg, info, dtype, rngs):
        opts = model_cfg.kwargs
        h, w, c = info.image_shape
        defaults = {"dtype": dtype, "height": h, "width": w}
        if h == w:
            defaults.update(image_size=h)
        defaults.update(channels=c, num_classes=info.num_classes)
        for k, v in defaults.items():
            if k in fields and v is not None:
                opts.setdefault(k, v)
        cfg = _call_with(cfg_cls.preset, opts, f"{family} model", name=model_cfg.preset)
        return model_cls(cfg, rngs=rngs)

    def sample(model, key, num, info, length):
        out = mod.sample(model, key, num)
        return np.asarray(getattr(out, "images", out))

    return Task("image", build, mod.loss, sample, ("bits_per_dim", "loss"))


register("lm", _lm_task)
register("mdlm", lambda: _diffusion_task("mdlm"))
register("bd3", lambda: _diffusion_task("bd3"))
register("axial", lambda: _image_task("axial"))
register("mar", lambda: _image_task("mar"))
