"""What the experiment configs share: run recipes and :func:`config_dict`.

A recipe is a named set of :class:`jaxar.train.config.TrainConfig` fields (steps, batch,
schedule, logging) that several experiments run with, written once so that compared runs
match by construction. ``config_dict(recipe=name, ...)`` starts from the TrainConfig
defaults, applies the recipe, then the experiment's own fields.

Experiment configs import this module as ``jaxar.experiments.common`` (installed, or from a
source checkout through :mod:`jaxar.train.experiments`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxar.train.config import TrainConfig, from_config_dict

__all__ = ["RECIPES", "config_dict", "TOKEN_VARIANTS", "token_family_config"]

RECIPES: dict[str, dict[str, Any]] = {
    # the tiny variants: 300 steps on 2 CPU cores, one evaluation and checkpoint at the end
    "cpu_tiny": dict(
        steps=300,
        warmup_steps=30,
        log_every=25,
        eval_every=300,
        checkpoint_every=300,
        keep_checkpoints=1,
        num_samples=2,
        sample_length=128,
    ),
    # the LM comparison's tiny budget (rows of 256 bytes): one definition, so that the
    # transformer / GateLoop / GSS / GSS-Hybrid tiny runs see the same tokens
    "lm_tiny_256": dict(
        steps=300,
        batch_size=8,
        warmup_steps=30,
        log_every=25,
        eval_every=300,
        eval_batches=64,
        checkpoint_every=300,
        keep_checkpoints=1,
        num_samples=2,
        sample_length=128,
    ),
    # accelerator-scale autoregressive LM training (GateLoop / GSS / transformer baselines)
    "lm_accelerator": dict(
        learning_rate=6e-4,
        compute_dtype="bfloat16",
        keep_checkpoints=3,
        num_samples=4,
        sample_length=512,
    ),
    # the WikiText-103-scale schedule shared by gateloop_lm:full and its transformer
    # baseline (rows of 2048 bytes, 64 rows = 131k bytes per step, 5.2B bytes in all)
    "lm_wikitext": dict(
        steps=40_000,
        batch_size=64,
        learning_rate=6e-4,
        warmup_steps=2000,
        compute_dtype="bfloat16",
        log_every=100,
        eval_every=5000,
        eval_batches=64,
        checkpoint_every=2000,
        keep_checkpoints=3,
        num_samples=4,
        sample_length=512,
    ),
    # the token families' tiny runs (llamagen, var) over a tiny tokenizer's codes
    "token_tiny": dict(
        steps=600,
        batch_size=32,
        learning_rate=2e-3,
        warmup_steps=30,
        log_every=50,
        eval_every=600,
        eval_batches=7,
        checkpoint_every=600,
        keep_checkpoints=1,
        num_samples=16,
    ),
    # the tiny image variants on the embedded digits: 600 steps, all 297 held-out digits
    "digits_tiny": dict(
        steps=600,
        warmup_steps=30,
        batch_size=32,
        log_every=25,
        eval_every=300,
        eval_batches=9,
        checkpoint_every=300,
        keep_checkpoints=1,
        num_samples=16,
        sample_length=128,  # unused by image models (whole images are sampled)
    ),
    # accelerator-scale image models (Axial Transformer, MAR): batch 256, AdamW 3e-4, bf16
    "image_accelerator": dict(
        steps=200_000,
        batch_size=256,
        learning_rate=3e-4,
        warmup_steps=4000,
        compute_dtype="bfloat16",
        log_every=500,
        eval_every=10_000,
        checkpoint_every=5000,
        keep_checkpoints=3,
        num_samples=16,
        sample_length=512,  # unused by image models
    ),
    # accelerator-scale byte-level code LMs on 4096-byte rows (GSS, GSS-Hybrid)
    "code_4096": dict(
        steps=1000,  # ~11 epochs of the stdlib corpus; ~100k with a large code corpus
        batch_size=32,  # 131k bytes per step
        learning_rate=6e-4,
        warmup_steps=100,
        compute_dtype="bfloat16",
        log_every=50,
        eval_every=500,
        eval_batches=16,
        checkpoint_every=500,
        keep_checkpoints=3,
        num_samples=4,
        sample_length=512,
    ),
    # the MDLM / BD3-LM papers: AdamW 3e-4, 2.5k warmup then constant, EMA 0.9999, batch 512
    "diffusion_paper": dict(
        batch_size=512,
        learning_rate=3e-4,
        warmup_steps=2500,
        min_lr_ratio=1.0,
        weight_decay=0.0,
        ema_decay=0.9999,
        compute_dtype="bfloat16",
        log_every=1000,
        eval_every=50_000,
        eval_batches=64,
        checkpoint_every=10_000,
        keep_checkpoints=3,
        num_samples=4,
    ),
}


def config_dict(
    *,
    model: Mapping,
    data: Mapping | None = None,
    mesh: Mapping | None = None,
    recipe: str | None = None,
    **fields,
) -> ml_collections.ConfigDict:
    """An experiment's ``ml_collections.ConfigDict``: every :class:`TrainConfig` field at its
    default, then the ``recipe`` (a name in ``RECIPES``), then ``model`` (``family``,
    ``preset`` and the family's options), ``data``, ``mesh`` and top-level ``fields`` (e.g.
    ``steps=300``). Checked once by :func:`from_config_dict`, so a misspelt field fails
    here, naming the accepted ones. Every field is present, so ``--config.<field>=value``
    can override any of them."""
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} is not supported; accepted: {tuple(RECIPES)}")
    fields = {**RECIPES.get(recipe, {}), **fields}
    d = TrainConfig().to_dict()
    d["model"] = dict(model)
    for name, section in (("data", data), ("mesh", mesh)):
        d[name].update(section or {})
    d.update(fields)
    from_config_dict(d)
    return ml_collections.ConfigDict(d)


TOKEN_VARIANTS = ("tiny", "photos", "cifar10", "full")


def token_family_config(
    family: str, variant: str, *, quantizer: str, full: Mapping, **full_fields
) -> ml_collections.ConfigDict:
    """The token families' variants (``llamagen``: token_ar over a ``vq`` tokenizer; ``var``
    over an ``msrq`` one), reading the tokenizer run ``jaxar_runs/vq_tokenizer_<v>``:

    * ``tiny`` / ``photos``: the ``tiny`` preset on digits / photos through
      ``tiny_<quantizer>`` / ``photos_<quantizer>`` (recipe ``token_tiny``);
    * ``cifar10``: D=256, 8 layers, 8 heads on ``tfds:cifar10`` through
      ``cifar10_<quantizer>``, 100k steps (recipe ``image_accelerator``);
    * ``full``: model fields ``full`` (the paper preset) on ImageNet through ``full`` (vq)
      or ``full_<quantizer>``, recipe ``image_accelerator`` and ``full_fields``.
    """
    if variant not in TOKEN_VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {TOKEN_VARIANTS}")
    if variant == "full":
        tok = "full" if quantizer == "vq" else f"full_{quantizer}"
        return config_dict(
            model=dict(family=family, **full, tokenizer_workdir=f"jaxar_runs/vq_tokenizer_{tok}"),
            data=dict(name="tfds:imagenet2012", train_split="train", eval_split="validation"),
            recipe="image_accelerator",
            **full_fields,
        )
    model = dict(family=family, preset="tiny")
    tok = f"jaxar_runs/vq_tokenizer_{variant}_{quantizer}"
    if variant == "cifar10":
        return config_dict(
            model=dict(model, d_model=256, num_layers=8, num_heads=8, tokenizer_workdir=tok),
            data=dict(name="tfds:cifar10", train_split="train", eval_split="test"),
            recipe="image_accelerator",
            steps=100_000,
        )
    return config_dict(
        model=dict(model, tokenizer_workdir=tok),
        data=dict(name="digits" if variant == "tiny" else "photos"),
        recipe="token_tiny",
    )
