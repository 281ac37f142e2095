"""The transformer under the token-image families (token-AR and VAR; jaxar/MATHS.md s.10).

Pre-norm blocks ``x += g1 attn(mod(norm(x), c)); x += g2 mlp(mod(norm(x), c))`` where, with
AdaLN (``adaln=True``, DiT / VAR), ``mod(h, c) = h (1 + scale(c)) + shift(c)`` and gates
``g = gate(c)`` come from a zero-initialised projection of the condition ``c (B, D)`` (so
a fresh block is the identity); without AdaLN ``mod(h, c) = h`` and ``g = 1``. Attention
takes an explicit boolean mask (``(L, L)`` in a full pass; in a cached pass the query with
limit ``m`` attends to cache slots ``< m``), and N-D RoPE at ``positions (B, L, N)``
(``N = 0``: no RoPE).

The cache is per layer ``{"k": (B, M, H, K), "v": (B, M, H, K), "index": ()}``; a cached
call writes its T keys at ``index`` and returns ``index + T``. The full pass runs attention
with ``attention_impl`` (``"pallas"``: the flash kernel, which takes a static mask rule such
as :class:`jaxar.ops.masks.ScaleCausal` as its block mask and skips all-masked tiles).

:class:`TokenModelConfig` holds the fields and checks the token-image families share
(token-AR and VAR): codes, classes, the transformer's sizes, label dropout, the tokenizer
run directory and the data's image shape.

References:
  Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (AdaLN-Zero),
    arXiv:2212.09748.
  Tian et al. 2024, "Visual Autoregressive Modeling: Scalable Image Generation via
    Next-Scale Prediction", arXiv:2404.02905.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import dispatch, sharding
from jaxar.dispatch import AttentionImpl
from jaxar.nn.layers import MLP, RMSNorm, partitioned
from jaxar.ops.attention import apply_rope_nd, dot_product_attention
from jaxar.ops.checks import positive_int

__all__ = ["TokenTransformerConfig", "TokenTransformer", "TokenModelConfig"]

BLD = ("batch", "length", "embed")  # activations between blocks (jaxar.sharding.RULES)


@dataclasses.dataclass(frozen=True)
class TokenTransformerConfig:
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    rope_dims: int = 0
    adaln: bool = False
    attention_impl: AttentionImpl = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        dispatch.resolve("attention", self.attention_impl, arg="attention_impl")
        for n in ("d_model", "num_layers", "num_heads"):
            positive_int(n, getattr(self, n))
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide d_model={self.d_model}")
        k = self.d_model // self.num_heads
        if self.rope_dims and k % (2 * self.rope_dims):
            raise ValueError(
                f"head dim {k} must be divisible by 2 * rope_dims = {2 * self.rope_dims}"
            )


@dataclasses.dataclass(frozen=True)
class TokenModelConfig:
    """Fields shared by the token-image families (``TokenARConfig``, ``VARConfig``).

    Attributes:
      num_codes: K, the tokenizer's code count. num_classes: C (the null class is C).
      d_model, num_layers, num_heads, mlp_ratio: the transformer.
      attention_impl: the full pass's attention (``jaxar.dispatch``; "pallas": the flash
        kernel with the family's mask as a block mask).
      label_drop_prob: training probability of the null class.
      tokenizer_workdir: the trained tokenizer's run directory (read by the trainer).
      image_size, channels: the data's (checked against the tokenizer by the trainer).
    """

    num_codes: int = 64
    num_classes: int = 10
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    attention_impl: AttentionImpl = "auto"
    label_drop_prob: float = 0.1
    tokenizer_workdir: str = ""
    image_size: int | None = None
    channels: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    # positive int fields a subclass adds to the shared checks
    _POSITIVE = ()

    def __post_init__(self):
        name = type(self).__name__
        for n in ("num_codes", *self._POSITIVE, "num_classes"):
            positive_int(f"{name}.{n}", getattr(self, n))
        if not 0.0 <= self.label_drop_prob < 1.0:
            raise ValueError(f"{name}.label_drop_prob={self.label_drop_prob} not in [0, 1)")

    def transformer_config(self, **fields) -> TokenTransformerConfig:
        """The transformer of these sizes (``fields``: the family's rope_dims / adaln)."""
        return TokenTransformerConfig(
            d_model=self.d_model, num_layers=self.num_layers, num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio, attention_impl=self.attention_impl, dtype=self.dtype,
            param_dtype=self.param_dtype, **fields,
        )  # fmt: skip


def _w(rngs, shape, names, dtype, in_axis, out_axis):
    init = nnx.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
    )
    return nnx.Param(partitioned(init, names)(rngs.params(), shape, dtype))


class _Block(nnx.Module):
    def __init__(self, cfg: TokenTransformerConfig, rngs: nnx.Rngs):
        d, h = cfg.d_model, cfg.num_heads
        k = d // h
        pd = cfg.param_dtype
        self.cfg = cfg
        self.norm1 = RMSNorm(d, param_dtype=pd)
        self.norm2 = RMSNorm(d, param_dtype=pd)
        self.wq = _w(rngs, (d, h, k), ("embed", "heads", "head_dim"), pd, 0, (1, 2))
        self.wk = _w(rngs, (d, h, k), ("embed", "heads", "head_dim"), pd, 0, (1, 2))
        self.wv = _w(rngs, (d, h, k), ("embed", "heads", "head_dim"), pd, 0, (1, 2))
        self.wo = _w(rngs, (h, k, d), ("heads", "head_dim", "embed"), pd, (0, 1), 2)
        hidden = max(1, int(round(cfg.mlp_ratio * d)))
        self.mlp = MLP(d, hidden, dtype=cfg.dtype, param_dtype=pd, rngs=rngs)
        self.ada = nnx.data(None)
        if cfg.adaln:
            zeros = partitioned(nnx.initializers.zeros_init(), ("embed", None))
            self.ada = nnx.Linear(
                d, 6 * d, kernel_init=zeros, param_dtype=pd, dtype=cfg.dtype, rngs=rngs
            )

    def _mods(self, cond, x):
        if self.ada is None:
            return (None,) * 6
        m = self.ada(jax.nn.silu(cond.astype(x.dtype)))[:, None, :].astype(x.dtype)
        return jnp.split(m, 6, axis=-1)

    @staticmethod
    def _mod(h, shift, scale):
        return h if shift is None else h * (1.0 + scale) + shift

    def _qkv(self, h, positions):
        dt = h.dtype
        q = jnp.einsum("bld,dhk->blhk", h, self.wq[...].astype(dt))
        k = jnp.einsum("bld,dhk->blhk", h, self.wk[...].astype(dt))
        v = jnp.einsum("bld,dhk->blhk", h, self.wv[...].astype(dt))
        if self.cfg.rope_dims:
            q, k = apply_rope_nd(q, positions), apply_rope_nd(k, positions)
        return q, k, v

    def _rest(self, x, o, mods):
        s1, c1, g1, s2, c2, g2 = mods
        y = jnp.einsum("blhk,hkd->bld", o, self.wo[...].astype(o.dtype)).astype(x.dtype)
        x = x + (y if g1 is None else g1 * y)
        y = self.mlp(self._mod(self.norm2(x), s2, c2)).astype(x.dtype)
        return x + (y if g2 is None else g2 * y)

    def __call__(self, x, cond, positions, mask):
        mods = self._mods(cond, x)
        q, k, v = self._qkv(self._mod(self.norm1(x), mods[0], mods[1]), positions)
        if mask is not None and hasattr(mask, "ndim"):
            mask = mask[None, None]  # (L, L) -> (1, 1, L, L); a static rule passes as it is
        o = dot_product_attention(q, k, v, mask=mask, impl=self.cfg.attention_impl)
        return self._rest(x, o, mods)

    def decode(self, x, cond, positions, limits, state, kv_len=None):
        mods = self._mods(cond, x)
        q, k, v = self._qkv(self._mod(self.norm1(x), mods[0], mods[1]), positions)
        kc, vc, idx = state["k"], state["v"], state["index"]
        kc = jax.lax.dynamic_update_slice(kc, k.astype(kc.dtype), (0, idx, 0, 0))
        vc = jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), (0, idx, 0, 0))
        m = kc.shape[1] if kv_len is None else kv_len  # keys past kv_len are never read
        allowed = jnp.arange(m)[None, :] < limits[:, None]  # (T, m)
        o = dot_product_attention(
            q, kc[:, :m].astype(q.dtype), vc[:, :m].astype(q.dtype), mask=allowed[None, None]
        )
        return self._rest(x, o, mods), {"k": kc, "v": vc, "index": idx + x.shape[1]}


class TokenTransformer(nnx.Module):
    """Blocks + final norm (AdaLN-modulated when ``adaln``) on embedded inputs."""

    def __init__(self, cfg: TokenTransformerConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.blocks = nnx.List([_Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, param_dtype=cfg.param_dtype)
        self.final_ada = nnx.data(None)
        if cfg.adaln:
            zeros = partitioned(nnx.initializers.zeros_init(), ("embed", None))
            self.final_ada = nnx.Linear(
                cfg.d_model, 2 * cfg.d_model, kernel_init=zeros, param_dtype=cfg.param_dtype,
                dtype=cfg.dtype, rngs=rngs,
            )  # fmt: skip

    def _final(self, h, cond):
        h = self.final_norm(h)
        if self.final_ada is None:
            return h
        shift, scale = jnp.split(self.final_ada(jax.nn.silu(cond.astype(h.dtype)))[:, None], 2, -1)
        return h * (1.0 + scale) + shift

    def __call__(self, x_BxLxD, *, cond=None, positions=None, mask=None):
        """Full pass: ``mask`` bool (L, L) (True = may attend) or a static rule
        (:class:`jaxar.ops.masks.ScaleCausal`), ``positions`` (B, L, N)."""
        h = x_BxLxD.astype(self.config.dtype)
        for block in self.blocks:  # activations sharded by batch at every block boundary
            h = block(sharding.constrain(h, BLD), cond, positions, mask)
        return self._final(sharding.constrain(h, BLD), cond)

    def init_state(self, batch_size: int, max_len: int, dtype=None):
        cfg = self.config
        k = cfg.d_model // cfg.num_heads
        dtype = cfg.dtype if dtype is None else dtype
        shape = (batch_size, max_len, cfg.num_heads, k)
        return tuple(
            {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
             "index": jnp.zeros((), jnp.int32)}
            for _ in self.blocks
        )  # fmt: skip

    def decode(self, x_BxTxD, state, *, limits, cond=None, positions=None, kv_len=None):
        """Cached pass: the T inputs take slots ``index .. index + T - 1``; input t attends
        to the slots ``< limits[t]`` (int (T,)); a static ``kv_len >= max(limits)`` reads
        only the first ``kv_len`` slots (less work when the cache is known to be shorter)."""
        h = x_BxTxD.astype(self.config.dtype)
        new = []
        for block, s in zip(self.blocks, state, strict=True):
            h, s = block.decode(h, cond, positions, limits, s, kv_len)
            new.append(s)
        return self._final(h, cond), tuple(new)
