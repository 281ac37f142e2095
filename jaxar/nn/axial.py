"""Axial attention layer: multi-head attention along one spatial axis (jaxar/MATHS.md s.4).

On ``x (B, d_1, ..., d_n, D)`` the layer projects q, k, v per position, attends along array
axis ``axis`` with every other spatial axis folded into the batch
(:func:`jaxar.ops.axial_attention`), and projects back. ``decode`` treats the attended axis
as a sequence with a KV cache (one line of the grid at a time, e.g. a row of an image
being sampled pixel by pixel).

References:
  Ho et al. 2019, "Axial Attention in Multidimensional Transformers", arXiv:1912.12180.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxar.nn.attention import AttentionConfig
from jaxar.ops.attention import axial_attention
from jaxar.ops.checks import positive_int

__all__ = ["AxialAttention"]


class AxialAttention(nnx.Module):
    """Attention along ``axis`` of ``(B, d_1, ..., d_n, D)``; causal along it if asked."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        axis: int,
        causal: bool = False,
        impl: str = "auto",
        rngs: nnx.Rngs,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ):
        positive_int("axis", axis)
        self.axis, self.causal, self.impl = axis, causal, impl
        cfg = AttentionConfig(num_heads=num_heads, causal=causal, rope=False, impl=impl)
        self.attn = cfg.make(d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, x):
        if not 1 <= self.axis <= x.ndim - 2:
            raise ValueError(
                f"axis={self.axis} is not a spatial axis of an input of shape {x.shape}; "
                f"accepted: 1 <= axis <= {x.ndim - 2}"
            )
        q, k, v = self.attn.project(x)
        o = axial_attention(q, k, v, axis=self.axis, causal=self.causal, impl=self.impl)
        return self.attn.output(o, x.dtype)

    def init_state(self, batch_size: int, length: int, dtype=jnp.float32):
        """KV cache for ``length`` positions along the axis (``batch_size`` folded lines)."""
        return self.attn.init_state(batch_size, length, dtype)

    def decode(self, x_BxTxD, state):
        """Appends T positions of one line along the axis: ``(y_BxTxD, state)``."""
        return self.attn.decode(x_BxTxD, state)
