"""GateLoop sequence mixer (jaxar/MATHS.md s.2) for :class:`jaxar.models.lm.LM`.

q, k, v = x W_q, x W_k / sqrt(K), x W_v;   a = sigmoid(x W_m + b_m) * exp(i x W_phi)
y = gateloop(q, k, v, a);   out = (headnorm(y) * silu(x W_g)) W_o

References:
  Katsch 2023, "GateLoop: Fully Data-Controlled Linear Recurrence for Sequence Modeling",
    arXiv:2311.01927.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import dispatch
from jaxar.dispatch import GateLoopImpl
from jaxar.nn.layers import dense, partitioned
from jaxar.ops.checks import positive_int
from jaxar.ops.gateloop import gateloop
from jaxar.ops.scan import check_chunk_size, linear_scan

__all__ = ["GateLoopConfig", "GateLoop"]


@dataclasses.dataclass(frozen=True)
class GateLoopConfig:
    """GateLoop mixer.

    Attributes:
      num_heads: H.
      head_dim: K = E per head (default d_model // num_heads).
      complex_gates: ``a = sigmoid(m) exp(i phi)``; False: real ``a = sigmoid(m)``.
      head_norm: RMS-normalise each head's output.
      output_gate: multiply by ``silu(x W_g)``.
      impl: ``jaxar.ops.gateloop`` implementation for full sequences ("auto",
        "recurrent", "parallel", "attention", "chunked", "pallas").
      chunk_size: C of the chunked implementation (and the Pallas kernel), an int >= 1.
      mode: deprecated init-only alias of ``impl`` (warns; removed in the next release).
      gate_min, gate_max: range of the initial gate magnitudes sigmoid(b_m).
    """

    num_heads: int = 4
    head_dim: int | None = None
    complex_gates: bool = True
    head_norm: bool = True
    output_gate: bool = True
    impl: GateLoopImpl = "auto"
    chunk_size: int = 16
    gate_min: float = 0.9
    gate_max: float = 0.999
    mode: dataclasses.InitVar[str | None] = None

    def __post_init__(self, mode):
        if mode is not None:
            warnings.warn(
                "GateLoopConfig(mode=...) is deprecated; pass impl=... (same values)",
                DeprecationWarning,
                stacklevel=3,
            )
            if self.impl not in ("auto", mode):
                raise ValueError(
                    f"GateLoopConfig mode={mode!r} and impl={self.impl!r} disagree; pass impl only"
                )
            object.__setattr__(self, "impl", mode)
        positive_int("GateLoopConfig.num_heads", self.num_heads)
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            raise ValueError(f"GateLoopConfig.head_dim={self.head_dim!r} must be None or > 0")
        dispatch.resolve("gateloop", self.impl, arg="GateLoopConfig.impl")
        try:
            check_chunk_size(self.chunk_size)
        except ValueError as e:
            raise ValueError(f"GateLoopConfig.{e}") from None
        if not 0.0 < self.gate_min <= self.gate_max < 1.0:
            raise ValueError(
                f"GateLoopConfig gate range ({self.gate_min}, {self.gate_max}) must satisfy "
                "0 < gate_min <= gate_max < 1"
            )

    def make(self, d_model: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        return GateLoop(self, d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


class GateLoop(nnx.Module):
    """GateLoop mixer with full-sequence ``__call__`` and O(1)-state ``decode``."""

    def __init__(
        self,
        cfg: GateLoopConfig,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        param_dtype=jnp.float32,
    ):
        h = cfg.num_heads
        kk = cfg.head_dim or d_model // h
        if kk < 1:
            raise ValueError(f"d_model={d_model} is too small for num_heads={h}")
        self.cfg, self.h, self.k, self.dtype = cfg, h, kk, dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.wq = dense(d_model, h * kk, ("embed", "heads"), **kw)
        self.wk = dense(d_model, h * kk, ("embed", "heads"), **kw)
        self.wv = dense(d_model, h * kk, ("embed", "heads"), **kw)
        self.wm = dense(d_model, h * kk, ("embed", "heads"), scale=0.1, **kw)
        lo, hi = (
            math.log(cfg.gate_min / (1 - cfg.gate_min)),
            math.log(cfg.gate_max / (1 - cfg.gate_max)),
        )
        bias = jnp.tile(jnp.linspace(lo, hi, kk), h).astype(param_dtype)
        self.bm = nnx.Param(partitioned(lambda *_: bias, ("heads",))(rngs.params(), (h * kk,)))
        self.wphi = (
            dense(d_model, h * kk, ("embed", "heads"), scale=0.1, **kw)
            if cfg.complex_gates
            else None
        )
        self.norm_scale = (
            nnx.Param(
                partitioned(nnx.initializers.ones_init(), ("norm",))(
                    rngs.params(), (h * kk,), param_dtype
                )
            )
            if cfg.head_norm
            else None
        )
        self.wg = dense(d_model, h * kk, ("embed", "heads"), **kw) if cfg.output_gate else None
        self.wo = dense(h * kk, d_model, ("heads", "embed"), **kw)

    def _project(self, x, segment_ids=None, prev_segment=None):
        b, length, _ = x.shape
        shp = (b, length, self.h, self.k)
        q = self.wq(x).reshape(shp)
        k = self.wk(x).reshape(shp) / math.sqrt(self.k)
        v = self.wv(x).reshape(shp)
        m = self.wm(x).astype(jnp.float32) + self.bm[...].astype(jnp.float32)[None, None]
        a = jax.nn.sigmoid(m).reshape(shp)
        if self.wphi is not None:
            phi = self.wphi(x).astype(jnp.float32).reshape(shp)
            a = a * jnp.exp(1j * phi)
        if segment_ids is not None:
            start = jnp.concatenate(
                [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
            )
            a = jnp.where(start[:, :, None, None], jnp.zeros((), a.dtype), a)
        return q, k, v, a

    def _output(self, x, y):
        b, length = y.shape[:2]
        if self.norm_scale is not None:
            yf = y.astype(jnp.float32)
            yf = yf * jax.lax.rsqrt(jnp.mean(yf * yf, axis=-1, keepdims=True) + 1e-6)
            y = yf.reshape(b, length, -1) * self.norm_scale[...].astype(jnp.float32)[None, None]
        else:
            y = y.reshape(b, length, -1)
        if self.dtype is not None:
            y = y.astype(self.dtype)
        if self.wg is not None:
            y = y * jax.nn.silu(self.wg(x)).astype(y.dtype)
        return self.wo(y.astype(x.dtype))

    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None):
        if mask is not None:
            raise ValueError("GateLoop is a recurrent mixer: mask must be None")
        del positions
        q, k, v, a = self._project(x_BxLxD, segment_ids)
        y, _ = gateloop(q, k, v, a, impl=self.cfg.impl, chunk_size=self.cfg.chunk_size)
        return self._output(x_BxLxD, y)

    def init_state(self, batch_size: int, max_len: int = 0, dtype=jnp.float32):
        """Zero state (B, H, K, K), float32 or complex64 (always float32-based)."""
        del max_len, dtype
        sdt = jnp.complex64 if self.cfg.complex_gates else jnp.float32
        return jnp.zeros((batch_size, self.h, self.k, self.k), sdt)

    def decode(self, x_BxTxD, state, *, positions=None, bidirectional=False, return_steps=False):
        """Appends T inputs; ``(y, state)``, or ``(y, state, steps)`` with ``return_steps``:
        ``steps`` (T, B, H, K, K) is the state ``S_t`` after each input, all T at once by
        an associative scan of ``S_t = diag(a_t) S_{t-1} + k_t v_t^T``."""
        if bidirectional:
            raise ValueError("GateLoop is causal: bidirectional=True is not supported")
        del positions
        q, k, v, a = self._project(x_BxTxD)
        if return_steps:
            gate = state.dtype
            kv = (k[..., None] * v[..., None, :]).astype(gate)  # (B, T, H, K, E)
            s_all, last = linear_scan(a.astype(gate)[..., None], kv, state, impl="associative")
            s_re = s_all.real if jnp.iscomplexobj(s_all) else s_all
            y = jnp.einsum("bthk,bthke->bthe", q.astype(jnp.float32), s_re)
            y = y.astype(jnp.result_type(q.dtype, v.dtype))
            return self._output(x_BxTxD, y), last.astype(gate), jnp.moveaxis(s_all, 1, 0)
        impl = "recurrent" if x_BxTxD.shape[1] == 1 else self.cfg.impl
        y, state = gateloop(q, k, v, a, state0=state, impl=impl, chunk_size=self.cfg.chunk_size)
        return self._output(x_BxTxD, y), state
