"""Transformer baseline for the recurrence experiments: a byte-level causal transformer LM
(pre-norm blocks: RoPE multi-head attention + GELU MLP, tied embeddings) at the sizes of
the GateLoop and GSS experiments.

Variants (``experiments/transformer_lm/config.py:<variant>``):
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

    jaxar train --config experiments/transformer_lm/config.py:tiny  # jaxar_runs/transformer_lm_tiny
    jaxar sample --workdir jaxar_runs/transformer_lm_tiny
    jaxar eval --workdir jaxar_runs/transformer_lm_tiny               # held-out bits/byte

Hardware / time: ``tiny`` about 2 min on 2 shared CPU cores (measured in README.md); the full
variants are multi-day jobs on 8 accelerators (bfloat16 compute).
Expected: no published figure for this exact baseline; the GateLoop paper reports 13.4
WikiText-103 test perplexity for its ~125M GateLoop model (REFERENCES.md s.2, BPE tokens,
not comparable with bits/byte). Tiny: held-out 2.70 bits/byte after 300 steps (README.md).
"""

import ml_collections

VARIANTS = ("full", "full_code", "tiny")


def _tiny() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(family="lm", preset="tiny", mixer="attention", d_model=128, num_layers=2, num_heads=4)
    )
    c.data = ml_collections.ConfigDict(dict(name="stdlib", seq_len=256, packing="concat"))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.steps = 300
    c.batch_size = 8
    c.seed = 0
    c.learning_rate = 3e-3
    c.warmup_steps = 30
    c.min_lr_ratio = 0.1
    c.weight_decay = 0.1
    c.grad_clip = 1.0
    c.grad_accum = 1
    c.ema_decay = 0.0
    c.compute_dtype = "float32"
    c.log_every = 25
    c.eval_every = 300
    c.eval_batches = 64
    c.checkpoint_every = 300
    c.keep_checkpoints = 1
    c.async_checkpoints = True
    c.nonfinite = "skip"
    c.num_samples = 2
    c.sample_length = 128
    return c


def _full(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The accelerator-scale schedule shared with ``gateloop_lm:full``."""
    c.model.preset = "base"
    c.data.update(dict(name="tfds:wiki40b/en", seq_len=2048, packing="concat"))
    c.data.train_split, c.data.eval_split = "train", "test"
    c.steps = 40_000
    c.batch_size = 64  # 131k bytes per step; 5.2B bytes in all
    c.learning_rate = 6e-4
    c.warmup_steps = 2000
    c.weight_decay = 0.1
    c.compute_dtype = "bfloat16"
    c.log_every = 100
    c.eval_every = 5000
    c.eval_batches = 64
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    c.num_samples = 4
    c.sample_length = 512
    return c


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    """``full`` (GateLoop-scale baseline), ``full_code`` (GSS-scale, 4096-byte code rows)
    or ``tiny`` (embedded corpus, CPU)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    c = _tiny()
    if variant == "tiny":
        return c
    c = _full(c)
    if variant == "full":
        c.model.update(dict(d_model=768, num_layers=15, num_heads=12))
        return c
    c.model.update(dict(d_model=1024, num_layers=12, num_heads=16))
    c.data.update(dict(name="stdlib", seq_len=4096))
    c.batch_size = 32  # 131k bytes per step
    c.steps = 1000  # ~11 epochs of stdlib; raise with a large code corpus (see gss_lm)
    c.eval_every = 500
    c.checkpoint_every = 500
    return c
