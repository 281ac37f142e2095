"""AR vs BD3-LM (L' = 4, 16) vs MDLM at the same backbone and token budget.

One bidirectional/causal transformer backbone for all four models; only the objective, the
attention mask and the sampler differ (jaxar/MATHS.md s.5-6): ``ar`` (the ``lm`` family,
causal attention, next-byte NLL), ``bd3_l4`` / ``bd3_l16`` (block diffusion with blocks of
4 / 16 tokens, NELBO bound), ``mdlm`` (masked diffusion over the whole row, NELBO bound).

Variants (``ar_bd3_mdlm:<size>_<model>``), size ``tiny`` or
``full``, model ``ar``, ``mdlm``, ``bd3_l4``, ``bd3_l16``; plain ``tiny`` / ``full`` are
the BD3 L' = 4 member:
  * ``tiny_*``: the embedded ``stdlib`` byte corpus (the Python standard library's source,
    ~5% of files held out), width 128, 2 layers, 4 heads (~0.43M parameters, the
    quickstart's backbone), rows of 128 bytes, batch 16, 300 steps = 614k training bytes
    for every model.
  * ``full_*``: the BD3-LM paper's OpenWebText comparison: 12 layers, width 768, 12 heads,
    rows of 1024 tokens, batch 512, 1M steps (524B tokens) each, AdamW 3e-4, bfloat16.
    Byte tokens instead of GPT-2 BPE; OpenWebText must be prepared offline as an
    array_record tfds dataset ``openwebtext`` (``text`` feature) under
    ``--config.data.data_dir``. Not run here (no network, no accelerator).

Commands (from the repository root):

    python experiments/ar_bd3_mdlm/run.py          # trains the 4 tiny models one after
                                                   # another, evaluates, times sampling
    jaxar train --config ar_bd3_mdlm:tiny_mdlm   # one member
    jaxar sample --workdir jaxar_runs/ar_bd3_mdlm_tiny_mdlm
    jaxar eval --workdir jaxar_runs/ar_bd3_mdlm_tiny_mdlm

Hardware / time: ``run.py`` about 10-13 min on 2 shared CPU cores when it trains all four
(3.5 min to re-measure trained workdirs; README.md has the measured numbers); ``full_*`` are multi-week accelerator jobs.
Expected (paper, OpenWebText perplexity): AR 17.54, BD3 <= 20.73 (L' = 4),
<= 22.27 (L' = 16), MDLM <= 22.98: the bound loosens as blocks grow. The held-out number
is an NLL for AR and a NELBO upper bound for the diffusion models. Tiny, measured: AR 2.67,
BD3 3.48 / 3.57 (L' = 4 / 16), MDLM 3.60 bits/byte on the whole held-out split.

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
  Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
    Language Models", arXiv:2503.09573.
"""

from jaxar.experiments.common import config_dict

MODELS = ("ar", "mdlm", "bd3_l4", "bd3_l16")
SIZES = ("tiny", "full")
VARIANTS = tuple(f"{s}_{m}" for s in SIZES for m in MODELS) + SIZES


def _config(size: str, model: str):
    preset = "tiny" if size == "tiny" else "base"  # width 128 x 2 x 4 heads / 768 x 12 x 12
    if model == "ar":
        m = dict(family="lm", preset=preset)
    else:
        family = "mdlm" if model == "mdlm" else "bd3"
        m = dict(family=family, preset=preset, schedule="loglinear", t_low=0.0, t_high=1.0)
        if family == "bd3":
            m["block_size"] = int(model.split("_l")[1])
    if size == "tiny":
        data = dict(name="stdlib", seq_len=128)
        return config_dict(model=m, data=data, recipe="cpu_tiny", batch_size=16, eval_batches=32)
    return config_dict(
        model=m,
        data=dict(
            name="tfds:openwebtext", seq_len=1024, train_split="train", eval_split="validation"
        ),
        recipe="diffusion_paper",
        steps=1_000_000,
        sample_length=1024,
    )


def get_config(variant: str = "full"):
    """``<size>_<model>`` (size in ``SIZES``, model in ``MODELS``); ``tiny``/``full`` alone
    mean ``<size>_bd3_l4``."""
    if variant in SIZES:
        variant = f"{variant}_bd3_l4"
    size, _, model = variant.partition("_")
    if size not in SIZES or model not in MODELS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    return _config(size, model)
