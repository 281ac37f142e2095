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
  * ``"remdm"`` (ReMDM, :func:`jaxar.ops.masked_diffusion.remdm_sigma`): the ancestral chain
    in which every revealed generated token is masked again from ``t`` to ``s`` with
    probability ``sigma_t`` and a masked one revealed with
    ``(alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t)``, so ``P(masked at s) = 1 -
    alpha_s`` as in MDLM; ``remask="cap"`` (``min(eta, sigma_max)``), ``"rescale"``
    (``eta sigma_max``) or ``"loop"`` (MDLM down to ``t_on``, then ``alpha`` held while
    tokens are remasked at ``min(eta, sigma_max)`` until ``t_off``, then MDLM again).
    ``num_steps`` may exceed ``length`` (more steps, more corrections); ``eta = 0`` with
    ``"cap"`` is ``"ancestral"`` token for token.

Early stop (``eos_id``, the reveal-until-done methods): a row stops once an ``eos_id`` and
everything before it are revealed, and every position after its first ``eos_id`` comes back
as ``eos_id`` (the text ends there). For ``"first_hitting"`` the revealed prefix keeps its
exact law: the stop depends only on what is already revealed.

Semi-autoregressive blocks (``block_length``, LLaDA): the ``length / block_length`` blocks
are decoded left to right with ``method`` inside each (later blocks stay masked; the
denoiser still sees the whole sequence). Caches (Fast-dLLM, for a bidirectional model, so
approximations): ``cache="prefix"`` runs the full sequence once at a block's start and then
only the block and everything after it, attending to the prefix's K/V from that full run;
``cache="dual"`` runs only the block, attending to the cached prefix and suffix K/V.
``refresh_every=k`` reruns the full sequence every ``k`` calls of a block
(``refresh_every=1`` is the uncached result). A cache needs a denoiser with
``forward_kv(tokens_BxL) -> (logits, kv)`` and ``forward_span(tokens_BxS, kv, start) ->
logits`` (:class:`jaxar.models.MDLM`).

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
  Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling"
    (ReMDM), arXiv:2503.00307.
  Wu et al. 2025, "Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache
    and Parallel Decoding", arXiv:2505.22618.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxar.ops.categorical import INVALID, categorical, check_draws, valid_logits
from jaxar.ops.masked_diffusion import (
    REMASK_SCHEDULES,
    SCHEDULES,
    loop_time,
    mask_schedule,
    position_window,
    remdm_sigma,
    subs_logits,
)

__all__ = [
    "CACHES",
    "CONFIDENCES",
    "METHODS",
    "RANKS",
    "REMASKS",
    "Samples",
    "confidence_of",
    "process_logits",
    "sample",
]

METHODS = ("ancestral", "cached", "first_hitting", "confidence", "threshold", "remdm")
FIXED_METHODS = ("ancestral", "cached", "remdm")  # a time grid of num_steps steps
WHILE_METHODS = ("first_hitting", "confidence", "threshold")  # reveal until none masked
REMASKS = REMASK_SCHEDULES
CACHES = ("prefix", "dual")
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


def _check_unit(name, value, low_open=False, default_ok=False):
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    ok = ok and (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name}={value!r} is not accepted; expected a float in {interval}")


def _only_with(name, value, method, methods, default=None):
    if value != default and method not in methods:
        raise ValueError(
            f"{name}={value!r} is not accepted with method={method!r}; expected {default!r} "
            f"(only method in {methods} takes {name})"
        )


def _check_options(
    method, *, length, num_steps, threshold, remask, eta, t_on, t_off, eos_id, mask_id,
    block_length, cache, refresh_every, position_skew, denoise_fn,
):  # fmt: skip
    """ValueError naming the first bad option (validated before any tracing)."""
    if method == "threshold":
        if threshold is None:
            raise ValueError(
                "threshold=None is not accepted; expected a float in (0, 1] for method='threshold'"
            )
        _check_unit("threshold", threshold, low_open=True)
    else:
        _only_with("threshold", threshold, method, ("threshold",))
    _only_with("remask", remask, method, ("remdm",))
    _only_with("eta", eta, method, ("remdm",))
    if method == "remdm":
        if remask is not None and remask not in REMASKS:
            raise ValueError(f"remask={remask!r} is not supported; accepted: {REMASKS}")
        if eta is not None:
            _check_unit("eta", eta)
        if (remask or "cap") == "loop" and not (
            isinstance(t_on, int | float) and isinstance(t_off, int | float)
            and 0.0 <= t_off < t_on <= 1.0
        ):  # fmt: skip
            raise ValueError(
                f"t_on={t_on!r}, t_off={t_off!r} are not accepted; expected "
                "0 <= t_off < t_on <= 1 for remask='loop'"
            )
    if eos_id is not None:
        _only_with("eos_id", eos_id, method, WHILE_METHODS)
        _check_int("eos_id", eos_id, minimum=0, accepted=f"None or an int >= 0, != {mask_id}")
        if eos_id == mask_id:
            raise ValueError(f"eos_id={eos_id} is not accepted; it equals mask_id={mask_id}")
    if block_length is not None:
        _check_int("block_length", block_length, accepted="None or an int >= 1 dividing length")
        if length % block_length:
            raise ValueError(
                f"block_length={block_length} is not accepted; expected None or a divisor of "
                f"length={length}"
            )
    if cache is not None:
        if cache not in CACHES:
            raise ValueError(f"cache={cache!r} is not supported; accepted: None or {CACHES}")
        if not all(callable(getattr(denoise_fn, f, None)) for f in ("forward_kv", "forward_span")):
            raise ValueError(
                f"cache={cache!r} needs a denoiser with a KV path (forward_kv and forward_span, "
                f"e.g. jaxar.models.MDLM); got {type(denoise_fn).__name__}"
            )
    if refresh_every is not None:
        if cache is None:
            raise ValueError(
                f"refresh_every={refresh_every!r} is not accepted without a cache; expected None"
            )
        _check_int("refresh_every", refresh_every, accepted="None or an int >= 1")
    if not (isinstance(position_skew, int | float) and 0.0 <= position_skew < 1.0):
        raise ValueError(
            f"position_skew={position_skew!r} is not accepted; expected a float in [0, 1)"
        )
    if position_skew and method not in FIXED_METHODS:
        raise ValueError(
            f"position_skew={position_skew!r} is not accepted with method={method!r}; "
            f"expected 0 (only the time-grid methods {FIXED_METHODS} use a time schedule)"
        )


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
    remask: str | None = None,
    eta: float | None = None,
    t_on: float = 0.55,
    t_off: float = 0.05,
    eos_id: int | None = None,
    block_length: int | None = None,
    cache: str | None = None,
    refresh_every: int | None = None,
    position_skew: float = 0.0,
) -> Samples:
    """Generates ``batch_size`` sequences of ``length`` tokens from a masked-diffusion model.

    Args:
      key: PRNG key.
      denoise_fn: ``tokens_BxL -> logits_BxLxV`` (``V`` with or without the [MASK] row); with
        a ``cache`` it must also have ``forward_kv`` / ``forward_span`` (an MDLM).
      batch_size, length: output shape.
      mask_id: the [MASK] token id.
      method: one of :data:`METHODS` (module docstring).
      num_steps: time steps of ``"ancestral"``/``"cached"``/``"remdm"`` (default ``length``;
        ``"remdm"`` may take more); for ``"first_hitting"`` and ``"confidence"`` the most
        denoiser calls (default ``length``: one token per call; fewer reveal
        ``ceil(length / num_steps)`` tokens per call). Not used by ``"threshold"``. With
        blocks, the time-grid methods take ``ceil(num_steps / num_blocks)`` steps per block.
      prompt: optional int (B or 1, P), P <= length, written into the first P positions;
        entries equal to ``mask_id`` are generated (so infilling patterns work too).
      temperature: softmax temperature (0 = argmax).
      top_p: nucleus sampling mass, or None.
      schedule: the time grid's ``alpha_t`` for the time-grid methods (``SCHEDULES``).
      confidence: ``"confidence"``/``"threshold"``: the score of a masked position, one of
        :data:`CONFIDENCES`.
      rank: ``"confidence"``/``"threshold"``: ``"before"`` (choose positions, then draw:
        exact with one token per step) or ``"sampled"`` (draw, then rank by the sampled
        token's probability: LLaDA, biased); :data:`RANKS`.
      threshold: ``"threshold"`` only (required there): a float in ``(0, 1]``.
      remask, eta: ``"remdm"`` only: the sigma schedule (:data:`REMASKS`, default ``"cap"``)
        and its ``eta`` in ``[0, 1]`` (default 0.02).
      t_on, t_off: ``remask="loop"``: the loop phase ``[t_off, t_on)`` of the time grid.
      eos_id: ``"first_hitting"``/``"confidence"``/``"threshold"``: a row stops once an
        ``eos_id`` and everything before it are revealed; every position after a row's
        first ``eos_id`` is returned as ``eos_id``.
      block_length: semi-autoregressive blocks of this length (must divide ``length``),
        decoded left to right, ``method`` inside each; None = one block.
      cache: None, ``"prefix"`` or ``"dual"`` (module docstring; needs ``block_length``
        to save anything).
      refresh_every: with a cache: a full forward (fresh KV) every this many denoiser calls
        of a block; None = once per block (at its start).
      position_skew: per-position time windows in ``[0, 1)`` for the time-grid methods
        (:func:`jaxar.ops.masked_diffusion.position_window`; 0 = uniform).

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
    _check_options(
        method,
        length=length,
        num_steps=num_steps,
        threshold=threshold,
        remask=remask,
        eta=eta,
        t_on=t_on,
        t_off=t_off,
        eos_id=eos_id,
        mask_id=mask_id,
        block_length=block_length,
        cache=cache,
        refresh_every=refresh_every,
        position_skew=position_skew,
        denoise_fn=denoise_fn,
    )
    if num_steps is None:
        num_steps = length
    block_length = length if block_length is None else block_length
    num_blocks = length // block_length
    x = _initial_tokens(batch_size, length, mask_id, prompt)

    def logits_of(tokens):
        logits = denoise_fn(tokens)
        if logits.shape[:2] != (batch_size, length) or logits.ndim != 3:
            raise ValueError(
                f"denoise_fn must return (B, L, V) = ({batch_size}, {length}, V) logits, "
                f"got shape {logits.shape}"
            )
        return logits

    vocab_size = jax.eval_shape(logits_of, x).shape[-1]
    bad_B = jnp.zeros((batch_size,), bool)
    if prompt is not None:
        bad_B = _bad_prompt_rows(x, vocab_size, mask_id, "masked_diffusion.sample")
    opts = dict(mask_id=mask_id, temperature=temperature, top_p=top_p)
    gen_BxL = x == mask_id  # the generated positions (remdm never remasks the prompt)
    per_step = -(-length // num_steps)
    if method == "first_hitting":
        step = functools.partial(_first_hitting_step, per_call=min(per_step, block_length), **opts)
    elif method in ("confidence", "threshold"):
        step = functools.partial(
            _confidence_step,
            per_step=min(per_step, block_length),
            confidence=confidence,
            rank=rank,
            threshold=None if threshold is None else float(threshold),
            **opts,
        )
    if method == "remdm":
        eta = 0.02 if eta is None else float(eta)
        remask = remask or "cap"
    steps_per_block = -(-num_steps // num_blocks)
    calls = jnp.int32(0)
    for block in range(num_blocks):
        start = block * block_length
        pos_1xL = jnp.arange(length)[None]
        active_1xL = (pos_1xL >= start) & (pos_1xL < start + block_length)
        end = length if cache == "prefix" else start + block_length
        if cache is None or (start == 0 and end == length):  # nothing outside the span
            den = _plain_denoiser(logits_of)
        else:
            den = _kv_denoiser(denoise_fn, x, start, end, refresh_every)
        if method in WHILE_METHODS:
            stop = start + block_length
            x, calls = _while_block(key, x, calls, start, stop, den, step, mask_id, eos_id)
        else:
            x, calls = _fixed_block(
                key,
                x,
                calls,
                active_1xL,
                den,
                n_steps=steps_per_block,
                offset=block * steps_per_block,
                alpha_fn=_alpha_fn(steps_per_block, schedule, remask, t_on, t_off, position_skew),
                sigma_fn=None
                if method != "remdm"
                else functools.partial(remdm_sigma, schedule=remask, eta=eta),
                cached=method == "cached",
                gen_BxL=gen_BxL,
                **opts,
            )
    bad_B = bad_B | jnp.any(x == INVALID, axis=-1)
    if eos_id is not None:
        x = _fill_after_eos(x, eos_id)
    tokens = jnp.where(bad_B[:, None], INVALID, x)
    return Samples(check_draws(tokens, "masked_diffusion.sample"), calls)


# ---- denoisers: plain, or over an MDLM's KV cache ---------------------------------------


class _Denoiser(NamedTuple):
    """``call(x, aux, n) -> (logits_BxLxV, aux)``; ``n`` counts this block's calls."""

    aux0: Any
    call: Callable


def _plain_denoiser(logits_of):
    return _Denoiser((), lambda x, aux, n: (logits_of(x), aux))


def _kv_denoiser(model, x, start, end, refresh_every):
    """Fast-dLLM's approximate caches for the span ``[start, end)``.

    A refresh (call ``n`` with ``n % refresh_every == 0``; ``None``: ``n == 0`` only) runs
    the full sequence and keeps every position's K/V. Other calls run only the span's
    tokens, attending to the cached K/V outside it: the span is the block and everything
    after it for ``"prefix"`` (finished blocks cached), the block alone for ``"dual"``
    (prefix and suffix cached).
    """
    B, L = x.shape

    def full(x, kv):
        logits, kv = model.forward_kv(x)
        return logits_of_checked(logits), kv

    def logits_of_checked(logits):
        if logits.shape[:2] != (B, L):
            raise ValueError(f"forward_kv must return ({B}, {L}, V) logits, got {logits.shape}")
        return logits

    def span(x, kv):
        logits_S = model.forward_span(x[:, start:end], kv, start)
        pad = ((0, 0), (start, L - end), (0, 0))
        return jnp.pad(logits_S, pad), kv

    kv_shape = jax.eval_shape(lambda x: model.forward_kv(x)[1], x)
    kv0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), kv_shape)

    def call(x, kv, n):
        fresh = n == 0 if refresh_every is None else n % refresh_every == 0
        return lax.cond(fresh, full, span, x, kv)

    return _Denoiser(kv0, call)


# ---- time-grid methods: ancestral, cached, remdm ---------------------------------------


def _alpha_fn(num_steps, schedule, remask, t_on, t_off, position_skew):
    """``step -> (alpha_t, alpha_s)`` (scalars, or (1, L) with a position skew) on the uniform
    grid ``t = 1 - step / num_steps``, ``s = t - 1 / num_steps``."""

    def fn(step, length):
        t = 1.0 - step / num_steps
        s = 1.0 - (step + 1) / num_steps
        if remask == "loop":
            t, s = loop_time(t, t_on, t_off), loop_time(s, t_on, t_off)
        if position_skew:
            t = position_window(jnp.reshape(t, (1,)), length, position_skew)[0]
            s = position_window(jnp.reshape(s, (1,)), length, position_skew)[0]
        return mask_schedule(t, schedule)[0], mask_schedule(s, schedule)[0]

    return fn


def _fixed_block(
    key, x, calls, active_1xL, den, *, n_steps, offset, alpha_fn, sigma_fn, cached, gen_BxL,
    mask_id, temperature, top_p, stop_after=None,
):  # fmt: skip
    """``n_steps`` steps ``t -> s`` over the active positions: a masked one is revealed with
    ``(alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t)`` (drawn from ``p_theta``), a
    revealed generated one masked again with ``sigma`` (``sigma_fn``; 0 without it); the
    last step reveals everything. Step ``i`` uses the keys ``split(fold_in(key, offset +
    i))``. ``cached``: call the denoiser only when the input changed."""
    last = n_steps if stop_after is None else stop_after
    length = x.shape[1]

    def probabilities(step):
        alpha_t, alpha_s = alpha_fn(step, length)
        final = step + 1 >= n_steps
        sigma = 0.0
        if sigma_fn is not None:
            sigma = jnp.where(final, 0.0, sigma_fn(alpha_t, alpha_s))
            alpha_t_kept = (1.0 - sigma) * alpha_t
        else:
            alpha_t_kept = alpha_t
        denom = 1.0 - alpha_t
        p = (alpha_s - alpha_t_kept) / jnp.where(denom > 0, denom, 1.0)
        p = jnp.where(denom > 0, p, 1.0)
        return jnp.where(final, 1.0, p), sigma

    def reveal_and_draw(step, x, logits_fn):
        k_reveal, k_draw = jax.random.split(jax.random.fold_in(key, offset + step))
        u = jax.random.uniform(k_reveal, x.shape, jnp.float32)
        p, sigma = probabilities(step)
        reveal = (x == mask_id) & active_1xL & (u < p)
        change = reveal
        if sigma_fn is not None:
            u_re = jax.random.uniform(jax.random.fold_in(k_reveal, 1), x.shape, jnp.float32)
            remask = gen_BxL & active_1xL & (x != mask_id) & (x != INVALID) & (u_re < sigma)
            change = reveal | remask

        def update(x):
            logits = process_logits(
                logits_fn(), mask_id=mask_id, temperature=temperature, top_p=top_p
            )
            new = jnp.where(reveal, _draw(k_draw, logits, temperature), x)
            return new if sigma_fn is None else jnp.where(remask, mask_id, new)

        return change, update

    if not cached:

        def body(step, carry):
            x, aux, calls = carry
            logits, aux = den.call(x, aux, step)
            _, update = reveal_and_draw(step, x, lambda: logits)
            return update(x), aux, calls + 1

        x, _, calls = lax.fori_loop(0, last, body, (x, den.aux0, calls))
        return x, calls

    def body_cached(step, carry):
        x, logits, stale, calls, aux, n = carry

        def call():
            new, aux_new = den.call(x, aux, n)
            return new.astype(logits.dtype), aux_new, calls + 1, n + 1

        logits, aux, calls, n = lax.cond(
            stale & jnp.any((x == mask_id) & active_1xL), call, lambda: (logits, aux, calls, n)
        )
        change, update = reveal_and_draw(step, x, lambda: logits)
        changed = jnp.any(change)
        x = lax.cond(changed, update, lambda x: x, x)
        return x, logits, changed, calls, aux, n

    logits0 = jax.eval_shape(lambda x, a: den.call(x, a, jnp.int32(0))[0], x, den.aux0)
    logits0 = jnp.zeros(logits0.shape, logits0.dtype)
    carry = (x, logits0, jnp.asarray(True), calls, den.aux0, jnp.int32(0))
    x, _, _, calls, _, _ = lax.fori_loop(0, last, body_cached, carry)
    return x, calls


def _ancestral(
    key, logits_of, x, num_steps, schedule, *, cached, mask_id, temperature, top_p, stop_after=None
):
    """The whole-sequence ancestral chain (``stop_after``: only its first steps; benchmarks)."""
    x, calls = _fixed_block(
        key,
        x,
        jnp.int32(0),
        jnp.ones((1, x.shape[1]), bool),
        _plain_denoiser(logits_of),
        n_steps=num_steps,
        offset=0,
        alpha_fn=_alpha_fn(num_steps, schedule, None, 0.0, 0.0, 0.0),
        sigma_fn=None,
        cached=cached,
        gen_BxL=None,
        mask_id=mask_id,
        temperature=temperature,
        top_p=top_p,
        stop_after=stop_after,
    )
    return Samples(x, calls)


# ---- reveal-loop methods: first hitting, confidence, threshold -------------------------


def _eos_done(x, eos_id, mask_id):
    """(B,) rows holding an ``eos_id`` with nothing masked before the first one."""
    is_eos = x == eos_id
    first_B = jnp.argmax(is_eos, axis=-1)
    before = jnp.arange(x.shape[1])[None] < first_B[:, None]
    return jnp.any(is_eos, axis=-1) & ~jnp.any((x == mask_id) & before, axis=-1)


def _fill_after_eos(x, eos_id):
    is_eos = x == eos_id
    first_B = jnp.argmax(is_eos, axis=-1)
    after = jnp.any(is_eos, axis=-1)[:, None] & (jnp.arange(x.shape[1])[None] > first_B[:, None])
    return jnp.where(after, eos_id, x)


def _while_block(key, x, calls, start, stop, den, step, mask_id, eos_id):
    """``x[:, start:stop] = step(k_pos, k_draw, x_blk, logits_blk, open_blk)`` on the block's
    columns (one denoiser call each) while any of them is masked in a running row; call
    ``c`` (counted over the whole sequence) uses the keys ``split(fold_in(key, c))``."""

    def open_(x):
        open_BxS = x[:, start:stop] == mask_id
        if eos_id is not None:
            open_BxS = open_BxS & ~_eos_done(x, eos_id, mask_id)[:, None]
        return open_BxS

    def body(carry):
        x, calls, n, aux = carry
        k_pos, k_draw = jax.random.split(jax.random.fold_in(key, calls))
        logits, aux = den.call(x, aux, n)
        block = step(k_pos, k_draw, x[:, start:stop], logits[:, start:stop], open_(x))
        return x.at[:, start:stop].set(block), calls + 1, n + 1, aux

    carry = (x, calls, jnp.int32(0), den.aux0)
    x, calls, _, _ = lax.while_loop(lambda c: jnp.any(open_(c[0])), body, carry)
    return x, calls


def _first_hitting_step(k_pos, k_draw, x, logits_BxLxV, open_BxL, *, per_call, **opts):
    """The next ``per_call`` hitting positions of each sequence revealed in one call: the
    positions are a uniformly random subset of the open ones (the order of the first
    hitting times), each token drawn from ``p_theta`` given the same partially masked input.
    ``per_call = 1`` is the exact sampler (one revealed token per call)."""
    length = x.shape[1]
    u = jax.random.uniform(k_pos, x.shape, jnp.float32)
    score_BxR, pos_BxR = lax.top_k(jnp.where(open_BxL, u, -1.0), per_call)
    logits_BxRxV = jnp.take_along_axis(logits_BxLxV, pos_BxR[..., None], axis=1)
    logits_BxRxV = process_logits(
        logits_BxRxV, mask_id=opts["mask_id"], temperature=opts["temperature"], top_p=opts["top_p"]
    )
    token_BxR = _draw(k_draw, logits_BxRxV, opts["temperature"])
    live_BxRx1 = (score_BxR >= 0.0)[..., None]  # an open position (not a filler)
    hit_BxRxL = (jnp.arange(length)[None, None] == pos_BxR[..., None]) & live_BxRx1
    new_BxL = jnp.sum(jnp.where(hit_BxRxL, token_BxR[..., None], 0), axis=1)
    return jnp.where(jnp.any(hit_BxRxL, axis=1), new_BxL, x)


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


def _confidence_step(
    k_pos, k_draw, x, logits_BxLxV, open_BxL, *, per_step, confidence, rank, threshold,
    mask_id, temperature, top_p,
):  # fmt: skip
    """Confidence (``threshold is None``: the ``per_step`` most confident open positions)
    or threshold decoding (every open position with confidence ``> threshold``, and at
    least the most confident one)."""
    logits_BxLxV = process_logits(
        logits_BxLxV, mask_id=mask_id, temperature=temperature, top_p=top_p
    )
    token_BxL = _draw(k_draw, logits_BxLxV, temperature)
    if rank == "before":
        conf_BxL = confidence_of(logits_BxLxV, confidence)
    else:  # the probability of the token just drawn
        logp = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
        safe = jnp.clip(token_BxL, 0, logp.shape[-1] - 1)[..., None]
        conf_BxL = jnp.exp(jnp.take_along_axis(logp, safe, axis=-1)[..., 0])
        conf_BxL = jnp.where(token_BxL == INVALID, jnp.nan, conf_BxL)
    # garbage first (so the row is flagged), never a closed position
    conf_BxL = jnp.where(jnp.isnan(conf_BxL), jnp.inf, conf_BxL)
    score_BxL = jnp.where(open_BxL, conf_BxL, -jnp.inf)
    if threshold is None:
        reveal = _most_confident(k_pos, score_BxL, per_step)
    else:
        reveal = _most_confident(k_pos, score_BxL, 1) | (score_BxL > threshold)
    reveal = reveal & open_BxL
    return jnp.where(reveal, token_BxL, x)
