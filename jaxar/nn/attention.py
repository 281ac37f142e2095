"""Multi-head attention mixer (RoPE, GQA, sliding window, KV cache) for the generic LM.

The mixer protocol (``jaxar.models.lm``): ``__call__(x_BxLxD, *, segment_ids, positions,
mask)``, ``init_state(batch_size, max_len, dtype)`` and ``decode(x_BxTxD, state, *,
positions, bidirectional) -> (y, state)``. The state is a dict ``{"k": (B, M, G, K), "v":
(B, M, G, E), "index": int32 ()}``: keys (after RoPE) and values of the ``index`` tokens
seen so far in a buffer of ``M = max_len`` slots.

``y = concat_h softmax(q_h k_g^T / sqrt(K)) v_g W_o`` with ``q = x W_q``, ``k = x W_k``,
``v = x W_v`` and kv head ``g = h // (H / G)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import dispatch, sharding
from jaxar.nn.layers import partitioned
from jaxar.ops.attention import apply_rope, dot_product_attention
from jaxar.ops.masks import local_mask

__all__ = ["AttentionImpl", "AttentionConfig", "MultiHeadAttention"]

# ``jaxar.dispatch.CHOICES["attention"]`` and "auto" (resolved by platform in jaxar.dispatch)
AttentionImpl = Literal["auto", "xla", "reference", "jax", "pallas"]


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """Attention mixer configuration.

    Attributes:
      num_heads: query heads H.
      num_kv_heads: key/value heads G (divides H; None = H; 1 = multi-query).
      head_dim: K = E per head (None = d_model // num_heads).
      causal: causal self-attention (False: bidirectional, e.g. MDLM / BD3).
      rope: rotary position embeddings on q and k.
      rope_base: RoPE base frequency.
      window: sliding-window size (keys with ``q - window < k <= q``; None = global).
      impl: ``jaxar.ops.dot_product_attention`` implementation.
    """

    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    causal: bool = True
    rope: bool = True
    rope_base: float = 10000.0
    window: int | None = None
    impl: AttentionImpl = "auto"

    def __post_init__(self):
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ValueError(f"AttentionConfig.num_heads={self.num_heads!r}; accepted: int >= 1")
        g = self.num_kv_heads
        if g is not None and (not isinstance(g, int) or g < 1 or self.num_heads % g):
            raise ValueError(
                f"AttentionConfig.num_kv_heads={g!r}; accepted: None or an int >= 1 dividing "
                f"num_heads={self.num_heads}"
            )
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            raise ValueError(f"AttentionConfig.head_dim={self.head_dim!r}; accepted: int >= 1")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"AttentionConfig.window={self.window!r}; accepted: None or int >= 1")
        if self.rope_base <= 0:
            raise ValueError(f"AttentionConfig.rope_base={self.rope_base!r}; accepted: > 0")
        dispatch.resolve("attention", self.impl, arg="AttentionConfig.impl")

    def make(
        self, d_model: int, *, rngs: nnx.Rngs, dtype: Any = None, param_dtype: Any = jnp.float32
    ) -> MultiHeadAttention:
        return MultiHeadAttention(self, d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


def _init(in_axis, out_axis):
    return nnx.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
    )


class MultiHeadAttention(nnx.Module):
    """Self-attention mixer; see the module docstring for the protocol and the state."""

    def __init__(
        self,
        cfg: AttentionConfig,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ):
        H = cfg.num_heads
        G = cfg.num_kv_heads or H
        K = cfg.head_dim or d_model // H
        if K < 1:
            raise ValueError(f"d_model={d_model} is smaller than num_heads={H}; set head_dim")
        if cfg.rope and K % 2:
            raise ValueError(f"rope needs an even head_dim; got {K}")
        self.config = cfg
        self.d_model, self.num_heads, self.num_kv_heads, self.head_dim = d_model, H, G, K
        self.dtype = dtype

        def param(names, shape, in_axis, out_axis):
            init = partitioned(_init(in_axis, out_axis), names)
            return nnx.Param(init(rngs.params(), shape, param_dtype))

        self.wq = param(("embed", "heads", "head_dim"), (d_model, H, K), 0, (1, 2))
        self.wk = param(("embed", "kv_heads", "head_dim"), (d_model, G, K), 0, (1, 2))
        self.wv = param(("embed", "kv_heads", "head_dim"), (d_model, G, K), 0, (1, 2))
        self.wo = param(("heads", "head_dim", "embed"), (H, K, d_model), (0, 1), 2)

    # ---- pieces (also used by the axial layer) ----------------------------------------
    def _cdt(self, x):
        return x.dtype if self.dtype is None else self.dtype

    def project(self, x_xD, positions=None):
        """``(q, k, v)`` of ``x (..., D)``: ``(..., H, K)``, ``(..., G, K)``, ``(..., G, K)``;
        RoPE at ``positions`` (B, L) when the config asks and x is (B, L, D)."""
        dt = self._cdt(x_xD)
        x = x_xD.astype(dt)
        q = jnp.einsum("...d,dhk->...hk", x, self.wq[...].astype(dt))
        k = jnp.einsum("...d,dgk->...gk", x, self.wk[...].astype(dt))
        v = jnp.einsum("...d,dgk->...gk", x, self.wv[...].astype(dt))
        if self.config.rope and positions is not None:
            q = apply_rope(q, positions, base=self.config.rope_base)
            k = apply_rope(k, positions, base=self.config.rope_base)
        return q, k, v

    def output(self, o_xHxK, out_dtype):
        dt = o_xHxK.dtype
        y = jnp.einsum("...hk,hkd->...d", o_xHxK, self.wo[...].astype(dt))
        return y.astype(out_dtype)

    def _default_positions(self, B, L, offset=0):
        return jnp.broadcast_to((jnp.arange(L, dtype=jnp.int32) + offset)[None], (B, L))

    # ---- protocol ----------------------------------------------------------------------
    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None):
        """Full-sequence attention; ``mask`` bool (B or 1, H or 1, L, L) is AND-ed with the
        config's causal / window masks and with ``segment_ids``."""
        cfg = self.config
        B, L, _ = x_BxLxD.shape
        if positions is None:
            positions = self._default_positions(B, L)
        q, k, v = self.project(x_BxLxD, positions)
        q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
        k, v = (sharding.constrain(t, ("batch", "length", "kv_heads", "head_dim")) for t in (k, v))
        if cfg.window is not None:
            win = local_mask(L, window=cfg.window, causal=cfg.causal)[None, None]
            mask = win if mask is None else mask & win
        o = dot_product_attention(
            q, k, v, causal=cfg.causal, mask=mask, segment_ids=segment_ids, impl=cfg.impl
        )
        o = sharding.constrain(o, ("batch", "length", "heads", "head_dim"))
        return self.output(o, x_BxLxD.dtype)

    def init_state(self, batch_size: int, max_len: int, dtype=jnp.float32):
        """Empty KV cache of ``max_len`` slots and index 0."""
        G, K = self.num_kv_heads, self.head_dim
        return {
            "k": jnp.zeros((batch_size, max_len, G, K), dtype),
            "v": jnp.zeros((batch_size, max_len, G, K), dtype),
            "index": jnp.zeros((), jnp.int32),
        }

    def decode(
        self,
        x_BxTxD,
        state,
        *,
        positions=None,
        bidirectional=False,
        return_steps=False,
        mask=None,
    ):
        """Appends T tokens after the ``state["index"]`` cached ones; returns ``(y, state)``
        (``(y, state, None)`` with ``return_steps``: a cache is rolled back by its index).

        New token i (slot ``index + i``) attends to cached slots and to new tokens ``<= i``
        (causal config), or to all T new tokens (``bidirectional=True`` or a non-causal
        config); ``window`` limits keys to slots within ``window`` of the query's slot.
        ``index`` is a scalar (all rows alike, as from ``init_state``) or int32 (B,), one
        per row: rows then hold different numbers of tokens, and setting a row's index
        back rolls its cache back (slots at or past it are ignored, then overwritten).
        ``mask``: optional bool (T, T) or (B, T, T), which new tokens each new token may see
        (AND-ed with the rest; e.g. a token tree, :func:`jaxar.ops.tree_mask`, with
        ``positions`` = depth); cached slots stay visible.
        """
        cfg = self.config
        B, T, _ = x_BxTxD.shape
        kc, vc, idx = state["k"], state["v"], state["index"]
        M = kc.shape[1]
        if T > M:
            raise ValueError(f"decode got T={T} tokens; the cache holds max_len={M}")
        per_row = jnp.ndim(idx) == 1
        if positions is None:
            if per_row:
                positions = idx[:, None] + jnp.arange(T, dtype=jnp.int32)[None]
            else:
                positions = self._default_positions(B, T, idx)
        q, k, v = self.project(x_BxTxD, positions)
        if per_row:
            put = jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u, (i, 0, 0)))
            kc = put(kc, k.astype(kc.dtype), idx)
            vc = put(vc, v.astype(vc.dtype), idx)
            qpos = idx[:, None, None] + jnp.arange(T)[None, :, None]  # (B, T, 1)
        else:
            kc = jax.lax.dynamic_update_slice(kc, k.astype(kc.dtype), (0, idx, 0, 0))
            vc = jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), (0, idx, 0, 0))
            qpos = idx + jnp.arange(T)[:, None]  # (T, 1) slot of each new token
        kpos = jnp.arange(M)[None, :]  # (1, M)
        end = idx
        if per_row:
            kpos, end = kpos[None], idx[:, None, None]  # (1, 1, M), (B, 1, 1)
        allowed = jnp.broadcast_to(kpos < end + T, qpos.shape[:-1] + (M,))
        if cfg.causal and not bidirectional:
            allowed = allowed & (kpos <= qpos)
        if cfg.window is not None:
            if cfg.causal and not bidirectional:
                allowed = allowed & (kpos > qpos - cfg.window)
            else:
                allowed = allowed & (jnp.abs(qpos - kpos) < cfg.window)
        if mask is not None:
            mask = jnp.asarray(mask, bool)
            if mask.shape[-2:] != (T, T) or mask.ndim not in (2, 3):
                raise ValueError(f"mask must be (T, T) or (B, T, T) with T={T}, got {mask.shape}")
            if mask.ndim == 3 and allowed.ndim == 2:
                allowed = jnp.broadcast_to(allowed, (B,) + allowed.shape)
            rel = jnp.broadcast_to(kpos - end, allowed.shape)  # key slot - first new slot
            new_ok = jnp.take_along_axis(
                jnp.broadcast_to(mask, allowed.shape[:-1] + (T,)),
                jnp.clip(rel, 0, T - 1),
                axis=-1,
            )
            allowed = allowed & ((rel < 0) | new_ok)
        dt = q.dtype
        mask = allowed[:, None] if allowed.ndim == 3 else allowed[None, None]
        o = dot_product_attention(q, kc.astype(dt), vc.astype(dt), mask=mask, impl=cfg.impl)
        y = self.output(o, x_BxTxD.dtype)
        new_state = {"k": kc, "v": vc, "index": idx + T}
        return (y, new_state, None) if return_steps else (y, new_state)
