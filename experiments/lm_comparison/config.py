"""The linear-attention family in the lm_comparison setting: GLA, RetNet, Mamba-2 and Gated
DeltaNet as byte-level LMs of the tiny transformer's size (426,624 parameters) and budget.

Variants (``experiments/lm_comparison/config.py:<variant>``), all width 128, 4 heads, the
embedded ``stdlib`` corpus, rows of 256 bytes, batch 8, 300 steps (614k training bytes),
the ``lm_tiny_256`` recipe (as ``transformer_lm:tiny``):
  * ``gla``: 2 x (GLA + MLP 3.375x): 427,136 parameters (GLA: Yang et al. 2024,
    arXiv:2312.06635).
  * ``retnet``: 2 x (multi-scale retention + MLP 3.5x): 426,880 (Sun et al. 2023,
    arXiv:2307.08621).
  * ``mamba2``: 2 x (Mamba-2, expand 2, N=16, conv 4 + MLP 2.8x): 425,944 (Dao and Gu 2024,
    arXiv:2405.21060).
  * ``gated_deltanet``: 2 x (Gated DeltaNet, conv 4 + MLP 3.5x): 432,016 (Yang, Kautz and
    Hatamizadeh 2025, arXiv:2412.06464).

Commands:

    jaxar train --config experiments/lm_comparison/config.py:gla --workdir /tmp/lmc/gla
    jaxar eval --workdir /tmp/lmc/gla                                   # held-out bits/byte
    python experiments/lm_comparison/run.py --only gla retnet mamba2 gated_deltanet

Hardware / time: 2-6 min each on 2 shared CPU cores (the mixers' ``impl="auto"`` is the
chunked core on CPU). Expected: between the transformer (2.70 bits/byte) and GateLoop
(2.45) of the README's table; NOT yet run at 300 steps (see README.md).
"""

from jaxar.experiments.common import config_dict

# variant -> LM preset and the overrides that match the tiny transformer's parameter count
VARIANTS = {
    "gla": dict(preset="gla-tiny", mlp_ratio=3.375),
    "retnet": dict(preset="retnet-tiny", mlp_ratio=3.5),
    "mamba2": dict(preset="mamba2-tiny", num_layers=2, mlp_ratio=2.8),
    "gated_deltanet": dict(preset="gated_deltanet-tiny", mlp_ratio=3.5),
}


def get_config(variant: str = "gla"):
    """One tiny linear-attention LM (``VARIANTS``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {tuple(VARIANTS)}")
    model = dict(family="lm", **VARIANTS[variant])
    return config_dict(model=model, data=dict(name="stdlib", seq_len=256), recipe="lm_tiny_256")
