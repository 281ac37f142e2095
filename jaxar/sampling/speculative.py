"""Exact speculative decoding with a draft LM.

Speculative sampling (Leviathan et al., "Fast Inference from Transformers via Speculative
Decoding", arXiv:2211.17192; Chen et al., "Accelerating Large Language Model Decoding with
Speculative Sampling", arXiv:2302.01318): the draft proposes ``K`` tokens ``d_j ~ q_j``;
one target call scores them all; ``d_j`` is accepted with probability
``min(1, p_j(d_j) / q_j(d_j))`` while all before it were; at the first rejection the token
is drawn from ``normalize(max(0, p_j - q_j))``, and when all ``K`` are accepted a bonus
token is drawn from ``p_{K+1}``. Each committed token is then distributed exactly as
under :func:`jaxar.sampling.generate` (``p`` and ``q`` after the same temperature / top-k
/ top-p processing, :func:`jaxar.sampling.logits.process`). Temperature 0 is greedy:
accept while the draft token is the target's argmax, then take the target's argmax.
MATHS.md s.9 has the rule and the expected speed-up.

Rollback. A row's decoding state always covers its committed tokens except the last
(the next call's first input). Rows accept different numbers of tokens, so each row keeps
its own length:

- attention caches get a per-row (B,) ``index`` (:meth:`jaxar.nn.MultiHeadAttention.decode`);
  rolling back is setting it to the accepted length (the slots past it are ignored and
  overwritten later), so a cache-only model verifies the ``K + 1`` tokens in one parallel
  ``decode`` call;
- any other state (GateLoop, GSS: fixed-size recurrent states) is rolled back to the state
  after the last accepted token. The verification is one parallel ``decode(...,
  return_steps=True)`` call, which also returns the state after each of its ``K + 1``
  inputs (the mixers' scans produce them anyway); a mixer without ``return_steps`` is
  verified by ``K + 1`` one-token steps in the same jitted call instead. No prefix is ever
  recomputed.

Self-speculation (``draft=None``; Medusa, arXiv:2401.10774; Gloeckle et al., "Better &
Faster Large Language Models via Multi-token Prediction", arXiv:2404.19737): the target's
multi-token heads at the last verified position (the input before the next round's first
input ``x0``) give ``q_j``, j = 1..K, for the tokens after ``x0``; the drafts are drawn from
them independently (greedy: their argmax). ``q_j`` is fixed before the round, so the same
rejection rule keeps the law exact. The verification call returns the heads' logits at every
position, so no extra call drafts the next round.

The draft runs ``K + 1`` one-token steps per round (the last one only consumes ``d_K``, so
that its state is ready when all drafts are accepted). The whole loop is one jitted
``lax.while_loop``; a finished row idles (its state and tokens are left as they are).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.ops.categorical import INVALID, categorical, check_draws, valid_logits
from jaxar.ops.checks import positive_int
from jaxar.sampling.generate import _check_prompt_ids, _logits_probe, _vocab_size
from jaxar.sampling.logits import process

__all__ = ["generate"]


def _is_cache(s) -> bool:
    return isinstance(s, dict) and "index" in s and "k" in s


def _per_row_index(state, batch: int):
    """Attention caches get a (B,) index (one length per row)."""
    return tuple(
        dict(s, index=jnp.broadcast_to(s["index"], (batch,)).astype(jnp.int32))
        if _is_cache(s)
        else s
        for s in state
    )


def _strip(state):
    """The non-cache layer states (caches are rolled back by index, not kept per step)."""
    return tuple(None if _is_cache(s) else s for s in state)


def _rollback(old, new, steps, n_B):
    """The state after ``n_B`` (per row, 0..T) of the T inputs decoded from ``old``.

    Args:
      old: layer states before the T inputs.
      new: layer states after all T inputs.
      steps: :func:`_strip` of the states after each input, stacked on a leading T axis
        (None when every layer is a cache).
      n_B: int32 (B,) inputs to keep per row.
    """
    out = []
    for i, (o, s) in enumerate(zip(old, new, strict=True)):
        if _is_cache(s):
            out.append(dict(s, index=o["index"] + n_B))
            continue

        def pick(o_leaf, st_leaf):
            all_ = jnp.concatenate([o_leaf[None], st_leaf], axis=0)  # (T+1, B, ...)
            idx = n_B.reshape((1, -1) + (1,) * (o_leaf.ndim - 1))
            return jnp.take_along_axis(all_, idx, axis=0)[0]

        out.append(jax.tree.map(pick, o, steps[i]))
    return tuple(out)


def _decode_steps(model, tokens_BxT, state, positions_BxT, *, mode: str, hidden: bool = False):
    """``decode`` of T tokens keeping what a rollback needs: ``(out_BxTx., new, steps)``.

    ``mode``: "cache" (all layers are caches: one call), "steps" (one call with
    ``return_steps``) or "scan" (T one-token calls keeping each state). ``out`` is the
    logits, or the trunk output with ``hidden`` (``model.decode_hidden``).
    """
    fn = model.decode_hidden if hidden else model.decode
    if mode == "cache":
        out, new = fn(tokens_BxT, state, positions=positions_BxT)
        return out, new, None
    if mode == "steps":
        out, new, steps = fn(tokens_BxT, state, positions=positions_BxT, return_steps=True)
        return (
            out,
            new,
            tuple(None if _is_cache(s) else st for s, st in zip(new, steps, strict=True)),
        )

    def step(s, inp):
        tok, pos = inp
        out, s = fn(tok[:, None], s, positions=pos[:, None])
        return s, (out[:, 0], _strip(s))

    new, (out_TxBx, steps) = jax.lax.scan(step, state, (tokens_BxT.T, positions_BxT.T))
    return jnp.swapaxes(out_TxBx, 0, 1), new, steps


def _verify_mode(model, batch: int) -> str:
    """How ``model`` is verified: "cache", "steps" (its decode has ``return_steps``) or
    "scan" (a mixer without it: one-token steps). Shape-only tracing: called inside the
    jitted loops, so it runs once per compilation, not per call."""
    state = jax.eval_shape(lambda: model.init_state(batch, 2))
    if all(_is_cache(s) for s in state):
        return "cache"
    try:
        jax.eval_shape(
            lambda st: model.decode(jnp.zeros((batch, 1), jnp.int32), st, return_steps=True),
            state,
        )
    except TypeError:
        return "scan"
    return "steps"


def _vocab(graphdef, params) -> int:
    """V from the shape of one decode step (a cached trace: no model call)."""
    return _logits_probe.eval_shape(graphdef, params).shape[-1]


def _split_pair(target, draft):
    """``(t_graph, t_params, d_graph, d_params, vocab)`` of a target and an optional draft
    (None, None for no draft), refusing a draft over another vocabulary."""
    t_graph, t_params = nnx.split(target)
    v_t = _vocab_size(target, t_graph, t_params)
    if draft is None:
        return t_graph, t_params, None, None, v_t
    d_graph, d_params = nnx.split(draft)
    v_d = _vocab_size(draft, d_graph, d_params)
    if v_t != v_d:
        raise ValueError(
            f"draft vocabulary size {v_d} differs from the target's {v_t}; accepted: a "
            "draft over the same vocabulary"
        )
    return t_graph, t_params, d_graph, d_params, v_t


def _prefill(model, prompt, max_len: int):
    """State covering ``prompt[:, :-1]`` (per-row cache indices)."""
    b, p = prompt.shape
    state = model.init_state(b, max_len)
    if p > 1:
        pos = jnp.broadcast_to(jnp.arange(p - 1, dtype=jnp.int32)[None], (b, p - 1))
        _, state = model.decode(prompt[:, :-1], state, positions=pos)
    return _per_row_index(state, b)


def _commit(tokens, n_B, block_BxT, keep_B):
    """Writes ``block[b, :keep[b]]`` at ``tokens[b, n[b]:]``."""
    b, t = block_BxT.shape
    j = jnp.arange(t, dtype=jnp.int32)[None]
    cols = jnp.where(j < keep_B[:, None], n_B[:, None] + j, tokens.shape[1])  # past end: dropped
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, t))
    return tokens.at[rows, cols].set(block_BxT, mode="drop")


def _check_common(prompt_BxP, max_new_tokens):
    prompt = jnp.asarray(prompt_BxP)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt_BxP must be (B, P) with P >= 1, got shape {prompt.shape}")
    if not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt_BxP must be integer ids, got dtype {prompt.dtype}")
    positive_int("max_new_tokens", max_new_tokens)
    return prompt


def _check_lm(model, name: str):
    if not (
        callable(getattr(model, "init_state", None)) and callable(getattr(model, "decode", None))
    ):
        raise ValueError(
            f"{name}={type(model).__name__} is not an LM; accepted: a model with "
            "init_state(batch, max_len) and decode(tokens_BxT, state, *, positions)"
        )


def _mtp_heads(model) -> int:
    return int(getattr(getattr(model, "config", None), "mtp_heads", 0) or 0)


def _check_num_draft(num_draft, target, draft):
    positive_int("num_draft", num_draft)
    if draft is None and num_draft > _mtp_heads(target):
        raise ValueError(
            f"num_draft={num_draft} exceeds the target's mtp_heads={_mtp_heads(target)}; "
            "accepted with draft=None: 1 <= num_draft <= mtp_heads"
        )


def _check_self(target, what: str = "draft=None (self-speculative decoding)"):
    if _mtp_heads(target) < 1 or not callable(getattr(target, "mtp_logits", None)):
        raise ValueError(
            f"{what} needs multi-token prediction heads; the "
            f"target {type(target).__name__} has mtp_heads={_mtp_heads(target)}; accepted: a "
            "draft LM, or a target with LMConfig(mtp_heads >= 1)"
        )


def generate(
    key,
    target,
    draft,
    prompt_BxP,
    *,
    max_new_tokens: int,
    num_draft: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    return_stats: bool = False,
):
    """Samples ``max_new_tokens`` after ``prompt_BxP`` from ``target``, drafted by ``draft``.

    The output has the law of ``jaxar.sampling.generate(key, target, ...)`` with the same
    temperature / top-k / top-p (module docstring); at temperature 0 it is the same tokens.

    Args:
      key: PRNG key.
      target: the LM sampled from (``init_state`` / ``decode`` protocol).
      draft: a cheaper LM with the same vocabulary that proposes ``num_draft`` tokens per
        target call; ``None``: self-speculative decoding, the target's multi-token heads
        (``LMConfig(mtp_heads=n)``) propose (module docstring).
      prompt_BxP: int (B, P) prompt, P >= 1.
      max_new_tokens: >= 1 tokens to sample.
      num_draft: K >= 1 draft tokens per target call (K <= n with ``draft=None``).
      temperature: 0 = greedy; otherwise logits are divided by it.
      top_k, top_p: optional filtering, applied to both target and draft logits.
      return_stats: also return the statistics.

    Returns:
      int32 (B, P + max_new_tokens), or ``(tokens, stats)`` with ``stats`` a dict:
      ``target_calls`` and ``draft_calls`` (batched calls after the prefill; a draft
      round is ``K + 1`` one-token calls; 0 with ``draft=None``), ``row_calls`` (B,)
      target calls while each row was unfinished, ``accepted`` (B,) accepted draft tokens,
      ``rejections`` (B,) calls that rejected a draft (``accepted / (accepted +
      rejections)`` estimates the per-token acceptance probability alpha),
      ``tokens_per_call`` (B,) new tokens per target call, ``acceptance_rate`` (B,)
      accepted / proposed drafts. A row whose target logits are garbage is ``-1`` from
      there on (as in ``generate``).

    Raises:
      ValueError: bad arguments (one line naming the argument and what is accepted).
    """
    _check_lm(target, "target")
    if draft is None:
        _check_self(target)
    else:
        _check_lm(draft, "draft")
    prompt = _check_common(prompt_BxP, max_new_tokens)
    _check_num_draft(num_draft, target, draft)
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be >= 0")
    if temperature > 0:
        process(jnp.zeros((1,)), temperature=temperature, top_k=top_k, top_p=top_p)  # checks
    t_graph, t_params, d_graph, d_params, v_t = _split_pair(target, draft)
    if not isinstance(prompt, jax.core.Tracer):
        _check_prompt_ids(np.asarray(prompt), v_t)
    tokens, stats = _speculative(
        t_graph,
        t_params,
        d_graph,
        d_params,
        key,
        prompt.astype(jnp.int32),
        max_new_tokens,
        num_draft,
        float(temperature),
        top_k,
        top_p,
    )
    check_draws(tokens[:, prompt.shape[1] :], "speculative.generate")
    return (tokens, stats) if return_stats else tokens


def _prefill_self(model, prompt, max_len: int, k: int):
    """:func:`_prefill` for self-speculation, plus the first drafts' head logits (B, K, V)
    from the trunk at ``prompt[:, -2]`` and whether they exist (P >= 2)."""
    b, p = prompt.shape
    state = model.init_state(b, max_len)
    v = _logits_probe_shape(model)
    if p == 1:
        return _per_row_index(state, b), jnp.zeros((b, k, v), jnp.float32), jnp.zeros((b,), bool)
    pos = jnp.broadcast_to(jnp.arange(p - 1, dtype=jnp.int32)[None], (b, p - 1))
    h, state = model.decode_hidden(prompt[:, :-1], state, positions=pos)
    q = model.mtp_logits(h[:, -1:])[:, 0, :k].astype(jnp.float32)
    return _per_row_index(state, b), q, jnp.ones((b,), bool)


def _logits_probe_shape(model) -> int:
    return model.config.vocab_size


@functools.partial(jax.jit, static_argnums=(0, 2, 6, 7, 8, 9, 10))
def _speculative(
    t_graph, t_params, d_graph, d_params, key, prompt, max_new, k, temperature, top_k, top_p
):
    target = nnx.merge(t_graph, t_params)
    self_spec = d_graph is None
    draft = None if self_spec else nnx.merge(d_graph, d_params)
    b, p = prompt.shape
    mode = _verify_mode(target, b)
    total = p + max_new
    # slack: an idle row still writes K + 1 slots past its length (then ignored)
    max_len = total + 2 * k + 1
    greedy = temperature == 0
    proc = functools.partial(process, temperature=temperature, top_k=top_k, top_p=top_p)
    tokens = jnp.concatenate([prompt, jnp.zeros((b, max_new + k + 1), jnp.int32)], axis=1)
    bad_prompt = jnp.any((prompt < 0) | (prompt >= _vocab(t_graph, t_params)), axis=1)
    tokens = tokens.at[:, p:].set(jnp.where(bad_prompt[:, None], INVALID, 0))
    n0 = jnp.where(bad_prompt, total, p).astype(jnp.int32)
    zeros_b = jnp.zeros((b,), jnp.int32)
    carry0 = dict(
        tokens=tokens,
        n=n0,
        it=jnp.zeros((), jnp.int32),
        row_calls=zeros_b,
        accepted=zeros_b,
        rejections=zeros_b,
    )
    if self_spec:
        carry0["t_state"], carry0["mtp_q"], carry0["mtp_ok"] = _prefill_self(
            target, prompt, max_len, k
        )
    else:
        carry0["t_state"] = _prefill(target, prompt, max_len)
        carry0["d_state"] = _prefill(draft, prompt, max_len)
    rows = jnp.arange(b)
    j_k = jnp.arange(k + 1, dtype=jnp.int32)

    def draw(kj, logits):
        if greedy:
            return jnp.argmax(logits, -1).astype(jnp.int32)
        return categorical(kj, proc(logits))

    def propose_draft(c, x0, pos, kd):
        """The draft's K + 1 one-token steps (inputs x0, d_1 .. d_K)."""

        def d_step(carry, inp):
            s, tok = carry
            kj, pj = inp
            logits, s = draft.decode(tok[:, None], s, positions=pj[:, None])
            logits = logits[:, 0]
            nxt = draw(kj, logits)
            ok = valid_logits(logits) & (nxt >= 0)
            return (s, jnp.where(ok, nxt, 0)), (logits, nxt, ok, _strip(s))

        d_keys = jax.random.split(kd, k + 1)
        (d_new, _), (q_logits, drafts, d_ok, d_steps) = jax.lax.scan(
            d_step, (c["d_state"], x0), (d_keys, pos.T)
        )
        q_logits = jnp.swapaxes(q_logits, 0, 1)[:, :k]  # (B, K, V)
        return q_logits, drafts.T[:, :k], d_ok.T[:, :k], (d_new, d_steps)

    def propose_self(c, kd):
        """Independent draws from the heads' K logits at the last verified position."""
        q_logits = c["mtp_q"]
        keys = jax.random.split(kd, k)
        drafts = jax.vmap(draw, in_axes=(0, 1), out_axes=1)(keys, q_logits)
        d_ok = valid_logits(q_logits) & (drafts >= 0) & c["mtp_ok"][:, None]
        return q_logits, drafts, d_ok

    def body(c):
        active = c["n"] < total
        n = c["n"]
        x0 = jnp.maximum(c["tokens"][rows, n - 1], 0)  # a finished garbage row idles on 0
        pos = (n - 1)[:, None] + j_k[None]  # (B, K+1)
        kd, ku, kr = jax.random.split(jax.random.fold_in(key, c["it"]), 3)
        if self_spec:
            q_logits, drafts, d_ok = propose_self(c, kd)
        else:
            q_logits, drafts, d_ok, (d_new, d_steps) = propose_draft(c, x0, pos, kd)
        drafts = jnp.where(d_ok, drafts, 0)

        # target: one verification of x0, d_1 .. d_K
        block = jnp.concatenate([x0[:, None], drafts], axis=1)
        out, t_new, t_steps = _decode_steps(
            target, block, c["t_state"], pos, mode=mode, hidden=self_spec
        )
        p_logits = target.logits(out) if self_spec else out
        t_ok = valid_logits(p_logits)  # (B, K+1)
        if greedy:
            t_arg = jnp.argmax(p_logits, -1).astype(jnp.int32)
            acc = (drafts == t_arg[:, :k]) & d_ok
        else:
            p = jax.nn.softmax(proc(p_logits), -1)  # (B, K+1, V)
            q = jax.nn.softmax(proc(q_logits), -1)  # (B, K, V)
            p_d = jnp.take_along_axis(p[:, :k], drafts[..., None], -1)[..., 0]
            q_d = jnp.take_along_axis(q, drafts[..., None], -1)[..., 0]
            u = jax.random.uniform(ku, (b, k))
            acc = (u * q_d < p_d) & d_ok
        acc = acc & t_ok[:, :k]
        a = jnp.sum(jnp.cumprod(acc.astype(jnp.int32), axis=1), axis=1)  # (B,) in 0..K
        if greedy:
            new_tok = t_arg[rows, a]
        else:
            p_a = p[rows, a]  # (B, V)
            q_a = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)[rows, a]
            q_a = jnp.where(_pad(d_ok)[rows, a][:, None], q_a, 0.0)
            resid = jnp.maximum(p_a - q_a, 0.0)
            resid = jnp.where(jnp.sum(resid, -1, keepdims=True) > 0, resid, p_a)
            new_tok = categorical(kr, jnp.log(resid))
        new_tok = jnp.where(t_ok[rows, a], new_tok, INVALID)
        dead = new_tok == INVALID
        committed = jnp.where(j_k[None] < a[:, None], _shift(block), 0)
        committed = jnp.where(j_k[None] == a[:, None], new_tok[:, None], committed)
        keep = jnp.where(active, a + 1, 0)
        tokens = _commit(c["tokens"], n, committed, keep)
        # a garbage row: -1 to the end, then finished
        tail = (jnp.arange(tokens.shape[1])[None] >= (n + a)[:, None]) & (dead & active)[:, None]
        tokens = jnp.where(tail, INVALID, tokens)
        n_next = jnp.where(active, jnp.where(dead, total, n + a + 1), n)
        nxt = dict(
            tokens=tokens,
            n=n_next.astype(jnp.int32),
            t_state=_rollback(c["t_state"], t_new, t_steps, keep),
            it=c["it"] + 1,
            row_calls=c["row_calls"] + active,
            accepted=c["accepted"] + jnp.where(active, a, 0),
            rejections=c["rejections"] + (active & (a < k)),
        )
        if self_spec:
            m_q = target.mtp_logits(out[rows, a][:, None])[:, 0, :k].astype(jnp.float32)
            nxt["mtp_q"] = jnp.where(active[:, None, None], m_q, c["mtp_q"])
            nxt["mtp_ok"] = jnp.where(active, True, c["mtp_ok"])
        else:
            nxt["d_state"] = _rollback(c["d_state"], d_new, d_steps, keep)
        return nxt

    out = jax.lax.while_loop(lambda c: jnp.any(c["n"] < total), body, carry0)
    calls = out["row_calls"]
    stats = dict(
        target_calls=out["it"],
        draft_calls=out["it"] * (0 if self_spec else k + 1),
        row_calls=calls,
        accepted=out["accepted"],
        rejections=out["rejections"],
        tokens_per_call=max_new / jnp.maximum(calls, 1).astype(jnp.float32),
        acceptance_rate=out["accepted"] / jnp.maximum(calls * k, 1).astype(jnp.float32),
    )
    return out["tokens"][:, :total], stats


def _pad(d_ok_BxK):
    """(B, K) -> (B, K+1) with False appended (no draft at the bonus slot)."""
    return jnp.concatenate([d_ok_BxK, jnp.zeros_like(d_ok_BxK[:, :1])], axis=1)


def _shift(block_BxT):
    """``block[:, 1:]`` padded with one 0: the drafts at the committed slots 0 .. K-1."""
    return jnp.concatenate([block_BxT[:, 1:], jnp.zeros_like(block_BxT[:, :1])], axis=1)
