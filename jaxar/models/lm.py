"""The generic language model: any sequence mixer in pre-norm residual blocks.

A mixer config (``GateLoopConfig``, ``GSSConfig``, ``AttentionConfig``) has
``make(d_model, *, rngs) -> module`` with ``__call__(x_BxLxD, *, segment_ids, positions,
mask)``, ``init_state(batch_size, max_len, dtype)`` and ``decode(x_BxTxD, state, *,
positions, bidirectional) -> (y, state)``. ``LMConfig.mixers`` is cycled over layers
(``(GSSConfig(), AttentionConfig(window=...))`` is GSS-Hybrid).

Block: ``x += mixer(norm(x)); x += mlp(norm(x))``; final norm; tied or untied head.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.nn.layers import MLP, MLP_ACTIVATIONS, Embed, RMSNorm, dense

__all__ = ["LMConfig", "Backbone", "LM", "lm_loss", "loss", "sample", "PRESET_SIZES"]

# size name -> (d_model, num_layers, heads of the recurrent mixer)
PRESET_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (32, 2, 2),
    "small": (256, 4, 4),
    "medium": (512, 8, 8),
    "base": (768, 12, 12),  # ~125M with a 50k vocabulary; the papers' scale
}
PRESET_FAMILIES = ("gateloop", "gss", "gss_hybrid", "transformer")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Language model configuration.

    Attributes:
      vocab_size: number of token ids V (use 1 for a Backbone-only model).
      d_model: width D.
      num_layers: number of residual blocks.
      mixers: tuple of mixer configs cycled over layers (a single config is accepted).
      mlp_ratio: MLP hidden width F = mlp_ratio * D (0 = no MLP sub-block).
      mlp_activation: one of ``MLP_ACTIVATIONS``.
      tie_embeddings: output head = embedding transpose.
      dtype: compute dtype (activations), e.g. ``jnp.bfloat16``.
      param_dtype: parameter dtype.
      norm_eps: RMSNorm epsilon.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    mixers: tuple[Any, ...]
    mlp_ratio: float = 4.0
    mlp_activation: str = "gelu"
    tie_embeddings: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    norm_eps: float = 1e-6

    def __post_init__(self):
        if not isinstance(self.mixers, tuple):
            if isinstance(self.mixers, list):
                object.__setattr__(self, "mixers", tuple(self.mixers))
            else:
                object.__setattr__(self, "mixers", (self.mixers,))
        for name in ("vocab_size", "d_model", "num_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"LMConfig.{name}={v!r} must be a positive int")
        if not self.mixers:
            raise ValueError("LMConfig.mixers=() must hold at least one mixer config")
        for m in self.mixers:
            if not callable(getattr(m, "make", None)):
                raise ValueError(f"LMConfig.mixers entry {m!r} has no make(d_model, *, rngs)")
        if self.mlp_ratio < 0:
            raise ValueError(f"LMConfig.mlp_ratio={self.mlp_ratio!r} must be >= 0")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"LMConfig.mlp_activation={self.mlp_activation!r} is not supported; "
                f"accepted: {MLP_ACTIVATIONS}"
            )

    def mixer(self, layer: int):
        return self.mixers[layer % len(self.mixers)]

    # ---- presets ----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, *, vocab_size: int = 256, **overrides) -> LMConfig:
        """``"<family>-<size>"`` with family in ``PRESET_FAMILIES`` and size in
        ``PRESET_SIZES`` (e.g. ``"gateloop-tiny"``, ``"gss_hybrid-base"``)."""
        family, _, size = name.partition("-")
        if family not in PRESET_FAMILIES or size not in PRESET_SIZES:
            raise ValueError(
                f"preset name={name!r} is not supported; accepted: '<family>-<size>' with "
                f"family in {PRESET_FAMILIES} and size in {tuple(PRESET_SIZES)}"
            )
        return getattr(cls, family)(size, vocab_size=vocab_size, **overrides)

    @classmethod
    def gateloop(cls, size: str = "tiny", *, vocab_size: int = 256, **overrides) -> LMConfig:
        """GateLoop LM (complex gates, ``head_dim`` K = E = D / heads)."""
        from jaxar.nn.gateloop import GateLoopConfig

        d, n, h = _size(size)
        mixers = overrides.pop("mixers", (GateLoopConfig(num_heads=h),))
        return cls(vocab_size=vocab_size, d_model=d, num_layers=n, mixers=mixers, **overrides)

    @classmethod
    def gss(cls, size: str = "tiny", *, vocab_size: int = 256, **overrides) -> LMConfig:
        """GSS LM (GSS blocks have their own gated expansion: no separate MLP; a GSS block
        has about half the parameters of a mixer + MLP block, so twice the layers)."""
        from jaxar.nn.gss import GSSConfig

        d, n, _ = _size(size)
        n = 2 * n
        mixers = overrides.pop("mixers", (GSSConfig(),))
        overrides.setdefault("mlp_ratio", 0.0)
        return cls(vocab_size=vocab_size, d_model=d, num_layers=n, mixers=mixers, **overrides)

    @classmethod
    def transformer(cls, size: str = "tiny", *, vocab_size: int = 256, **overrides) -> LMConfig:
        """Causal transformer baseline (RoPE attention + MLP blocks), the sizes of
        :func:`jaxar.models.transformer.transformer_config`."""
        from jaxar.models.transformer import transformer_config

        return transformer_config(size, vocab_size=vocab_size, **overrides)

    @classmethod
    def gss_hybrid(
        cls, size: str = "tiny", *, vocab_size: int = 256, window: int = 512, **overrides
    ) -> LMConfig:
        """GSS-Hybrid: GSS layers alternating with local (``window``) attention."""
        from jaxar.nn.attention import AttentionConfig
        from jaxar.nn.gss import GSSConfig

        d, n, h = _size(size)
        mixers = overrides.pop("mixers", (GSSConfig(), AttentionConfig(num_heads=h, window=window)))
        return cls(vocab_size=vocab_size, d_model=d, num_layers=n, mixers=mixers, **overrides)


def _size(size: str):
    if size not in PRESET_SIZES:
        raise ValueError(f"size={size!r} is not supported; accepted: {tuple(PRESET_SIZES)}")
    return PRESET_SIZES[size]


def _make_mixer(mcfg, d_model: int, cfg: LMConfig, rngs: nnx.Rngs):
    """``mcfg.make(d_model, rngs=...)``, passing dtype/param_dtype when it accepts them."""
    params = inspect.signature(mcfg.make).parameters
    kw = {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name, value in (("dtype", cfg.dtype), ("param_dtype", cfg.param_dtype)):
        if name in params or accepts_any:
            kw[name] = value
    return mcfg.make(d_model, rngs=rngs, **kw)


class Block(nnx.Module):
    """``x += mixer(norm(x)); x += mlp(norm(x))``."""

    def __init__(self, cfg: LMConfig, layer: int, *, rngs: nnx.Rngs):
        d = cfg.d_model
        self.norm1 = RMSNorm(d, eps=cfg.norm_eps, param_dtype=cfg.param_dtype)
        self.mixer = _make_mixer(cfg.mixer(layer), d, cfg, rngs)
        if cfg.mlp_ratio > 0:
            self.norm2 = RMSNorm(d, eps=cfg.norm_eps, param_dtype=cfg.param_dtype)
            hidden = max(1, int(round(cfg.mlp_ratio * d)))
            self.mlp = MLP(
                d,
                hidden,
                activation=cfg.mlp_activation,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )
        else:
            self.norm2 = None
            self.mlp = None

    def _mlp(self, x):
        if self.mlp is None:
            return x
        return x + self.mlp(self.norm2(x)).astype(x.dtype)

    def __call__(self, x, *, segment_ids=None, positions=None, mask=None):
        kw = {}
        if mask is not None:
            kw["mask"] = mask
        y = self.mixer(self.norm1(x), segment_ids=segment_ids, positions=positions, **kw)
        return self._mlp(x + y.astype(x.dtype))

    def decode(self, x, state, *, positions=None, bidirectional=False):
        kw = {"bidirectional": True} if bidirectional else {}
        y, state = self.mixer.decode(self.norm1(x), state, positions=positions, **kw)
        return self._mlp(x + y.astype(x.dtype)), state


class Backbone(nnx.Module):
    """Residual blocks + final norm on continuous inputs ``x_BxLxD`` (used by LM and MAR)."""

    def __init__(self, cfg: LMConfig, rngs: nnx.Rngs | None = None):
        if rngs is None:
            raise ValueError("Backbone(cfg, rngs): rngs is required")
        self.config = cfg
        self.blocks = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=cfg.param_dtype)

    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None):
        h = x_BxLxD.astype(self.config.dtype)
        for block in self.blocks:
            h = block(h, segment_ids=segment_ids, positions=positions, mask=mask)
        return self.final_norm(h)

    def init_state(self, batch_size: int, max_len: int, dtype=None):
        """Per-layer mixer states (a tuple), fixed size for recurrent mixers."""
        dtype = self.config.dtype if dtype is None else dtype
        return tuple(b.mixer.init_state(batch_size, max_len, dtype) for b in self.blocks)

    def decode(self, x_BxTxD, state, *, positions=None, bidirectional=False):
        """Appends T inputs after what ``state`` holds; returns ``(h_BxTxD, new_state)``."""
        if len(state) != len(self.blocks):
            raise ValueError(
                f"state has {len(state)} layer states; the model has {len(self.blocks)} layers"
            )
        h = x_BxTxD.astype(self.config.dtype)
        new = []
        for block, s in zip(self.blocks, state, strict=True):
            h, s = block.decode(h, s, positions=positions, bidirectional=bidirectional)
            new.append(s)
        return self.final_norm(h), tuple(new)


class LM(nnx.Module):
    """Token embedding + :class:`Backbone` + output head (float32 logits)."""

    def __init__(self, cfg: LMConfig, rngs: nnx.Rngs | None = None):
        if rngs is None:
            raise ValueError("LM(cfg, rngs): rngs is required")
        self.config = cfg
        self.vocab_size = cfg.vocab_size
        self.embed = Embed(
            cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs
        )
        self.backbone = Backbone(cfg, rngs)
        if cfg.tie_embeddings:
            self.head = None
        else:
            self.head = dense(
                cfg.d_model,
                cfg.vocab_size,
                ("embed", "vocab"),
                rngs=rngs,
                dtype=jnp.float32,
                param_dtype=cfg.param_dtype,
            )

    def _embed(self, tokens):
        if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {jnp.asarray(tokens).dtype}")
        # tied embeddings are N(0, 1); scale inputs to unit RMS per feature
        return self.embed(tokens)

    def logits(self, h_BxLxD):
        if self.head is None:
            return self.embed.attend(h_BxLxD) / math.sqrt(self.config.d_model)
        return self.head(h_BxLxD.astype(jnp.float32))

    def __call__(self, tokens_BxL, *, segment_ids=None, positions=None, mask=None):
        h = self.backbone(
            self._embed(tokens_BxL), segment_ids=segment_ids, positions=positions, mask=mask
        )
        return self.logits(h)

    def init_state(self, batch_size: int, max_len: int, dtype=None):
        return self.backbone.init_state(batch_size, max_len, dtype)

    def decode(self, tokens_BxT, state, *, positions=None, bidirectional=False):
        h, state = self.backbone.decode(
            self._embed(tokens_BxT), state, positions=positions, bidirectional=bidirectional
        )
        return self.logits(h), state


def lm_loss(model: LM, batch: dict, key=None):
    """Next-token cross-entropy, mean nats per counted target.

    Predicts ``tokens[:, 1:]`` from ``tokens[:, :-1]``; with ``segment_ids`` a target counts
    only if its segment id equals its input's and is > 0.

    Returns:
      ``(loss, {"loss", "bits_per_token", "num_tokens"})``.
    """
    del key
    tokens = batch["tokens"]
    if tokens.ndim != 2:
        raise ValueError(f"batch['tokens'] must be (B, L), got shape {tokens.shape}")
    seg = batch.get("segment_ids")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    kw = {}
    if seg is not None:
        kw["segment_ids"] = seg[:, :-1]
        weights = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    else:
        weights = jnp.ones(targets.shape, bool)
    logits = model(inputs, **kw).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    n = jnp.sum(w)
    loss_value = jnp.sum(nll * w) / jnp.maximum(n, 1.0)
    metrics = {
        "loss": loss_value,
        "bits_per_token": loss_value / jnp.log(2.0),
        "num_tokens": n,
    }
    return loss_value, metrics


loss = lm_loss


def sample(model: LM, key, num: int, *, max_new_tokens: int = 64, prompt=None, **kw):
    """``num`` samples (``generate`` from ``prompt``, default one token id 0 per row)."""
    from jaxar.sampling.generate import generate

    if prompt is None:
        prompt = jnp.zeros((num, 1), jnp.int32)
    return generate(key, model, prompt, max_new_tokens=max_new_tokens, **kw)
