"""MDLM (Sahoo et al. 2024) on text8: character-level masked diffusion (absorbing [MASK]
state, log-linear schedule, SUBS parametrisation, time-agnostic bidirectional
transformer) trained on the NELBO (jaxar/MATHS.md s.5). text8 characters are bytes, so
our bits/byte is the paper's bits/character.

Variants (``mdlm_text8:<variant>``):
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

Commands:

    jaxar train --config mdlm_text8:tiny   # -> jaxar_runs/mdlm_text8_tiny
    jaxar sample --workdir jaxar_runs/mdlm_text8_tiny             # first-hitting sampler
    jaxar eval --workdir jaxar_runs/mdlm_text8_tiny               # held-out NELBO bits/byte

Hardware / time: ``tiny`` 1-3 min on 2 shared CPU cores (194 s wall, 61 s CPU
measured under load; README.md);
``full`` is a multi-day job on 8 accelerators.
Expected: paper text8 <= 1.40 bits/char (MD4 <= 1.37, AR transformer 1.23).
Tiny: a held-out NELBO bound of about 3.6 bits/byte after 300 steps (see README.md).

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
"""

from jaxar.experiments.mdlm_lm1b import config as mdlm_lm1b  # the MDLM configs, written once

VARIANTS = mdlm_lm1b.VARIANTS
TEXT8 = dict(name="tfds:text8", seq_len=256, train_split="train", eval_split="validation")


def get_config(variant: str = "full"):
    """``full`` (text8, the paper's size) or ``tiny`` (embedded corpus, CPU)."""
    return mdlm_lm1b.mdlm_config(
        variant, full_data=TEXT8, full_steps=1_000_000, tiny_seq_len=256, tiny_eval_batches=64
    )
