"""Axial Transformer (Ho et al. 2019) for discrete images (H, W, C), jaxar/MATHS.md s.4.

Raster-order autoregression over pixels, channels in order inside a pixel:
``p(x) = prod_{r, c, ch} p(x[r, c, ch] | x[< (r, c)], x[r, c, < ch])``.

* pixel embedding ``e(r, c) = sum_ch E_ch[x[r, c, ch]]``;
* **outer decoder** (context from previous rows): ``u = shift_down(e) + pos``, then layers of
  [unmasked row attention, masked column attention, MLP]; its output ``o(r, :)`` depends only
  on rows < r;
* **inner decoder** (within a row): ``z = shift_right(e) + o``, then layers of [masked row
  attention, MLP]; ``h(r, c)`` depends only on rows < r and pixels (r, < c);
* **channel decoder** (our choice for channels): a small per-pixel network on
  ``h(r, c) + P_ch + sum_{ch' < ch} F_{ch'}[x[r, c, ch']]`` (a strictly lower-triangular
  sum, so channel ch never sees channels >= ch of its own pixel), one residual MLP and a
  linear head to ``levels`` logits. With C = 1 it is just the head.

All sub-blocks are pre-norm residual. Loss: mean negative log-likelihood in nats per
dimension (H W C); ``bits_per_dim = nats / ln 2``.

Sampling (:mod:`jaxar.sampling.axial`): ``"naive"`` runs the full model once per (pixel, channel) (the
reference); ``"semi_parallel"`` runs the outer decoder once per row and the inner decoder
one pixel at a time against a per-row KV cache. Both draw the value of dimension
``i = (r W + c) C + ch`` as ``argmax(logits + Gumbel(fold_in(key, i)))``, so they give
identical images from the same key.

References:
  Ho et al. 2019, "Axial Attention in Multidimensional Transformers", arXiv:1912.12180.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import sharding
from jaxar.models.common import from_preset
from jaxar.nn.attention import AttentionImpl
from jaxar.nn.axial import AxialAttention
from jaxar.nn.layers import MLP, RMSNorm, dense, partitioned
from jaxar.ops.checks import positive_int

__all__ = ["PRESETS", "AxialTransformerConfig", "AxialTransformer", "loss"]


# name -> fields: tiny (8x8x1, D=32: tests and CPU smoke runs), small (32x32x3, D=128, 2 + 2
# layers: a CPU-trainable toy), cifar (D=512, 4 + 4 layers: one accelerator), imagenet32
# (roughly the paper's ImageNet-32 scale, D=1024, 16 heads, 8 + 8 layers; the exact
# published widths are not verified here; published: 3.76 bits/dim)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(height=8, width=8, channels=1, d_model=32, num_heads=2),
    "small": dict(
        height=32, width=32, channels=3, d_model=128, num_heads=4, outer_layers=2, inner_layers=2
    ),
    "cifar": dict(
        height=32, width=32, channels=3, d_model=512, num_heads=8, mlp_ratio=4.0,
        outer_layers=4, inner_layers=4,
    ),
    "imagenet32": dict(
        height=32, width=32, channels=3, d_model=1024, num_heads=16, mlp_ratio=4.0,
        outer_layers=8, inner_layers=8,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class AxialTransformerConfig:
    """Axial Transformer configuration (presets: ``PRESETS``).

    Attributes:
      height, width, channels: image shape (H, W, C).
      levels: values per channel (256 for uint8 images).
      d_model: width D; num_heads: heads of every axial attention.
      outer_layers, inner_layers: layers of the outer / inner decoder.
      mlp_ratio: MLP hidden width = mlp_ratio * D.
      dtype, param_dtype: compute / parameter dtypes.
      impl: attention implementation (``jaxar.ops.dot_product_attention``).
    """

    height: int = 8
    width: int = 8
    channels: int = 1
    levels: int = 256
    d_model: int = 32
    num_heads: int = 2
    outer_layers: int = 1
    inner_layers: int = 1
    mlp_ratio: float = 2.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    impl: AttentionImpl = "auto"

    def __post_init__(self):
        for name in (
            "height",
            "width",
            "channels",
            "levels",
            "d_model",
            "num_heads",
            "outer_layers",
            "inner_layers",
        ):
            positive_int(f"AxialTransformerConfig.{name}", getattr(self, name))
        if self.d_model % self.num_heads:
            raise ValueError(
                f"AxialTransformerConfig.d_model={self.d_model} must be divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"AxialTransformerConfig.mlp_ratio={self.mlp_ratio!r}; accepted: > 0")

    @classmethod
    def preset(cls, name: str, **overrides) -> AxialTransformerConfig:
        """``PRESETS[name]`` with ``overrides`` (any field)."""
        return from_preset(cls, PRESETS, name, overrides)


BHWD = ("batch", "length", "length", "embed")  # activations between blocks


class _Residual(nnx.Module):
    """``x + f(norm(x))``."""

    def __init__(self, d, f, *, param_dtype):
        self.norm = RMSNorm(d, param_dtype=param_dtype)
        self.f = f

    def __call__(self, x):
        return x + self.f(self.norm(x)).astype(x.dtype)


class OuterBlock(nnx.Module):
    """Unmasked row attention, masked column attention, MLP (on (B, H, W, D))."""

    def __init__(self, cfg: AxialTransformerConfig, *, rngs):
        d, kw = cfg.d_model, dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        att = dict(impl=cfg.impl, **kw)
        self.row = _Residual(
            d, AxialAttention(d, cfg.num_heads, axis=2, **att), param_dtype=cfg.param_dtype
        )
        self.col = _Residual(
            d,
            AxialAttention(d, cfg.num_heads, axis=1, causal=True, **att),
            param_dtype=cfg.param_dtype,
        )
        self.mlp = _Residual(d, MLP(d, int(cfg.mlp_ratio * d), **kw), param_dtype=cfg.param_dtype)

    def __call__(self, x):
        return self.mlp(self.col(self.row(x)))


class InnerBlock(nnx.Module):
    """Masked row attention, MLP; ``decode`` steps one pixel with a row KV cache."""

    def __init__(self, cfg: AxialTransformerConfig, *, rngs):
        d, kw = cfg.d_model, dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs)
        self.norm = RMSNorm(d, param_dtype=cfg.param_dtype)
        self.row = AxialAttention(d, cfg.num_heads, axis=2, causal=True, impl=cfg.impl, **kw)
        self.mlp = _Residual(d, MLP(d, int(cfg.mlp_ratio * d), **kw), param_dtype=cfg.param_dtype)

    def __call__(self, x):
        return self.mlp(x + self.row(self.norm(x)).astype(x.dtype))

    def decode(self, x_BxTxD, state):
        y, state = self.row.decode(self.norm(x_BxTxD), state)
        return self.mlp(x_BxTxD + y.astype(x_BxTxD.dtype)), state


def _table(rngs, shape, names, dtype, stddev):
    init = partitioned(nnx.initializers.normal(stddev=stddev), names)
    return nnx.Param(init(rngs.params(), shape, dtype))


class AxialTransformer(nnx.Module):
    """Outer decoder + inner decoder + channel decoder; ``__call__(image) -> logits``
    ``(B, H, W, C, levels)`` float32 (see the module docstring)."""

    def __init__(self, cfg: AxialTransformerConfig, rngs: nnx.Rngs | None = None):
        if rngs is None:
            raise ValueError("AxialTransformer(cfg, rngs): rngs is required")
        self.config = cfg
        H, W, C, V, D = cfg.height, cfg.width, cfg.channels, cfg.levels, cfg.d_model
        pd = cfg.param_dtype
        s = 1.0 / math.sqrt(D)
        self.pixel_embed = _table(rngs, (C, V, D), (None, "vocab", "embed"), pd, s)
        self.row_pos = _table(rngs, (H, D), (None, "embed"), pd, s)
        self.col_pos = _table(rngs, (W, D), (None, "embed"), pd, s)
        self.outer = nnx.List([OuterBlock(cfg, rngs=rngs) for _ in range(cfg.outer_layers)])
        self.outer_norm = RMSNorm(D, param_dtype=pd)
        self.inner = nnx.List([InnerBlock(cfg, rngs=rngs) for _ in range(cfg.inner_layers)])
        self.inner_norm = RMSNorm(D, param_dtype=pd)
        self.chan_embed = _table(rngs, (C, V, D), (None, "vocab", "embed"), pd, s)
        self.chan_pos = _table(rngs, (C, D), (None, "embed"), pd, s)
        self.chan_mlp = _Residual(
            D,
            MLP(D, int(cfg.mlp_ratio * D), dtype=cfg.dtype, param_dtype=pd, rngs=rngs),
            param_dtype=pd,
        )
        self.chan_norm = RMSNorm(D, param_dtype=pd)
        self.head = dense(D, V, ("embed", "vocab"), rngs=rngs, dtype=jnp.float32, param_dtype=pd)

    # ---- embeddings ---------------------------------------------------------------------
    def _check(self, image):
        cfg = self.config
        want = (cfg.height, cfg.width, cfg.channels)
        if image.ndim != 4 or tuple(image.shape[1:]) != want:
            raise ValueError(
                f"image has shape {image.shape}; accepted: (B, {', '.join(map(str, want))})"
            )

    def embed_pixels(self, x_xC):
        """``sum_ch E_ch[x[..., ch]]``: (..., C) ints -> (..., D)."""
        x = x_xC.astype(jnp.int32)
        table = sharding.constrain(self.pixel_embed[...], (None, "vocab", None))  # whole rows
        table = table.astype(self.config.dtype)
        out = table[0][x[..., 0]]
        for ch in range(1, self.config.channels):
            out = out + table[ch][x[..., ch]]
        return out

    def embed_channels(self, x_xC):
        """Per-channel embeddings ``F_ch[x[..., ch]]``: (..., C) -> (..., C, D)."""
        x = x_xC.astype(jnp.int32)
        table = sharding.constrain(self.chan_embed[...], (None, "vocab", None))
        table = table.astype(self.config.dtype)
        return jnp.stack([table[ch][x[..., ch]] for ch in range(self.config.channels)], axis=-2)

    def _pos(self):
        rp = self.row_pos[...].astype(self.config.dtype)
        cp = self.col_pos[...].astype(self.config.dtype)
        return rp[:, None, :] + cp[None, :, :]

    # ---- the three decoders ---------------------------------------------------------------
    def outer_context(self, e_BxHxWxD):
        """``o``: (B, H, W, D); row r depends only on rows < r."""
        u = jnp.pad(e_BxHxWxD[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
        u = u + self._pos()[None]
        for blk in self.outer:
            u = blk(sharding.constrain(u, BHWD))
        return self.outer_norm(sharding.constrain(u, BHWD))

    def inner_decoder(self, e_BxHxWxD, o_BxHxWxD):
        """``h``: (B, H, W, D); (r, c) depends on rows < r and pixels (r, < c)."""
        z = jnp.pad(e_BxHxWxD[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0))) + o_BxHxWxD
        for blk in self.inner:
            z = blk(sharding.constrain(z, BHWD))
        return self.inner_norm(sharding.constrain(z, BHWD))

    def channel_logits(self, h_xD, f_xCxD):
        """Logits (..., C, levels) float32 from pixel context ``h`` and channel embeddings
        ``f`` (channel ch sees ``f[..., < ch, :]`` only)."""
        C = self.config.channels
        lower = jnp.tril(jnp.ones((C, C), f_xCxD.dtype), k=-1)
        prev = jnp.einsum("kc,...cd->...kd", lower, f_xCxD)
        pos = self.chan_pos[...].astype(h_xD.dtype)
        z = h_xD[..., None, :] + prev + pos.reshape((1,) * (prev.ndim - 2) + pos.shape)
        z = self.chan_mlp(z)
        return self.head(self.chan_norm(z).astype(jnp.float32))

    def forward_embeddings(self, e_BxHxWxD, f_BxHxWxCxD):
        """Logits from continuous embeddings (the causality-by-gradient entry point)."""
        h = self.inner_decoder(e_BxHxWxD, self.outer_context(e_BxHxWxD))
        return self.channel_logits(h, f_BxHxWxCxD)

    def __call__(self, image_BxHxWxC):
        self._check(image_BxHxWxC)
        return self.forward_embeddings(
            self.embed_pixels(image_BxHxWxC), self.embed_channels(image_BxHxWxC)
        )


def loss(model: AxialTransformer, batch: dict, key=None):
    """Mean NLL in nats per dimension of ``batch["image"]`` (uint8 (B, H, W, C)).

    Returns:
      ``(loss, {"loss", "bits_per_dim"})``.
    """
    del key
    image = batch["image"]
    logits = model(image)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, image.astype(jnp.int32)[..., None], axis=-1)
    value = jnp.mean(nll)
    return value, {"loss": value, "bits_per_dim": value / math.log(2.0)}
