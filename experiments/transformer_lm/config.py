"""Transformer baseline for the recurrence experiments: a byte-level causal transformer LM
(pre-norm blocks: RoPE multi-head attention + GELU MLP, tied embeddings) at the sizes of
the GateLoop and GSS experiments.

Variants (``transformer_lm:<variant>``):
  * ``full`` (default): the baseline for ``gateloop_lm:full`` (WikiText-103 scale): width
    768, 12 heads, 15 layers, so that it has the GateLoop model's parameter count (106.4M
    vs 106.4M with byte embeddings: a GateLoop block has 15 D^2 weights, a transformer
    block 12 D^2), rows of 2048 bytes, same data and token budget as ``gateloop_lm:full``.
    Data: ``tfds:wiki40b/en`` (WikiText-103 is not in the TFDS catalog; see
    ``experiments/gateloop_lm/config.py``). NOT run here (no network, no accelerator).
  * ``full_code``: the baseline for ``gss_lm:full``: width 1024, 16 heads, 12 layers
    (151.3M; the GSS model has 156.5M), byte-level code (the embedded ``stdlib`` corpus) in rows
    of 4096 bytes as in the GSS paper's GitHub-code setting. NOT run here.
  * ``tiny``: runnable here on the embedded ``stdlib`` byte corpus (the Python standard
    library's source; files with ``crc32(path) % 20 == 0`` held out): width 128, 2 layers,
    4 heads, MLP 4x (426,624 parameters, the quickstart's model), rows of 256 bytes,
    batch 8, 300 steps (614k training bytes). The tiny GateLoop, GSS and GSS-Hybrid
    configs have the same parameter count (within 1.5%) and token budget; the side-by-side
    run is ``python experiments/lm_comparison/run.py``.

Commands (from the repository root):

    jaxar train --config transformer_lm:tiny  # jaxar_runs/transformer_lm_tiny
    jaxar sample --workdir jaxar_runs/transformer_lm_tiny
    jaxar eval --workdir jaxar_runs/transformer_lm_tiny               # held-out bits/byte

Hardware / time: ``tiny`` about 2 min on 2 shared CPU cores (measured in README.md); the full
variants are multi-day jobs on 8 accelerators (bfloat16 compute).
Expected: no published figure for this exact baseline; the GateLoop paper reports 13.4
WikiText-103 test perplexity for its ~125M GateLoop model (jaxar/MATHS.md s.2, BPE tokens,
not comparable with bits/byte). Tiny: held-out 2.70 bits/byte after 300 steps (README.md).

References:
  Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
    arXiv:2311.01927.
"""

from jaxar.experiments.common import config_dict

VARIANTS = ("full", "full_code", "tiny")


def get_config(variant: str = "full"):
    """``full`` (GateLoop-scale baseline), ``full_code`` (GSS-scale, 4096-byte code rows)
    or ``tiny`` (embedded corpus, CPU)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    if variant == "tiny":
        model = dict(family="lm", preset="transformer-tiny")
        return config_dict(model=model, data=dict(name="stdlib", seq_len=256), recipe="lm_tiny_256")
    if variant == "full":  # the accelerator-scale schedule shared with gateloop_lm:full
        return config_dict(
            model=dict(family="lm", preset="transformer-base", num_layers=15),
            data=dict(name="tfds:wiki40b/en", seq_len=2048, train_split="train", eval_split="test"),
            recipe="lm_wikitext",
        )
    return config_dict(
        model=dict(family="lm", preset="transformer-base", d_model=1024, num_heads=16),
        data=dict(name="stdlib", seq_len=4096, train_split="train", eval_split="test"),
        recipe="lm_accelerator",
        steps=1000,  # ~11 epochs of stdlib; raise with a large code corpus (see gss_lm)
        batch_size=32,  # 131k bytes per step
        warmup_steps=2000,
        log_every=100,
        eval_every=500,
        eval_batches=64,
        checkpoint_every=500,
    )
