"""MDLM (Sahoo et al. 2024) on LM1B: a masked-diffusion LM (absorbing [MASK] state,
log-linear schedule, SUBS parametrisation, time-agnostic bidirectional transformer),
trained on the NELBO (jaxar/MATHS.md s.5).

Variants (``mdlm_lm1b:<variant>``):
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

Commands:

    jaxar train --config mdlm_lm1b:tiny   # -> jaxar_runs/mdlm_lm1b_tiny
    jaxar sample --workdir jaxar_runs/mdlm_lm1b_tiny             # first-hitting sampler
    jaxar eval --workdir jaxar_runs/mdlm_lm1b_tiny               # held-out NELBO bits/byte

Hardware / time: ``tiny`` about 1-2 min on 2 shared CPU cores (71 s measured) (measured in README.md);
``full`` is a multi-day job on 8 accelerators (the paper trained on 8 A100s).
Expected: paper LM1B perplexity bound <= 27.04 (33B tokens, WordPiece tokens).
Tiny: a held-out NELBO bound of about 3.4 bits/byte after 300 steps (README.md), about
0.9 bits/byte looser than the same backbone's AR NLL at the same budget.

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
"""

from jaxar.experiments.common import config_dict

VARIANTS = ("full", "tiny")

# the paper's LM1B data: word-piece sentences padded to 128 tokens (here bytes)
LM1B = dict(name="tfds:lm1b", seq_len=128, packing="pad", train_split="train", eval_split="test")


def mdlm_config(
    variant: str, *, full_data: dict, full_steps: int, tiny_seq_len=128, tiny_eval_batches=32
):
    """The MDLM configs of this folder and ``mdlm_text8``: the bidirectional transformer
    (tiny: width 128, 2 layers; full: the paper's 12 x 768) trained on the NELBO, with
    the same tokens per step in every tiny run (``2048 / tiny_seq_len`` rows)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    model = dict(
        family="mdlm",
        preset="tiny",
        schedule="loglinear",
        t_low=0.0,
        t_high=1.0,
        antithetic=True,
    )
    if variant == "tiny":
        return config_dict(
            model=model,
            data=dict(name="stdlib", seq_len=tiny_seq_len),
            recipe="cpu_tiny",
            batch_size=2048 // tiny_seq_len,
            eval_batches=tiny_eval_batches,
            sample_length=tiny_seq_len,
        )
    model.update(preset="base")
    return config_dict(
        model=model,
        data=full_data,
        recipe="diffusion_paper",
        steps=full_steps,
        sample_length=full_data["seq_len"],
    )


def get_config(variant: str = "full"):
    """``full`` (LM1B, the paper's size) or ``tiny`` (embedded corpus, CPU)."""
    return mdlm_config(variant, full_data=LM1B, full_steps=500_000)
