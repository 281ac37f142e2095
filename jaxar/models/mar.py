"""MAR: autoregressive generation of continuous tokens with a per-token diffusion head
(jaxar/MATHS.md s.7; Li et al. 2024).

Images become continuous patch tokens (:func:`patchify`: ``uint8 (B, H, W, C)`` ->
``[-1, 1]`` -> ``(B, L, N)`` with ``L = (H/p)(W/p)``, ``N = p p C``), or bring any
autoencoder's latents as the "image" and use :func:`loss_on_tokens`. A
:class:`jaxar.models.lm.Backbone` turns ``buffer_size`` class-token positions followed by
the tokens into one condition ``z_i`` per token; a :class:`DiffusionHead` models
``p(x_i | z_i)`` (Gaussian diffusion, ``head="diffusion"``, or flow matching,
``head="flow"``). Two orders:

* ``"masked"``: bidirectional backbone; training masks a random subset (a fraction
  ``r ~ 1 + 0.25 TruncNormal`` on ``[mask_ratio_min, 1]``, MAR's choice) replaced by a
  learned [MASK] embedding, and the loss is on masked tokens only. Generation reveals the
  tokens in a random order over ``num_iter`` steps; after step ``k`` there remain
  ``floor(L cos(pi/2 (k+1)/num_iter))`` masked (clamped so every step reveals >= 1 while
  any remain, and the last step reveals the rest).
* ``"causal"``: causal backbone in raster order; ``z_i`` sees the class tokens and
  ``x_{<i}``; generation decodes one token per step against a KV cache.

Class conditioning: the label is replaced by a null class (id ``num_classes``) with
probability ``label_drop_prob`` in training. Classifier-free guidance at sampling:
``eps = eps_u + s_k (eps_c - eps_u)`` with ``s_k = cfg_scale`` (``"constant"``) or
``1 + (cfg_scale - 1) * revealed_fraction_k`` (``"linear"``, MAR's default), and a
temperature that scales the head sampler's noise.

Generation (masked-order reveal schedule, guidance, the two decoding loops) lives in
:mod:`jaxar.sampling.mar` (``jaxar.sampling.sample_mar`` draws images).

Presets (``MARConfig.preset``): ``tiny`` (8x8x1 digits, 2x2 patches), and ``mar_b`` /
``mar_l`` / ``mar_h`` on 16x16x16 KL-16 latents with the published backbone widths and
head sizes (6/8/12 blocks of width 1024/1280/1536). The published MAR splits the backbone
into an MAE-style encoder/decoder; here one backbone of the same total depth sees all
positions (masked ones as [MASK]).

References:
  Li et al. 2024, "Autoregressive Image Generation without Vector Quantization",
    arXiv:2406.11838.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import sharding
from jaxar.models.common import from_preset
from jaxar.models.lm import Backbone, LMConfig
from jaxar.nn.diffusion_head import PRESETS as HEAD_PRESETS
from jaxar.nn.diffusion_head import DiffusionHead, DiffusionHeadConfig
from jaxar.ops import gaussian_diffusion as gd
from jaxar.ops.checks import positive_int

__all__ = [
    "ORDERS",
    "HEADS",
    "PRESETS",
    "MARConfig",
    "MAR",
    "patchify",
    "unpatchify",
    "images_to_tokens",
    "tokens_to_images",
    "loss",
    "loss_on_tokens",
]

ORDERS = ("masked", "causal")
HEADS = ("diffusion", "flow")
CFG_SCHEDULES = ("constant", "linear")
FLOW_TIME_SCALE = 1000.0  # flow time s in [0, 1] is embedded as s * 1000, like step indices


def _preset(image_size, channels, patch_size, d_model, num_layers, num_heads, head, **extra):
    width, depth = HEAD_PRESETS[head]
    return dict(
        image_size=image_size, channels=channels, patch_size=patch_size, d_model=d_model,
        num_layers=num_layers, num_heads=num_heads, head_width=width, head_depth=depth, **extra,
    )  # fmt: skip


# name -> fields: tiny (8x8x1 digits, 2x2 patches); MAR-B/L/H on 16x16x16 KL-16 latents with
# the published backbone widths and head sizes (the diffusion head presets of the same name)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": _preset(8, 1, 2, 64, 2, 4, "tiny"),
    "mar_b": _preset(16, 16, 1, 768, 24, 12, "mar_b", num_classes=1000, buffer_size=64),
    "mar_l": _preset(16, 16, 1, 1024, 32, 16, "mar_l", num_classes=1000, buffer_size=64),
    "mar_h": _preset(16, 16, 1, 1280, 40, 16, "mar_h", num_classes=1000, buffer_size=64),
}


@dataclasses.dataclass(frozen=True)
class MARConfig:
    """MAR model, objective and backbone sizes.

    Attributes:
      image_size, channels, patch_size: input grid (square) and patch side.
      num_classes: class labels ``0 .. num_classes - 1``; ``num_classes`` is the null class.
      order: ``"masked"`` (bidirectional, random order) or ``"causal"`` (raster, KV cache).
      d_model, num_layers, num_heads, mlp_ratio: the backbone (``LMConfig``).
      buffer_size: class-token positions prepended to the tokens.
      head: ``"diffusion"`` or ``"flow"``; ``head_width``, ``head_depth`` its size.
      num_train_steps, schedule, target: the Gaussian diffusion head's objective. The
        default target is v, not MAR's eps: on the cosine schedule the last step has
        abar ~ 2e-9, so the first DDPM step multiplies eps errors by ~300 and a briefly
        trained eps head diverges there; a v head's implied eps is exact in that limit.
      num_draws: ``(t, eps)`` draws per token per training step.
      label_drop_prob: probability of replacing the label by the null class in training.
      mask_ratio_min: lowest masked fraction in training (masked order).
    """

    image_size: int = 8
    channels: int = 1
    patch_size: int = 2
    num_classes: int = 10
    order: str = "masked"
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    buffer_size: int = 1
    head: str = "diffusion"
    head_width: int = 64
    head_depth: int = 2
    num_train_steps: int = 1000
    schedule: str = "cosine"
    target: str = "v"
    num_draws: int = 4
    label_drop_prob: float = 0.1
    mask_ratio_min: float = 0.7
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in (
            "image_size",
            "channels",
            "patch_size",
            "num_classes",
            "d_model",
            "num_layers",
            "num_heads",
            "mlp_ratio",
            "buffer_size",
            "head_width",
            "head_depth",
            "num_train_steps",
            "num_draws",
        ):
            positive_int(f"MARConfig.{name}", getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(
                f"MARConfig.patch_size={self.patch_size} must divide image_size={self.image_size}"
            )
        for name, accepted in (
            ("order", ORDERS),
            ("head", HEADS),
            ("schedule", gd.SCHEDULES),
            ("target", gd.TARGETS),
        ):
            if getattr(self, name) not in accepted:
                raise ValueError(
                    f"MARConfig.{name}={getattr(self, name)!r} is not supported; "
                    f"accepted: {accepted}"
                )
        if not 0.0 <= self.label_drop_prob < 1.0:
            raise ValueError(f"MARConfig.label_drop_prob={self.label_drop_prob} not in [0, 1)")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ValueError(f"MARConfig.mask_ratio_min={self.mask_ratio_min} not in (0, 1]")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"MARConfig.num_heads={self.num_heads} must divide d_model={self.d_model}"
            )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.grid**2

    @property
    def token_dim(self) -> int:
        return self.patch_size**2 * self.channels

    @property
    def null_class(self) -> int:
        return self.num_classes

    def lm_config(self):
        """The backbone's ``LMConfig`` (attention causal iff ``order == "causal"``)."""
        return LMConfig(
            vocab_size=1,
            d_model=self.d_model,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            # learned absolute positions (MAR's); no RoPE
            mixer="attention",
            mixer_options={"causal": self.order == "causal", "rope": False},
            mlp_ratio=self.mlp_ratio,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    def head_config(self) -> DiffusionHeadConfig:
        return DiffusionHeadConfig(
            token_dim=self.token_dim,
            cond_dim=self.d_model,
            width=self.head_width,
            depth=self.head_depth,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    @classmethod
    def preset(cls, name: str, **overrides):
        """``PRESETS[name]`` with ``overrides`` (``MAR-B`` etc. name ``mar_b``)."""
        return from_preset(cls, PRESETS, name.lower().replace("-", "_"), overrides)


# --------------------------------------------------------------------------- tokens


def patchify(images_BxHxWxC, patch_size: int):
    """``(B, H, W, C) -> (B, (H/p)(W/p), p p C)``, patches in raster order."""
    b, h, w, c = images_BxHxWxC.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"patch_size={p} must divide the image's H={h} and W={w}")
    x = images_BxHxWxC.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens_BxLxN, patch_size: int, grid: tuple[int, int], channels: int):
    """Inverse of :func:`patchify` for an ``(H/p, W/p)`` ``grid``."""
    b = tokens_BxLxN.shape[0]
    gh, gw = grid
    p = patch_size
    x = tokens_BxLxN.reshape(b, gh, gw, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, channels)


def images_to_tokens(images_BxHxWxC, patch_size: int):
    """uint8 images -> float32 tokens in ``[-1, 1]``: ``x / 127.5 - 1``, patchified."""
    x = jnp.asarray(images_BxHxWxC).astype(jnp.float32) / 127.5 - 1.0
    return patchify(x, patch_size)


def tokens_to_images(tokens_BxLxN, cfg: MARConfig):
    """float tokens -> uint8 images: ``round((x + 1) 127.5)`` clipped to ``[0, 255]``."""
    x = unpatchify(tokens_BxLxN, cfg.patch_size, (cfg.grid, cfg.grid), cfg.channels)
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


# --------------------------------------------------------------------------- model


def _param(key, shape, names, scale, dtype):
    init = nnx.with_partitioning(
        nnx.initializers.normal(scale) if scale else nnx.initializers.zeros_init(),
        names,
        eager_sharding=False,
    )
    return nnx.Param(init(key, shape, dtype))


class MAR(nnx.Module):
    """Token projection, class / [MASK] / position embeddings, backbone and head."""

    def __init__(self, config: MARConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        d, pd = cfg.d_model, cfg.param_dtype
        self.token_proj = nnx.Linear(
            cfg.token_dim,
            d,
            dtype=cfg.dtype,
            param_dtype=pd,
            kernel_init=nnx.with_partitioning(
                nnx.initializers.xavier_uniform(), (None, "embed"), eager_sharding=False
            ),
            bias_init=nnx.with_partitioning(
                nnx.initializers.zeros_init(), ("embed",), eager_sharding=False
            ),
            rngs=rngs,
        )
        self.class_emb = _param(
            rngs.params(), (cfg.num_classes + 1, d), ("vocab", "embed"), 0.02, pd
        )
        self.mask_emb = _param(rngs.params(), (d,), ("embed",), 0.02, pd)
        self.pos_emb = _param(
            rngs.params(), (cfg.buffer_size + cfg.seq_len, d), (None, "embed"), 0.02, pd
        )
        self.backbone = Backbone(cfg.lm_config(), rngs=rngs)
        self.head = DiffusionHead(cfg.head_config(), rngs=rngs)

    def embed_prefix(self, labels_B):
        """Class tokens with their positions: ``(B, buffer_size, D)``."""
        cfg = self.config
        table = sharding.constrain(self.class_emb[...], ("vocab", None))  # gathered over embed
        cls = jnp.take(table, labels_B, axis=0)[:, None, :]
        cls = jnp.broadcast_to(cls, (labels_B.shape[0], cfg.buffer_size, cfg.d_model))
        return (cls + self.pos_emb[: cfg.buffer_size][None]).astype(cfg.dtype)

    def embed_tokens(self, tokens_BxTxN, start: int | jax.Array, mask_BxT=None):
        """Projected tokens (``[MASK]`` where ``mask_BxT``) plus positions from ``start``
        (the index among token positions, i.e. after the buffer)."""
        cfg = self.config
        h = self.token_proj(tokens_BxTxN)
        if mask_BxT is not None:
            m = jnp.broadcast_to(self.mask_emb[...].astype(h.dtype)[None, None], h.shape)
            h = jnp.where(mask_BxT[..., None], m, h)
        t = tokens_BxTxN.shape[1]
        pos = jax.lax.dynamic_slice_in_dim(self.pos_emb[...], cfg.buffer_size + start, t, axis=0)
        return (h + pos[None].astype(h.dtype)).astype(cfg.dtype)

    def conditions(self, tokens_BxLxN, labels_B, mask_BxL=None):
        """Per-token conditions ``z (B, L, D)`` from one backbone pass.

        Masked order: all positions, masked ones as [MASK] (``mask_BxL`` True). Causal
        order: input ``[class tokens, x_0 .. x_{L-2}]`` so that ``z_i`` sees only
        ``x_{<i}`` (``mask_BxL`` must be None).
        """
        cfg = self.config
        prefix = self.embed_prefix(labels_B)
        if cfg.order == "masked":
            if mask_BxL is None:
                mask_BxL = jnp.zeros(tokens_BxLxN.shape[:2], bool)
            h = jnp.concatenate([prefix, self.embed_tokens(tokens_BxLxN, 0, mask_BxL)], 1)
            return self.backbone(h)[:, cfg.buffer_size :]
        if mask_BxL is not None:
            raise ValueError("mask_BxL is only for order='masked'")
        h = jnp.concatenate([prefix, self.embed_tokens(tokens_BxLxN[:, :-1], 0)], 1)
        return self.backbone(h)[:, cfg.buffer_size - 1 :]

    def head_fn(self, x, t, cond, *, axes=None):
        """The head as ``f(x_t, t, z)``; flow time ``s`` in [0, 1] is embedded as ``1000 s``;
        ``axes`` as in :class:`DiffusionHead`."""
        if self.config.head == "flow":
            t = t * FLOW_TIME_SCALE
        return self.head(x, t, cond, axes=axes)


# --------------------------------------------------------------------------- loss


def alphas_cumprod(cfg: MARConfig):
    """The head's diffusion schedule ``abar_t`` (``cfg.schedule``, ``cfg.num_train_steps`` long)."""
    return gd.diffusion_schedule(cfg.schedule, cfg.num_train_steps)


def _training_mask(key, cfg: MARConfig, batch: int):
    """Masked positions for training: a random subset of ``ceil(r L)`` per example."""
    k_rate, k_order = jax.random.split(key)
    lo = (cfg.mask_ratio_min - 1.0) / 0.25
    rate = 1.0 + 0.25 * jax.random.truncated_normal(k_rate, lo, 0.0, (), jnp.float32)
    num = jnp.ceil(rate * cfg.seq_len)
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_order, (batch, cfg.seq_len)), -1), -1)
    return rank < num


def loss_on_tokens(model: MAR, tokens_BxLxN, labels_B, key):
    """MAR loss on continuous tokens (e.g. an autoencoder's latents) -> ``(loss, metrics)``."""
    cfg = model.config
    tokens_BxLxN = jnp.asarray(tokens_BxLxN, jnp.float32)
    if tokens_BxLxN.shape[1:] != (cfg.seq_len, cfg.token_dim):
        raise ValueError(
            f"tokens must be (B, {cfg.seq_len}, {cfg.token_dim}); got {tokens_BxLxN.shape}"
        )
    labels_B = jnp.asarray(labels_B, jnp.int32)
    b = tokens_BxLxN.shape[0]
    k_drop, k_mask, k_head = jax.random.split(key, 3)
    drop = jax.random.bernoulli(k_drop, cfg.label_drop_prob, (b,))
    labels_B = jnp.where(drop, cfg.null_class, labels_B)
    if cfg.order == "masked":
        mask_BxL = _training_mask(k_mask, cfg, b)
        z = model.conditions(tokens_BxLxN, labels_B, mask_BxL)
        weights = mask_BxL.astype(jnp.float32)
    else:
        z = model.conditions(tokens_BxLxN, labels_B)
        weights = jnp.ones((b, cfg.seq_len), jnp.float32)
    z = sharding.constrain(z, ("batch", "length", "embed"))
    # the head runs on (draws, B, L) tokens: unflattened, so B keeps its mesh axes
    head_fn = functools.partial(model.head_fn, axes=(None, "batch", "length"))
    if cfg.head == "diffusion":
        per_token = gd.gaussian_diffusion_loss(
            k_head,
            head_fn,
            tokens_BxLxN,
            z,
            alphas_cumprod=alphas_cumprod(cfg),
            target=cfg.target,
            num_draws=cfg.num_draws,
            flatten=False,
        )
    else:
        per_token = gd.flow_matching_loss(
            k_head, head_fn, tokens_BxLxN, z, num_draws=cfg.num_draws, flatten=False
        )
    per_token = sharding.constrain(per_token, ("batch", "length"))
    num = jnp.sum(weights)
    value = jnp.sum(per_token * weights) / jnp.maximum(num, 1.0)
    return value, {
        "loss": value,
        "num_tokens": num,
        "masked_fraction": num / (b * cfg.seq_len),
        "label_drop_fraction": jnp.mean(drop.astype(jnp.float32)),
    }


def loss(model: MAR, batch: dict, key):
    """Training hook: ``batch = {"image": uint8 (B, H, W, C), "label": int32 (B,)}`` ->
    ``(loss, metrics)``; the loss is the head's per-token loss averaged over the tokens
    it is taken on (masked tokens, or all tokens in causal order)."""
    cfg = model.config
    images = jnp.asarray(batch["image"])
    want = (cfg.image_size, cfg.image_size, cfg.channels)
    if images.ndim != 4 or images.shape[1:] != want:
        raise ValueError(
            f"batch['image'] must be (B, {', '.join(map(str, want))}); got {images.shape}"
        )
    return loss_on_tokens(model, images_to_tokens(images, cfg.patch_size), batch["label"], key)
