"""BD3-LM (Arriola et al. 2025): block diffusion, autoregressive over blocks of L' tokens and
masked diffusion inside each block (jaxar/MATHS.md s.6), at block sizes L' = 4, 8, 16.

Variants (``bd3lm:<variant>``):
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

Commands:

    jaxar train --config bd3lm:tiny_l4   # -> jaxar_runs/bd3lm_tiny_l4
    jaxar sample --workdir jaxar_runs/bd3lm_tiny_l4 --length 128
    jaxar eval --workdir jaxar_runs/bd3lm_tiny_l4              # held-out NELBO bits/byte

Hardware / time: tiny variants about 2-4 min each on 2 shared CPU cores (194-224 s wall,
~95 s CPU measured under load; README.md); full variants are multi-week jobs for one accelerator (the paper: 1M steps
on 8+ A100s) and were not run.
Expected: paper (OpenWebText, GPT-2 tokens) perplexity bounds <= 20.73 / 21.68 / 22.27 for
L' = 4 / 8 / 16 (MDLM <= 22.98, AR 17.54); smaller blocks are closer to AR and better.
Tiny: held-out NELBO bounds of 3.34 / 3.38 / 3.40 bits/byte for L' = 4 / 8 / 16 (README.md).

References:
  Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
    Language Models", arXiv:2503.09573.
"""

from jaxar.experiments.common import config_dict

BLOCK_SIZES = (4, 8, 16)
ALIASES = {"tiny": "tiny_l16", "full": "full_l16"}
VARIANTS = tuple(f"{s}_l{b}" for s in ("tiny", "full") for b in BLOCK_SIZES) + tuple(ALIASES)


def get_config(variant: str = "full"):
    """``tiny_l{4,8,16}`` / ``full_l{4,8,16}``; ``tiny`` and ``full`` use L' = 16."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    name = ALIASES.get(variant, variant)
    size, _, block = name.partition("_l")
    model = dict(
        family="bd3",
        preset="tiny",
        block_size=int(block),
        schedule="loglinear",
        t_low=0.0,
        t_high=1.0,
        antithetic=True,
    )
    if size == "tiny":
        data = dict(name="stdlib", seq_len=128)
        return config_dict(
            model=model, data=data, recipe="cpu_tiny", batch_size=16, eval_batches=32
        )
    model.update(preset="base")
    return config_dict(
        model=model,
        data=dict(
            name="tfds:openwebtext", seq_len=1024, train_split="train", eval_split="validation"
        ),
        recipe="diffusion_paper",  # constant after warmup, as the paper
        steps=1_000_000,
        sample_length=1024,
    )
