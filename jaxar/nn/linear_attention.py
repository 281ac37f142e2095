"""Linear-attention mixers on the shared core (jaxar/MATHS.md s.12): GLA, RetNet, Mamba2,
GatedDeltaNet.

Each is a frozen config (``make(d_model, *, rngs, dtype, param_dtype)``) and an NNX module
with ``__call__(x_BxLxD, *, segment_ids=None, positions=None, mask=None)`` (the chunked
:func:`jaxar.ops.linear_attention` / :func:`jaxar.ops.delta_rule`; ``segment_ids`` start a
new document where they change: the state is reset there), ``init_state`` (a fixed-size
state) and ``decode(x_BxTxD, state, *, positions=None, bidirectional=False,
return_steps=False)`` (the recurrence one step at a time; ``return_steps=True`` also returns
the state after each of the T inputs, stacked on a new leading axis, for speculative
decoding's rollback).

    GLA:      S_t = diag(alpha_t) S_{t-1} + k_t v_t^T,  alpha_t = sigmoid(x W_1 W_2 + b)^(1/16)
    RetNet:   S_t = gamma_h S_{t-1} + k_t v_t^T,  gamma_h = 1 - 2^(-5 .. -9), rotary q, k
    Mamba2:   S_t = exp(dt_t A_h) S_{t-1} + dt_t B_t x_t^T, y_t = S_t^T C_t + D x_t
              (x, B, C after a short causal convolution; output gated by silu(z))
    GatedDeltaNet: S_t = g_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
              (q, k, v after a short causal convolution + SiLU, as Mamba2's x, B, C)

References:
  Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient Training",
    arXiv:2312.06635.
  Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language
    Models", arXiv:2307.08621.
  Dao and Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
    Through Structured State Space Duality", arXiv:2405.21060.
  Yang, Kautz and Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2 with Delta
    Rule", arXiv:2412.06464.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from jaxar import dispatch
from jaxar.dispatch import DeltaRuleImpl, LinearAttentionImpl
from jaxar.nn.layers import dense, partitioned
from jaxar.ops.attention import apply_rope
from jaxar.ops.checks import positive_int
from jaxar.ops.delta_rule import delta_rule
from jaxar.ops.linear_attention import linear_attention

__all__ = [
    "GLAConfig",
    "GLA",
    "RetNetConfig",
    "RetNet",
    "Mamba2Config",
    "Mamba2",
    "GatedDeltaNetConfig",
    "GatedDeltaNet",
]


def _check_common(name, cfg, op):
    positive_int(f"{name}.num_heads", cfg.num_heads)
    hd = getattr(cfg, "head_dim", None)
    if hd is not None and (not isinstance(hd, int) or hd < 1):
        raise ValueError(f"{name}.head_dim={hd!r} is invalid; accepted: None or an int >= 1")
    dispatch.resolve(op, cfg.impl, arg=f"{name}.impl")
    positive_int(f"{name}.chunk_size", cfg.chunk_size)


def _head_dim(name, d_model, cfg):
    kk = cfg.head_dim or d_model // cfg.num_heads
    if kk < 1:
        raise ValueError(f"{name}: d_model={d_model} is too small for num_heads={cfg.num_heads}")
    return kk


def _resets(segment_ids, x):
    """bool (B, L): True where a new document starts (segment id changes), else None."""
    if segment_ids is None:
        return None
    seg = jnp.asarray(segment_ids)
    if seg.shape != x.shape[:2]:
        raise ValueError(f"segment_ids must be (B, L) = {x.shape[:2]}, got {seg.shape}")
    return jnp.concatenate([jnp.zeros_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], 1)


def _no_mask(name, mask):
    if mask is not None:
        raise ValueError(f"{name} is a recurrent mixer: mask must be None")


def _causal_only(name, bidirectional):
    if bidirectional:
        raise ValueError(f"{name} is causal: bidirectional=True is not supported")


def _scan_states(q, k, v, la, s0):
    """The recurrence one input at a time: ``(y (B, T, H, E), steps (T, B, H, K, E))``."""
    a = jnp.exp(la.astype(jnp.float32))
    if a.ndim == 3:
        a = a[..., None]

    def step(s, inp):
        k_t, v_t, a_t = inp
        s = a_t[..., None] * s + k_t[..., None] * v_t[..., None, :]
        return s, s

    f32 = (t.astype(jnp.float32) for t in (k, v))
    _, steps = lax.scan(step, s0, tuple(jnp.moveaxis(t, 1, 0) for t in (*f32, a)))
    y = jnp.einsum("bthk,tbhke->bthe", q.astype(jnp.float32), steps)
    return y, steps


class _HeadOut(nnx.Module):
    """``(rms_norm_per_head(y) * scale * silu(x W_g)) W_o``."""

    def __init__(self, d_model, h, e, *, rngs, dtype, param_dtype):
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        init = partitioned(nnx.initializers.ones_init(), ("norm",))
        self.scale = nnx.Param(init(rngs.params(), (h * e,), param_dtype))
        self.wg = dense(d_model, h * e, ("embed", "heads"), **kw)
        self.wo = dense(h * e, d_model, ("heads", "embed"), **kw)

    def __call__(self, x, y_BxLxHxE):
        b, length = y_BxLxHxE.shape[:2]
        yf = y_BxLxHxE.astype(jnp.float32)
        yf = yf * lax.rsqrt(jnp.mean(yf * yf, axis=-1, keepdims=True) + 1e-6)
        y = yf.reshape(b, length, -1) * self.scale[...].astype(jnp.float32)[None, None]
        y = y * jax.nn.silu(self.wg(x).astype(jnp.float32))
        return self.wo(y.astype(self.dtype or x.dtype))


def _short_conv(u, w, bias, prev, reset=None):
    """Depthwise causal conv ``y_t = bias + sum_j w_j u_{t-j}`` (j < W), with the W - 1
    inputs before position 0 taken from ``prev`` (B, W - 1, C); inputs before a reset do
    not reach positions at or after it. ``bias`` may be None. Returns y (float32) and the
    padded input (B, W - 1 + T, C), whose last W - 1 rows are the next call's ``prev``."""
    width = w.shape[0]
    t = u.shape[1]
    padded = jnp.concatenate([prev.astype(u.dtype), u], axis=1)
    if reset is not None:  # doc[t]: index of the document holding t (prev: document 0)
        doc = jnp.concatenate(
            [jnp.zeros_like(reset[:, :1], jnp.int32).repeat(width - 1, 1),
             jnp.cumsum(reset, axis=1, dtype=jnp.int32)], 1
        )  # fmt: skip
    y = jnp.zeros(u.shape, jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)[None, None]
    for j in range(width):
        tap = lax.dynamic_slice_in_dim(padded, width - 1 - j, t, axis=1).astype(jnp.float32)
        if reset is not None:
            same = lax.dynamic_slice_in_dim(doc, width - 1 - j, t, axis=1) == doc[:, width - 1 :]
            tap = jnp.where(same[..., None], tap, 0.0)
        y = y + w[j].astype(jnp.float32)[None, None] * tap
    return y, padded


def _conv_window_steps(padded, t):
    """The conv state (the last W - 1 inputs) after each of the last ``t`` inputs of
    ``padded`` (B, W - 1 + t, C): (t, B, W - 1, C) float32."""
    w1 = padded.shape[1] - t
    padded = padded.astype(jnp.float32)
    return jnp.stack([padded[:, i + 1 : i + 1 + w1] for i in range(t)])


def _conv_init(width, channels, rngs, param_dtype):
    init = partitioned(nnx.initializers.normal(1.0 / math.sqrt(width)), (None, "heads"))
    return nnx.Param(init(rngs.params(), (width, channels), param_dtype))


# --------------------------------------------------------------------------- GLA


@dataclasses.dataclass(frozen=True)
class GLAConfig:
    """Gated linear attention (GLA).

    Attributes:
      num_heads: H.
      head_dim: K = E per head (default d_model // num_heads).
      gate_rank: rank of the gate projection ``x W_1 W_2`` (16 in the paper).
      gate_temperature: tau in ``alpha = sigmoid(.)^(1 / tau)`` (16 in the paper).
      impl: ``jaxar.ops.linear_attention`` implementation for full sequences.
      chunk_size: C of the chunked core.
    """

    num_heads: int = 4
    head_dim: int | None = None
    gate_rank: int = 16
    gate_temperature: float = 16.0
    impl: LinearAttentionImpl = "auto"
    chunk_size: int = 32

    def __post_init__(self):
        _check_common("GLAConfig", self, "linear_attention")
        positive_int("GLAConfig.gate_rank", self.gate_rank)
        if not self.gate_temperature > 0:
            raise ValueError(f"GLAConfig.gate_temperature={self.gate_temperature!r}; accepted: > 0")

    def make(self, d_model: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        return GLA(self, d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


class GLA(nnx.Module):
    """GLA mixer (Yang et al. 2024, arXiv:2312.06635)."""

    def __init__(self, cfg: GLAConfig, d_model: int, *, rngs, dtype=None, param_dtype=jnp.float32):
        self.cfg, self.h, self.k = cfg, cfg.num_heads, _head_dim("GLA", d_model, cfg)
        hk = self.h * self.k
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.wq = dense(d_model, hk, ("embed", "heads"), **kw)
        self.wk = dense(d_model, hk, ("embed", "heads"), **kw)
        self.wv = dense(d_model, hk, ("embed", "heads"), **kw)
        self.wa1 = dense(d_model, cfg.gate_rank, ("embed", None), **kw)
        self.wa2 = dense(cfg.gate_rank, hk, (None, "heads"), use_bias=True, **kw)
        self.out = _HeadOut(d_model, self.h, self.k, **kw)

    def _features(self, x):
        b, length, _ = x.shape
        shp = (b, length, self.h, self.k)
        q = self.wq(x).reshape(shp)
        k = self.wk(x).reshape(shp) / math.sqrt(self.k)
        v = self.wv(x).reshape(shp)
        logit = self.wa2(self.wa1(x)).astype(jnp.float32).reshape(shp)
        return q, k, v, jax.nn.log_sigmoid(logit) / self.cfg.gate_temperature

    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None):
        _no_mask("GLA", mask)
        del positions
        q, k, v, la = self._features(x_BxLxD)
        reset = _resets(segment_ids, x_BxLxD)
        y, _ = linear_attention(
            q, k, v, la, reset=reset, impl=self.cfg.impl, chunk_size=self.cfg.chunk_size
        )
        return self.out(x_BxLxD, y)

    def init_state(self, batch_size: int, max_len: int = 0, dtype=None):
        """Zero (B, H, K, K) float32 state."""
        del max_len, dtype
        return jnp.zeros((batch_size, self.h, self.k, self.k), jnp.float32)

    def decode(self, x_BxTxD, state, *, positions=None, bidirectional=False, return_steps=False):
        _causal_only("GLA", bidirectional)
        del positions
        q, k, v, la = self._features(x_BxTxD)
        y, steps = _scan_states(q, k, v, la, state)
        out = self.out(x_BxTxD, y)
        return (out, steps[-1], steps) if return_steps else (out, steps[-1])


# --------------------------------------------------------------------------- RetNet


@dataclasses.dataclass(frozen=True)
class RetNetConfig:
    """Multi-scale retention (RetNet).

    Attributes:
      num_heads: H; head h decays by ``gamma_h = 1 - exp(linspace(log 1/32, log 1/512))_h``.
      head_dim: K = E per head (default d_model // num_heads; even, for the rotation).
      impl: ``jaxar.ops.linear_attention`` implementation for full sequences.
      chunk_size: C of the chunked core.
    """

    num_heads: int = 4
    head_dim: int | None = None
    impl: LinearAttentionImpl = "auto"
    chunk_size: int = 64

    def __post_init__(self):
        _check_common("RetNetConfig", self, "linear_attention")

    def make(self, d_model: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        return RetNet(self, d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


class RetNet(nnx.Module):
    """Multi-scale retention (Sun et al. 2023, arXiv:2307.08621): a fixed scalar decay per
    head and rotary q, k (the complex ``e^{i n theta}`` of the paper)."""

    def __init__(
        self, cfg: RetNetConfig, d_model: int, *, rngs, dtype=None, param_dtype=jnp.float32
    ):
        self.cfg, self.h, self.k = cfg, cfg.num_heads, _head_dim("RetNet", d_model, cfg)
        if self.k % 2:
            raise ValueError(f"RetNet head_dim={self.k} must be even (rotary q, k)")
        hk = self.h * self.k
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.wq = dense(d_model, hk, ("embed", "heads"), **kw)
        self.wk = dense(d_model, hk, ("embed", "heads"), **kw)
        self.wv = dense(d_model, hk, ("embed", "heads"), **kw)
        self.out = _HeadOut(d_model, self.h, self.k, **kw)

    def _features(self, x, positions):
        b, length, _ = x.shape
        shp = (b, length, self.h, self.k)
        q = apply_rope(self.wq(x).reshape(shp), positions)
        k = apply_rope(self.wk(x).reshape(shp), positions) / math.sqrt(self.k)
        v = self.wv(x).reshape(shp)
        gamma = 1.0 - np.exp(np.linspace(np.log(1 / 32), np.log(1 / 512), self.h))
        log_gamma = jnp.asarray(np.log(gamma), jnp.float32).reshape(1, 1, self.h)
        la = jnp.broadcast_to(log_gamma, (b, length, self.h))
        return q, k, v, la

    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None):
        _no_mask("RetNet", mask)
        b, length, _ = x_BxLxD.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), (b, length))
        q, k, v, la = self._features(x_BxLxD, positions)
        reset = _resets(segment_ids, x_BxLxD)
        y, _ = linear_attention(
            q,
            k,
            v,
            la,
            gate="scalar",
            reset=reset,
            impl=self.cfg.impl,
            chunk_size=self.cfg.chunk_size,
        )
        return self.out(x_BxLxD, y)

    def init_state(self, batch_size: int, max_len: int = 0, dtype=None):
        """``{"s": zero (B, H, K, K) float32, "pos": (B,) int32 next position}``."""
        del max_len, dtype
        return {
            "s": jnp.zeros((batch_size, self.h, self.k, self.k), jnp.float32),
            "pos": jnp.zeros((batch_size,), jnp.int32),
        }

    def decode(self, x_BxTxD, state, *, positions=None, bidirectional=False, return_steps=False):
        _causal_only("RetNet", bidirectional)
        b, t, _ = x_BxTxD.shape
        if positions is None:
            positions = state["pos"][:, None] + jnp.arange(t, dtype=jnp.int32)[None]
        q, k, v, la = self._features(x_BxTxD, positions)
        y, steps = _scan_states(q, k, v, la, state["s"])
        out = self.out(x_BxTxD, y)
        pos = positions.astype(jnp.int32) + 1  # (B, T): the next position after each input
        new = {"s": steps[-1], "pos": pos[:, -1]}
        if not return_steps:
            return out, new
        return out, new, {"s": steps, "pos": jnp.moveaxis(pos, 1, 0)}


# --------------------------------------------------------------------------- Mamba2


@dataclasses.dataclass(frozen=True)
class Mamba2Config:
    """Mamba-2 (SSD) mixer.

    Attributes:
      num_heads: H; the inner width ``expand * d_model`` is split into H heads of P.
      expand: inner width factor.
      d_state: N, the state size per head (B_t, C_t of size N shared by all heads).
      conv_width: W of the depthwise causal convolution over (x, B, C).
      impl: ``jaxar.ops.linear_attention`` implementation for full sequences.
      chunk_size: C of the chunked core.
      dt_min, dt_max: range of the initial step sizes (log-uniform).
    """

    num_heads: int = 4
    expand: int = 2
    d_state: int = 16
    conv_width: int = 4
    impl: LinearAttentionImpl = "auto"
    chunk_size: int = 64
    dt_min: float = 1e-3
    dt_max: float = 0.1

    def __post_init__(self):
        _check_common("Mamba2Config", self, "linear_attention")
        for name in ("expand", "d_state", "conv_width"):
            positive_int(f"Mamba2Config.{name}", getattr(self, name))
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"Mamba2Config dt range ({self.dt_min}, {self.dt_max}); accepted: "
                "0 < dt_min <= dt_max"
            )

    def make(self, d_model: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        return Mamba2(self, d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


class Mamba2(nnx.Module):
    """Mamba-2 mixer (Dao and Gu 2024, arXiv:2405.21060): SSD through the scalar-gate core
    (``q = C``, ``k = dt B``, ``v = x``, ``log a = dt A``), short conv, silu(z) gating."""

    def __init__(
        self, cfg: Mamba2Config, d_model: int, *, rngs, dtype=None, param_dtype=jnp.float32
    ):
        inner = cfg.expand * d_model
        if inner % cfg.num_heads:
            raise ValueError(
                f"Mamba2: expand * d_model = {inner} must be divisible by num_heads={cfg.num_heads}"
            )
        self.cfg, self.h, self.p, self.n = cfg, cfg.num_heads, inner // cfg.num_heads, cfg.d_state
        self.inner, self.dtype = inner, dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.conv_dim = inner + 2 * self.n
        self.w_in = dense(d_model, 2 * inner + 2 * self.n + self.h, ("embed", "heads"), **kw)
        self.conv_w = _conv_init(cfg.conv_width, self.conv_dim, rngs, param_dtype)
        zeros = partitioned(nnx.initializers.zeros_init(), ("heads",))
        self.conv_b = nnx.Param(zeros(rngs.params(), (self.conv_dim,), param_dtype))
        u = jax.random.uniform(rngs.params(), (self.h,))
        dt = jnp.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        self.dt_bias = nnx.Param(jnp.log(jnp.expm1(dt)).astype(param_dtype))  # softplus^-1
        a = jax.random.uniform(rngs.params(), (self.h,), minval=1.0, maxval=16.0)
        self.a_log = nnx.Param(jnp.log(a).astype(param_dtype))
        self.d_skip = nnx.Param(jnp.ones((self.h,), param_dtype))
        ones = partitioned(nnx.initializers.ones_init(), ("norm",))
        self.norm_scale = nnx.Param(ones(rngs.params(), (inner,), param_dtype))
        self.w_out = dense(inner, d_model, ("heads", "embed"), **kw)

    def _split(self, x):
        zxbcdt = self.w_in(x)
        i, n = self.inner, self.n
        return zxbcdt[..., :i], zxbcdt[..., i : 2 * i + 2 * n], zxbcdt[..., 2 * i + 2 * n :]

    def _ssd_inputs(self, xbc, dt):
        b, length, _ = xbc.shape
        xbc = jax.nn.silu(xbc)
        i, n = self.inner, self.n
        xs = xbc[..., :i].reshape(b, length, self.h, self.p)
        bm = jnp.broadcast_to(xbc[..., None, i : i + n], (b, length, self.h, n))
        cm = jnp.broadcast_to(xbc[..., None, i + n :], (b, length, self.h, n))
        dt = jax.nn.softplus(
            dt.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32)[None, None]
        )
        la = -dt * jnp.exp(self.a_log[...].astype(jnp.float32))[None, None]
        return cm, bm * dt[..., None], xs, la

    def _output(self, x, y, xs, z):
        b, length = y.shape[:2]
        y = y + xs * self.d_skip[...].astype(jnp.float32).reshape(1, 1, self.h, 1)
        y = y.reshape(b, length, self.inner) * jax.nn.silu(z.astype(jnp.float32))
        y = y * lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + 1e-6)
        y = y * self.norm_scale[...].astype(jnp.float32)[None, None]
        return self.w_out(y.astype(self.dtype or x.dtype))

    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None):
        _no_mask("Mamba2", mask)
        del positions
        b = x_BxLxD.shape[0]
        reset = _resets(segment_ids, x_BxLxD)
        z, xbc, dt = self._split(x_BxLxD)
        prev = jnp.zeros((b, self.cfg.conv_width - 1, self.conv_dim), xbc.dtype)
        xbc, _ = _short_conv(xbc, self.conv_w[...], self.conv_b[...], prev, reset)
        q, k, v, la = self._ssd_inputs(xbc, dt)
        y, _ = linear_attention(
            q,
            k,
            v,
            la,
            gate="scalar",
            reset=reset,
            impl=self.cfg.impl,
            chunk_size=self.cfg.chunk_size,
        )
        return self._output(x_BxLxD, y.astype(jnp.float32), v, z)

    def init_state(self, batch_size: int, max_len: int = 0, dtype=None):
        """``{"ssm": zero (B, H, N, P) float32, "conv": zero (B, W - 1, conv_dim)}``."""
        del max_len, dtype
        return {
            "ssm": jnp.zeros((batch_size, self.h, self.n, self.p), jnp.float32),
            "conv": jnp.zeros((batch_size, self.cfg.conv_width - 1, self.conv_dim), jnp.float32),
        }

    def decode(self, x_BxTxD, state, *, positions=None, bidirectional=False, return_steps=False):
        _causal_only("Mamba2", bidirectional)
        del positions
        t = x_BxTxD.shape[1]
        z, xbc, dt = self._split(x_BxTxD)
        xbc, padded = _short_conv(xbc, self.conv_w[...], self.conv_b[...], state["conv"])
        q, k, v, la = self._ssd_inputs(xbc, dt)
        y, steps = _scan_states(q, k, v, la, state["ssm"])
        out = self._output(x_BxTxD, y, v.astype(jnp.float32), z)
        new = {"ssm": steps[-1], "conv": padded[:, t:].astype(jnp.float32)}
        if not return_steps:
            return out, new
        return out, new, {"ssm": steps, "conv": _conv_window_steps(padded, t)}


# --------------------------------------------------------------------------- GatedDeltaNet


@dataclasses.dataclass(frozen=True)
class GatedDeltaNetConfig:
    """Gated DeltaNet mixer.

    Attributes:
      num_heads: H.
      head_dim: K = V per head (default d_model // num_heads).
      conv_width: W of the depthwise causal convolutions (+ SiLU) on q, k, v, as in the
        paper and Mamba-2 (4); 0 disables them (the projections go straight to the L2 norm).
      impl: ``jaxar.ops.delta_rule`` implementation for full sequences.
      chunk_size: C of the chunked (WY / UT) form.
    """

    num_heads: int = 4
    head_dim: int | None = None
    conv_width: int = 4
    impl: DeltaRuleImpl = "auto"
    chunk_size: int = 16

    def __post_init__(self):
        _check_common("GatedDeltaNetConfig", self, "delta_rule")
        w = self.conv_width
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(
                f"GatedDeltaNetConfig.conv_width={w!r} is invalid; accepted: an int >= 0 "
                "(0: no short convolution)"
            )

    def make(self, d_model: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        return GatedDeltaNet(self, d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


class GatedDeltaNet(nnx.Module):
    """Gated DeltaNet (Yang, Kautz and Hatamizadeh 2025, arXiv:2412.06464):
    ``q, k, v = silu(conv_W(x W_qkv))`` (a depthwise causal conv of width W, as Mamba-2's;
    skipped for W = 0), q and k L2-normalised; ``beta = sigmoid(x W_b)``;
    ``log g = -exp(A) softplus(x W_a + b)`` (Mamba-2's gate). The decode state is
    ``{"s": (B, H, K, K), "conv": (B, W - 1, 3 H K)}`` (the last W - 1 projections; no
    "conv" for W = 0)."""

    def __init__(
        self, cfg: GatedDeltaNetConfig, d_model: int, *, rngs, dtype=None, param_dtype=jnp.float32
    ):
        self.cfg, self.h, self.k = cfg, cfg.num_heads, _head_dim("GatedDeltaNet", d_model, cfg)
        hk = self.h * self.k
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.wq = dense(d_model, hk, ("embed", "heads"), **kw)
        self.wk = dense(d_model, hk, ("embed", "heads"), **kw)
        self.wv = dense(d_model, hk, ("embed", "heads"), **kw)
        self.wb = dense(d_model, self.h, ("embed", "heads"), **kw)
        self.wa = dense(d_model, self.h, ("embed", "heads"), use_bias=True, **kw)
        a = jax.random.uniform(rngs.params(), (self.h,), minval=1.0, maxval=16.0)
        self.a_log = nnx.Param(jnp.log(a).astype(param_dtype))
        if cfg.conv_width:
            self.conv_w = _conv_init(cfg.conv_width, 3 * hk, rngs, param_dtype)
        self.out = _HeadOut(d_model, self.h, self.k, **kw)

    def _features(self, x, prev=None, reset=None):
        """q, k, v, beta, log g, and the conv's padded input (None for W = 0)."""
        b, length, _ = x.shape
        shp = (b, length, self.h, self.k)
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        padded = None
        if self.cfg.conv_width:
            qkv = jnp.concatenate([q, k, v], axis=-1)
            if prev is None:
                prev = jnp.zeros((b, self.cfg.conv_width - 1, qkv.shape[-1]), qkv.dtype)
            qkv, padded = _short_conv(qkv, self.conv_w[...], None, prev, reset)
            q, k, v = jnp.split(jax.nn.silu(qkv), 3, axis=-1)

        def l2(t):
            t = t.astype(jnp.float32)
            return t * lax.rsqrt(jnp.sum(t * t, axis=-1, keepdims=True) + 1e-6)

        q = l2(q.reshape(shp)) / math.sqrt(self.k)
        k = l2(k.reshape(shp))
        v = v.reshape(shp).astype(jnp.float32)
        beta = jax.nn.sigmoid(self.wb(x).astype(jnp.float32))
        lg = -jnp.exp(self.a_log[...].astype(jnp.float32))[None, None] * jax.nn.softplus(
            self.wa(x).astype(jnp.float32)
        )
        return q, k, v, beta, lg, padded

    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None):
        _no_mask("GatedDeltaNet", mask)
        del positions
        reset = _resets(segment_ids, x_BxLxD)
        q, k, v, beta, lg, _ = self._features(x_BxLxD, reset=reset)
        y = delta_rule(
            q,
            k,
            v,
            beta,
            gate=lg,
            reset=reset,
            impl=self.cfg.impl,
            chunk_size=self.cfg.chunk_size,
            normalize_keys=False,
        )
        return self.out(x_BxLxD, y)

    def init_state(self, batch_size: int, max_len: int = 0, dtype=None):
        """``{"s": zero (B, H, K, K) float32, "conv": zero (B, W - 1, 3 H K) float32}``
        (no "conv" for W = 0)."""
        del max_len, dtype
        state = {"s": jnp.zeros((batch_size, self.h, self.k, self.k), jnp.float32)}
        if self.cfg.conv_width:
            c = 3 * self.h * self.k
            state["conv"] = jnp.zeros((batch_size, self.cfg.conv_width - 1, c), jnp.float32)
        return state

    def decode(self, x_BxTxD, state, *, positions=None, bidirectional=False, return_steps=False):
        _causal_only("GatedDeltaNet", bidirectional)
        del positions
        t = x_BxTxD.shape[1]
        q, k, v, beta, lg, padded = self._features(x_BxTxD, prev=state.get("conv"))

        def step(s, inp):
            k_t, v_t, b_t, g_t = inp
            g = jnp.exp(g_t)[..., None]
            u = b_t[..., None] * (v_t - g * jnp.einsum("bhk,bhkv->bhv", k_t, s))
            s = g[..., None] * s + k_t[..., :, None] * u[..., None, :]
            return s, s

        xs = tuple(jnp.moveaxis(a, 1, 0) for a in (k, v, beta, lg))
        s, steps = lax.scan(step, state["s"].astype(jnp.float32), xs)
        y = jnp.einsum("bthk,tbhkv->bthv", q, steps)
        out = self.out(x_BxTxD, y)
        new, all_steps = {"s": s}, {"s": steps}
        if padded is not None:
            new["conv"] = padded[:, t:].astype(jnp.float32)
            all_steps["conv"] = _conv_window_steps(padded, t)
        return (out, new, all_steps) if return_steps else (out, new)
