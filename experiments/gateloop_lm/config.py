"""GateLoop (Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence"): a
byte-level LM whose mixer is the data-controlled linear recurrence
``S_t = diag(a_t) S_{t-1} + k_t v_t^T``, ``y_t = Re(q_t^T S_t)`` with complex gates
``a_t = sigmoid(m_t) exp(i phi_t)``, head norm and a SiLU output gate (jaxar/MATHS.md s.2),
in pre-norm blocks with a GELU MLP.

Variants (``gateloop_lm:<variant>``):
  * ``full`` (default): WikiText-103 scale, the library's ``base`` size: width 768,
    12 layers, 12 heads (head width 64), MLP 4x: 106.4M parameters with byte embeddings
    (the paper's ~125M counts a ~50k-token BPE embedding). Rows of 2048 bytes (about
    the 512-token context of WikiText-103 setups), batch 64, 40k steps (5.2B bytes,
    ~10 epochs of WikiText-103's ~0.5 GB), AdamW 6e-4, bfloat16 compute. Data:
    WikiText-103 is not in the TFDS catalog, so the default is ``tfds:wiki40b/en``
    (Wikipedia, larger than WikiText-103; prepare it offline with ``tfds build
    wiki40b/en --file_format=array_record`` and pass ``--config.data.data_dir=...``;
    concat packing reads the split's text into host memory). With WikiText-103 prepared
    as a TFDS dataset with a ``text`` feature, run ``--config.data.name=tfds:<name>``.
    NOT run here (no network, no accelerator). Baseline: ``transformer_lm:full``.
  * ``tiny``: runnable here on the embedded ``stdlib`` corpus: width 128, 2 layers,
    4 heads, MLP 2.5x so that the model has the tiny transformer's parameter count
    (427,136 vs 426,624), rows of 256 bytes, batch 8, 300 steps (614k training bytes).
    On CPU the mixer's ``impl="auto"`` is the recurrent scan (``jaxar.dispatch``).

Commands:

    jaxar train --config gateloop_lm:tiny  # -> jaxar_runs/gateloop_lm_tiny
    jaxar sample --workdir jaxar_runs/gateloop_lm_tiny
    jaxar eval --workdir jaxar_runs/gateloop_lm_tiny               # held-out bits/byte

Hardware / time: ``tiny`` 2-5 min on 2 shared CPU cores (measured in README.md);
``full`` a multi-day job on 8 accelerators.
Expected: the paper reports 13.4 WikiText-103 test perplexity for a ~125M GateLoop model
(jaxar/MATHS.md s.2; per BPE token: bits/byte converts as
``ppl = 2 ** (bits_per_byte * test_bytes / test_tokens)``). Tiny: held-out
2.45 bits/byte after 300 steps (README.md).

References:
  Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
    arXiv:2311.01927.
"""

from jaxar.experiments.common import config_dict

VARIANTS = ("full", "tiny")


def get_config(variant: str = "full"):
    """``full`` (WikiText-103 scale) or ``tiny`` (embedded corpus, CPU)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    if variant == "tiny":  # complex gates, implementation "auto": the mixer's defaults
        model = dict(family="lm", preset="gateloop-tiny", mlp_ratio=2.5)
        return config_dict(model=model, data=dict(name="stdlib", seq_len=256), recipe="lm_tiny_256")
    return config_dict(
        model=dict(family="lm", preset="gateloop-base"),
        data=dict(name="tfds:wiki40b/en", seq_len=2048, train_split="train", eval_split="test"),
        recipe="lm_wikitext",
    )
