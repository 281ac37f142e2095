"""BD3-LM: block diffusion on the generic LM backbone (jaxar/MATHS.md s.6).

Blocks of ``block_size`` (L') tokens: autoregressive across blocks, masked diffusion inside.
Training runs the network once on the 2L input ``[x_t ; x_0]`` with positions
``[0..L-1, 0..L-1]`` and the mask :func:`block_diffusion_mask`: noisy block b sees noisy
block b and clean blocks < b; clean block b sees clean blocks <= b. The loss is the SUBS
NELBO (:func:`jaxar.ops.masked_diffusion_loss`) on the noisy half's logits with one time
per block, ``t ~ U(t_low, t_high]`` (``[beta, omega]``: BD3's clipped schedule; the
NELBO needs ``(0, 1]``). ``block_size = 1`` is an autoregressive model (expected loss = AR
NLL), ``block_size = L`` is MDLM (tests/models/test_bd3.py checks both).

Same network and [MASK] convention as :mod:`jaxar.models.mdlm` (``mask_id`` = data
vocabulary size, ``lm.vocab_size = mask_id + 1``). Sampling: block by block with the clean
prefix in the key/value cache, first-hitting inside each block, stop at ``eos_id`` or on a
low-entropy block (:mod:`jaxar.sampling.block_diffusion`).

Presets: ``BD3Config.preset(name, **overrides)`` with the MDLM (= LM) sizes; sampling:
``jaxar.sampling.sample_bd3``.

References:
  Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
    Language Models", arXiv:2503.09573.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxar.models import mdlm
from jaxar.ops import masked_diffusion as md_ops
from jaxar.ops.checks import positive_int
from jaxar.ops.masks import block_diffusion_mask as mask_fn

__all__ = [
    "BD3Config",
    "BD3",
    "block_diffusion_mask",
    "bd3_inputs",
    "nelbo",
    "loss",
]


@dataclasses.dataclass(frozen=True)
class BD3Config(mdlm.MDLMConfig):
    """BD3-LM model and objective: the fields of :class:`jaxar.models.mdlm.MDLMConfig`
    (``t_low, t_high = beta, omega`` for BD3's clipped schedule, e.g. 0.3, 0.8) and

    Attributes:
      block_size: L', tokens per block; sequence lengths must be multiples of it.
    """

    block_size: int = 16

    def __post_init__(self):
        super().__post_init__()
        positive_int("BD3Config.block_size", self.block_size)


class BD3(mdlm.MDLM):
    """The BD3 network (the same bidirectional LM as MDLM; the mask makes it blockwise)."""


def block_diffusion_mask(length: int, block_size: int) -> jax.Array:
    """(2L, 2L) bool mask over ``[x_t ; x_0]`` (True = may attend), jaxar/MATHS.md s.6:
    noisy b -> noisy b and clean < b; clean b -> clean <= b; clean never sees noisy.
    (:func:`jaxar.ops.block_diffusion_mask`; tests/models/test_bd3.py checks the rule.)"""
    return jnp.asarray(mask_fn(length, block_size), bool)


def bd3_inputs(clean_BxL, noisy_BxL, block_size: int, segment_ids=None):
    """``(tokens (B, 2L), positions (B, 2L), mask (1, 1, 2L, 2L), segment_ids (B, 2L)|None)``
    for one training pass over ``[x_t ; x_0]``."""
    batch, length = clean_BxL.shape
    if length % block_size:
        raise ValueError(f"sequence length {length} must be a multiple of block_size={block_size}")
    tokens = jnp.concatenate([noisy_BxL, clean_BxL], axis=1)
    pos = jnp.concatenate([jnp.arange(length), jnp.arange(length)])
    positions = jnp.broadcast_to(pos[None], (batch, 2 * length))
    mask = block_diffusion_mask(length, block_size)[None, None]
    if segment_ids is not None:
        segment_ids = jnp.concatenate([segment_ids, segment_ids], axis=1)
    return tokens, positions, mask, segment_ids


def nelbo(model, tokens, noisy, t_BxL, *, block_size=None, segment_ids=None):
    """(B,) BD3 NELBO estimate (nats summed over tokens) with per-position times."""
    cfg = model.config
    block_size = cfg.block_size if block_size is None else block_size
    length = tokens.shape[1]
    inp, positions, mask, seg2 = bd3_inputs(tokens, noisy, block_size, segment_ids)
    logits = model(inp, segment_ids=seg2, positions=positions, mask=mask)[:, :length]
    weights = None if segment_ids is None else (segment_ids > 0).astype(jnp.float32)
    return md_ops.masked_diffusion_loss(
        logits, tokens, noisy, t_BxL, mask_id=cfg.mask_id, schedule=cfg.schedule, weights=weights
    )


def loss(model, batch: dict, key):
    """BD3 training loss: NELBO nats per (non-padding) token, one time per block; metrics
    as :func:`jaxar.models.mdlm.loss` (``bits_per_token``, ``perplexity_bound``, ...)."""
    cfg = model.config
    tokens = jnp.asarray(batch["tokens"], jnp.int32)
    batch_size, length = tokens.shape
    if length % cfg.block_size:
        raise ValueError(
            f"batch['tokens'] length {length} must be a multiple of block_size={cfg.block_size}"
        )
    segment_ids = batch.get("segment_ids")
    k_t, k_noise = jax.random.split(key)
    nb = length // cfg.block_size
    t_Bxnb = md_ops.sample_t(
        k_t, (batch_size, nb), low=cfg.t_low, high=cfg.t_high, antithetic=cfg.antithetic
    )
    t_BxL = jnp.repeat(t_Bxnb, cfg.block_size, axis=1)
    noisy = md_ops.add_mask_noise(k_noise, tokens, t_BxL, cfg.mask_id, cfg.schedule)
    if segment_ids is None:
        valid = jnp.ones(tokens.shape, bool)
    else:
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
        valid = segment_ids > 0
        noisy = jnp.where(valid, noisy, tokens)
    nelbo_B = nelbo(model, tokens, noisy, t_BxL, segment_ids=segment_ids)
    num_tokens = jnp.sum(valid).astype(jnp.float32)
    masked = jnp.sum((noisy == cfg.mask_id) & valid) / jnp.maximum(num_tokens, 1.0)
    return mdlm._metrics(nelbo_B, num_tokens, masked)
