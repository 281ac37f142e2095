"""VAR: visual autoregressive modeling by next-scale prediction (jaxar/MATHS.md s.10).

A multi-scale residual tokenizer (:class:`jaxar.models.vq.VQ` with ``quantizer="msrq"``)
turns an image into code maps ``r_1 .. r_K`` of sides ``s_1 < .. < s_K``. The sequence is
``L = sum_k s_k^2`` positions: block 1 is the class token (``s_1 = 1``), block k >= 2 is
the running reconstruction ``f_hat_{k-1} = sum_{j<k} up(e(r_j))`` area-resized to
``s_k`` (:func:`jaxar.ops.quantize.multiscale_inputs`), projected to D, plus learned
position and level embeddings. All scales are trained teacher-forced in one pass under
:func:`jaxar.ops.scale_causal_mask` (block k sees blocks <= k) with cross-entropy on the
codes of every block; the class enters every block through AdaLN (a zero-initialised
``shift, scale, gate`` of the class embedding) and the label is dropped to the null class
with probability ``label_drop_prob``. Sampling (:mod:`jaxar.sampling.var`) is one
transformer call per scale against a KV cache.

Presets: ``tiny`` (D=64, 2 layers, 4 heads) and ``var_d16`` (VAR-d16: depth 16, D=1024,
16 heads, 4096 codes of dim 32, scales 1..16 (10 of them), 1000 classes).

References:
  Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
    Next-Scale Prediction", arXiv:2404.02905.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar import dispatch
from jaxar.models.common import from_preset
from jaxar.models.token_transformer import (
    TokenModelConfig,
    TokenTransformer,
    TokenTransformerConfig,
)
from jaxar.models.vq import VQ, Frozen, freeze
from jaxar.nn.layers import embed_lookup
from jaxar.ops import quantize as qops
from jaxar.ops.masks import ScaleCausal, scale_causal_mask

__all__ = ["PRESETS", "VARConfig", "VAR", "loss", "scale_codes"]

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, num_layers=2, num_heads=4),
    "var_d16": dict(
        d_model=1024, num_layers=16, num_heads=16, num_codes=4096, latent_dim=32,
        scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), num_classes=1000,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class VARConfig(TokenModelConfig):
    """VAR model: the shared :class:`TokenModelConfig` fields plus ``latent_dim`` (the code
    dimension) and ``scales`` (the tokenizer's, strictly increasing, the first 1)."""

    latent_dim: int = 4
    scales: tuple[int, ...] = (1, 2, 4)

    _POSITIVE = ("latent_dim",)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "scales", qops.check_scales(self.scales))
        if self.scales[0] != 1:
            raise ValueError(f"VARConfig.scales={self.scales} must start at 1 (the class token)")
        self.transformer_config()

    @property
    def seq_len(self) -> int:
        return sum(s * s for s in self.scales)

    @property
    def grid(self) -> int:
        return self.scales[-1]

    @property
    def null_class(self) -> int:
        return self.num_classes

    def block_ends(self) -> tuple[int, ...]:
        """Exclusive end position of each scale's block."""
        return tuple(int(x) for x in np.cumsum([s * s for s in self.scales]))

    def transformer_config(self) -> TokenTransformerConfig:
        return super().transformer_config(adaln=True)

    def mask(self, num_scales: int | None = None):
        """The scale-causal mask of the first ``num_scales`` blocks: a static rule (the
        flash kernel's block mask) when attention is ``"pallas"``, else dense (L', L')."""
        scales = self.scales[: len(self.scales) if num_scales is None else num_scales]
        if dispatch.resolve("attention", self.attention_impl) == "pallas":
            return ScaleCausal.from_scales(scales)
        return scale_causal_mask(scales)

    @classmethod
    def preset(cls, name: str, **overrides):
        return from_preset(cls, PRESETS, name, overrides)


def _p(rngs, shape, names, scale, dtype):
    init = nnx.with_partitioning(nnx.initializers.normal(scale), names, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, dtype))


class VAR(nnx.Module):
    """Class / word / position / level embeddings, the AdaLN transformer, the code head,
    the frozen codebook (and the frozen tokenizer when given)."""

    def __init__(self, config: VARConfig, *, rngs: nnx.Rngs, tokenizer: VQ | None = None):
        cfg = self.config = config
        d, pd = cfg.d_model, cfg.param_dtype
        self.class_emb = _p(rngs, (cfg.num_classes + 1, d), ("vocab", "embed"), 0.02, pd)
        self.word_embed = nnx.Linear(cfg.latent_dim, d, param_dtype=pd, dtype=cfg.dtype, rngs=rngs)
        self.pos_emb = _p(rngs, (cfg.seq_len, d), (None, "embed"), 0.02, pd)
        self.level_emb = _p(rngs, (len(cfg.scales), d), (None, "embed"), 0.02, pd)
        self.transformer = TokenTransformer(cfg.transformer_config(), rngs=rngs)
        self.head = nnx.Linear(d, cfg.num_codes, param_dtype=pd, rngs=rngs)
        if tokenizer is not None:
            tc = tokenizer.config
            if tc.quantizer != "msrq" or tuple(tc.scales) != cfg.scales:
                raise ValueError(
                    f"the VAR tokenizer must be msrq with scales {cfg.scales}; got "
                    f"{tc.quantizer} with scales {tc.scales}"
                )
            book = tokenizer.codebook.get_value()
        else:  # an untrained stand-in (tests, benchmarks)
            book = jax.random.normal(rngs.params(), (cfg.num_codes, cfg.latent_dim))
            book = book / math.sqrt(cfg.latent_dim)
        if book.shape != (cfg.num_codes, cfg.latent_dim):
            raise ValueError(
                f"the tokenizer's codebook is {book.shape}; VARConfig wants "
                f"({cfg.num_codes}, {cfg.latent_dim})"
            )
        self.codebook = Frozen(jnp.asarray(book, jnp.float32))
        self.tokenizer = nnx.data(None if tokenizer is None else freeze(tokenizer))

    def condition(self, labels_B):
        labels = jnp.asarray(labels_B, jnp.int32)
        return embed_lookup(self.class_emb[...], labels, out_axes=("batch", "embed"))

    def embed_block(self, k: int, x_BxTxC, cond_BxD):
        """Inputs of scale k (k = 0: the class token; else area-resized ``f_hat``)."""
        cfg = self.config
        start = (0,) + cfg.block_ends()
        lo, hi = start[k], start[k + 1]
        pos = self.pos_emb[lo:hi] + self.level_emb[k][None]
        if k == 0:
            h = cond_BxD[:, None, :]
        else:
            h = self.word_embed(x_BxTxC.astype(cfg.dtype))
        return (h + pos[None].astype(h.dtype)).astype(cfg.dtype)

    def embed(self, inputs_BxTxC, cond_BxD):
        """Teacher-forced inputs (B, L - 1, C) -> embedded sequence (B, L, D)."""
        cfg = self.config
        ends = cfg.block_ends()
        parts = [self.embed_block(0, None, cond_BxD)]
        for k in range(1, len(cfg.scales)):
            parts.append(
                self.embed_block(k, inputs_BxTxC[:, ends[k - 1] - 1 : ends[k] - 1], cond_BxD)
            )
        return jnp.concatenate(parts, 1)

    def init_state(self, batch_size: int, max_len: int | None = None, dtype=None):
        """Empty per-layer KV caches for ``max_len`` (default L) positions."""
        return self.transformer.init_state(batch_size, max_len or self.config.seq_len, dtype)

    def logits(self, h):
        return self.head(h.astype(jnp.float32)).astype(jnp.float32)

    def __call__(self, labels_B, inputs_BxTxC, *, num_scales: int | None = None):
        """Logits (B, L', K) of the first ``num_scales`` blocks (default all) in one pass."""
        cfg = self.config
        cond = self.condition(labels_B)
        h = self.embed(inputs_BxTxC, cond)
        n = len(cfg.scales) if num_scales is None else num_scales
        end = cfg.block_ends()[n - 1]
        return self.logits(self.transformer(h[:, :end], cond=cond, mask=cfg.mask(n)))


def scale_codes(model: VAR, batch: dict):
    """Per-scale code maps: ``batch["codes"]`` (B, L) flat, or the frozen tokenizer's."""
    cfg = model.config
    if "codes" in batch:
        flat = jnp.asarray(batch["codes"], jnp.int32)
        start = (0,) + cfg.block_ends()
        return [
            flat[:, start[k] : start[k + 1]].reshape(-1, s, s) for k, s in enumerate(cfg.scales)
        ]
    if model.tokenizer is None:
        raise ValueError("batch has no 'codes' and the model has no tokenizer to encode images")
    return [jax.lax.stop_gradient(i) for i in model.tokenizer.encode_ids(batch["image"])]


def loss(model: VAR, batch: dict, key):
    """Teacher-forced next-scale cross-entropy over all L positions:
    ``(loss, {"loss", "bits_per_token", "accuracy", "last_scale_loss"})``."""
    cfg = model.config
    ids = scale_codes(model, batch)
    b = ids[0].shape[0]
    drop = jax.random.bernoulli(key, cfg.label_drop_prob, (b,))
    labels = jnp.where(drop, cfg.null_class, jnp.asarray(batch["label"], jnp.int32))
    inputs = qops.multiscale_inputs(ids, cfg.scales, model.codebook[...])
    logits = model(labels, inputs)
    targets = jnp.concatenate([i.reshape(b, -1) for i in ids], 1)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
    value = jnp.mean(nll)
    last = cfg.scales[-1] ** 2
    return value, {
        "loss": value,
        "bits_per_token": value / jnp.log(2.0),
        "accuracy": jnp.mean((jnp.argmax(logits, -1) == targets).astype(jnp.float32)),
        "last_scale_loss": jnp.mean(nll[:, -last:]),
    }
