"""Image tokenizers side by side: VQ vs FSQ vs LFQ at an equal code count
(jaxar/MATHS.md s.10), plus the multi-scale residual (msrq) tokenizer VAR reads.

A convolutional autoencoder (``jaxar.models.vq``) with the quantizer chosen per variant,
all at 64 codes: ``vq`` (cosine codebook 64 x 4, codebook + 0.25 commitment losses),
``vq_ema`` (the same cosine lookup, the codebook an EMA of its assigned latents (decay
0.99) with dead codes (EMA count < 1) restarted at batch latents; 0.25 commitment loss only),
``fsq`` (levels 4 x 4 x 4), ``lfq`` (6 sign bits, entropy penalty 0.1), ``msrq`` (VAR's
multi-scale residual quantization, one 64 x 4 codebook at scales 1, 2, 4 (digits) or
1, 2, 4, 8 (photos)). L1 reconstruction.

Variants (``vq_tokenizer:<variant>``):
  * ``tiny_<q>`` for q in vq / vq_ema / fsq / lfq / msrq: the embedded 8x8 digits, 2x downsampling
    to a 4x4 code grid (16 codes per image), width 32, batch 32, 400 steps (about a
    minute on 2 CPU cores). ``tiny`` = ``tiny_vq``.
  * ``photos_<q>``: 32x32 RGB crops of scikit-learn's two sample photos (``photos``), 4x
    downsampling to an 8x8 grid, width 64, batch 32, 400 steps.
  * ``full``: the VQGAN / LlamaGen f=16 tokenizer setting (``vqgan_f16`` preset: 256x256
    -> 16x16 codes, 16384 cosine codes of dim 8) on ImageNet at 256x256
    (``tfds:imagenet2012`` prepared as array_record; the pipeline resizes the short side to
    1.1 x 256 and takes random 256x256 crops and flips, LlamaGen's augmentation; evaluation
    takes the centre crop), batch 256, bfloat16; ``full_msrq``: VAR's tokenizer
    (``var_f16``: 4096 codes of dim 32, scales 1..16; VAR's resize to 1.125 x 256 with
    Lanczos, random crops); ``cifar10_<q>``: the tiny quantizers on ``tfds:cifar10`` (32x32
    with random flips, 8x8 codes). The paper settings also train with perceptual and
    GAN losses, which jaxar does not have: NOT run here (no accelerator, no data).

Commands:

    jaxar train --config vq_tokenizer:tiny_vq
    jaxar eval --workdir jaxar_runs/vq_tokenizer_tiny_vq     # held-out mse, usage, perplexity
    jaxar sample --workdir jaxar_runs/vq_tokenizer_tiny_vq --num 8  # originals | reconstructions

Expected (README.md): held-out MSE on [-1, 1] pixels and codebook usage near 1 for all
three at 64 codes.

References:
  van den Oord et al. 2017, "Neural Discrete Representation Learning", arXiv:1711.00937.
  Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv:2309.15505.
  Yu et al. 2023, "Language Model Beats Diffusion -- Tokenizer is Key to Visual
    Generation", arXiv:2310.05737.
"""

from jaxar.experiments.common import config_dict

QUANTIZERS = ("vq", "vq_ema", "fsq", "lfq", "msrq")
VARIANTS = ("tiny", "full", "full_msrq") + tuple(
    f"{s}_{q}" for s in ("tiny", "photos", "cifar10") for q in QUANTIZERS
)

# quantizer -> model fields giving 64 codes
_AT_64 = {
    "vq": dict(quantizer="vq", latent_dim=4, codebook_size=64),
    "vq_ema": dict(quantizer="vq_ema", latent_dim=4, codebook_size=64),
    "fsq": dict(quantizer="fsq", latent_dim=3, levels=(4, 4, 4)),
    "lfq": dict(quantizer="lfq", latent_dim=6),
    "msrq": dict(quantizer="msrq", latent_dim=4, codebook_size=64),
}
# ImageNet 256 (jaxar.data.images): LlamaGen's tokenizer trains on random 256 crops of the
# image resized to 1.1 x 256 on the short side, flipped at random (its random_crop_arr upper
# end); VAR resizes to 1.125 x 256 (Lanczos), crops 256. Evaluation takes the centre crop.
_LLAMAGEN_256_TRAIN = dict(image_size=256, image_ratio=1.1, random_crop=True, random_flip=True)
_VAR_256 = dict(image_size=256, image_ratio=1.125, random_crop=True, resample="lanczos")
_TINY_RUN = dict(
    steps=400, batch_size=32, learning_rate=2e-3, warmup_steps=20, log_every=50,
    eval_every=400, eval_batches=7, checkpoint_every=400, keep_checkpoints=1, num_samples=8,
)  # fmt: skip


def get_config(variant: str = "tiny"):
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    if variant == "tiny":
        variant = "tiny_vq"
    if variant.startswith("full"):
        preset = "var_f16" if variant == "full_msrq" else "vqgan_f16"
        return config_dict(
            model=dict(family="vq", preset=preset, data="imagenet2012"),
            data=dict(name="tfds:imagenet2012", train_split="train", eval_split="validation")
            | (_VAR_256 if variant == "full_msrq" else _LLAMAGEN_256_TRAIN),
            recipe="image_accelerator",
            steps=400_000,
            learning_rate=1e-4,
        )
    size, _, q = variant.partition("_")
    if size == "tiny":
        model = dict(family="vq", preset="tiny", data="digits", **_AT_64[q])
        return config_dict(model=model, data=dict(name="digits"), **_TINY_RUN)
    if size == "photos":
        model = dict(family="vq", preset="photos", data="photos", **_AT_64[q])
        return config_dict(model=model, data=dict(name="photos"), **_TINY_RUN)
    model = dict(family="vq", preset="photos", data="cifar10", **_AT_64[q])
    return config_dict(
        model=model,
        data=dict(name="tfds:cifar10", image_size=32, random_flip=True),
        recipe="image_accelerator",
        steps=100_000,
    )
