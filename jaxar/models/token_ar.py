"""Token-AR: a class-conditional LM over a tokenizer's code grid, LlamaGen style
(jaxar/MATHS.md s.10).

An image is ``g x g`` codes in raster order (a trained :class:`jaxar.models.vq.VQ`,
frozen). The vocabulary is ``V = K + C + 1``: the K codes, then one class token per class
and a null class (id ``K + C``) for classifier-free guidance. A sequence is ``[K + y,
t_0, .., t_{L-1}]``; the model predicts ``t_i`` from ``[K + y, t_{<i}]``: causal attention
with 2-D RoPE (the class token rotates by 0, code ``t_i`` at its grid ``(row, col)``).
Logits of non-code ids are ``-inf``, so any LM sampler (``jaxar.sampling.generate`` with
the class token as the prompt) draws codes only. In training the label is replaced by
the null class with probability ``label_drop_prob``.

Presets: ``tiny`` (D=64, 2 layers, 4 heads) and ``llamagen_b`` (LlamaGen-B: D=768, 12
layers, 12 heads, 16384 codes on a 16x16 grid, 1000 classes; ~111M parameters).

References:
  Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable Image
    Generation", arXiv:2406.06525.
  Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", arXiv:2207.12598.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.models.common import from_preset
from jaxar.models.token_transformer import (
    TokenModelConfig,
    TokenTransformer,
    TokenTransformerConfig,
)
from jaxar.models.vq import VQ, freeze
from jaxar.nn.layers import embed_lookup
from jaxar.ops.masks import causal_mask

__all__ = ["PRESETS", "TokenARConfig", "TokenAR", "loss", "image_codes"]

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, num_layers=2, num_heads=4),
    "llamagen_b": dict(
        d_model=768, num_layers=12, num_heads=12, num_codes=16384, grid=16, num_classes=1000
    ),
}


@dataclasses.dataclass(frozen=True)
class TokenARConfig(TokenModelConfig):
    """Token-AR model: the shared :class:`TokenModelConfig` fields plus ``grid`` (g, codes
    per side of the tokenizer's grid)."""

    grid: int = 4

    _POSITIVE = ("grid",)

    def __post_init__(self):
        super().__post_init__()
        self.transformer_config()  # validates the sizes

    @property
    def seq_len(self) -> int:
        return self.grid * self.grid

    @property
    def vocab_size(self) -> int:
        return self.num_codes + self.num_classes + 1

    @property
    def null_class(self) -> int:
        return self.num_classes

    def transformer_config(self) -> TokenTransformerConfig:
        return super().transformer_config(rope_dims=2)

    @classmethod
    def preset(cls, name: str, **overrides):
        return from_preset(cls, PRESETS, name, overrides)


class TokenAR(nnx.Module):
    """Embedding of codes and class tokens, the transformer, a head over the codes, and
    (optionally) the frozen tokenizer."""

    def __init__(self, config: TokenARConfig, *, rngs: nnx.Rngs, tokenizer: VQ | None = None):
        cfg = self.config = config
        self.vocab_size = cfg.vocab_size
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Param(
            nnx.with_partitioning(init, ("vocab", "embed"), eager_sharding=False)(
                rngs.params(), (cfg.vocab_size, cfg.d_model), cfg.param_dtype
            )
        )
        self.transformer = TokenTransformer(cfg.transformer_config(), rngs=rngs)
        self.head = nnx.Linear(
            cfg.d_model, cfg.num_codes, param_dtype=cfg.param_dtype, rngs=rngs,
            kernel_init=nnx.with_partitioning(
                nnx.initializers.zeros_init(), ("embed", "vocab"), eager_sharding=False
            ),
        )  # fmt: skip
        self.tokenizer = nnx.data(None if tokenizer is None else freeze(tokenizer))

    def class_tokens(self, labels_B):
        """The class token ids ``K + y`` (``y = C``: the null class)."""
        return self.config.num_codes + jnp.asarray(labels_B, jnp.int32)

    def _positions(self, slots_BxT):
        """Slot 0 (class token) -> (0, 0); slot j >= 1 (code j - 1) -> its (row, col)."""
        g = self.config.grid
        j = jnp.maximum(slots_BxT - 1, 0)
        return jnp.stack([j // g, j % g], -1)

    def _logits(self, h):
        logits = self.head(h.astype(jnp.float32)).astype(jnp.float32)
        pad = jnp.full(logits.shape[:-1] + (self.vocab_size - self.config.num_codes,), -jnp.inf)
        return jnp.concatenate([logits, pad], -1)

    def _embed(self, tokens):
        h = embed_lookup(self.embed[...], tokens, out_axes=("batch", "length", "embed"))
        return h.astype(self.config.dtype)

    def __call__(self, tokens_BxL):
        """Full causal pass over ``[class, codes...]`` -> logits (B, L, V)."""
        b, n = tokens_BxL.shape
        slots = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None], (b, n))
        h = self.transformer(
            self._embed(tokens_BxL), positions=self._positions(slots), mask=causal_mask(n)
        )
        return self._logits(h)

    def init_state(self, batch_size: int, max_len: int, dtype=None):
        return self.transformer.init_state(batch_size, max_len, dtype)

    def decode(self, tokens_BxT, state, *, positions=None, bidirectional=False):
        """LM protocol: appends T tokens at slots ``positions`` (B, T) (default: after the
        cache) -> ``(logits (B, T, V), state)``."""
        del bidirectional
        b, t = tokens_BxT.shape
        if positions is None:
            idx = state[0]["index"]
            positions = jnp.broadcast_to(idx + jnp.arange(t, dtype=jnp.int32)[None], (b, t))
        h, state = self.transformer.decode(
            self._embed(tokens_BxT), state, limits=positions[0] + 1,
            positions=self._positions(positions),
        )  # fmt: skip
        return self._logits(h), state

    def decode_codes(self, codes_BxL):
        """Codes (B, g*g) -> uint8 images through the tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this TokenAR has no tokenizer; build it with tokenizer=VQ(...)")
        g = self.config.grid
        return self.tokenizer.decode_ids(codes_BxL.reshape(-1, g, g))


def image_codes(model, batch: dict):
    """``batch["codes"]`` (B, g*g) if given, else the frozen tokenizer's codes of
    ``batch["image"]`` in raster order."""
    cfg = model.config
    if "codes" in batch:
        codes = jnp.asarray(batch["codes"], jnp.int32)
    elif model.tokenizer is None:
        raise ValueError("batch has no 'codes' and the model has no tokenizer to encode images")
    else:
        codes = jax.lax.stop_gradient(model.tokenizer.encode_ids(batch["image"]))
    codes = codes.reshape(codes.shape[0], -1)
    if codes.shape[1] != cfg.seq_len:
        raise ValueError(f"codes have {codes.shape[1]} per image; the model expects {cfg.seq_len}")
    return codes


def loss(model: TokenAR, batch: dict, key):
    """Next-code cross-entropy: ``batch = {"image" or "codes", "label"}`` ->
    ``(loss, {"loss", "bits_per_token", "accuracy", "label_drop_fraction"})``."""
    cfg = model.config
    codes = image_codes(model, batch)
    b = codes.shape[0]
    drop = jax.random.bernoulli(key, cfg.label_drop_prob, (b,))
    labels = jnp.where(drop, cfg.null_class, jnp.asarray(batch["label"], jnp.int32))
    seq = jnp.concatenate([model.class_tokens(labels)[:, None], codes[:, :-1]], 1)
    logits = model(seq)[..., : cfg.num_codes]
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, codes[..., None], -1)[..., 0]
    value = jnp.mean(nll)
    return value, {
        "loss": value,
        "bits_per_token": value / jnp.log(2.0),
        "accuracy": jnp.mean((jnp.argmax(logits, -1) == codes).astype(jnp.float32)),
        "label_drop_fraction": jnp.mean(drop.astype(jnp.float32)),
    }
