"""Block-diffusion (BD3-LM) sampling: autoregressive over blocks, masked diffusion inside
(jaxar/MATHS.md s.6).

Block ``b`` (``block_size`` tokens) starts fully masked and is denoised with the
first-hitting sampler of :mod:`jaxar.sampling.masked_diffusion` (one network call per
revealed token), attending to the clean prefix (blocks ``< b``) and to itself. With
``use_cache=True`` the clean prefix lives in the model's key/value cache:
``model.decode(noisy_block, state, bidirectional=True)`` peeks (the returned state is
discarded) and, once the block is clean, ``model.decode(clean_block, state,
bidirectional=True)`` commits it, exactly the training mask's "clean block attends to clean
blocks <= b". ``use_cache=False`` recomputes the prefix every call on ``[buffer ; block]``
with an explicit mask (the reference the cache is tested against).

Stop rule (variable length), checked after every block, per sequence:
  * ``eos_id``: the sequence ends at its first ``eos_id`` (kept; later positions are set
    to ``pad_id``);
  * ``min_entropy``: if the unigram entropy (bits) of the block's tokens falls below it, the
    sequence ends after that block (degenerate repetition, e.g. ``0.5`` bits);
  * otherwise at ``max_len``. Sampling stops once every sequence has ended.

Garbage never comes back as tokens: a block drawn from logits that are not a distribution
(NaN, ``+inf`` or all ``-inf``; see :mod:`jaxar.sampling.masked_diffusion`) ends its
sequence, which is ``-1`` (:data:`jaxar.ops.categorical.INVALID`) from that block's start
to ``max_len``; a row whose prompt holds an id outside ``[0, vocab_size)`` is ``-1``
throughout. With concrete results :func:`sample_blocks` raises ``ValueError`` instead.

The model is anything with ``__call__(tokens, *, positions, mask) -> logits``,
``init_state(batch_size, max_len)`` and ``decode(tokens, state, *, positions,
bidirectional) -> (logits, state)`` (``jaxar.models.lm.LM`` with non-causal attention).

References:
  Arriola et al. 2025, "Block Diffusion: Interpolating Between Autoregressive and Diffusion
    Language Models", arXiv:2503.09573.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxar.ops.categorical import INVALID, check_draws
from jaxar.sampling.masked_diffusion import _bad_prompt_rows, _check_int
from jaxar.sampling.masked_diffusion import sample as md_sample

__all__ = ["BlockSamples", "sample_blocks", "unigram_entropy_bits"]


class BlockSamples(NamedTuple):
    """``tokens`` int32 (B, max_len) (``pad_id`` after the end), ``lengths`` int32 (B,),
    ``num_calls``: denoising network calls (first-hitting, one per revealed token of the
    slowest sequence in each block; the cached path adds one clean-block call per block,
    counted in ``num_blocks``), ``num_blocks``: blocks generated."""

    tokens: jax.Array
    lengths: jax.Array
    num_calls: jax.Array
    num_blocks: jax.Array


def unigram_entropy_bits(tokens_BxT, vocab_size: int) -> jax.Array:
    """Per-row entropy (bits) of the empirical token distribution of each row."""
    counts_BxV = jnp.sum(jax.nn.one_hot(tokens_BxT, vocab_size, dtype=jnp.float32), axis=1)
    p = counts_BxV / tokens_BxT.shape[1]
    return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _prefix_mask(num_buffer, block_size, block_index):
    """(1, 1, M + L', M + L') mask for [buffer ; noisy block]: the buffer is block-causal
    (clean block c sees clean blocks <= c), the noisy block sees buffer blocks < b and
    itself; buffer rows never see the noisy block."""
    m = num_buffer
    idx = jnp.arange(m + block_size)
    is_noisy = idx >= m
    blk = jnp.where(is_noisy, block_index, idx // block_size)
    q_noisy, k_noisy = is_noisy[:, None], is_noisy[None, :]
    q_blk, k_blk = blk[:, None], blk[None, :]
    clean_clean = ~q_noisy & ~k_noisy & (k_blk <= q_blk)
    noisy_clean = q_noisy & ~k_noisy & (k_blk < q_blk)
    noisy_noisy = q_noisy & k_noisy
    return (clean_clean | noisy_clean | noisy_noisy)[None, None]


def sample_blocks(
    key,
    model,
    *,
    batch_size: int,
    max_len: int,
    block_size: int,
    mask_id: int,
    vocab_size: int,
    prompt=None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    min_entropy: float | None = None,
    temperature: float = 1.0,
    top_p: float | None = None,
    use_cache: bool = True,
) -> BlockSamples:
    """Samples up to ``max_len`` tokens block by block (see the module docstring).

    Args:
      key: PRNG key.
      model: the BD3 network (module docstring).
      batch_size, max_len: output shape; ``max_len`` a multiple of ``block_size``.
      block_size: tokens per block ``L'``.
      mask_id: [MASK] id; ``vocab_size``: data vocabulary (tokens ``< vocab_size``).
      prompt: optional int (B or 1, P) clean prefix, ``P`` a multiple of ``block_size``.
      eos_id, pad_id, min_entropy: stop rule (``pad_id`` defaults to ``eos_id``, else 0).
      temperature, top_p: as in :func:`jaxar.sampling.masked_diffusion.sample`.
      use_cache: key/value cache of the clean prefix (True) or recompute (False).

    Returns:
      :class:`BlockSamples` (``-1`` tokens under ``jit`` where the model's logits were
      garbage; module docstring).

    Raises:
      ValueError: a bad argument or prompt id, or (concrete result) garbage logits.
    """
    for name, value in [("batch_size", batch_size), ("max_len", max_len)]:
        _check_int(name, value)
    _check_int("block_size", block_size)
    _check_int("vocab_size", vocab_size)
    _check_int("mask_id", mask_id, minimum=0)
    for name, value in [("eos_id", eos_id), ("pad_id", pad_id)]:
        if value is not None:
            _check_int(name, value, minimum=0, accepted="None or an int >= 0")
    if max_len % block_size:
        raise ValueError(f"max_len={max_len} must be a multiple of block_size={block_size}")
    num_blocks = max_len // block_size
    buf = jnp.full((batch_size, max_len), mask_id, jnp.int32)
    first_block = 0
    bad_prompt_B = jnp.zeros((batch_size,), bool)
    if prompt is not None:
        prompt = jnp.asarray(prompt)
        if not jnp.issubdtype(prompt.dtype, jnp.integer):
            raise ValueError(f"prompt must be integer token ids, got dtype {prompt.dtype}")
        prompt = prompt.astype(jnp.int32)
        if prompt.ndim != 2 or prompt.shape[0] not in (1, batch_size):
            raise ValueError(f"prompt must be (B or 1, P), got shape {prompt.shape}")
        if prompt.shape[1] % block_size or prompt.shape[1] >= max_len:
            raise ValueError(
                f"prompt length {prompt.shape[1]} must be a multiple of block_size="
                f"{block_size} and < max_len={max_len}"
            )
        prompt = jnp.broadcast_to(prompt, (batch_size, prompt.shape[1]))
        bad_prompt_B = _bad_prompt_rows(prompt, vocab_size, None, "sample_blocks")
        buf = buf.at[:, : prompt.shape[1]].set(prompt)
        first_block = prompt.shape[1] // block_size
    if pad_id is None:
        pad_id = eos_id if eos_id is not None else 0

    state = None
    if use_cache:
        state = model.init_state(batch_size, max_len)
        for b in range(first_block):  # prefill the prompt block by block
            pos = jnp.broadcast_to(
                b * block_size + jnp.arange(block_size), (batch_size, block_size)
            )
            blk = buf[:, b * block_size : (b + 1) * block_size]
            _, state = model.decode(blk, state, positions=pos, bidirectional=True)

    def denoiser_for(b, buf, state):
        pos_BxT = jnp.broadcast_to(
            b * block_size + jnp.arange(block_size), (batch_size, block_size)
        )
        if use_cache:

            def fn(block):
                logits, _ = model.decode(block, state, positions=pos_BxT, bidirectional=True)
                return logits

            return fn
        mask = _prefix_mask(max_len, block_size, b)
        positions = jnp.broadcast_to(
            jnp.concatenate([jnp.arange(max_len), b * block_size + jnp.arange(block_size)]),
            (batch_size, max_len + block_size),
        )

        def fn_uncached(block):
            logits = model(jnp.concatenate([buf, block], axis=1), positions=positions, mask=mask)
            return logits[:, max_len:]

        return fn_uncached

    def cond(carry):
        b, _, _, done, _, _, _ = carry
        return (b < num_blocks) & ~jnp.all(done)

    def body(carry):
        b, buf, state, done, lengths, calls, key = carry
        key, k_block = jax.random.split(key)
        out = md_sample(
            k_block,
            denoiser_for(b, buf, state),
            batch_size=batch_size,
            length=block_size,
            mask_id=mask_id,
            method="first_hitting",
            temperature=temperature,
            top_p=top_p,
        )
        block = out.tokens
        start = b * block_size
        buf = lax.dynamic_update_slice(buf, block, (0, start))
        if use_cache:
            pos = jnp.broadcast_to(start + jnp.arange(block_size), (batch_size, block_size))
            _, state = model.decode(block, state, positions=pos, bidirectional=True)
        ends = jnp.zeros((batch_size,), bool)
        new_len = jnp.full((batch_size,), start + block_size, jnp.int32)
        if eos_id is not None:
            is_eos = block == eos_id
            ends = jnp.any(is_eos, axis=-1)
            new_len = jnp.where(ends, start + jnp.argmax(is_eos, axis=-1) + 1, new_len)
        if min_entropy is not None:
            ends = ends | (unigram_entropy_bits(block, vocab_size) < min_entropy)
        ends = ends | jnp.any(block == INVALID, axis=-1)  # garbage logits end the row
        lengths = jnp.where(done, lengths, new_len)
        done = done | ends
        return b + 1, buf, state, done, lengths, calls + out.num_calls, key

    carry = (
        jnp.int32(first_block),
        buf,
        state,
        jnp.zeros((batch_size,), bool),
        jnp.full((batch_size,), first_block * block_size, jnp.int32),
        jnp.int32(0),
        key,
    )
    b, buf, _, _, lengths, calls, _ = lax.while_loop(cond, body, carry)
    position = jnp.arange(max_len)[None, :]
    tokens = jnp.where(position < lengths[:, None], buf, pad_id)
    garbage = (tokens == INVALID) | bad_prompt_B[:, None]
    first_garbage = jnp.where(jnp.any(garbage, axis=-1), jnp.argmax(garbage, axis=-1), max_len)
    tokens = jnp.where(position >= first_garbage[:, None], INVALID, tokens)
    return BlockSamples(check_draws(tokens, "sample_blocks"), lengths, calls, b - first_block)
