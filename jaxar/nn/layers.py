"""Small shared layers: RMSNorm, MLP (gelu / swiglu), token embedding and dense helpers.

Every parameter carries logical axis names from :mod:`jaxar.sharding`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import sharding

MLP_ACTIVATIONS = ("gelu", "swiglu", "relu", "silu")


def partitioned(init, names: Sequence[str | None]):
    """``init`` annotated with logical axis ``names`` (lazy sharding)."""
    return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def dense(
    in_features: int,
    out_features: int,
    names: Sequence[str | None],
    *,
    rngs: nnx.Rngs,
    use_bias: bool = False,
    dtype=None,
    param_dtype=jnp.float32,
    scale: float = 1.0,
) -> nnx.Linear:
    """``nnx.Linear`` with lecun-normal (times ``scale``) weights named ``names``
    (kernel ``(in, out)``; the bias takes the last name)."""
    init = nnx.initializers.variance_scaling(scale, "fan_in", "truncated_normal")
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=partitioned(init, names),
        bias_init=partitioned(nnx.initializers.zeros_init(), (names[-1],)),
        rngs=rngs,
    )


class RMSNorm(nnx.Module):
    """``y = x / sqrt(mean(x^2) + eps) * scale``, computed in float32, returned in x.dtype."""

    def __init__(self, features: int, *, eps: float = 1e-6, param_dtype=jnp.float32, rngs=None):
        del rngs
        self.eps = eps
        self.scale = nnx.Param(
            partitioned(nnx.initializers.ones_init(), ("norm",))(
                jax.random.key(0), (features,), param_dtype
            )
        )

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        scale = self.scale[...].astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
        return (y * scale).astype(x.dtype)


class MLP(nnx.Module):
    """Position-wise MLP: ``act(x W_1) W_2``; swiglu: ``(silu(x W_g) * x W_1) W_2``."""

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        *,
        activation: str = "gelu",
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is not supported; accepted: {MLP_ACTIVATIONS}"
            )
        self.activation = activation
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.up = dense(d_model, d_hidden, ("embed", "mlp"), **kw)
        self.gate = (
            dense(d_model, d_hidden, ("embed", "mlp"), **kw) if activation == "swiglu" else None
        )
        self.down = dense(d_hidden, d_model, ("mlp", "embed"), **kw)

    def __call__(self, x_BxLxD):
        h = self.up(x_BxLxD)  # (B, ..., F): batch first, hidden units last
        h = sharding.constrain(h, ("batch",) + ("length",) * (h.ndim - 2) + ("mlp",))
        if self.activation == "swiglu":
            h = jax.nn.silu(self.gate(x_BxLxD)) * h
        elif self.activation == "gelu":
            h = jax.nn.gelu(h)
        elif self.activation == "relu":
            h = jax.nn.relu(h)
        else:
            h = jax.nn.silu(h)
        return self.down(h)


def embed_lookup(table_VxD, ids, *, dtype=None, out_axes=None):
    """Rows ``table[ids]`` of an embedding table named ``("vocab", "embed")``.

    The table is gathered over ``embed`` before the take (else XLA gathers the ids' batch
    instead under fsdp / tensor meshes); ``out_axes`` (e.g. ``("batch", "length",
    "embed")``) keeps the rows on those logical axes; ``dtype`` casts the table first.
    """
    table = sharding.constrain(table_VxD, ("vocab", None))
    if dtype is not None:
        table = table.astype(dtype)
    rows = jnp.take(table, ids, axis=0)
    return rows if out_axes is None else sharding.constrain(rows, out_axes)


class Embed(nnx.Module):
    """Token embedding ``(V, D)`` named ``("vocab", "embed")``; ``attend`` gives tied logits."""

    def __init__(self, vocab_size: int, d_model: int, *, dtype=None, param_dtype=jnp.float32, rngs):
        self.dtype = dtype
        init = nnx.initializers.normal(stddev=1.0)
        self.embedding = nnx.Param(
            partitioned(init, ("vocab", "embed"))(rngs.params(), (vocab_size, d_model), param_dtype)
        )

    def __call__(self, tokens):
        return embed_lookup(self.embedding[...], tokens, dtype=self.dtype)

    def attend(self, h_BxLxD):
        """Logits ``h E^T`` (float32)."""
        table = sharding.constrain(self.embedding[...], ("vocab", None))
        logits = jnp.einsum("bld,vd->blv", h_BxLxD.astype(jnp.float32), table.astype(jnp.float32))
        return sharding.constrain(logits, ("batch", "length", "vocab"))
