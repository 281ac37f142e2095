"""Masked-diffusion inference, quality against speed: the tiny MDLM and its AR judge.

``jaxar bench mdm_inference`` trains both members (or reuses trained workdirs), then samples
with every method x steps x cache setting of :func:`jaxar.sampling.masked_diffusion.sample`
and reports, per setting: generative perplexity of the samples under the AR judge, unigram
entropy of the samples, denoiser calls and wall time per sample, and the held-out data's
own perplexity and entropy as the reference row (jaxar/MATHS.md s.11).

Variants (``mdm_inference:<size>_<member>``), size ``quick`` or ``tiny``, member ``mdlm``
(the bidirectional MDLM, the ``tiny`` preset: width 128, 2 layers, 4 heads) or ``judge``
(a causal LM of the same size, the ``lm`` family):
  * ``tiny_*``: the embedded ``stdlib`` byte corpus, rows of 256 bytes (the length of the
    dual-cache target), batch 8, 300 steps each (614k training bytes).
  * ``quick_*``: rows of 64 bytes, batch 8, 40 steps (``jaxar bench mdm_inference --quick``,
    a smoke test: the numbers mean little).

Commands (from the repository root):

    jaxar bench mdm_inference --out /tmp/mdm_inference.json        # tiny: trains, measures
    jaxar bench mdm_inference --quick                                # a minute or two
    jaxar train --config mdm_inference:tiny_mdlm                     # one member by hand
    jaxar sample --workdir jaxar_runs/mdm_inference_tiny_mdlm --method threshold \\
        --threshold 0.9 --block-length 32 --cache dual

Hardware / time: ``tiny`` trains both members in about 5-10 min on 2 shared CPU cores and
measures the table in about as long; README.md has the measured table and the commit.
Targets (the issue's): threshold decoding with >= 3x fewer denoiser calls than first
hitting at <= 5% worse generative perplexity and unigram entropy within 2% of the data's;
the dual cache a further >= 2x in wall time at length 256.

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Nie et al. 2025, "Large Language Diffusion Models" (LLaDA), arXiv:2502.09992.
  Wu et al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache
    and Parallel Decoding", arXiv:2505.22618.
  Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling",
    arXiv:2503.00307.
"""

from jaxar.experiments.common import config_dict

SIZES = ("quick", "tiny")
MEMBERS = ("mdlm", "judge")
VARIANTS = tuple(f"{s}_{m}" for s in SIZES for m in MEMBERS)
SEQ_LEN = {"quick": 64, "tiny": 256}
STEPS = {"quick": 40, "tiny": 300}


def get_config(variant: str = "tiny_mdlm"):
    """``<size>_<member>``: size in ``SIZES``, member in ``MEMBERS``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    size, member = variant.split("_")
    if member == "mdlm":
        model = dict(family="mdlm", preset="tiny", schedule="loglinear")
    else:
        model = dict(family="lm", preset="tiny")
    steps = STEPS[size]
    return config_dict(
        model=model,
        data=dict(name="stdlib", seq_len=SEQ_LEN[size]),
        recipe="cpu_tiny",
        batch_size=8,
        steps=steps,
        warmup_steps=max(steps // 10, 1),
        eval_every=steps,
        checkpoint_every=steps,
        eval_batches=8,
        sample_length=SEQ_LEN[size],
    )
