"""MAR (Li et al. 2024): autoregressive image generation without vector quantization
(jaxar/MATHS.md s.7). Pixel patches are continuous tokens; a transformer backbone gives
each position a condition z, and a small per-token diffusion head (residual MLP with
adaptive norm on z and t) models the token: masked order (bidirectional backbone,
random order, tokens revealed over ``num_iter`` steps on a cosine schedule) or causal
raster order (KV cache). Class-conditional with classifier-free guidance.

Variants (``mar:<variant>``):
  * ``full_masked`` (default, ``full`` = it) / ``full_causal``: the ``mar_b`` sizes
    (backbone D=768, 24 layers, 12 heads; head width per the preset) on CIFAR-10 pixels
    (``tfds:cifar10``, 32x32x3, 2x2 patches -> 256 tokens of 12 values), batch 256,
    AdamW 3e-4, bfloat16. The paper works on ImageNet 256 through a KL-16 VAE's 16x16x16
    latents (FID 2.31 for MAR-B); jaxar has no VAE, so this is the pixel-space analogue
    and its numbers are not comparable. cifar10 must be prepared offline (`tfds build
    cifar10 --file_format=array_record`); NOT run here (no network, no accelerator).
  * ``tiny_masked`` (``tiny`` = it) / ``tiny_causal``: runnable here on the embedded 8x8
    digits: the ``tiny`` preset (2x2 patches -> 16 tokens of 4 values, backbone D=64,
    2 layers, head width 64), batch 32, 600 steps.

Commands:

    jaxar train --config mar:tiny_masked
    jaxar sample --workdir jaxar_runs/mar_tiny_masked --num 16  # PNG grid of class-conditional samples
    jaxar eval --workdir jaxar_runs/mar_tiny_masked            # held-out diffusion-head loss

The metric: MAR has no tractable likelihood here; ``jaxar eval`` reports the head's
held-out denoising loss (v-prediction MSE averaged over t draws), comparable between runs
of the same head objective only, not bits/dim. Sample quality is judged by the grids
(no FID on this machine).

Hardware / time: ``tiny_*`` about a minute each on 2 CPU cores (README.md); ``full_*``
days on 8 accelerators.

References:
  Li et al. 2024, "Autoregressive Image Generation without Vector Quantization",
    arXiv:2406.11838.
"""

from jaxar.experiments.common import config_dict

ORDERS = ("masked", "causal")
VARIANTS = ("full", "tiny") + tuple(f"{s}_{o}" for s in ("full", "tiny") for o in ORDERS)


def get_config(variant: str = "full"):
    """``{tiny,full}_{masked,causal}``; ``tiny`` / ``full`` alone mean the masked order."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    size, _, order = variant.partition("_")
    order = order or "masked"
    if size == "tiny":
        return config_dict(
            model=dict(family="mar", preset="tiny", order=order),
            data=dict(name="digits"),
            recipe="digits_tiny",
        )
    return config_dict(
        # image size, channels and classes follow the data (32x32x3, 10 classes)
        model=dict(family="mar", preset="mar_b", order=order, patch_size=2),
        data=dict(name="tfds:cifar10", train_split="train", eval_split="test"),
        recipe="image_accelerator",
        eval_batches=39,  # the 10k test images
    )
