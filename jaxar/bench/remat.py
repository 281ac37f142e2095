"""Remat: peak temporary memory and step time of ``LMConfig.remat`` choices.

``jaxar bench remat [--quick]``. For the transformer LM (``KINDS``) at size ``small``
(``--quick``: ``tiny``), every remat choice (``jaxar.models.lm.REMAT``: ``none``,
``block``, ``dots_saveable``) is built, compiled and stepped exactly as in
``jaxar bench train_step`` (packed ``stdlib`` rows of ``SEQ_LEN`` bytes, batch 8,
float32, one device; the cases timed round-robin). ``temp_MiB`` is the compiled step's
temporary memory (``memory_analysis().temp_size_in_bytes``: the activations kept for
the backward pass live there), ``GFLOP/step`` XLA's count (the recomputation shows in
it). ``vs_none_time`` = this step time / the same model's without remat, ``vs_none_temp``
the same for the temporaries (< 1: remat saved memory).
"""

from __future__ import annotations

from jaxar.bench import harness, train_step
from jaxar.models import lm

KINDS = ("transformer",)
SEQ_LEN = 512  # long enough that the stored block activations, not the logits, dominate


def cases(quick: bool) -> list[tuple[str, str, dict]]:
    """``(family, preset, model overrides)`` per row: every kind x remat choice."""
    size = "tiny" if quick else "small"
    return [("lm", f"{kind}-{size}", {"remat": r}) for kind in KINDS for r in lm.REMAT]


def with_vs_none(rows: list[harness.Result]) -> list[harness.Result]:
    """Adds ``vs_none_time`` / ``vs_none_temp`` against the same model's ``remat=none`` row."""
    model = lambda r: r.case.split(" ")[0]
    base = {model(r): r for r in rows if r.impl == "remat=none"}
    for r in rows:
        b = base.get(model(r))
        if b is None:
            continue
        r.extra["vs_none_time"] = round(r.median_ms / b.median_ms, 3)
        if "temp_MiB" in r.extra and b.extra.get("temp_MiB"):
            r.extra["vs_none_temp"] = round(r.extra["temp_MiB"] / b.extra["temp_MiB"], 3)
    return rows


def run(quick: bool) -> list[harness.Result]:
    rows = train_step.measure(cases(quick), rounds=3, steps=2, seq_len=SEQ_LEN)
    return with_vs_none(rows)
