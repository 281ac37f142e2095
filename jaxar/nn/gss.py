"""Gated State Space mixer (jaxar/MATHS.md s.3) for :class:`jaxar.models.lm.LM`.

    u = gelu(x W_u) (L x H);  g = gelu(x W_g) (L x F);  y = DSS(u) + skip * u
    out = ((y W_y) * g) W_o

(the block's pre-norm plays LN(x); the residual is the block's). Full sequences use the
FFT convolution with the DSS kernel; ``decode`` runs the equivalent diagonal recurrence
with a (B, H, N) complex state. Packed sequences (``segment_ids``) use the chunked form
with resets (``jaxar.ops.dss_chunked``: masked Toeplitz matmuls within chunks, the state
carried across chunks), exactly the recurrence with resets. GSS-Hybrid: ``LMConfig(mixers=(GSSConfig(), AttentionConfig(window=...)))``.

References:
  Mehta et al. 2022, "Long Range Language Modeling via Gated State Spaces", arXiv:2206.13947.
  Gupta et al. 2022, "Diagonal State Spaces are as Effective as Structured State Spaces",
    arXiv:2203.14343.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.nn.layers import dense, partitioned
from jaxar.ops.ssm import causal_conv, dss_chunked, dss_kernel, dss_recurrent

__all__ = ["GSSConfig", "GSS"]


@dataclasses.dataclass(frozen=True)
class GSSConfig:
    """GSS mixer.

    Attributes:
      state_size: N complex modes per channel.
      reduced_dim: H, the DSS width (default d_model // 4, the paper's 256 for 1024).
      expand_dim: F, the gate width (default 4 * d_model; the paper's 4096 for 1024).
      step_min, step_max: range of the initial DSS steps delta (log-uniform).
    """

    state_size: int = 64
    reduced_dim: int | None = None
    expand_dim: int | None = None
    step_min: float = 1e-3
    step_max: float = 1e-1

    def __post_init__(self):
        for name in ("state_size", "reduced_dim", "expand_dim"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"GSSConfig.{name}={v!r} must be a positive int")
        if not 0 < self.step_min <= self.step_max:
            raise ValueError(
                f"GSSConfig steps ({self.step_min}, {self.step_max}) need 0 < step_min <= step_max"
            )

    def make(self, d_model: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        return GSS(self, d_model, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


class GSS(nnx.Module):
    """GSS mixer with FFT-convolution ``__call__`` and recurrent ``decode``."""

    def __init__(
        self, cfg: GSSConfig, d_model: int, *, rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32
    ):
        hd = cfg.reduced_dim or max(1, d_model // 4)
        f = cfg.expand_dim or 4 * d_model
        n = cfg.state_size
        self.cfg, self.hd, self.n, self.dtype = cfg, hd, n, dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.wu = dense(d_model, hd, ("embed", "conv"), **kw)
        self.wg = dense(d_model, f, ("embed", "mlp"), **kw)
        self.wy = dense(hd, f, ("conv", "mlp"), **kw)
        self.wo = dense(f, d_model, ("mlp", "embed"), **kw)
        # DSS parameters (float32 always): lambda = -exp(lam_log_re) + i lam_im
        lam_im = np.pi * np.arange(n, dtype=np.float32)
        self.lam_log_re = nnx.Param(
            partitioned(
                lambda *_: jnp.full((hd, n), math.log(0.5), jnp.float32), ("conv", "state")
            )(rngs.params(), (hd, n))
        )
        self.lam_im = nnx.Param(
            partitioned(lambda *_: jnp.tile(jnp.asarray(lam_im)[None], (hd, 1)), ("conv", "state"))(
                rngs.params(), (hd, n)
            )
        )
        lo, hi = math.log(cfg.step_min), math.log(cfg.step_max)
        self.log_step = nnx.Param(
            partitioned(
                lambda key, shape, *_: jax.random.uniform(key, shape, jnp.float32, lo, hi),
                ("conv",),
            )(rngs.params(), (hd,))
        )
        std = 1.0 / math.sqrt(2 * n)
        self.w_re = nnx.Param(
            partitioned(nnx.initializers.normal(std), ("conv", "state"))(
                rngs.params(), (hd, n), jnp.float32
            )
        )
        self.w_im = nnx.Param(
            partitioned(nnx.initializers.normal(std), ("conv", "state"))(
                rngs.params(), (hd, n), jnp.float32
            )
        )
        self.skip = nnx.Param(
            partitioned(nnx.initializers.ones_init(), ("conv",))(rngs.params(), (hd,), jnp.float32)
        )

    def dss_params(self):
        lam = -jnp.exp(self.lam_log_re[...]) + 1j * self.lam_im[...]
        w = self.w_re[...] + 1j * self.w_im[...]
        return lam.astype(jnp.complex64), self.log_step[...], w.astype(jnp.complex64)

    def _gates(self, x):
        u = jax.nn.gelu(self.wu(x))
        g = jax.nn.gelu(self.wg(x))
        return u, g

    def _output(self, x, u, y, g):
        y = y.astype(jnp.float32) + u.astype(jnp.float32) * self.skip[...][None, None]
        y = y.astype(g.dtype)
        return self.wo(self.wy(y) * g).astype(x.dtype)

    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None):
        if mask is not None:
            raise ValueError("GSS is a recurrent/convolutional mixer: mask must be None")
        del positions
        u, g = self._gates(x_BxLxD)
        lam, log_step, w = self.dss_params()
        if segment_ids is None:
            kernel = dss_kernel(lam, log_step, w, x_BxLxD.shape[1])
            y = causal_conv(u.astype(jnp.float32), kernel)
        else:
            start = jnp.concatenate(
                [jnp.ones((u.shape[0], 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
            )
            y = dss_chunked(u.astype(jnp.float32), lam, log_step, w, reset=start)
        return self._output(x_BxLxD, u, y, g)

    def init_state(self, batch_size: int, max_len: int = 0, dtype=jnp.float32):
        """Zero complex64 state (B, H, N)."""
        del max_len, dtype
        return jnp.zeros((batch_size, self.hd, self.n), jnp.complex64)

    def decode(self, x_BxTxD, state, *, positions=None, bidirectional=False, return_steps=False):
        """Appends T inputs; ``(y, state)``, or ``(y, state, steps)`` with ``return_steps``:
        ``steps`` (T, B, H, N) is the state after each input (one parallel scan)."""
        if bidirectional:
            raise ValueError("GSS is causal: bidirectional=True is not supported")
        del positions
        u, g = self._gates(x_BxTxD)
        lam, log_step, w = self.dss_params()
        out = dss_recurrent(
            u.astype(jnp.float32), lam, log_step, w, state0=state, return_states=return_steps
        )
        y = self._output(x_BxTxD, u, out[0], g)
        if return_steps:
            return y, out[1], jnp.moveaxis(out[2], 1, 0)
        return y, out[1]
