"""Speculative decoding (jaxar/MATHS.md s.9): a target LM with multi-token heads and a
cheaper draft LM, both byte-level on the embedded ``stdlib`` corpus, for
``jaxar bench decoding`` and ``jaxar sample --draft-workdir / --speculative self``.

Variants (``speculative:<variant>``):
  * ``tiny_target`` (default): the ``small`` preset (width 256, 4 layers, 4 heads) with 3
    multi-token prediction heads (``mtp_heads=3``, loss weight 0.5), rows of 256 bytes,
    batch 8, the ``lm_tiny_256`` budget (300 steps) on 2 CPU cores.
  * ``tiny_draft``: the ``tiny`` preset (width 128, 2 layers), same data and budget.
  * ``deep_target``: 8 layers x 128 (the ``tiny`` preset, ``num_layers=8``) with 3
    multi-token heads; ``deep_draft``: one layer x 128 (``tiny``, ``num_layers=1``); both
    600 steps of 8 x 256 bytes (the same tokens), a checkpoint every 100. The pair
    ``jaxar bench decoding`` uses: on a CPU a decode call costs about its number of layers
    in per-op overhead, so the draft's call is several times cheaper than the target's
    (the 4-layer / 2-layer ``tiny_*`` pair measured c ~ 0.5).
  * ``full_target`` / ``full_draft``: ``medium`` with 3 heads / ``tiny``, rows of 1024
    bytes, 5000 steps of batch 32 (an accelerator run; NOT run here).

Commands (from the repository root):

    jaxar train --config speculative:tiny_target   # jaxar_runs/speculative_tiny_target
    jaxar train --config speculative:tiny_draft    # jaxar_runs/speculative_tiny_draft
    nice jaxar train --config speculative:deep_target  # jaxar_runs/speculative_deep_target
    nice jaxar train --config speculative:deep_draft   # jaxar_runs/speculative_deep_draft
    jaxar sample --workdir jaxar_runs/speculative_tiny_target \
        --draft-workdir jaxar_runs/speculative_tiny_draft --num-draft 4 --temperature 0
    jaxar sample --workdir jaxar_runs/speculative_tiny_target --speculative self
    jaxar bench decoding        # loads the deep_* pair (trains it first if absent)

Hardware / time: each tiny run a few minutes on 2 shared CPU cores. Expected: the
acceptance rate and speed-ups in README.md (the speculative decoding papers report 2-3x
for large targets; a 4x cost ratio between these tiny models bounds the gain, MATHS.md s.9).

References:
  Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding",
    arXiv:2211.17192.
  Gloeckle et al. 2024, "Better & Faster Large Language Models via Multi-token
    Prediction", arXiv:2404.19737.
"""

from jaxar.experiments.common import config_dict

VARIANTS = (
    "tiny_target",
    "tiny_draft",
    "deep_target",
    "deep_draft",
    "full_target",
    "full_draft",
)

DEEP_STEPS = 600


def get_config(variant: str = "tiny_target"):
    """The target (``*_target``, with multi-token heads) or draft (``*_draft``) run."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    target = variant.endswith("target")
    if variant.startswith("deep"):
        if target:
            model = dict(family="lm", preset="tiny", num_layers=8, mtp_heads=3, mtp_weight=0.5)
        else:
            model = dict(family="lm", preset="tiny", num_layers=1)
        return config_dict(
            model=model,
            data=dict(name="stdlib", seq_len=256),
            recipe="lm_tiny_256",
            steps=DEEP_STEPS,
            eval_every=DEEP_STEPS // 3,
            eval_batches=32,
            checkpoint_every=DEEP_STEPS // 6,
            log_every=20,
        )
    if variant.startswith("tiny"):
        model = dict(family="lm", preset="small" if target else "tiny")
        if target:
            model.update(mtp_heads=3, mtp_weight=0.5)
        return config_dict(model=model, data=dict(name="stdlib", seq_len=256), recipe="lm_tiny_256")
    model = dict(family="lm", preset="medium" if target else "tiny")
    if target:
        model.update(mtp_heads=3, mtp_weight=0.5)
    return config_dict(
        model=model,
        data=dict(name="stdlib", seq_len=1024, train_split="train", eval_split="test"),
        recipe="lm_accelerator",
        steps=5000,
        batch_size=32,
        warmup_steps=200,
        log_every=100,
        eval_every=1000,
        eval_batches=16,
        checkpoint_every=1000,
    )
