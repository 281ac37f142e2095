"""VAR: next-scale prediction over a multi-scale residual tokenizer (jaxar/MATHS.md s.10).

All scales are trained teacher-forced in one pass under the scale-causal mask, with
AdaLN class conditioning; sampling is one transformer call per scale with a KV cache,
classifier-free guidance (linear over scales), top-k / top-p. Needs a trained ``msrq``
tokenizer (``vq_tokenizer:tiny_msrq`` / ``photos_msrq``) named by
``--config.model.tokenizer_workdir``; code count, code dimension and scales come from it.

Variants (``var:<variant>``):
  * ``tiny`` (digits: scales 1, 2, 4 over a 4x4 grid, 21 positions) and ``photos``
    (scales 1, 2, 4, 8, 85 positions, 2 classes): the ``tiny`` preset (D=64, 2 layers,
    4 heads), batch 32, 600 steps.
  * ``cifar10``: D=256, 8 layers, 8 heads on ``tfds:cifar10`` (prepared offline) through
    ``vq_tokenizer:cifar10_msrq`` (8x8 codes), batch 256, bfloat16. NOT run here.
  * ``full``: VAR-d16 (``var_d16``: depth 16, D=1024, 16 heads; 4096 codes of dim 32,
    scales 1, 2, 3, 4, 5, 6, 8, 10, 13, 16) on ImageNet 256 (short side resized to 1.125 x
    256 with Lanczos, centre crop 256, encoded once) through
    ``vq_tokenizer:full_msrq``, batch 768, AdamW 8e-5 x batch/256 in the paper, 200
    epochs: FID 3.55 (paper, arXiv:2404.02905). NOT run here.

Commands:

    jaxar train --config vq_tokenizer:tiny_msrq
    jaxar train --config var:tiny --config.model.tokenizer_workdir=jaxar_runs/vq_tokenizer_tiny_msrq
    jaxar sample --workdir jaxar_runs/var_tiny --num 16
    jaxar eval --workdir jaxar_runs/var_tiny

References:
  Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
    Next-Scale Prediction", arXiv:2404.02905.
"""

from jaxar.experiments.common import TOKEN_VARIANTS, token_family_config

VARIANTS = TOKEN_VARIANTS


def get_config(variant: str = "tiny"):
    config = token_family_config(
        "var",
        variant,
        quantizer="msrq",
        full=dict(preset="var_d16"),
        batch_size=768,
        learning_rate=2.4e-4,
    )
    if variant == "full":  # VAR's evaluation transform: short side to 288 (Lanczos), centre 256
        config.data.update(dict(image_size=256, image_ratio=1.125, resample="lanczos"))
    return config
