"""BD3-LM (Arriola et al. 2025): block diffusion, autoregressive over blocks of L' tokens and
masked diffusion inside each block (REFERENCES.md s.6), at block sizes L' = 4, 8, 16.

Variants (``experiments/bd3lm/config.py:<variant>``):
  * ``full_l4``, ``full_l8``, ``full_l16`` (``full`` = ``full_l16``): the paper's
    OpenWebText setting: a 12-layer, width-768, 12-head bidirectional transformer
    (``base``), length 1024, batch 512, 1M steps (524B tokens), AdamW 3e-4.
    Differences from the paper: byte tokens (the paper uses the GPT-2 tokenizer, so its
    perplexities are per BPE token and are not comparable with our bits/byte), no MDLM
    pre-training before the BD3 phase, and the unclipped schedule ``t ~ U(0, 1]`` (the
    paper's clipped ``[beta, omega]`` schedule is ``--config.model.t_low=...
    --config.model.t_high=...``, but ``jaxar eval`` evaluates with the same range, so
    the held-out number is the NELBO only for ``(0, 1]``). OpenWebText is not in the tfds
    catalog: prepare it offline as an array_record tfds dataset named ``openwebtext``
    with a ``text`` feature under ``--config.data.data_dir`` (this machine has no
    network; these variants were NOT run here). LM1B instead:
    ``--config.data.name=tfds:lm1b --config.data.seq_len=128``.
  * ``tiny_l4``, ``tiny_l8``, ``tiny_l16`` (``tiny`` = ``tiny_l16``): runnable here on the
    embedded ``stdlib`` byte corpus (the Python standard library's source): width 128, 2
    layers, 4 heads, length 128, batch 16, 300 steps.

Commands (from the repository root):

    jaxar train --config experiments/bd3lm/config.py:tiny_l4   # -> jaxar_runs/bd3lm_tiny_l4
    jaxar sample --workdir jaxar_runs/bd3lm_tiny_l4 --length 128
    jaxar eval --workdir jaxar_runs/bd3lm_tiny_l4              # held-out NELBO bits/byte

Hardware / time: tiny variants about 2-4 min each on 2 shared CPU cores (194-224 s wall,
~95 s CPU measured under load; README.md); full variants are multi-week jobs for one accelerator (the paper: 1M steps
on 8+ A100s) and were not run.
Expected: paper (OpenWebText, GPT-2 tokens) perplexity bounds <= 20.73 / 21.68 / 22.27 for
L' = 4 / 8 / 16 (MDLM <= 22.98, AR 17.54); smaller blocks are closer to AR and better.
Tiny: held-out NELBO bounds of 3.34 / 3.38 / 3.40 bits/byte for L' = 4 / 8 / 16 (README.md).
"""

import ml_collections

BLOCK_SIZES = (4, 8, 16)


def _base(block_size: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(
            family="bd3",
            preset="tiny",
            d_model=128,
            num_layers=2,
            num_heads=4,
            block_size=block_size,
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


def _full(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    c.model.preset = "base"
    c.model.d_model = 768
    c.model.num_layers = 12
    c.model.num_heads = 12
    c.data.name = "tfds:openwebtext"
    c.data.seq_len = 1024
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.steps = 1_000_000
    c.batch_size = 512
    c.learning_rate = 3e-4
    c.warmup_steps = 2500
    c.min_lr_ratio = 1.0  # constant after warmup, as the paper
    c.weight_decay = 0.0
    c.ema_decay = 0.9999
    c.compute_dtype = "bfloat16"
    c.log_every = 1000
    c.eval_every = 50_000
    c.eval_batches = 64
    c.checkpoint_every = 10_000
    c.keep_checkpoints = 3
    c.num_samples = 4
    c.sample_length = 1024
    return c


def get_config(variant: str = "full") -> ml_collections.ConfigDict:
    """``tiny_l{4,8,16}`` / ``full_l{4,8,16}``; ``tiny`` and ``full`` use L' = 16."""
    names = [f"{s}_l{b}" for s in ("tiny", "full") for b in BLOCK_SIZES]
    aliases = {"tiny": "tiny_l16", "full": "full_l16"}
    name = aliases.get(variant, variant)
    if name not in names:
        raise ValueError(
            f"variant={variant!r} is not supported; accepted: {sorted(names + list(aliases))}"
        )
    size, _, block = name.partition("_l")
    c = _base(int(block))
    return _full(c) if size == "full" else c
