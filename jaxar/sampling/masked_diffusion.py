"""Masked-diffusion samplers on any denoiser callable (jaxar/MATHS.md s.5).

``denoise_fn(tokens_BxL) -> logits_BxLxV`` is the (time-agnostic) SUBS network: logits for
every position of the partially masked input; its ``mask_id`` logit, if present, is ignored.
All samplers are pure JAX loops (``lax.fori_loop`` / ``lax.while_loop``) and jit-able with
the denoiser, shapes and options static, e.g.
``jax.jit(functools.partial(sample, denoise_fn=f, batch_size=8, length=128, mask_id=256,
method="first_hitting"))(key)``. Token draws use the float32-faithful
:func:`jaxar.ops.categorical`; the reveal decision is a separate uniform, so no category
ever has a probability of order ``1 / num_steps`` folded into the draw.

Methods:
  * ``"ancestral"``: ``num_steps`` (default ``length``) steps ``t -> s`` on a uniform time
    grid; each masked token is revealed with probability
    ``(alpha_s - alpha_t) / (1 - alpha_t)`` (drawn from ``p_theta``), else stays masked.
    One denoiser call per step.
  * ``"cached"``: the same chain (token for token equal to ``"ancestral"`` for the same key),
    but the denoiser is called only when some sequence of the batch changed since the last
    call (the network is a function of its input only), and no token is drawn on steps
    where nothing is revealed.
  * ``"first_hitting"``: each sequence repeatedly picks one of its masked positions
    uniformly at random and draws it from ``p_theta`` (Zheng et al. 2024: the first
    hitting time of the next reveal is ``tau = t u^(1/n)``; with a time-agnostic network
    the times do not change the tokens, so they are not computed). Exact in distribution
    (no simultaneous reveals), one denoiser call per revealed token: the batch makes
    ``max_b n_b`` calls for ``n_b`` masked tokens in sequence ``b``. With ``num_steps``
    below ``length``, each call reveals the next ``r = ceil(length / num_steps)`` hitting
    positions at once (each drawn from ``p_theta`` given the same input), so at most
    ``num_steps`` calls are made: an approximation that ignores the dependence between the
    ``r`` tokens revealed together, exact again when ``r = 1``.
  * ``"confidence"`` (jaxar/MATHS.md s.11): each step reveals the ``r = ceil(length / num_steps)`` most confident
    masked positions of each sequence (default ``num_steps = length``: one per step). The
    confidence of a masked position comes from its processed ``p_theta`` (SUBS, temperature,
    top-p): ``"prob"`` ``max_v p(v)``, ``"margin"`` ``p(top1) - p(top2)`` or ``"entropy"``
    ``exp(-H(p))`` (a monotone map of the negative entropy into ``(0, 1]``, so one threshold
    scale serves all kinds). With ``rank="before"`` the positions are chosen first (ties
    broken uniformly at random), then their tokens drawn from ``p_theta``: the position is a
    function of the current input only, so with ``r = 1`` and an exact denoiser this is an
    adaptive any-order sampler and reproduces the data law exactly. ``rank="sampled"``
    (LLaDA's published low-confidence remasking, ``confidence="prob"`` only) draws every
    masked position first and reveals those whose *sampled* token is most probable: the
    choice depends on the drawn values, which biases the law towards high-probability tokens
    even with one token per step (not exact).
  * ``"threshold"`` (Fast-dLLM): each step reveals every masked position whose confidence
    (kind as above, default ``"prob"``) exceeds ``threshold`` in ``(0, 1]``, and always at
    least the most confident one (``threshold=1.0``: exactly one per step, the exact
    ``"confidence"`` sampler). ``rank`` applies as for ``"confidence"``.

Returns :class:`Samples` ``(tokens, num_calls)``: int32 ``(B, L)`` tokens and the int32
number of denoiser calls made (a scalar for the whole batch).

Garbage never comes back as tokens: a draw from logits that are not a distribution (NaN,
``+inf``, or all ``-inf`` after SUBS) gives ``-1`` (:data:`jaxar.ops.categorical.INVALID`),
and since the row's other tokens were drawn conditioned on it, the whole row is returned as
``-1``; so is a row whose prompt holds an id outside ``[0, V)`` (other than ``mask_id``).
With concrete results :func:`sample` raises ``ValueError`` instead; under ``jit`` test
``tokens == -1`` (or call :func:`jaxar.ops.categorical.check_draws` on the result).

References:
  Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models", arXiv:2406.07524.
  Shi et al. 2024, "Simplified and Generalized Masked Diffusion for Discrete Data",
    arXiv:2406.04329.
  Zheng et al. 2024, "Masked Diffusion Models are Secretly Time-Agnostic Masked Models and
    Exploit Inaccurate Categorical Sampling", arXiv:2409.02908.
  Nie et al. 2025, "Large Language Diffusion Models" (LLaDA), arXiv:2502.09992.
  Wu et al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache
    and Parallel Decoding", arXiv:2505.22618.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxar.ops.categorical import INVALID, categorical, check_draws, valid_logits
from jaxar.ops.masked_diffusion import SCHEDULES, mask_schedule, subs_logits

__all__ = [
    "CONFIDENCES",
    "METHODS",
    "RANKS",
    "Samples",
    "confidence_of",
    "process_logits",
    "sample",
]

METHODS = ("ancestral", "cached", "first_hitting", "confidence", "threshold")
CONFIDENCES = ("prob", "margin", "entropy")
RANKS = ("before", "sampled")


class Samples(NamedTuple):
    """Sampler output: ``tokens`` int32 (B, L) and ``num_calls`` int32 scalar."""

    tokens: jax.Array
    num_calls: jax.Array


def process_logits(logits, *, mask_id: int, temperature: float = 1.0, top_p=None):
    """SUBS (``-inf`` on ``mask_id``), then temperature, then nucleus (top-p) filtering.

    Top-p keeps the smallest set of most probable tokens whose mass reaches ``top_p``
    (ties at the threshold are kept). ``temperature == 0`` is left to the caller (argmax).
    A row that is not a distribution after SUBS (any NaN or ``+inf``, or all ``-inf``)
    comes back all NaN, so that no filtering makes it look valid.
    """
    logits = subs_logits(logits, mask_id)
    valid = valid_logits(logits)[..., None]
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    if top_p is not None and top_p < 1.0:
        sorted_xV = -jnp.sort(-logits, axis=-1)
        probs_xV = jax.nn.softmax(sorted_xV, axis=-1)
        before_xV = jnp.cumsum(probs_xV, axis=-1) - probs_xV
        keep_xV = before_xV < top_p
        threshold = jnp.min(jnp.where(keep_xV, sorted_xV, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jnp.where(valid, logits, jnp.nan)


def _draw(key, logits, temperature):
    if temperature == 0.0:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jnp.where(valid_logits(logits), token, INVALID)
    return categorical(key, logits)


def _check_int(name, value, minimum=1, accepted=None):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        accepted = accepted or f"an int >= {minimum}"
        raise ValueError(f"{name}={value!r} is not accepted; expected {accepted}")


def _bad_prompt_rows(prompt, vocab_size, mask_id, what):
    """(B,) rows of ``prompt`` holding an id outside ``[0, vocab_size)`` (``mask_id``
    accepted unless None); a concrete bad id raises ``ValueError`` naming ``prompt``."""
    bad = (prompt < 0) | (prompt >= vocab_size)
    if mask_id is not None:
        bad = bad & (prompt != mask_id)
    if not isinstance(bad, jax.core.Tracer) and bool(jnp.any(bad)):
        where = tuple(int(i) for i in np.argwhere(np.asarray(bad))[0])
        extra = "" if mask_id is None else f" or mask_id={mask_id}"
        raise ValueError(
            f"{what}: prompt holds {int(jnp.sum(bad))} id(s) outside [0, {vocab_size}){extra}, "
            f"e.g. {int(prompt[where])} at (row, position) {where}"
        )
    return jnp.any(bad, axis=-1)


def _initial_tokens(batch_size, length, mask_id, prompt):
    x = jnp.full((batch_size, length), mask_id, jnp.int32)
    if prompt is None:
        return x
    prompt = jnp.asarray(prompt)
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be integer token ids, got dtype {prompt.dtype}")
    prompt = prompt.astype(jnp.int32)
    if prompt.ndim != 2 or prompt.shape[0] not in (1, batch_size) or prompt.shape[1] > length:
        raise ValueError(
            f"prompt must be int (B or 1, P) with B={batch_size}, P <= length={length}; "
            f"got shape {prompt.shape}"
        )
    prompt = jnp.broadcast_to(prompt, (batch_size, prompt.shape[1]))
    return x.at[:, : prompt.shape[1]].set(prompt)


def sample(
    key,
    denoise_fn: Callable[[jax.Array], jax.Array],
    *,
    batch_size: int,
    length: int,
    mask_id: int,
    method: str,
    num_steps: int | None = None,
    prompt=None,
    temperature: float = 1.0,
    top_p: float | None = None,
    schedule: str = "loglinear",
    confidence: str = "prob",
    rank: str = "before",
    threshold: float | None = None,
) -> Samples:
    """Generates ``batch_size`` sequences of ``length`` tokens from a masked-diffusion model.

    Args:
      key: PRNG key.
      denoise_fn: ``tokens_BxL -> logits_BxLxV`` (``V`` with or without the [MASK] row).
      batch_size, length: output shape.
      mask_id: the [MASK] token id.
      method: one of :data:`METHODS` (module docstring).
      num_steps: time steps of ``"ancestral"``/``"cached"`` (default ``length``); for
        ``"first_hitting"`` and ``"confidence"`` the most denoiser calls (default
        ``length``: one token per call; fewer reveal ``ceil(length / num_steps)`` tokens per
        call). Not used by ``"threshold"``.
      prompt: optional int (B or 1, P), P <= length, written into the first P positions;
        entries equal to ``mask_id`` are generated (so infilling patterns work too).
      temperature: softmax temperature (0 = argmax).
      top_p: nucleus sampling mass, or None.
      schedule: the time grid's ``alpha_t`` for the ancestral samplers (``SCHEDULES``).
      confidence: ``"confidence"``/``"threshold"``: the score of a masked position, one of
        :data:`CONFIDENCES`.
      rank: ``"confidence"``/``"threshold"``: ``"before"`` (choose positions, then draw:
        exact with one token per step) or ``"sampled"`` (draw, then rank by the sampled
        token's probability: LLaDA, biased); :data:`RANKS`.
      threshold: ``"threshold"`` only (required there): a float in ``(0, 1]``.

    Returns:
      ``Samples(tokens, num_calls)``; rows drawn from garbage logits are ``-1`` under
      ``jit`` (module docstring).

    Raises:
      ValueError: a bad argument or prompt id, or (concrete result) garbage logits.
    """
    _check_int("batch_size", batch_size)
    _check_int("length", length)
    if num_steps is not None:
        _check_int("num_steps", num_steps, accepted="an int >= 1 or None (= length)")
    _check_int("mask_id", mask_id, minimum=0)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not supported; accepted: {METHODS}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not supported; accepted: {SCHEDULES}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence={confidence!r} is not supported; accepted: {CONFIDENCES}")
    if rank not in RANKS:
        raise ValueError(f"rank={rank!r} is not supported; accepted: {RANKS}")
    if rank == "sampled" and confidence != "prob":
        raise ValueError(
            f"confidence={confidence!r} is not accepted with rank='sampled'; expected 'prob'"
        )
    if method == "threshold":
        if isinstance(threshold, bool) or not (
            isinstance(threshold, int | float | np.number) and 0.0 < threshold <= 1.0
        ):
            raise ValueError(
                f"threshold={threshold!r} is not accepted; expected a float in (0, 1] "
                "for method='threshold'"
            )
    elif threshold is not None:
        raise ValueError(
            f"threshold={threshold!r} is not accepted with method={method!r}; expected None "
            "(only method='threshold' takes a threshold)"
        )
    if num_steps is None:
        num_steps = length
    x = _initial_tokens(batch_size, length, mask_id, prompt)

    def logits_of(tokens):
        logits = denoise_fn(tokens)
        if logits.shape[:2] != (batch_size, length) or logits.ndim != 3:
            raise ValueError(
                f"denoise_fn must return (B, L, V) = ({batch_size}, {length}, V) logits, "
                f"got shape {logits.shape}"
            )
        return logits

    bad_B = jnp.zeros((batch_size,), bool)
    if prompt is not None:
        vocab_size = jax.eval_shape(logits_of, x).shape[-1]
        bad_B = _bad_prompt_rows(x, vocab_size, mask_id, "masked_diffusion.sample")
    opts = dict(mask_id=mask_id, temperature=temperature, top_p=top_p)
    if method == "first_hitting":
        per_call = -(-length // num_steps)
        out = _first_hitting(key, logits_of, x, per_call=per_call, **opts)
    elif method in ("confidence", "threshold"):
        out = _confidence(
            key,
            logits_of,
            x,
            per_step=-(-length // num_steps),
            confidence=confidence,
            rank=rank,
            threshold=None if threshold is None else float(threshold),
            **opts,
        )
    else:
        out = _ancestral(key, logits_of, x, num_steps, schedule, cached=method == "cached", **opts)
    bad_B = bad_B | jnp.any(out.tokens == INVALID, axis=-1)
    tokens = jnp.where(bad_B[:, None], INVALID, out.tokens)
    return Samples(check_draws(tokens, "masked_diffusion.sample"), out.num_calls)


def _ancestral(
    key, logits_of, x, num_steps, schedule, *, cached, mask_id, temperature, top_p, stop_after=None
):
    """``stop_after``: run only the first steps of the ``num_steps`` grid (benchmarks)."""
    last = num_steps if stop_after is None else stop_after

    def reveal_probability(step):
        t = 1.0 - step / num_steps
        s = 1.0 - (step + 1) / num_steps
        alpha_t, _ = mask_schedule(t, schedule)
        alpha_s, _ = mask_schedule(s, schedule)
        p = (alpha_s - alpha_t) / (1.0 - alpha_t)
        return jnp.where(step + 1 >= num_steps, 1.0, p)

    def reveal_and_draw(step, x, logits_fn):
        k_reveal, k_draw = jax.random.split(jax.random.fold_in(key, step))
        u = jax.random.uniform(k_reveal, x.shape, jnp.float32)
        reveal = (x == mask_id) & (u < reveal_probability(step))

        def update(x):
            logits = process_logits(
                logits_fn(), mask_id=mask_id, temperature=temperature, top_p=top_p
            )
            return jnp.where(reveal, _draw(k_draw, logits, temperature), x)

        return reveal, update

    if not cached:

        def body(step, x):
            logits = logits_of(x)
            _, update = reveal_and_draw(step, x, lambda: logits)
            return update(x)

        x = lax.fori_loop(0, last, body, x)
        return Samples(x, jnp.asarray(last, jnp.int32))

    def body_cached(step, carry):
        x, logits, stale, calls = carry
        logits, calls = lax.cond(
            stale & jnp.any(x == mask_id),
            lambda: (logits_of(x).astype(logits.dtype), calls + 1),
            lambda: (logits, calls),
        )
        reveal, update = reveal_and_draw(step, x, lambda: logits)
        changed = jnp.any(reveal)
        x = lax.cond(changed, update, lambda x: x, x)
        return x, logits, changed, calls

    logits0 = jax.eval_shape(logits_of, x)
    carry = (x, jnp.zeros(logits0.shape, logits0.dtype), jnp.asarray(True), jnp.int32(0))
    x, _, _, calls = lax.fori_loop(0, last, body_cached, carry)
    return Samples(x, calls)


def _reveal_loop(key, x, mask_id, step):
    """``x = step(k_pos, k_draw, x)`` (one denoiser call each) while any position is
    masked; call ``n`` uses the keys ``split(fold_in(key, n))``."""

    def body(carry):
        x, calls = carry
        k_pos, k_draw = jax.random.split(jax.random.fold_in(key, calls))
        return step(k_pos, k_draw, x), calls + 1

    x, calls = lax.while_loop(lambda c: jnp.any(c[0] == mask_id), body, (x, jnp.int32(0)))
    return Samples(x, calls)


def _first_hitting(key, logits_of, x, *, mask_id, temperature, top_p, per_call=1):
    """The next ``per_call`` hitting positions of each sequence revealed in one call: the
    positions are a uniformly random subset of the masked ones (the order of the first
    hitting times), each token drawn from ``p_theta`` given the same partially masked input.
    ``per_call = 1`` is the exact sampler (one revealed token per call)."""
    length = x.shape[1]
    per_call = min(per_call, length)

    def step(k_pos, k_draw, x):
        masked = x == mask_id
        u = jax.random.uniform(k_pos, x.shape, jnp.float32)
        score_BxR, pos_BxR = lax.top_k(jnp.where(masked, u, -1.0), per_call)
        logits_BxLxV = logits_of(x)
        logits_BxRxV = jnp.take_along_axis(logits_BxLxV, pos_BxR[..., None], axis=1)
        logits_BxRxV = process_logits(
            logits_BxRxV, mask_id=mask_id, temperature=temperature, top_p=top_p
        )
        token_BxR = _draw(k_draw, logits_BxRxV, temperature)
        live_BxRx1 = (score_BxR >= 0.0)[..., None]  # a masked position (not a filler)
        hit_BxRxL = (jnp.arange(length)[None, None] == pos_BxR[..., None]) & live_BxRx1
        new_BxL = jnp.sum(jnp.where(hit_BxRxL, token_BxR[..., None], 0), axis=1)
        return jnp.where(jnp.any(hit_BxRxL, axis=1), new_BxL, x)

    return _reveal_loop(key, x, mask_id, step)


def confidence_of(logits, kind: str = "prob"):
    """Confidence of each position from processed logits ``(..., V)`` -> ``(...)`` float32.

    With ``p = softmax(logits)``: ``"prob"`` ``max_v p_v``; ``"margin"`` ``p_(1) - p_(2)``
    (the two largest); ``"entropy"`` ``exp(-H(p)) = exp(sum_v p_v log p_v)``. All lie in
    ``[0, 1]``; a row that is not a distribution gives NaN.
    """
    if kind not in CONFIDENCES:
        raise ValueError(f"kind={kind!r} is not supported; accepted: {CONFIDENCES}")
    logits = logits.astype(jnp.float32)
    if kind == "entropy":
        logp = jax.nn.log_softmax(logits, axis=-1)
        p = jnp.exp(logp)
        neg_h = jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
        conf = jnp.exp(neg_h)
    else:
        p = jax.nn.softmax(logits, axis=-1)
        if kind == "prob" or p.shape[-1] < 2:
            conf = jnp.max(p, axis=-1)
        else:
            top2 = lax.top_k(p, 2)[0]
            conf = top2[..., 0] - top2[..., 1]
    return jnp.where(valid_logits(logits), conf, jnp.nan)


def _most_confident(key, score_BxL, k):
    """(B, L) bool: the ``k`` largest scores of each row, ties broken uniformly at random
    (a random permutation, then a stable sort on the score)."""
    perm_BxL = jnp.argsort(jax.random.uniform(key, score_BxL.shape), axis=-1)
    score_perm = jnp.take_along_axis(score_BxL, perm_BxL, axis=-1)
    order = jnp.argsort(-score_perm, axis=-1, stable=True)[:, :k]
    pos_BxK = jnp.take_along_axis(perm_BxL, order, axis=-1)
    return jnp.any(pos_BxK[..., None] == jnp.arange(score_BxL.shape[1])[None, None], axis=1)


def _confidence(
    key, logits_of, x, *, per_step, confidence, rank, threshold, mask_id, temperature, top_p
):
    """Confidence (``threshold is None``: the ``per_step`` most confident masked positions
    per call) or threshold decoding (every masked position with confidence ``> threshold``,
    and at least the most confident one); loops while any position is masked."""
    per_step = min(per_step, x.shape[1])

    def step(k_pos, k_draw, x):
        masked = x == mask_id
        logits_BxLxV = process_logits(
            logits_of(x), mask_id=mask_id, temperature=temperature, top_p=top_p
        )
        token_BxL = _draw(k_draw, logits_BxLxV, temperature)
        if rank == "before":
            conf_BxL = confidence_of(logits_BxLxV, confidence)
        else:  # the probability of the token just drawn
            logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
            safe = jnp.clip(token_BxL, 0, logp.shape[-1] - 1)[..., None]
            conf_BxL = jnp.exp(jnp.take_along_axis(logp, safe, axis=-1)[..., 0])
            conf_BxL = jnp.where(token_BxL == INVALID, jnp.nan, conf_BxL)
        # garbage first (so the row is flagged), never an unmasked position
        conf_BxL = jnp.where(jnp.isnan(conf_BxL), jnp.inf, conf_BxL)
        score_BxL = jnp.where(masked, conf_BxL, -jnp.inf)
        if threshold is None:
            reveal = _most_confident(k_pos, score_BxL, per_step)
        else:
            reveal = _most_confident(k_pos, score_BxL, 1) | (score_BxL > threshold)
        reveal = reveal & masked
        return jnp.where(reveal, token_BxL, x)

    return _reveal_loop(key, x, mask_id, step)
