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
    scales 1, 2, 3, 4, 5, 6, 8, 10, 13, 16) on ImageNet 256 through
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

from jaxar.experiments.common import config_dict

VARIANTS = ("tiny", "photos", "cifar10", "full")
_TINY_RUN = dict(
    steps=600, batch_size=32, learning_rate=2e-3, warmup_steps=30, log_every=50,
    eval_every=600, eval_batches=7, checkpoint_every=600, keep_checkpoints=1, num_samples=16,
)  # fmt: skip


def get_config(variant: str = "tiny"):
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    if variant == "full":
        return config_dict(
            model=dict(
                family="var",
                preset="var_d16",
                tokenizer_workdir="jaxar_runs/vq_tokenizer_full_msrq",
            ),
            data=dict(name="tfds:imagenet2012", train_split="train", eval_split="validation"),
            recipe="image_accelerator",
            batch_size=768,
            learning_rate=2.4e-4,
        )
    if variant == "cifar10":
        return config_dict(
            model=dict(
                family="var",
                preset="tiny",
                d_model=256,
                num_layers=8,
                num_heads=8,
                tokenizer_workdir="jaxar_runs/vq_tokenizer_cifar10_msrq",
            ),
            data=dict(name="tfds:cifar10", train_split="train", eval_split="test"),
            recipe="image_accelerator",
            steps=100_000,
        )
    data = "digits" if variant == "tiny" else "photos"
    tok = "tiny_msrq" if variant == "tiny" else "photos_msrq"
    return config_dict(
        model=dict(family="var", preset="tiny", tokenizer_workdir=f"jaxar_runs/vq_tokenizer_{tok}"),
        data=dict(name=data),
        **_TINY_RUN,
    )
