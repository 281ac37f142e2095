"""A convolutional VQ autoencoder: the image tokenizer of the token families
(jaxar/MATHS.md s.10).

``images uint8 (B, H, W, C) -> x = img / 127.5 - 1 -> encoder -> z (B, g, g, d)`` with
``g = H / 2^num_down``; a quantizer (``config.quantizer``) turns ``z`` into ``z_q`` and
integer codes; the decoder maps ``z_q`` back to ``x_hat``. Quantizers (``jaxar.ops``):

* ``"vq"``: a learned codebook (K, d), optionally cosine (``normalize``), codebook +
  ``beta`` commitment losses;
* ``"vq_ema"``: the same nearest-code lookup, but the codebook is not a parameter: it is
  the EMA codebook of VQ-VAE (``e_k = m_k / N_k``, ``jaxar.ops.ema_codebook_update``,
  decay ``ema_decay``, dead codes (``N_k < dead_threshold``) restarted at batch latents),
  updated by :func:`loss` in every train step through :class:`CodebookEMA` variables (the
  trainer's model state); only the ``beta`` commitment loss trains the encoder;
* ``"fsq"``: ``levels`` per channel (``d = len(levels)``, ``K = prod(levels)``), no loss;
* ``"lfq"``: ``q = sign(z)``, ``K = 2^d``, ``entropy_weight`` times the entropy penalty;
* ``"rq"``: ``rq_depth`` residual codebooks (ids (B, g, g, depth));
* ``"msrq"``: VAR's multi-scale residual quantization over ``scales`` (ending at g), one
  shared codebook (ids: one (B, s, s) map per scale).

Loss: ``recon`` (mean ``|x - x_hat|`` for ``"l1"``, squared for ``"l2"``) + quantizer
losses. Metrics: codebook ``usage`` (fraction of the K codes used in the batch) and
``perplexity`` (``exp`` of the batch code entropy).

References:
  van den Oord et al. 2017, "Neural Discrete Representation Learning", arXiv:1711.00937.
  Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis",
    arXiv:2012.09841.
  Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
    Next-Scale Prediction", arXiv:2404.02905.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.models.common import from_preset
from jaxar.ops import quantize as qops
from jaxar.ops.checks import positive_int

__all__ = [
    "QUANTIZERS",
    "PRESETS",
    "VQConfig",
    "VQ",
    "CodebookEMA",
    "Frozen",
    "freeze",
    "loss",
    "images_to_x",
    "x_to_images",
]

QUANTIZERS = ("vq", "vq_ema", "fsq", "lfq", "rq", "msrq")
RECON = ("l1", "l2")

# name -> fields. tiny: 8x8 digits, 2x downsampling to a 4x4 grid of 64 codes; photos: 32x32
# RGB crops, 4x downsampling to an 8x8 grid; vqgan_f16: the LlamaGen / VQGAN f=16 setting
# (256x256 -> 16x16 tokens, 16384 codes of dim 8, cosine), var_f16: VAR's multi-scale one
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=32, num_down=1, latent_dim=4, codebook_size=64),
    "photos": dict(width=64, num_down=2, latent_dim=4, codebook_size=64),
    "vqgan_f16": dict(
        image_size=256, channels=3, width=128, num_down=4, latent_dim=8, codebook_size=16384,
        normalize=True,
    ),
    "var_f16": dict(
        image_size=256, channels=3, width=160, num_down=4, latent_dim=32, codebook_size=4096,
        quantizer="msrq", scales=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class VQConfig:
    """Tokenizer shape, quantizer and loss.

    Attributes:
      image_size, channels: square input images.
      width: conv channels; num_down: stride-2 downsamplings (grid ``H / 2^num_down``).
      latent_dim: code dimension d (``len(levels)`` for fsq).
      quantizer: one of ``QUANTIZERS``.
      codebook_size: K for vq / rq / msrq (lfq: ``2^latent_dim``, fsq: ``prod(levels)``).
      levels: fsq levels. normalize: cosine codes (vq). rq_depth: residual codebooks.
      scales: msrq scales (strictly increasing, ending at the grid; default 1, 2, .., g
        by doubling plus g).
      beta: commitment weight. entropy_weight, lfq_temperature: lfq's penalty.
      ema_decay, ema_eps, dead_threshold: vq_ema's EMA decay in [0, 1), Laplace smoothing,
        and the EMA count under which a code restarts (0: never).
      recon: ``"l1"`` or ``"l2"``.
      data: the embedded dataset whose held-out images ``jaxar sample`` reconstructs.
      num_classes: unused by the tokenizer (the data sets it).
    """

    image_size: int = 8
    channels: int = 1
    width: int = 32
    num_down: int = 1
    latent_dim: int = 4
    quantizer: str = "vq"
    codebook_size: int = 64
    levels: tuple[int, ...] = (4, 4, 4)
    normalize: bool = True
    rq_depth: int = 2
    scales: tuple[int, ...] = ()
    beta: float = 0.25
    entropy_weight: float = 0.1
    lfq_temperature: float = 0.5
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    dead_threshold: float = 1.0
    recon: str = "l1"
    data: str = "digits"
    num_classes: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("image_size", "channels", "width", "latent_dim", "codebook_size", "rq_depth"):
            positive_int(f"VQConfig.{name}", getattr(self, name))
        positive_int("VQConfig.num_down", self.num_down, minimum=0)
        if self.image_size % 2**self.num_down:
            raise ValueError(
                f"VQConfig.image_size={self.image_size} must be divisible by 2^num_down = "
                f"{2**self.num_down}"
            )
        for name, accepted in (("quantizer", QUANTIZERS), ("recon", RECON)):
            if getattr(self, name) not in accepted:
                raise ValueError(
                    f"VQConfig.{name}={getattr(self, name)!r} is not supported; accepted: "
                    f"{accepted}"
                )
        object.__setattr__(self, "levels", tuple(self.levels))
        if self.quantizer == "fsq":
            qops.fsq_codes(self.levels)  # validates levels >= 2
            if len(self.levels) != self.latent_dim:
                raise ValueError(
                    f"VQConfig.levels={self.levels} needs latent_dim={len(self.levels)}; got "
                    f"latent_dim={self.latent_dim}"
                )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"VQConfig.ema_decay={self.ema_decay!r} is invalid; accepted: a float in [0, 1)"
            )
        if not self.ema_eps > 0:
            raise ValueError(f"VQConfig.ema_eps={self.ema_eps!r} is invalid; accepted: a float > 0")
        if not self.dead_threshold >= 0:
            raise ValueError(
                f"VQConfig.dead_threshold={self.dead_threshold!r} is invalid; accepted: a float >= 0"
            )
        if self.quantizer == "lfq" and self.latent_dim > 16:
            raise ValueError(f"VQConfig.latent_dim={self.latent_dim}; lfq accepts <= 16")
        scales = tuple(self.scales) or _default_scales(self.grid)
        object.__setattr__(self, "scales", qops.check_scales(scales, self.grid))

    @property
    def grid(self) -> int:
        """Tokens per side, ``image_size / 2^num_down``."""
        return self.image_size // 2**self.num_down

    @property
    def num_codes(self) -> int:
        """The code count K of the quantizer."""
        if self.quantizer == "fsq":
            return qops.fsq_codes(self.levels)
        if self.quantizer == "lfq":
            return 2**self.latent_dim
        return self.codebook_size

    @classmethod
    def preset(cls, name: str, **overrides):
        return from_preset(cls, PRESETS, name, overrides)


def _default_scales(g: int) -> tuple[int, ...]:
    out, s = [], 1
    while s < g:
        out.append(s)
        s *= 2
    return tuple(out) + (g,)


def images_to_x(images):
    """uint8 -> float32 in ``[-1, 1]``: ``img / 127.5 - 1``."""
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def x_to_images(x):
    """float in ``[-1, 1]`` -> uint8: ``round((x + 1) 127.5)`` clipped."""
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _conv(cin, cout, k, stride, cfg, rngs):
    return nnx.Conv(
        cin, cout, (k, k), strides=(stride, stride), padding="SAME", dtype=cfg.dtype,
        param_dtype=cfg.param_dtype, rngs=rngs,
    )  # fmt: skip


class _ResBlock(nnx.Module):
    def __init__(self, w, cfg, rngs):
        self.norm1 = nnx.GroupNorm(w, num_groups=min(8, w), param_dtype=cfg.param_dtype, rngs=rngs)
        self.conv1 = _conv(w, w, 3, 1, cfg, rngs)
        self.norm2 = nnx.GroupNorm(w, num_groups=min(8, w), param_dtype=cfg.param_dtype, rngs=rngs)
        self.conv2 = _conv(w, w, 3, 1, cfg, rngs)

    def __call__(self, x):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        return x + self.conv2(jax.nn.silu(self.norm2(h)))


class CodebookEMA(nnx.BatchStat):
    """vq_ema's codebook and its EMA statistics: state the loss updates outside the
    gradient (``nnx.BatchStat``: the trainer's model state, never the optimizer's)."""


class VQ(nnx.Module):
    """Encoder, quantizer (codebook parameters for vq / rq / msrq; :class:`CodebookEMA`
    codebook, counts ``N`` and sums ``m`` for vq_ema), decoder."""

    def __init__(self, config: VQConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        w = cfg.width
        self.enc_in = _conv(cfg.channels, w, 3, 1, cfg, rngs)
        self.enc_down = nnx.List([_conv(w, w, 4, 2, cfg, rngs) for _ in range(cfg.num_down)])
        self.enc_res = _ResBlock(w, cfg, rngs)
        self.enc_out = _conv(w, cfg.latent_dim, 1, 1, cfg, rngs)
        self.dec_in = _conv(cfg.latent_dim, w, 3, 1, cfg, rngs)
        self.dec_res = _ResBlock(w, cfg, rngs)
        self.dec_up = nnx.List([_conv(w, w, 3, 1, cfg, rngs) for _ in range(cfg.num_down)])
        self.dec_out = _conv(w, cfg.channels, 3, 1, cfg, rngs)
        shape = {
            "vq": (cfg.codebook_size, cfg.latent_dim),
            "vq_ema": (cfg.codebook_size, cfg.latent_dim),
            "msrq": (cfg.codebook_size, cfg.latent_dim),
            "rq": (cfg.rq_depth, cfg.codebook_size, cfg.latent_dim),
        }.get(cfg.quantizer)
        self.codebook = nnx.data(None)
        if shape is not None:
            scale = 1.0 if cfg.quantizer == "vq" else 1.0 / math.sqrt(cfg.latent_dim)
            init = nnx.initializers.normal(scale)
            book = init(rngs.params(), shape, cfg.param_dtype)
            if cfg.quantizer == "vq_ema":  # N_k = 1, m_k = e_k: e = m / N at the start
                self.codebook = CodebookEMA(book)
                self.ema_count = CodebookEMA(jnp.ones(shape[:1], jnp.float32))
                self.ema_sum = CodebookEMA(book.astype(jnp.float32))
            else:
                self.codebook = nnx.Param(book)

    # ---- pieces --------------------------------------------------------------------
    def encode(self, images):
        """uint8 (B, H, W, C) -> continuous latents (B, g, g, d); H = W = ``image_size``,
        C = ``channels`` (another shape: a one-line error, not codes on another grid)."""
        cfg = self.config
        want = (cfg.image_size, cfg.image_size, cfg.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f"VQ got images of shape {tuple(images.shape)}; accepted: (B, "
                f"{', '.join(map(str, want))})"
            )
        h = self.enc_in(images_to_x(images).astype(self.config.dtype))
        for conv in self.enc_down:
            h = jax.nn.silu(conv(h))
        return self.enc_out(self.enc_res(h)).astype(jnp.float32)

    def decode(self, z_q):
        """(B, g, g, d) -> ``x_hat`` (B, H, W, C) in about ``[-1, 1]`` (float32)."""
        h = self.dec_res(self.dec_in(z_q.astype(self.config.dtype)))
        for conv in self.dec_up:
            h = jax.nn.silu(conv(jnp.repeat(jnp.repeat(h, 2, 1), 2, 2)))
        return self.dec_out(h).astype(jnp.float32)

    def quantize(self, z):
        """``(z_q, ids, losses)`` by ``config.quantizer``; losses is a dict of scalars whose
        weighted sum the tokenizer loss adds (``"quant"``) plus diagnostics."""
        cfg = self.config
        kind = cfg.quantizer
        if kind == "fsq":
            z_q, ids = qops.fsq(z, cfg.levels)
            return z_q, ids, {"quant": jnp.zeros((), jnp.float32)}
        if kind == "lfq":
            z_q, ids, l = qops.lfq(z, temperature=cfg.lfq_temperature)
            quant = cfg.beta * l["commitment"] + cfg.entropy_weight * l["entropy_penalty"]
            return z_q, ids, {"quant": quant, **l}
        book = self.codebook[...].astype(jnp.float32)
        if kind == "vq_ema":
            z_q, ids, l = qops.vector_quantize(z, book, normalize=cfg.normalize)
            return z_q, ids, {"quant": cfg.beta * l["commitment"], **l}
        if kind == "vq":
            z_q, ids, l = qops.vector_quantize(z, book, normalize=cfg.normalize)
        elif kind == "rq":
            z_q, ids, l = qops.residual_quantize(z, book)
        else:
            z_q, ids, l = qops.multiscale_residual_quantize(z, cfg.scales, book)
        return z_q, ids, {"quant": l["codebook"] + cfg.beta * l["commitment"], **l}

    def code_vectors(self, ids):
        """Code ids -> the quantized latents ``z_q`` the decoder takes (vq / fsq / lfq / rq:
        ids of ``encode_ids``; msrq: the list of per-scale maps)."""
        cfg = self.config
        kind = cfg.quantizer
        ids = ids if kind == "msrq" else jnp.asarray(ids)
        if kind == "fsq":
            radix = jnp.asarray([math.prod(cfg.levels[:i]) for i in range(len(cfg.levels))])
            lv = jnp.asarray(cfg.levels)
            digits = (ids[..., None] // radix.reshape((1,) * ids.ndim + (-1,))) % lv.reshape(
                (1,) * ids.ndim + (-1,)
            )
            h = ((lv - 1) / 2.0).reshape((1,) * ids.ndim + (-1,))
            return (digits - h) / h
        if kind == "lfq":
            bits = (
                ids[..., None] >> jnp.arange(cfg.latent_dim).reshape((1,) * ids.ndim + (-1,))
            ) & 1
            return jnp.where(bits > 0, 1.0, -1.0)
        book = self.codebook[...].astype(jnp.float32)
        if kind in ("vq", "vq_ema"):
            if cfg.normalize:
                book = book / jnp.linalg.norm(book, axis=-1, keepdims=True)
            return jnp.take(book, ids, axis=0)
        if kind == "rq":
            return sum(jnp.take(book[s], ids[..., s], axis=0) for s in range(cfg.rq_depth))
        return qops.multiscale_residual_dequantize(ids, cfg.scales, book)

    def encode_ids(self, images):
        """uint8 images -> codes (see :meth:`code_vectors` for the layout)."""
        return self.quantize(self.encode(images))[1]

    def decode_ids(self, ids):
        """Codes -> uint8 images."""
        return x_to_images(self.decode(self.code_vectors(ids)))

    def ema_update(self, z, ids, key=None):
        """vq_ema's codebook step on latents ``z`` (B, g, g, d) and their ``ids``, in place:
        ``N <- d N + (1 - d) n``, ``m <- d m + (1 - d) sum z``, ``e = m / N`` (smoothed;
        cosine codes average l2-normalised latents), restarting codes with
        ``N < dead_threshold`` when ``key`` is given. Returns the number restarted."""
        cfg = self.config
        z = jax.lax.stop_gradient(z.astype(jnp.float32))
        if cfg.normalize:
            z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, -1, keepdims=True), 1e-12))
        book, n, m, restarted = qops.ema_codebook_update(
            self.codebook[...], self.ema_count[...], self.ema_sum[...], z, ids,
            decay=cfg.ema_decay, eps=cfg.ema_eps, key=key, dead_threshold=cfg.dead_threshold,
        )  # fmt: skip
        self.codebook[...] = book
        self.ema_count[...] = n
        self.ema_sum[...] = m
        return restarted

    def __call__(self, images):
        """``(x_hat, ids, quantizer losses)``."""
        z_q, ids, losses = self.quantize(self.encode(images))
        return self.decode(z_q), ids, losses

    def reconstruct(self, images):
        """uint8 -> uint8 through the bottleneck."""
        return x_to_images(self(images)[0])


class Frozen(nnx.Variable):
    """A weight that is not trained (not an ``nnx.Param``: the optimizer never sees it)."""


def freeze(module: nnx.Module) -> nnx.Module:
    """Turns every ``nnx.Param`` and :class:`CodebookEMA` of ``module`` into :class:`Frozen`
    in place (a trained tokenizer inside a token model) and returns it."""
    for _, node in list(nnx.iter_graph(module)):
        if isinstance(node, nnx.Module):
            for name, val in list(vars(node).items()):
                if isinstance(val, nnx.Param | CodebookEMA):
                    setattr(node, name, Frozen(val.get_value()))
    return module


def _flat_ids(cfg: VQConfig, ids):
    if cfg.quantizer == "msrq":
        return jnp.concatenate([i.reshape(-1) for i in ids])
    return jnp.asarray(ids).reshape(-1)


def loss(model: VQ, batch: dict, key=None):
    """Training hook: ``batch = {"image": uint8 (B, H, W, C), ...}`` -> ``(loss, metrics)``
    with ``loss = recon + quant`` and metrics recon, quant, mse, usage, perplexity.

    With ``quantizer="vq_ema"`` it also takes the EMA codebook step on this batch
    (:meth:`VQ.ema_update`, restarts drawn from ``key``; metric ``restarted``) after the
    forward pass, which used the codebook from before the step."""
    cfg = model.config
    images = jnp.asarray(batch["image"])
    want = (cfg.image_size, cfg.image_size, cfg.channels)
    if images.ndim != 4 or images.shape[1:] != want:
        raise ValueError(
            f"batch['image'] must be (B, {', '.join(map(str, want))}); got {images.shape}"
        )
    x = images_to_x(images)
    z = model.encode(images)
    z_q, ids, losses = model.quantize(z)
    x_hat = model.decode(z_q)
    extra = {}
    if cfg.quantizer == "vq_ema":
        extra["restarted"] = model.ema_update(z, ids, key)
    err = x_hat - x
    recon = jnp.mean(jnp.abs(err)) if cfg.recon == "l1" else jnp.mean(err * err)
    value = recon + losses["quant"]
    usage, ppl = qops.codebook_usage(_flat_ids(cfg, ids), cfg.num_codes)
    return value, {
        "loss": value,
        "recon": recon,
        "quant": losses["quant"],
        "mse": jnp.mean(err * err),
        "usage": usage,
        "perplexity": ppl,
        **extra,
    }
