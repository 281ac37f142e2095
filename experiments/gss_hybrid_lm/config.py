"""GSS-Hybrid (Mehta et al. 2022): GSS layers interleaved with attention restricted to a
local window (jaxar/MATHS.md s.3: 512-token chunks in the paper), byte-level.

``model.mixer = ("gss", "attention")`` cycles the two over the layers (GSS first), with
``mixer_options`` per mixer name; every block has an MLP (``mlp_ratio``), as in the
library's ``LMConfig.gss_hybrid`` preset.

Variants (``gss_hybrid_lm:<variant>``):
  * ``full`` (default): the paper's GSS widths (D=1024, F=4096, H=256, N=64) alternating
    with 16-head attention over a causal window of 512, 12 layers (6 + 6), MLP 4x (184.7M
    parameters), byte-level code in rows of 4096 bytes as in the paper's GitHub-code
    setting. Data as in ``experiments/gss_lm/config.py`` (default: the embedded
    ``stdlib`` corpus, far smaller than the paper's; ``--config.data.name=tfds:<name>``
    for a prepared code corpus). NOT run here (no accelerator).
  * ``tiny``: runnable here on ``stdlib``: width 128, 2 layers (GSS, then attention over
    a window of 32 bytes: the paper's 512/4096 ratio at rows of 256), MLP 2.5x so that
    the model has the tiny transformer's parameter count (422,592 vs 426,624), batch 8,
    300 steps (614k training bytes).

Commands:

    jaxar train --config gss_hybrid_lm:tiny  # jaxar_runs/gss_hybrid_lm_tiny
    jaxar sample --workdir jaxar_runs/gss_hybrid_lm_tiny
    jaxar eval --workdir jaxar_runs/gss_hybrid_lm_tiny               # held-out bits/byte

Hardware / time: ``tiny`` 2-5 min on 2 shared CPU cores (measured in README.md);
``full`` on 8 accelerators.
Expected: the paper reports GSS-Hybrid improving on GSS and competitive with
block-recurrent transformers on PG-19, arXiv and GitHub code at length 4096
(jaxar/MATHS.md s.3; exact perplexities not recorded there). Tiny: held-out 2.58
bits/byte after 300 steps (README.md).

References:
  Mehta et al. 2022, "Long Range Language Modeling via Gated State Spaces", arXiv:2206.13947.
  Gupta et al. 2022, "Diagonal State Spaces are as Effective as Structured State Spaces",
    arXiv:2203.14343.
"""

from jaxar.experiments.common import config_dict

VARIANTS = ("full", "tiny")


def get_config(variant: str = "full"):
    """``full`` (paper widths, window 512, 4096-byte code rows) or ``tiny`` (CPU)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    if variant == "tiny":  # GSS (state size 64), then attention over a window of 32
        model = dict(
            family="lm",
            preset="gss_hybrid-tiny",
            mixer_options=dict(attention=dict(window=32)),
            mlp_ratio=2.5,
        )
        return config_dict(model=model, data=dict(name="stdlib", seq_len=256), recipe="lm_tiny_256")
    model = dict(
        family="lm",
        preset="gss_hybrid-base",
        d_model=1024,
        num_heads=16,
        mixer_options=dict(gss=dict(reduced_dim=256, expand_dim=4096), attention=dict(window=512)),
    )
    return config_dict(
        model=model,
        data=dict(name="stdlib", seq_len=4096),
        recipe="code_4096",
    )
