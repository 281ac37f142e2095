"""MDLM: a masked-diffusion language model on the generic LM backbone (jaxar/MATHS.md s.5).

The network is a :class:`jaxar.models.lm.LM` whose attention is bidirectional
(``AttentionConfig(causal=False)``) and whose vocabulary has one extra id, [MASK]:
``mask_id = data vocabulary size`` (256 for bytes), ``lm.vocab_size = mask_id + 1``. It is
time-agnostic (never sees ``t``) and trained with the SUBS NELBO of
:func:`jaxar.ops.masked_diffusion_loss`. Metrics report the NELBO per token in nats and
bits and the perplexity bound ``exp(NELBO / token) >= perplexity``.

Training hook: ``loss(model, batch, key) -> (loss, metrics)`` with
``batch = {"tokens": int32 (B, L), "segment_ids": int32 (B, L) optional}`` (segment 0 =
padding: neither noised into the loss nor counted). Sampling: ``sample(model, key, num,
length=..., method="first_hitting")``; report :func:`unigram_entropy` of the samples next to
any generative perplexity (a low-temperature sampler fakes good perplexity with repetitive
text; jaxar/MATHS.md s.5 "Precision").

Presets (``MDLMConfig.preset(name, vocab_size=256)``), bidirectional attention blocks:
``tiny`` d=64 x 2 layers, ``small`` d=256 x 4, ``medium`` d=512 x 8, ``base`` d=768 x 12
(the MDLM paper's size: ~85M parameters with bytes, ~125M with a 50k vocabulary).

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.ops import masked_diffusion as md_ops

__all__ = [
    "PRESETS",
    "MDLMConfig",
    "MDLM",
    "bidirectional_lm_config",
    "nelbo",
    "loss",
    "sample",
    "unigram_entropy",
]

# name -> (d_model, num_layers, num_heads)
PRESETS = {
    "tiny": (64, 2, 4),
    "small": (256, 4, 4),
    "medium": (512, 8, 8),
    "base": (768, 12, 12),
}


def bidirectional_lm_config(
    vocab_size: int, d_model: int, num_layers: int, num_heads: int, **lm_kwargs
):
    """An ``LMConfig`` over ``vocab_size + 1`` ids (the last is [MASK]) with non-causal
    attention mixers; ``lm_kwargs`` go to ``LMConfig`` (e.g. ``mlp_ratio``, ``dtype``)."""
    from jaxar.models.lm import LMConfig
    from jaxar.nn.attention import AttentionConfig

    return LMConfig(
        vocab_size=vocab_size + 1,
        d_model=d_model,
        num_layers=num_layers,
        mixers=(AttentionConfig(num_heads=num_heads, causal=False),),
        **lm_kwargs,
    )


def _check_times(cls, t_low, t_high, schedule):
    if schedule not in md_ops.SCHEDULES:
        raise ValueError(
            f"{cls}.schedule={schedule!r} is not supported; accepted: {md_ops.SCHEDULES}"
        )
    if not 0.0 <= t_low < t_high <= 1.0:
        raise ValueError(
            f"{cls}: need 0 <= t_low < t_high <= 1, got t_low={t_low}, t_high={t_high}"
        )


@dataclasses.dataclass(frozen=True)
class MDLMConfig:
    """MDLM model and objective.

    Attributes:
      lm: the backbone's ``LMConfig``; its ``vocab_size`` = data vocabulary + 1 ([MASK]).
      schedule: ``"loglinear"`` or ``"cosine"`` (``jaxar.ops.masked_diffusion``).
      t_low, t_high: training times ``t ~ U(t_low, t_high]`` (``(0, 1]``: the NELBO).
      antithetic: stratified times across the batch (lower variance, same mean).
    """

    lm: object
    schedule: str = "loglinear"
    t_low: float = 0.0
    t_high: float = 1.0
    antithetic: bool = True

    def __post_init__(self):
        if getattr(self.lm, "vocab_size", 0) < 2:
            raise ValueError(
                f"MDLMConfig.lm must be an LMConfig with vocab_size >= 2 (data "
                f"vocabulary + [MASK]), got {self.lm!r}"
            )
        _check_times("MDLMConfig", self.t_low, self.t_high, self.schedule)

    @property
    def mask_id(self) -> int:
        """[MASK] id = data vocabulary size = ``lm.vocab_size - 1``."""
        return self.lm.vocab_size - 1

    @property
    def data_vocab_size(self) -> int:
        return self.lm.vocab_size - 1

    @classmethod
    def preset(cls, name: str, *, vocab_size: int = 256, lm_kwargs=None, **overrides):
        """A named size (``PRESETS``) over a data vocabulary of ``vocab_size`` ids."""
        if name not in PRESETS:
            raise ValueError(f"preset name={name!r} is unknown; accepted: {sorted(PRESETS)}")
        d, layers, heads = PRESETS[name]
        lm = bidirectional_lm_config(vocab_size, d, layers, heads, **(lm_kwargs or {}))
        return cls(lm=lm, **overrides)


class MDLM(nnx.Module):
    """The denoising network: ``tokens (B, L) -> logits (B, L, data vocab + 1)``."""

    def __init__(self, config: MDLMConfig, *, rngs: nnx.Rngs):
        from jaxar.models.lm import LM

        self.config = config
        self.lm = LM(config.lm, rngs=rngs)

    def __call__(self, tokens_BxL, *, segment_ids=None, positions=None, mask=None):
        return self.lm(tokens_BxL, segment_ids=segment_ids, positions=positions, mask=mask)

    def init_state(self, batch_size: int, max_len: int):
        return self.lm.init_state(batch_size, max_len)

    def decode(self, tokens_BxT, state, *, positions=None, bidirectional=False):
        return self.lm.decode(tokens_BxT, state, positions=positions, bidirectional=bidirectional)


def nelbo(model, tokens, noisy, t, *, segment_ids=None):
    """(B,) NELBO estimate (nats, summed over tokens) of ``model`` at noised ``noisy``."""
    cfg = model.config
    weights = None if segment_ids is None else (segment_ids > 0).astype(jnp.float32)
    logits = model(noisy, segment_ids=segment_ids)
    return md_ops.masked_diffusion_loss(
        logits, tokens, noisy, t, mask_id=cfg.mask_id, schedule=cfg.schedule, weights=weights
    )


def _metrics(nelbo_B, num_tokens, masked_fraction):
    nats = jnp.sum(nelbo_B) / jnp.maximum(num_tokens, 1.0)
    return nats, {
        "loss": nats,
        "nelbo_nats_per_token": nats,
        "bits_per_token": nats / math.log(2.0),
        "perplexity_bound": jnp.exp(nats),
        "num_tokens": num_tokens,
        "masked_fraction": masked_fraction,
    }


def loss(model, batch: dict, key):
    """MDLM training loss: NELBO in nats per (non-padding) token, and metrics
    (``bits_per_token``, ``perplexity_bound`` = upper bound on perplexity, ...)."""
    cfg = model.config
    tokens = jnp.asarray(batch["tokens"], jnp.int32)
    segment_ids = batch.get("segment_ids")
    k_t, k_noise = jax.random.split(key)
    t = md_ops.sample_t(
        k_t, tokens.shape[0], low=cfg.t_low, high=cfg.t_high, antithetic=cfg.antithetic
    )
    noisy = md_ops.add_mask_noise(k_noise, tokens, t, cfg.mask_id, cfg.schedule)
    if segment_ids is None:
        valid = jnp.ones(tokens.shape, bool)
    else:
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
        valid = segment_ids > 0
        noisy = jnp.where(valid, noisy, tokens)
    nelbo_B = nelbo(model, tokens, noisy, t, segment_ids=segment_ids)
    num_tokens = jnp.sum(valid).astype(jnp.float32)
    masked = jnp.sum((noisy == cfg.mask_id) & valid) / jnp.maximum(num_tokens, 1.0)
    return _metrics(nelbo_B, num_tokens, masked)


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def _sample_jit(graphdef, state, key, prompt, options):
    model = nnx.merge(graphdef, state)
    kw = dict(options)
    from jaxar.sampling import masked_diffusion as md_sampling  # models <- sampling

    return md_sampling.sample(key, model, prompt=prompt, mask_id=model.config.mask_id, **kw)


def sample(
    model,
    key,
    num: int,
    *,
    length: int = 128,
    method: str = "first_hitting",
    num_steps=None,
    prompt=None,
    temperature: float = 1.0,
    top_p=None,
):
    """``num`` sequences of ``length`` tokens: ``Samples(tokens, num_calls)`` (see
    :func:`jaxar.sampling.masked_diffusion.sample`; ``prompt`` fixes a prefix)."""
    graphdef, state = nnx.split(model)
    options = tuple(
        sorted(
            dict(
                batch_size=num,
                length=length,
                method=method,
                num_steps=num_steps,
                temperature=float(temperature),
                top_p=top_p,
            ).items()
        )
    )
    from jaxar.sampling import masked_diffusion as md_sampling

    if method not in md_sampling.METHODS:
        raise ValueError(f"method={method!r} is not supported; accepted: {md_sampling.METHODS}")
    return _sample_jit(graphdef, state, key, prompt, options)


def unigram_entropy(tokens, lengths=None) -> float:
    """Mean over sequences of the entropy (nats) of each sequence's token histogram.

    Report it beside generative perplexity: repetitive, low-temperature samples get a good
    perplexity and a low unigram entropy. ``lengths`` (B,) limits each row to its prefix.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    out = []
    for i, row in enumerate(tokens):
        if lengths is not None:
            row = row[: int(np.asarray(lengths)[i])]
        if row.size == 0:
            continue
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(out)) if out else 0.0
