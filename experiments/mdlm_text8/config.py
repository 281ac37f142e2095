"""MDLM (Sahoo et al. 2024) on text8: character-level masked diffusion (absorbing [MASK]
state, log-linear schedule, SUBS parametrisation, time-agnostic bidirectional
transformer) trained on the NELBO (REFERENCES.md s.5). text8 characters are bytes, so
our bits/byte is the paper's bits/character.

Variants (``experiments/mdlm_text8/config.py:<variant>``):
  * ``full`` (default): the text8 setting of MDLM / MD4 / SEDD: a 12-layer, width-768,
    12-head bidirectional transformer (``base``), rows of 256 characters (concatenated
    and cut), batch 512, 1M steps, AdamW 3e-4 with 2.5k warmup steps then constant, EMA
    0.9999, bfloat16 compute. text8 is not in the tfds catalog: prepare it offline as an
    array_record tfds dataset named ``text8`` with a ``text`` feature and the standard
    90M / 5M / 5M character splits (``train`` / ``validation`` / ``test``) under
    ``--config.data.data_dir``; this machine has no network, so this variant was NOT run
    here.
  * ``tiny``: runnable here on the embedded ``stdlib`` byte corpus (the Python standard
    library's source, ~5% of files held out; not text8: 256 byte values instead of 27
    characters): width 128, 2 layers, 4 heads, rows of 256 bytes (text8's row length),
    batch 8 (the same 2048 tokens per step as the other tiny runs), 300 steps.

Commands (from the repository root):

    jaxar train --config experiments/mdlm_text8/config.py:tiny   # -> jaxar_runs/mdlm_text8_tiny
    jaxar sample --workdir jaxar_runs/mdlm_text8_tiny             # first-hitting sampler
    jaxar eval --workdir jaxar_runs/mdlm_text8_tiny               # held-out NELBO bits/byte

Hardware / time: ``tiny`` 1-3 min on 2 shared CPU cores (194 s wall, 61 s CPU
measured under load; README.md);
``full`` is a multi-day job on 8 accelerators.
Expected: paper text8 <= 1.40 bits/char (MD4 <= 1.37, AR transformer 1.23).
Tiny: a held-out NELBO bound of about 3.6 bits/byte after 300 steps (see README.md).
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
    c.sample_length = 256
    return c


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    """``full`` (text8, the paper's size) or ``tiny`` (embedded corpus, CPU)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    c = _tiny()
    if variant == "tiny":
        return c
    c.model.preset = "base"
    c.model.update(dict(d_model=768, num_layers=12, num_heads=12))
    c.data.update(dict(name="tfds:text8", seq_len=256, packing="concat"))
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.steps = 1_000_000
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
    c.sample_length = 256
    return c
