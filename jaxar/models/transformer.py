"""Transformer LM baseline: the generic :class:`jaxar.models.lm.LM` with attention mixers.

Same block conventions as the recurrent LMs (pre-norm ``x += attn(norm(x)); x +=
mlp(norm(x))``, final norm, tied embeddings), causal multi-head attention with RoPE and a
KV cache for generation. Presets (``TRANSFORMER_PRESETS``; parameters with V = 256):

=======  ======  ======  =====  ===========================================
name     D       layers  heads  note
=======  ======  ======  =====  ===========================================
tiny     32      2       2      tests
small    256     4       4      CPU smoke runs
medium   512     8       8
base     768     12      12     ~85M non-embedding; ~125M with a 50k vocab
=======  ======  ======  =====  ===========================================

Usage::

    cfg = transformer_config("tiny", vocab_size=256)
    model = LM(cfg, nnx.Rngs(0))
    loss, metrics = loss(model, {"tokens": tokens}, key)
"""

from __future__ import annotations

from jaxar.models.lm import LM, LMConfig, lm_loss, sample
from jaxar.nn.attention import AttentionConfig

__all__ = ["TRANSFORMER_PRESETS", "transformer_config", "LM", "LMConfig", "loss", "sample"]

# name -> (d_model, num_layers, num_heads)
TRANSFORMER_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 2, 2),
    "small": (256, 4, 4),
    "medium": (512, 8, 8),
    "base": (768, 12, 12),
}


def transformer_config(
    size: str = "tiny",
    *,
    vocab_size: int = 256,
    num_kv_heads: int | None = None,
    window: int | None = None,
    causal: bool = True,
    attention_impl: str = "auto",
    **overrides,
) -> LMConfig:
    """``LMConfig`` of a transformer preset (``size`` in ``TRANSFORMER_PRESETS``).

    ``num_kv_heads`` (GQA), ``window`` (sliding window), ``causal`` and ``attention_impl``
    go to every layer's ``AttentionConfig``; ``overrides`` to ``LMConfig`` (e.g.
    ``mlp_ratio``, ``dtype``, ``num_layers``).
    """
    if size not in TRANSFORMER_PRESETS:
        raise ValueError(f"size={size!r} is not supported; accepted: {tuple(TRANSFORMER_PRESETS)}")
    d, n, h = TRANSFORMER_PRESETS[size]
    mixer = AttentionConfig(
        num_heads=overrides.pop("num_heads", h),
        num_kv_heads=num_kv_heads,
        window=window,
        causal=causal,
        impl=attention_impl,
    )
    overrides.setdefault("d_model", d)
    overrides.setdefault("num_layers", n)
    return LMConfig(vocab_size=vocab_size, mixers=(mixer,), **overrides)


loss = lm_loss
