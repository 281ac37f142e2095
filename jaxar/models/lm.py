"""The generic language model: any sequence mixer in pre-norm residual blocks.

Block: ``x += mixer(norm(x)); x += mlp(norm(x))``; final norm; tied or untied head. The
mixers come from a flat config: ``mixer`` names an entry of :data:`jaxar.nn.MIXERS` (or a
tuple of names cycled over layers: ``("gss", "attention")`` is GSS-Hybrid) and
``mixer_options`` holds its config fields; ``mixers`` takes mixer config objects instead.

Presets (``LMConfig.preset(name, **overrides)``, the one LM size table; ``PRESETS``):
a size ``tiny`` (D=128, 2 layers, 4 heads), ``small`` (256, 4, 4), ``medium`` (512, 8, 8)
or ``base`` (768, 12, 12: ~85M non-embedding parameters as a transformer), alone (an
attention LM) or as ``"<kind>-<size>"`` with kind ``transformer``, ``gateloop``, ``gss``
(twice the layers and no MLP: a GSS block has its own gated expansion) or ``gss_hybrid``
(GSS alternating with attention over a window of 512), ``gla``, ``retnet``, ``mamba2``
(twice the layers and no MLP, as gss) or ``gated_deltanet`` (the linear-attention mixers of
:mod:`jaxar.nn.linear_attention`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import sharding
from jaxar.models.common import check_fields, from_preset
from jaxar.nn import MIXERS
from jaxar.nn.layers import MLP, MLP_ACTIVATIONS, Embed, RMSNorm, dense
from jaxar.ops.checks import positive_int

__all__ = ["PRESETS", "REMAT", "SIZES", "LMConfig", "Backbone", "LM", "lm_loss", "loss"]

# size -> backbone shape; every text family (LM, MDLM, BD3) takes its sizes from here
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, num_layers=2, num_heads=4),
    "small": dict(d_model=256, num_layers=4, num_heads=4),
    "medium": dict(d_model=512, num_layers=8, num_heads=8),
    "base": dict(d_model=768, num_layers=12, num_heads=12),
}


def _kind(kind: str, size: dict[str, int]) -> dict[str, Any]:
    if kind == "gateloop":
        return dict(size, mixer="gateloop")
    if kind == "gss":
        return dict(size, mixer="gss", num_layers=2 * size["num_layers"], mlp_ratio=0.0)
    if kind == "mamba2":  # a Mamba-2 block has its own gated expansion, like GSS
        return dict(size, mixer="mamba2", num_layers=2 * size["num_layers"], mlp_ratio=0.0)
    if kind in ("gla", "retnet", "gated_deltanet"):
        return dict(size, mixer=kind)
    if kind == "gss_hybrid":
        return dict(size, mixer=("gss", "attention"), mixer_options={"attention": {"window": 512}})
    return dict(size, mixer="attention")


# LMConfig.remat -> the jax.checkpoint policy of each block (None: no remat)
REMAT: dict[str, Any] = {
    "none": None,
    "block": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def _call_block(block, h, segment_ids, positions, mask):
    return block(h, segment_ids=segment_ids, positions=positions, mask=mask)


PRESET_KINDS = (
    "transformer",
    "gateloop",
    "gss",
    "gss_hybrid",
    "gla",
    "retnet",
    "mamba2",
    "gated_deltanet",
)
PRESETS: dict[str, dict[str, Any]] = {
    **SIZES,
    **{f"{k}-{s}": _kind(k, SIZES[s]) for k in PRESET_KINDS for s in SIZES},
}


def _freeze(options) -> tuple:
    """A hashable copy of a (nested) options mapping: sorted ``(key, value)`` pairs."""
    if isinstance(options, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in options.items()))
    if isinstance(options, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in options):
        return tuple(sorted((k, _freeze(v)) for k, v in options))
    return options


def _thaw(frozen) -> dict:
    return {k: _thaw(v) if isinstance(v, tuple) and v and isinstance(v[0], tuple) else v
            for k, v in frozen}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Language model configuration.

    Attributes:
      vocab_size: number of token ids V (use 1 for a Backbone-only model).
      d_model: width D.
      num_layers: number of residual blocks.
      num_heads: heads of every mixer that has heads (attention, GateLoop).
      mixer: a name in ``jaxar.nn.MIXERS``, or a tuple of names cycled over layers.
      mixer_options: the mixer config's fields (e.g. ``{"window": 32}``); with several
        mixers, a mapping from mixer name to its fields.
      mixers: mixer config objects cycled over layers; when given they replace ``mixer``,
        ``mixer_options`` and ``num_heads``.
      mlp_ratio: MLP hidden width F = mlp_ratio * D (0 = no MLP sub-block).
      mlp_activation: one of ``MLP_ACTIVATIONS``.
      tie_embeddings: output head = embedding transpose.
      dtype: compute dtype (activations), e.g. ``jnp.bfloat16``.
      param_dtype: parameter dtype.
      norm_eps: RMSNorm epsilon.
      remat: rematerialisation of each block in the backward pass (one of ``REMAT``):
        ``"none"`` keeps every activation; ``"block"`` keeps only each block's input and
        recomputes the rest (``jax.checkpoint_policies.nothing_saveable``);
        ``"dots_saveable"`` keeps matmul outputs and recomputes the elementwise rest.
        Gradients are the same; memory and time are traded.
      mtp_heads: n >= 0 multi-token prediction heads; head j = 1..n predicts token t+j+1
        from the trunk at t (Medusa-style residual heads on the shared unembedding).
      mtp_weight: w, the loss adds ``w * mean_j CE_j`` of the heads.
    """

    vocab_size: int = 256
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mixer: str | tuple[str, ...] = "attention"
    mixer_options: Mapping[str, Any] | tuple = ()
    mixers: tuple[Any, ...] = ()
    mlp_ratio: float = 4.0
    mlp_activation: str = "gelu"
    tie_embeddings: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    norm_eps: float = 1e-6
    remat: str = "none"
    mtp_heads: int = 0
    mtp_weight: float = 0.5

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads"):
            positive_int(f"LMConfig.{name}", getattr(self, name))
        if isinstance(self.mixer, list):
            object.__setattr__(self, "mixer", tuple(self.mixer))
        names = (self.mixer,) if isinstance(self.mixer, str) else self.mixer
        if not isinstance(names, tuple) or not names or any(n not in MIXERS for n in names):
            raise ValueError(
                f"LMConfig.mixer={self.mixer!r} is not supported; accepted: a name in "
                f"{tuple(MIXERS)} or a tuple of them"
            )
        if self.mixer_options is None:
            object.__setattr__(self, "mixer_options", ())
        object.__setattr__(self, "mixer_options", _freeze(self.mixer_options))
        if not isinstance(self.mixers, tuple):
            many = isinstance(self.mixers, list)
            object.__setattr__(self, "mixers", tuple(self.mixers) if many else (self.mixers,))
        for m in self.mixers:
            if not callable(getattr(m, "make", None)):
                raise ValueError(f"LMConfig.mixers entry {m!r} has no make(d_model, *, rngs)")
        if self.mixers and self.mixer_options:
            raise ValueError(
                f"LMConfig.mixer_options={_thaw(self.mixer_options)!r} is unused with mixers=...;"
                " accepted: set the options on the mixer configs, or use mixer= names"
            )
        positive_int("LMConfig.mtp_heads", self.mtp_heads, minimum=0)
        if not self.mtp_weight >= 0:
            raise ValueError(f"LMConfig.mtp_weight={self.mtp_weight!r} is invalid; accepted: >= 0")
        if self.mlp_ratio < 0:
            raise ValueError(f"LMConfig.mlp_ratio={self.mlp_ratio!r} is invalid; accepted: >= 0")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"LMConfig.mlp_activation={self.mlp_activation!r} is not supported; "
                f"accepted: {MLP_ACTIVATIONS}"
            )
        if self.remat not in REMAT:
            raise ValueError(
                f"LMConfig.remat={self.remat!r} is not supported; accepted: {tuple(REMAT)}"
            )
        object.__setattr__(self, "_layer_mixers", self.mixers or self._build_mixers(names))

    def _build_mixers(self, names: tuple[str, ...]) -> tuple[Any, ...]:
        options = _thaw(self.mixer_options)
        if not isinstance(self.mixer, str):
            bad = sorted(set(options) - set(names))
            if bad:
                raise ValueError(
                    f"LMConfig.mixer_options keys {bad} name no mixer in mixer={self.mixer}; "
                    "with several mixers the options map a mixer name to its fields"
                )
        out = []
        for name in names:
            cls = MIXERS[name]
            opts = dict(options if isinstance(self.mixer, str) else options.get(name, {}))
            check_fields(cls, opts, where=f"LMConfig.mixer_options for {name!r} ({cls.__name__})")
            if "num_heads" in {f.name for f in dataclasses.fields(cls)}:
                opts.setdefault("num_heads", self.num_heads)
            out.append(cls(**opts))
        return tuple(out)

    @property
    def layer_mixers(self) -> tuple[Any, ...]:
        """The mixer configs cycled over layers."""
        return self._layer_mixers

    def layer_mixer(self, layer: int):
        return self._layer_mixers[layer % len(self._layer_mixers)]

    @classmethod
    def preset(cls, name: str, **overrides) -> LMConfig:
        """``PRESETS[name]`` with ``overrides`` (any field; ``vocab_size`` defaults to 256).

        ``attention_impl=`` (the old transformer preset's argument) is accepted for one
        release with a DeprecationWarning: it becomes ``mixer_options={"impl": ...}``.
        """
        if "attention_impl" in overrides:
            warnings.warn(
                "attention_impl is deprecated; pass mixer_options={'impl': ...} (the "
                "AttentionConfig.impl field)",
                DeprecationWarning,
                stacklevel=2,
            )
            impl = overrides.pop("attention_impl")
            base = PRESETS.get(name, {})
            options = _thaw(_freeze(overrides.get("mixer_options", base.get("mixer_options", {}))))
            if isinstance(overrides.get("mixer", base.get("mixer", "attention")), str):
                options["impl"] = impl
            else:
                options["attention"] = {**options.get("attention", {}), "impl": impl}
            overrides["mixer_options"] = options
        return from_preset(cls, PRESETS, name, overrides)


def _kw(cfg: LMConfig) -> dict:
    return dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)


BLD = ("batch", "length", "embed")  # activations between blocks


class Block(nnx.Module):
    """``x += mixer(norm(x)); x += mlp(norm(x))``."""

    def __init__(self, cfg: LMConfig, layer: int, *, rngs: nnx.Rngs):
        d = cfg.d_model
        self.norm1 = RMSNorm(d, eps=cfg.norm_eps, param_dtype=cfg.param_dtype)
        self.mixer = cfg.layer_mixer(layer).make(
            d, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype
        )
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

    def decode(
        self, x, state, *, positions=None, bidirectional=False, return_steps=False, mask=None
    ):
        kw = {"bidirectional": True} if bidirectional else {}
        if return_steps:
            kw["return_steps"] = True
        if mask is not None:
            kw["mask"] = mask
        out = self.mixer.decode(self.norm1(x), state, positions=positions, **kw)
        return (self._mlp(x + out[0].astype(x.dtype)),) + tuple(out[1:])


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
        call = _call_block
        if self.config.remat != "none":
            call = nnx.remat(_call_block, policy=REMAT[self.config.remat])
        for block in self.blocks:
            h = sharding.constrain(h, BLD)
            h = call(block, h, segment_ids, positions, mask)
        return self.final_norm(sharding.constrain(h, BLD))

    def init_state(self, batch_size: int, max_len: int, dtype=None):
        """Per-layer mixer states (a tuple), fixed size for recurrent mixers."""
        dtype = self.config.dtype if dtype is None else dtype
        return tuple(b.mixer.init_state(batch_size, max_len, dtype) for b in self.blocks)

    def decode(
        self, x_BxTxD, state, *, positions=None, bidirectional=False, return_steps=False, mask=None
    ):
        """Appends T inputs after what ``state`` holds; returns ``(h_BxTxD, new_state)``.

        ``return_steps``: also the per-layer states after each input (each a pytree like the
        layer's state with a leading T axis; None for attention caches). ``mask``: optional
        (T, T) / (B, T, T) visibility among the new tokens (attention layers only).
        """
        if len(state) != len(self.blocks):
            raise ValueError(
                f"state has {len(state)} layer states; the model has {len(self.blocks)} layers"
            )
        h = x_BxTxD.astype(self.config.dtype)
        new, steps = [], []
        for block, s in zip(self.blocks, state, strict=True):
            out = block.decode(
                h,
                s,
                positions=positions,
                bidirectional=bidirectional,
                return_steps=return_steps,
                mask=mask,
            )
            h = out[0]
            new.append(out[1])
            if return_steps:
                steps.append(out[2])
        if return_steps:
            return self.final_norm(h), tuple(new), tuple(steps)
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
        # Medusa residual heads (arXiv:2401.10774) for multi-token prediction (2404.19737)
        self.mtp = (
            nnx.List(
                [
                    dense(cfg.d_model, cfg.d_model, ("embed", "mlp"), rngs=rngs, **_kw(cfg))
                    for _ in range(cfg.mtp_heads)
                ]
            )
            if cfg.mtp_heads
            else None
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

    def mtp_logits(self, h_BxLxD):
        """Multi-token logits (B, L, n, V): head j on ``h + silu(h W_j)``, shared unembedding."""
        if self.mtp is None:
            raise ValueError("mtp_logits: the model has mtp_heads=0; accepted: mtp_heads >= 1")
        hs = [h_BxLxD + jax.nn.silu(w(h_BxLxD)).astype(h_BxLxD.dtype) for w in self.mtp]
        return jnp.stack([self.logits(x) for x in hs], axis=2)

    def hidden(self, tokens_BxL, *, segment_ids=None, positions=None, mask=None):
        """The trunk's final-norm output (B, L, D)."""
        return self.backbone(
            self._embed(tokens_BxL), segment_ids=segment_ids, positions=positions, mask=mask
        )

    def __call__(self, tokens_BxL, *, segment_ids=None, positions=None, mask=None):
        return self.logits(
            self.hidden(tokens_BxL, segment_ids=segment_ids, positions=positions, mask=mask)
        )

    def init_state(self, batch_size: int, max_len: int, dtype=None):
        return self.backbone.init_state(batch_size, max_len, dtype)

    def decode_hidden(
        self,
        tokens_BxT,
        state,
        *,
        positions=None,
        bidirectional=False,
        return_steps=False,
        mask=None,
    ):
        """:meth:`Backbone.decode` on the embedded tokens: ``(h, state[, steps])``."""
        return self.backbone.decode(
            self._embed(tokens_BxT),
            state,
            positions=positions,
            bidirectional=bidirectional,
            return_steps=return_steps,
            mask=mask,
        )

    def decode(
        self,
        tokens_BxT,
        state,
        *,
        positions=None,
        bidirectional=False,
        return_steps=False,
        mask=None,
    ):
        """Appends T tokens: ``(logits_BxTxV, state)``; with ``return_steps`` also the
        per-layer states after each token (:meth:`Backbone.decode`)."""
        out = self.decode_hidden(
            tokens_BxT,
            state,
            positions=positions,
            bidirectional=bidirectional,
            return_steps=return_steps,
            mask=mask,
        )
        return (self.logits(out[0]),) + tuple(out[1:])


def lm_loss(model: LM, batch: dict, key=None):
    """Next-token cross-entropy, mean nats per counted target.

    Predicts ``tokens[:, 1:]`` from ``tokens[:, :-1]``; with ``segment_ids`` a target counts
    only if its segment id equals its input's and is > 0.

    With ``mtp_heads = n > 0`` the loss is ``CE + w * mean_j CE_j``, head j predicting
    ``tokens[:, j+1:]`` (counted where the whole span stays in one segment); the metrics add
    ``next_token_loss`` (CE) and ``mtp_loss_<j>``.

    Returns:
      ``(loss, {"loss", "bits_per_token", "num_tokens", ...})``.
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
    n_mtp = getattr(getattr(model, "config", None), "mtp_heads", 0)
    if n_mtp:
        h = model.hidden(inputs, **kw)
        logits = model.logits(h)
    else:
        logits = model(inputs, **kw)
    loss_value, n = _ce(logits, targets, weights)
    metrics = {
        "loss": loss_value,
        "bits_per_token": loss_value / jnp.log(2.0),
        "num_tokens": n,
    }
    if n_mtp:
        mtp = model.mtp_logits(h)  # (B, L-1, n, V)
        extra = []
        for j in range(1, n_mtp + 1):
            if targets.shape[1] <= j:
                break
            w_j = weights[:, j:]
            for i in range(j):  # the whole span t+1..t+j+1 in one segment
                w_j = w_j & weights[:, i : weights.shape[1] - j + i]
            ce_j, _ = _ce(mtp[:, : targets.shape[1] - j, j - 1], targets[:, j:], w_j)
            metrics[f"mtp_loss_{j}"] = ce_j
            extra.append(ce_j)
        metrics["next_token_loss"] = loss_value
        if extra:
            loss_value = loss_value + model.config.mtp_weight * jnp.mean(jnp.stack(extra))
        metrics["loss"] = loss_value
    return loss_value, metrics


def _ce(logits, targets, weights):
    """Mean cross-entropy over the counted targets and their count."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    w = weights.astype(jnp.float32)
    n = jnp.sum(w)
    return jnp.sum(nll * w) / jnp.maximum(n, 1.0), n


loss = lm_loss
