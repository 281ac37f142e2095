"""A tiny private NNX model family ("toy") so the trainer's tests need no model module.

Bigram-with-MLP byte LM: logits_i = W_out gelu(W_in embed(tokens_i)); loss = mean NLL of
tokens[i+1] over positions in the same (non-padding) segment.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.models.common import from_preset
from jaxar.sampling import Sampler
from jaxar.train import tasks


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 256
    d: int = 32
    f: int = 64
    dtype: Any = jnp.float32

    @classmethod
    def preset(cls, name, **overrides):
        return from_preset(cls, {"tiny": {}}, name, overrides)


class ToyLM(nnx.Module):
    def __init__(self, config: ToyConfig, *, rngs: nnx.Rngs):
        vocab, d, f = config.vocab_size, config.d, config.f
        init = nnx.initializers.normal(0.1)
        self.embed = nnx.Param(
            init(rngs.params(), (vocab, d)), out_sharding=("vocab", "embed"), eager_sharding=False
        )
        self.w_in = nnx.Param(
            init(rngs.params(), (d, f)), out_sharding=("embed", "mlp"), eager_sharding=False
        )
        self.w_out = nnx.Param(
            init(rngs.params(), (f, vocab)), out_sharding=("mlp", "vocab"), eager_sharding=False
        )
        self.scale = nnx.Param(jnp.ones((d,)), out_sharding=("norm",), eager_sharding=False)
        self.dtype = config.dtype

    def __call__(self, tokens_BxL):
        x = self.embed[...][tokens_BxL] * self.scale[...][None, None, :]
        h = jax.nn.gelu(x.astype(self.dtype) @ self.w_in[...].astype(self.dtype))
        return (h @ self.w_out[...].astype(self.dtype)).astype(jnp.float32)


def toy_loss(model, batch, key):
    del key
    tokens = batch["tokens"]
    seg = batch.get("segment_ids", jnp.ones_like(tokens))
    logits = model(tokens[:, :-1])
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    valid = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)).astype(jnp.float32)
    n = jnp.maximum(valid.sum(), 1.0)
    loss = (nll * valid).sum() / n
    # byte 0xFF never occurs in UTF-8 text: a batch holding it is "poisoned" (NaN loss)
    loss = loss + jnp.where(jnp.any(tokens == 255), jnp.nan, 0.0)
    return loss, {"bits_per_token": loss / jnp.log(2.0), "num_tokens": n}


def toy_sample(model, key, num, *, length):
    tok = jnp.full((num,), ord("\n"), jnp.int32)
    out = []
    for k in jax.random.split(key, min(length, 16)):
        tok = jax.random.categorical(k, model(tok[:, None])[:, 0])
        out.append(tok)
    return jnp.stack(out, 1)


tasks.register(
    "toy",
    tasks.Family("text", ToyConfig, ToyLM, toy_loss, Sampler("toy", toy_sample, dict(length=16))),
)


def config(**overrides):
    """A tiny TrainConfig on the stdlib corpus for the toy family."""
    from jaxar.train import config as config_lib

    base = dict(
        model=config_lib.ModelConfig(family="toy"),
        data=config_lib.DataConfig(seq_len=32),
        steps=12,
        batch_size=8,
        learning_rate=1e-2,
        warmup_steps=2,
        log_every=2,
        eval_every=6,
        eval_batches=2,
        checkpoint_every=4,
        async_checkpoints=False,
        num_samples=2,
        sample_length=16,
    )
    base.update(overrides)
    return config_lib.TrainConfig(**base)
