"""Axial Transformer (Ho et al. 2019) on ImageNet 32x32, and a tiny variant on the embedded
8x8 digits (jaxar/MATHS.md s.4): raster-order autoregression of pixels with an outer
decoder (unmasked row + masked column attention over previous rows), an inner decoder
(masked row attention within the row) and a channel decoder; bits/dim on the held-out set.

Variants (``axial_imagenet32:<variant>``):
  * ``full`` (default): the ``imagenet32`` preset (D=1024, 16 heads, 8 + 8 layers, about
    the paper's scale; its exact widths are not recorded in jaxar/MATHS.md) on
    ``tfds:imagenet_resized/32x32`` (1.28M train / 50k validation images), batch 256,
    AdamW 3e-4, bfloat16. The dataset must be prepared offline (`tfds build
    imagenet_resized/32x32 --file_format=array_record`, then ``--config.data.data_dir``);
    this machine has no network and no accelerator, so it was NOT run here.
  * ``tiny``: runnable here: the embedded ``digits`` (scikit-learn's 1797 8x8 grey
    images; 1500 train / 297 held out), D=64, 4 heads, 2 + 2 layers (0.23M params),
    batch 32, 600 steps.

Commands:

    jaxar train --config axial_imagenet32:tiny
    jaxar sample --workdir jaxar_runs/axial_imagenet32_tiny --num 16  # PNG grid (semi-parallel sampling)
    jaxar eval --workdir jaxar_runs/axial_imagenet32_tiny     # held-out bits/dim

Hardware / time: ``tiny`` about a minute on 2 CPU cores (README.md); ``full`` days on 8
accelerators. Expected: paper ImageNet 32x32 3.76 bits/dim. Tiny: see README.md.

References:
  Ho et al. 2019, "Axial Attention in Multidimensional Transformers", arXiv:1912.12180.
"""

from jaxar.experiments.common import config_dict

VARIANTS = ("full", "tiny")


def get_config(variant: str = "full"):
    """``full`` (ImageNet 32x32, paper scale) or ``tiny`` (embedded digits, CPU)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    if variant == "tiny":
        return config_dict(
            model=dict(
                family="axial",
                preset="tiny",
                d_model=64,
                num_heads=4,
                outer_layers=2,
                inner_layers=2,
            ),
            data=dict(name="digits"),
            recipe="digits_tiny",
        )
    return config_dict(
        model=dict(family="axial", preset="imagenet32"),
        data=dict(name="tfds:imagenet_resized/32x32", train_split="train", eval_split="validation"),
        recipe="image_accelerator",
        eval_batches=196,  # the 50k validation images
    )
