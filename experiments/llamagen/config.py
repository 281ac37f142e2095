"""LlamaGen-style token-AR image generation: a class-conditional transformer over a
tokenizer's codes in raster order, 2-D RoPE, classifier-free guidance on logits
(jaxar/MATHS.md s.10).

Needs a trained tokenizer (``vq_tokenizer``, one code per position: vq / fsq / lfq),
named by ``--config.model.tokenizer_workdir`` (default: the tiny VQ's run directory).
The code count and grid come from the tokenizer; the frozen tokenizer encodes the dataset
once and the codes are cached in its run directory (``<tokenizer_workdir>/codes/``).

Variants (``llamagen:<variant>``):
  * ``tiny`` (digits; tokenizer ``vq_tokenizer:tiny_vq``: 4x4 codes of 64) and
    ``photos`` (tokenizer ``vq_tokenizer:photos_vq``: 8x8 codes, 2 classes): the ``tiny``
    preset (D=64, 2 layers, 4 heads), batch 32, 600 steps (a minute or two on 2 CPU cores).
  * ``cifar10``: D=256, 8 layers, 8 heads on ``tfds:cifar10`` (prepared offline) through
    ``vq_tokenizer:cifar10_vq`` (8x8 codes), batch 256, bfloat16. NOT run here.
  * ``full``: LlamaGen-B (``llamagen_b``: D=768, 12 layers, 12 heads, ~111M parameters)
    on ImageNet 256 (short side resized to 256, centre crop 256, encoded once) through
    the ``vq_tokenizer:full`` tokenizer (16x16 codes of 16384),
    batch 256, AdamW 1e-4, bfloat16, 300 epochs in the paper: FID 5.46 with guidance 2.0
    (paper, arXiv:2406.06525). NOT run here.

Commands:

    jaxar train --config vq_tokenizer:tiny_vq
    jaxar train --config llamagen:tiny --config.model.tokenizer_workdir=jaxar_runs/vq_tokenizer_tiny_vq
    jaxar sample --workdir jaxar_runs/llamagen_tiny --num 16   # class-conditional PNG grid
    jaxar eval --workdir jaxar_runs/llamagen_tiny             # held-out bits per code

References:
  Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable Image
    Generation", arXiv:2406.06525.
"""

from jaxar.experiments.common import TOKEN_VARIANTS, token_family_config

VARIANTS = TOKEN_VARIANTS


def get_config(variant: str = "tiny"):
    config = token_family_config(
        "token_ar", variant, quantizer="vq", full=dict(preset="llamagen_b"), learning_rate=1e-4
    )
    if variant == "full":  # LlamaGen's code extraction: short side to 256, centre crop 256
        config.data.image_size = 256
    return config
