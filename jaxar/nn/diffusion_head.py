"""Per-token denoising head: residual MLP blocks with adaptive LayerNorm (jaxar/MATHS.md s.7).

For a noisy token ``x (N)``, a time ``t`` (a step index, or a flow time scaled by the
caller) and a condition ``z (C)`` from the backbone:

    y = MLP_t(sinusoid(t)) + W_z z                    (the adaLN input, width W)
    h = W_in x
    per block:  shift, scale, gate = W_ada silu(y)
                h <- h + gate * fc2(silu(fc1(LN(h) * (1 + scale) + shift)))
    out = W_out (LN'(h) * (1 + scale_f) + shift_f),   shift_f, scale_f = W_ada_f silu(y)

(LN has affine parameters, LN' has none; all adaLN projections and ``W_out`` start at
zero, so a fresh head outputs 0.) Sizes: MAR-B/L/H heads are 6/8/12 blocks of width
1024/1280/1536.

References:
  Li et al. 2024, "Autoregressive Image Generation without Vector Quantization",
    arXiv:2406.11838.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import sharding
from jaxar.ops.checks import positive_int

__all__ = ["PRESETS", "DiffusionHeadConfig", "DiffusionHead", "timestep_embedding"]

# name -> (width, depth)
PRESETS = {
    "tiny": (64, 2),
    "small": (256, 3),
    "mar_b": (1024, 6),
    "mar_l": (1280, 8),
    "mar_h": (1536, 12),
}


@dataclasses.dataclass(frozen=True)
class DiffusionHeadConfig:
    """Head sizes. ``token_dim`` N (in and out), ``cond_dim`` C (backbone width),
    ``width`` W, ``depth`` residual blocks, ``frequency_dim`` of the sinusoidal time
    features; ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype."""

    token_dim: int
    cond_dim: int
    width: int = 1024
    depth: int = 6
    frequency_dim: int = 256
    max_period: float = 10000.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("token_dim", "cond_dim", "width", "depth", "frequency_dim"):
            positive_int(f"DiffusionHeadConfig.{name}", getattr(self, name))
        if self.frequency_dim % 2:
            raise ValueError(f"DiffusionHeadConfig.frequency_dim={self.frequency_dim} must be even")
        if not self.max_period > 1:
            raise ValueError(f"DiffusionHeadConfig.max_period={self.max_period} must be > 1")

    @classmethod
    def preset(cls, name: str, *, token_dim: int, cond_dim: int, **overrides):
        """A named size (``tiny``, ``small``, ``mar_b``, ``mar_l``, ``mar_h``; ``MAR-B``
        etc. accepted) for the given token and condition widths."""
        key = name.lower().replace("-", "_")
        if key not in PRESETS:
            raise ValueError(f"preset name={name!r} is unknown; accepted: {sorted(PRESETS)}")
        width, depth = PRESETS[key]
        return cls(
            token_dim=token_dim, cond_dim=cond_dim, **{"width": width, "depth": depth, **overrides}
        )


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
    """``[cos(t f_j), sin(t f_j)]`` with ``f_j = max_period^(-j / (dim/2))``; ``t (...)`` ->
    float32 ``(..., dim)``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    t = jnp.asarray(t, jnp.float32)
    args = t[..., None] * freqs.reshape((1,) * t.ndim + (half,))
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _part(init, names):
    """Logical axis names as metadata; placement happens later, under a mesh, by the rules
    table of :mod:`jaxar.sharding` (no eager sharding at construction)."""
    return nnx.with_partitioning(init, names, eager_sharding=False)


def _linear(cfg, din, dout, names, rngs, *, zero=False):
    init = nnx.initializers.zeros_init() if zero else nnx.initializers.xavier_uniform()
    return nnx.Linear(
        din,
        dout,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_part(init, names),
        bias_init=_part(nnx.initializers.zeros_init(), (names[1],)),
        rngs=rngs,
    )


def _layer_norm(cfg, width, rngs, *, affine):
    return nnx.LayerNorm(
        width,
        epsilon=1e-6,
        use_bias=affine,
        use_scale=affine,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        scale_init=_part(nnx.initializers.ones_init(), ("norm",)),
        bias_init=_part(nnx.initializers.zeros_init(), ("norm",)),
        rngs=rngs,
    )


class AdaLNBlock(nnx.Module):
    """``h + gate * MLP(LN(h) * (1 + scale) + shift)`` with (shift, scale, gate) from y."""

    def __init__(self, cfg: DiffusionHeadConfig, *, rngs: nnx.Rngs):
        w = cfg.width
        self.norm = _layer_norm(cfg, w, rngs, affine=True)
        self.fc1 = _linear(cfg, w, w, ("embed", "mlp"), rngs)
        self.fc2 = _linear(cfg, w, w, ("mlp", "embed"), rngs)
        # (shift, scale, gate) act on the residual width: output not tensor-sharded, so the
        # split in three stays local to a device
        self.ada = _linear(cfg, w, 3 * w, ("embed", None), rngs, zero=True)

    def __call__(self, h, y_silu, axes=None):
        shift, scale, gate = jnp.split(self.ada(y_silu), 3, axis=-1)
        u = self.norm(h) * (1 + scale) + shift
        u = _constrain(jax.nn.silu(self.fc1(u)), axes, "mlp")
        return _constrain(h + gate * self.fc2(u), axes, "embed")


def _constrain(x, axes, feature):
    """``x`` constrained to the logical names ``axes + (feature,)`` (identity if ``axes`` is
    None)."""
    return x if axes is None else sharding.constrain(x, (*axes, feature))


class DiffusionHead(nnx.Module):
    """``head(x_MxN, t_M, cond_MxC) -> out_MxN`` (any leading shape ``M``); the output is
    the prediction of the training target (eps, v, x0 or a flow velocity)."""

    def __init__(self, cfg: DiffusionHeadConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        w = cfg.width
        self.in_proj = _linear(cfg, cfg.token_dim, w, (None, "embed"), rngs)
        self.cond_proj = _linear(cfg, cfg.cond_dim, w, (None, "embed"), rngs)
        self.time_fc1 = _linear(cfg, cfg.frequency_dim, w, (None, "mlp"), rngs)
        self.time_fc2 = _linear(cfg, w, w, ("mlp", "embed"), rngs)
        self.blocks = nnx.List([AdaLNBlock(cfg, rngs=rngs) for _ in range(cfg.depth)])
        self.final_norm = _layer_norm(cfg, w, rngs, affine=False)
        self.final_ada = _linear(cfg, w, 2 * w, ("embed", None), rngs, zero=True)
        self.out_proj = _linear(cfg, w, cfg.token_dim, ("embed", None), rngs, zero=True)

    def __call__(self, x, t, cond, *, axes=None):
        """``axes``: logical names of the leading axes (e.g. ``(None, "batch", "length")``
        for draws x batch x tokens); with them the activations are constrained at block
        boundaries (:func:`jaxar.sharding.constrain`)."""
        cfg = self.cfg
        if x.shape[-1] != cfg.token_dim or cond.shape[-1] != cfg.cond_dim:
            raise ValueError(
                f"x (..., {cfg.token_dim}) and cond (..., {cfg.cond_dim}) expected; "
                f"got x {x.shape}, cond {cond.shape}"
            )
        if not (x.shape[:-1] == cond.shape[:-1] == jnp.shape(t)):
            raise ValueError(
                f"x, t, cond must share leading shape; got {x.shape}, {jnp.shape(t)}, {cond.shape}"
            )
        if axes is not None and len(axes) != x.ndim - 1:
            raise ValueError(f"axes={axes!r} must name the {x.ndim - 1} leading axes of x")
        freq = timestep_embedding(t, cfg.frequency_dim, cfg.max_period)
        t_emb = self.time_fc2(jax.nn.silu(self.time_fc1(freq)))
        y_silu = _constrain(jax.nn.silu(t_emb + self.cond_proj(cond)), axes, "embed")
        h = _constrain(self.in_proj(x), axes, "embed")
        for block in self.blocks:
            h = block(h, y_silu, axes)
        shift, scale = jnp.split(self.final_ada(y_silu), 2, axis=-1)
        h = self.final_norm(h) * (1 + scale) + shift
        return self.out_proj(h).astype(jnp.float32)
