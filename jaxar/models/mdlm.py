"""MDLM: a masked-diffusion language model on the generic LM backbone (jaxar/MATHS.md s.5).

The network is a :class:`jaxar.models.lm.LM` whose attention is bidirectional
(``AttentionConfig(causal=False)``) and whose vocabulary has one extra id, [MASK]:
``mask_id = data vocabulary size`` (256 for bytes), ``lm.vocab_size = mask_id + 1``. It is
time-agnostic (never sees ``t``) and trained with the SUBS NELBO of
:func:`jaxar.ops.masked_diffusion_loss`. Metrics report the NELBO per token in nats and
bits and the perplexity bound ``exp(NELBO / token) >= perplexity``.

Training hook: ``loss(model, batch, key) -> (loss, metrics)`` with
``batch = {"tokens": int32 (B, L), "segment_ids": int32 (B, L) optional}`` (segment 0 =
padding: neither noised into the loss nor counted). Sampling:
``jaxar.sampling.sample_mdlm(model, key, num, length=..., method="first_hitting")``; report :func:`unigram_entropy` of the samples next to
any generative perplexity (a low-temperature sampler fakes good perplexity with repetitive
text; jaxar/MATHS.md s.5 "Precision").

Presets (``MDLMConfig.preset(name, **overrides)``): the LM sizes as bidirectional
transformers, ``tiny`` d=128 x 2 layers x 4 heads, ``small`` d=256 x 4, ``medium`` d=512 x 8,
``base`` d=768 x 12 (the MDLM paper's size: ~85M parameters with bytes, ~125M with a 50k
vocabulary).

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxar.models.common import from_preset
from jaxar.models.lm import LM, SIZES, LMConfig
from jaxar.ops import masked_diffusion as md_ops
from jaxar.ops.attention import dot_product_attention
from jaxar.ops.checks import positive_int

__all__ = ["PRESETS", "MDLMConfig", "MDLM", "nelbo", "loss", "unigram_entropy"]

# the LM sizes (``jaxar.models.lm.SIZES``), as bidirectional transformers
PRESETS = SIZES


def _check_times(cls, t_low, t_high, schedule):
    if schedule not in md_ops.SCHEDULES:
        raise ValueError(
            f"{cls}.schedule={schedule!r} is not supported; accepted: {md_ops.SCHEDULES}"
        )
    if not 0.0 <= t_low < t_high <= 1.0:
        raise ValueError(
            f"{cls}: need 0 <= t_low < t_high <= 1, got t_low={t_low}, t_high={t_high}"
        )


@dataclasses.dataclass(frozen=True)
class MDLMConfig:
    """MDLM model and objective.

    Attributes:
      vocab_size: data vocabulary; the [MASK] id is ``vocab_size`` and the network has
        ``vocab_size + 1`` ids.
      d_model, num_layers, num_heads, mlp_ratio: the bidirectional transformer backbone.
      dtype, param_dtype: compute / parameter dtypes.
      schedule: ``"loglinear"`` or ``"cosine"`` (``jaxar.ops.masked_diffusion``).
      t_low, t_high: training times ``t ~ U(t_low, t_high]`` (``(0, 1]``: the NELBO).
      antithetic: stratified times across the batch (lower variance, same mean).
      remat: the backbone's ``LMConfig.remat``.
      position_skew: per-position time windows in ``[0, 1)``
        (:func:`jaxar.ops.masked_diffusion.position_window`): position ``l`` is noised while
        ``t`` crosses ``[a_l, b_l]``, with the matching NELBO weight (still a bound); 0 is
        the uniform MDLM schedule, bit for bit. Sample with the same ``position_skew``.
    """

    vocab_size: int = 256
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    schedule: str = "loglinear"
    t_low: float = 0.0
    t_high: float = 1.0
    antithetic: bool = True
    remat: str = "none"
    position_skew: float = 0.0

    def __post_init__(self):
        name = type(self).__name__
        skew = self.position_skew
        if isinstance(skew, bool) or not isinstance(skew, int | float) or not 0 <= skew < 1:
            raise ValueError(f"{name}.position_skew={skew!r}; accepted: a float in [0, 1)")
        positive_int(f"{name}.vocab_size", self.vocab_size)
        _check_times(name, self.t_low, self.t_high, self.schedule)
        _ = self.lm  # building the backbone config validates its fields

    @property
    def lm(self) -> LMConfig:
        """The backbone: non-causal attention over ``vocab_size + 1`` ids."""
        return LMConfig(
            vocab_size=self.vocab_size + 1,
            d_model=self.d_model,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mixer="attention",
            mixer_options={"causal": False},
            mlp_ratio=self.mlp_ratio,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            remat=self.remat,
        )

    @property
    def mask_id(self) -> int:
        """[MASK] id = data vocabulary size."""
        return self.vocab_size

    @property
    def data_vocab_size(self) -> int:
        return self.vocab_size

    @classmethod
    def preset(cls, name: str, **overrides):
        """``PRESETS[name]`` (the LM sizes) with ``overrides`` (any field)."""
        return from_preset(cls, PRESETS, name, overrides)


class MDLM(nnx.Module):
    """The denoising network: ``tokens (B, L) -> logits (B, L, data vocab + 1)``."""

    def __init__(self, config: MDLMConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.lm = LM(config.lm, rngs=rngs)

    def __call__(self, tokens_BxL, *, segment_ids=None, positions=None, mask=None):
        return self.lm(tokens_BxL, segment_ids=segment_ids, positions=positions, mask=mask)

    def init_state(self, batch_size: int, max_len: int):
        return self.lm.init_state(batch_size, max_len)

    def decode(self, tokens_BxT, state, *, positions=None, bidirectional=False):
        return self.lm.decode(tokens_BxT, state, positions=positions, bidirectional=bidirectional)

    def forward_kv(self, tokens_BxL):
        """The full bidirectional forward and every layer's keys and values.

        Returns ``(logits_BxLxV, kv)`` with ``kv`` a tuple over layers of ``(k_BxLxGxK,
        v_BxLxGxK)`` (keys after RoPE), the cache of the approximate prefix / dual KV caches
        (Fast-dLLM, arXiv:2505.22618) used by :func:`jaxar.sampling.masked_diffusion.sample`.
        """
        return self._forward(tokens_BxL, None, 0)

    def forward_span(self, tokens_BxS, kv, start: int):
        """Logits ``(B, S, V)`` of the span ``[start, start + S)`` alone: its queries attend
        to its own fresh keys/values and to ``kv`` (from :meth:`forward_kv`) at every other
        position, ``softmax(q [K_cached | K_span]^T / sqrt(K)) [V_cached | V_span]``. Exact
        when the cached positions' K/V would not change, an approximation otherwise."""
        return self._forward(tokens_BxS, kv, start)[0]

    def _forward(self, tokens_BxS, kv, start):
        lm = self.lm
        B, S = tokens_BxS.shape
        positions = jnp.broadcast_to(start + jnp.arange(S, dtype=jnp.int32)[None], (B, S))
        h = lm._embed(tokens_BxS).astype(lm.config.dtype)
        new_kv = []
        for i, block in enumerate(lm.backbone.blocks):
            mixer = block.mixer
            if mixer.config.window is not None:
                raise ValueError("MDLM KV caches need global attention; got a window")
            x = block.norm1(h)
            q, k, v = mixer.project(x, positions)
            new_kv.append((k, v))
            if kv is not None:
                k_c, v_c = kv[i]
                k = lax.dynamic_update_slice(k_c.astype(k.dtype), k, (0, start, 0, 0))
                v = lax.dynamic_update_slice(v_c.astype(v.dtype), v, (0, start, 0, 0))
            o = dot_product_attention(q, k, v, impl=mixer.config.impl)
            h = block._mlp(h + mixer.output(o, x.dtype).astype(h.dtype))
        return lm.logits(lm.backbone.final_norm(h)), tuple(new_kv)


def nelbo(model, tokens, noisy, t, *, segment_ids=None, time_weights=None):
    """(B,) NELBO estimate (nats, summed over tokens) of ``model`` at noised ``noisy``;
    ``t`` (B,) or per-position (B, L), ``time_weights`` (B, L) ``dtau / dt`` of a
    per-position schedule (None: 1)."""
    cfg = model.config
    weights = None if segment_ids is None else (segment_ids > 0).astype(jnp.float32)
    if time_weights is not None:
        weights = time_weights if weights is None else weights * time_weights
    logits = model(noisy, segment_ids=segment_ids)
    return md_ops.masked_diffusion_loss(
        logits, tokens, noisy, t, mask_id=cfg.mask_id, schedule=cfg.schedule, weights=weights
    )


def _metrics(nelbo_B, num_tokens, masked_fraction):
    nats = jnp.sum(nelbo_B) / jnp.maximum(num_tokens, 1.0)
    return nats, {
        "loss": nats,
        "nelbo_nats_per_token": nats,
        "bits_per_token": nats / math.log(2.0),
        "perplexity_bound": jnp.exp(nats),
        "num_tokens": num_tokens,
        "masked_fraction": masked_fraction,
    }


def loss(model, batch: dict, key):
    """MDLM training loss: NELBO in nats per (non-padding) token, and metrics
    (``bits_per_token``, ``perplexity_bound`` = upper bound on perplexity, ...)."""
    cfg = model.config
    tokens = jnp.asarray(batch["tokens"], jnp.int32)
    segment_ids = batch.get("segment_ids")
    k_t, k_noise = jax.random.split(key)
    t = md_ops.sample_t(
        k_t, tokens.shape[0], low=cfg.t_low, high=cfg.t_high, antithetic=cfg.antithetic
    )
    # per-position times (B, L) and dtau / dt; position_skew = 0 gives tau = t, weight 1
    t, time_weights = md_ops.position_window(t, tokens.shape[1], cfg.position_skew)
    noisy = md_ops.add_mask_noise(k_noise, tokens, t, cfg.mask_id, cfg.schedule)
    if segment_ids is None:
        valid = jnp.ones(tokens.shape, bool)
    else:
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
        valid = segment_ids > 0
        noisy = jnp.where(valid, noisy, tokens)
    nelbo_B = nelbo(model, tokens, noisy, t, segment_ids=segment_ids, time_weights=time_weights)
    num_tokens = jnp.sum(valid).astype(jnp.float32)
    masked = jnp.sum((noisy == cfg.mask_id) & valid) / jnp.maximum(num_tokens, 1.0)
    return _metrics(nelbo_B, num_tokens, masked)


def unigram_entropy(tokens, lengths=None) -> float:
    """Mean over sequences of the entropy (nats) of each sequence's token histogram.

    Report it beside generative perplexity: repetitive, low-temperature samples get a good
    perplexity and a low unigram entropy. ``lengths`` (B,) limits each row to its prefix.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    out = []
    for i, row in enumerate(tokens):
        if lengths is not None:
            row = row[: int(np.asarray(lengths)[i])]
        if row.size == 0:
            continue
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(out)) if out else 0.0
