"""MDLM (Sahoo et al. 2024) on LM1B: a masked-diffusion LM (absorbing [MASK] state,
log-linear schedule, SUBS parametrisation, time-agnostic bidirectional transformer),
trained on the NELBO (REFERENCES.md s.5).

Variants (``experiments/mdlm_lm1b/config.py:<variant>``):
  * ``full`` (default): the paper's LM1B setting: a 12-layer, width-768, 12-head
    bidirectional transformer (``base``, the DiT-sized backbone), rows of 128 tokens,
    batch 512, AdamW 3e-4 with 2.5k warmup steps then constant, EMA 0.9999, bfloat16
    compute; 500k steps = the paper's 33B-token budget at 512 x 128 tokens per step.
    Difference from the paper: byte tokens (the paper uses the bert-base-uncased
    WordPiece tokenizer, so its perplexity per WordPiece token is not comparable with our
    bits/byte; 128 bytes also hold about a quarter of the text of 128 WordPieces).
    Data: ``tfds:lm1b`` prepared offline as array_record
    (``tfds build lm1b --file_format=array_record``, then ``--config.data.data_dir=...``);
    this machine has no network, so this variant was NOT run here.
  * ``tiny``: runnable here on the embedded ``stdlib`` byte corpus (the Python standard
    library's source, ~5% of files held out): width 128, 2 layers, 4 heads (0.43M
    parameters, the quickstart's backbone made bidirectional), rows of 128 bytes,
    batch 16, 300 steps.

Commands (from the repository root):

    jaxar train --config experiments/mdlm_lm1b/config.py:tiny   # -> jaxar_runs/mdlm_lm1b_tiny
    jaxar sample --workdir jaxar_runs/mdlm_lm1b_tiny             # first-hitting sampler
    jaxar eval --workdir jaxar_runs/mdlm_lm1b_tiny               # held-out NELBO bits/byte

Hardware / time: ``tiny`` about 1-2 min on 2 shared CPU cores (71 s measured) (measured in README.md);
``full`` is a multi-day job on 8 accelerators (the paper trained on 8 A100s).
Expected: paper LM1B perplexity bound <= 27.04 (33B tokens, WordPiece tokens).
Tiny: a held-out NELBO bound of about 3.4 bits/byte after 300 steps (README.md), about
0.9 bits/byte looser than the same backbone's AR NLL at the same budget.
"""

import ml_collections

VARIANTS = ("full", "tiny")


def _tiny() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(
            family="mdlm",
            preset="tiny",
            d_model=128,
            num_layers=2,
            num_heads=4,
            schedule="loglinear",
            t_low=0.0,
            t_high=1.0,
            antithetic=True,
        )
    )
    c.data = ml_collections.ConfigDict(dict(name="stdlib", seq_len=128, packing="concat"))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.steps = 300
    c.batch_size = 16
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
    c.eval_batches = 32
    c.checkpoint_every = 300
    c.keep_checkpoints = 1
    c.async_checkpoints = True
    c.nonfinite = "skip"
    c.num_samples = 2
    c.sample_length = 128
    return c


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    """``full`` (LM1B, the paper's size) or ``tiny`` (embedded corpus, CPU)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    c = _tiny()
    if variant == "tiny":
        return c
    c.model.preset = "base"
    c.model.update(dict(d_model=768, num_layers=12, num_heads=12))
    c.data.update(dict(name="tfds:lm1b", seq_len=128, packing="pad"))
    c.data.train_split, c.data.eval_split = "train", "test"
    c.steps = 500_000
    c.batch_size = 512
    c.learning_rate = 3e-4
    c.warmup_steps = 2500
    c.min_lr_ratio = 1.0  # constant after warmup
    c.weight_decay = 0.0
    c.ema_decay = 0.9999
    c.compute_dtype = "bfloat16"
    c.log_every = 1000
    c.eval_every = 50_000
    c.eval_batches = 64
    c.checkpoint_every = 10_000
    c.keep_checkpoints = 3
    c.num_samples = 4
    c.sample_length = 128
    return c
