"""GSS (Mehta et al. 2022, "Long Range Language Modeling via Gated State Spaces"): a
byte-level LM of Gated State Space layers (jaxar/MATHS.md s.3: ``u = gelu(x W_u)``,
``g = gelu(x W_g)``, ``y = DSS(u)``, ``out = ((y W_y) * g) W_o``; the layer carries its own
gated expansion, so blocks have no separate MLP).

Variants (``gss_lm:<variant>``):
  * ``full`` (default): the paper's layer widths (D=1024, F=4096, H=256, N=64 DSS modes;
    16 GSS layers, our choice of depth: 156.5M parameters) on byte-level code in rows of
    4096 bytes, as in the paper's GitHub-code setting. Data: the paper's GitHub corpus is
    not in the TFDS catalog, so the default is the embedded ``stdlib`` corpus (Python
    source, 11.6 MB train / 0.54 MB held out), which is far smaller: 1000 steps of 32 x
    4096 bytes are ~11 epochs of it. For a paper-scale run, prepare a large code corpus
    as a TFDS dataset with a ``text`` or ``content`` feature (``tfds build ...
    --file_format=array_record``) and run with ``--config.data.name=tfds:<name>
    --config.data.data_dir=... --config.steps=100000``. NOT run here (no accelerator).
    Baseline at the same size: ``experiments/transformer_lm/config.py:full_code``.
  * ``tiny``: runnable here on ``stdlib``: width 128, 4 GSS layers (the library's GSS
    presets use twice the layers of a transformer), F=304 so that the model has the
    tiny transformer's parameter count (433,024 vs 426,624), rows of 256 bytes, batch 8,
    300 steps (614k training bytes).

Packed rows carry document boundaries (``segment_ids``); the GSS layer then runs its
diagonal recurrence with resets instead of the FFT convolution (same outputs, O(L)
sequential steps): this sets its training speed here.

Commands:

    jaxar train --config gss_lm:tiny   # -> jaxar_runs/gss_lm_tiny
    jaxar sample --workdir jaxar_runs/gss_lm_tiny
    jaxar eval --workdir jaxar_runs/gss_lm_tiny               # held-out bits/byte

Hardware / time: ``tiny`` 3-6 min on 2 shared CPU cores (measured in README.md);
``full`` on 8 accelerators, hours for the stdlib budget, days at paper scale.
Expected: the paper reports GSS competitive with block-recurrent transformers on GitHub
code at length 4096 and 2-3x faster training than DSS on TPU (jaxar/MATHS.md s.3; its
exact perplexities are not recorded there, and its corpus is not ours). Tiny: held-out
2.40 bits/byte after 300 steps (README.md).

References:
  Mehta et al. 2022, "Long Range Language Modeling via Gated State Spaces", arXiv:2206.13947.
  Gupta et al. 2022, "Diagonal State Spaces are as Effective as Structured State Spaces",
    arXiv:2203.14343.
"""

from jaxar.experiments.common import config_dict

VARIANTS = ("full", "tiny")


def get_config(variant: str = "full"):
    """``full`` (paper widths, 4096-byte code rows) or ``tiny`` (embedded corpus, CPU)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not supported; accepted: {VARIANTS}")
    # the "gss-<size>" presets: twice the size's layers, no MLP, GSS state size 64
    if variant == "tiny":
        model = dict(family="lm", preset="gss-tiny", mixer_options=dict(expand_dim=304))
        return config_dict(model=model, data=dict(name="stdlib", seq_len=256), recipe="lm_tiny_256")
    return config_dict(
        model=dict(
            family="lm",
            preset="gss-base",
            d_model=1024,
            num_layers=16,
            mixer_options=dict(reduced_dim=256, expand_dim=4096),
        ),
        data=dict(name="stdlib", seq_len=4096),
        recipe="code_4096",
    )
