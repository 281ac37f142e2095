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
  after the last accepted token, kept from the verification: such a model is verified by
  ``K + 1`` one-token ``decode`` steps inside the same jitted call, which keeps each
  position's state (no prefix is ever recomputed). Its cost per verification is that of
  ``K + 1`` steps; a parallel form needs mixers that return per-position states.

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
from jaxar.sampling.generate import _check_prompt_ids, _logits_probe
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


def _decode_steps(model, tokens_BxT, state, positions_BxT, *, parallel: bool):
    """``decode`` of T tokens keeping what a rollback needs: ``(logits_BxTxV, new, steps)``."""
    if parallel:
        logits, new = model.decode(tokens_BxT, state, positions=positions_BxT)
        return logits, new, None

    def step(s, inp):
        tok, pos = inp
        logits, s = model.decode(tok[:, None], s, positions=pos[:, None])
        return s, (logits[:, 0], _strip(s))

    new, (logits_TxBxV, steps) = jax.lax.scan(step, state, (tokens_BxT.T, positions_BxT.T))
    return jnp.swapaxes(logits_TxBxV, 0, 1), new, steps


def _all_caches(model, batch: int) -> bool:
    state = jax.eval_shape(lambda: model.init_state(batch, 1))
    return all(_is_cache(s) for s in state)


def _vocab(graphdef, params) -> int:
    """V from the shape of one decode step (a cached trace: no model call)."""
    return _logits_probe.eval_shape(graphdef, params).shape[-1]


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
    if (
        not isinstance(max_new_tokens, int)
        or isinstance(max_new_tokens, bool)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive int")
    return prompt


def _check_lm(model, name: str):
    if not (
        callable(getattr(model, "init_state", None)) and callable(getattr(model, "decode", None))
    ):
        raise ValueError(
            f"{name}={type(model).__name__} is not an LM; accepted: a model with "
            "init_state(batch, max_len) and decode(tokens_BxT, state, *, positions)"
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
        target call. (``None``, self-speculation with multi-token heads, is not built yet.)
      prompt_BxP: int (B, P) prompt, P >= 1.
      max_new_tokens: >= 1 tokens to sample.
      num_draft: K >= 1 draft tokens per target call.
      temperature: 0 = greedy; otherwise logits are divided by it.
      top_k, top_p: optional filtering, applied to both target and draft logits.
      return_stats: also return the statistics.

    Returns:
      int32 (B, P + max_new_tokens), or ``(tokens, stats)`` with ``stats`` a dict:
      ``target_calls`` and ``draft_calls`` (batched calls after the prefill; a draft
      round is ``K + 1`` one-token calls), ``row_calls`` (B,) target calls while each row
      was unfinished, ``accepted`` (B,) accepted draft tokens, ``tokens_per_call`` (B,)
      new tokens per target call, ``acceptance_rate`` (B,) accepted / proposed drafts.
      A row whose target logits are garbage is ``-1`` from there on (as in ``generate``).

    Raises:
      ValueError: bad arguments (one line naming the argument and what is accepted).
    """
    if draft is None:
        raise ValueError(
            "draft=None asks for self-speculative decoding with multi-token prediction heads, "
            "which is not built yet; accepted: a draft LM with the target's vocabulary"
        )
    _check_lm(target, "target")
    _check_lm(draft, "draft")
    prompt = _check_common(prompt_BxP, max_new_tokens)
    if not isinstance(num_draft, int) or isinstance(num_draft, bool) or num_draft < 1:
        raise ValueError(f"num_draft={num_draft!r} is invalid; accepted: an int >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be >= 0")
    if temperature > 0:
        process(jnp.zeros((1,)), temperature=temperature, top_k=top_k, top_p=top_p)  # checks
    t_graph, t_params = nnx.split(target)
    d_graph, d_params = nnx.split(draft)
    v_t, v_d = _vocab(t_graph, t_params), _vocab(d_graph, d_params)
    if v_t != v_d:
        raise ValueError(
            f"draft vocabulary size {v_d} differs from the target's {v_t}; accepted: a draft "
            "over the same vocabulary"
        )
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


@functools.partial(jax.jit, static_argnums=(0, 2, 6, 7, 8, 9, 10))
def _speculative(
    t_graph, t_params, d_graph, d_params, key, prompt, max_new, k, temperature, top_k, top_p
):
    target = nnx.merge(t_graph, t_params)
    draft = nnx.merge(d_graph, d_params)
    b, p = prompt.shape
    total = p + max_new
    # slack: an idle row still writes K + 1 slots past its length (then ignored)
    max_len = total + 2 * k + 1
    t_par = _all_caches(target, b)
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
        t_state=_prefill(target, prompt, max_len),
        d_state=_prefill(draft, prompt, max_len),
        it=jnp.zeros((), jnp.int32),
        row_calls=zeros_b,
        accepted=zeros_b,
    )
    rows = jnp.arange(b)
    j_k = jnp.arange(k + 1, dtype=jnp.int32)

    def body(c):
        active = c["n"] < total
        n = c["n"]
        x0 = jnp.maximum(c["tokens"][rows, n - 1], 0)  # a finished garbage row idles on 0
        pos = (n - 1)[:, None] + j_k[None]  # (B, K+1)
        kd, ku, kr = jax.random.split(jax.random.fold_in(key, c["it"]), 3)

        # draft: K + 1 one-token steps (inputs x0, d_1 .. d_K)
        def d_step(carry, inp):
            s, tok = carry
            kj, pj = inp
            logits, s = draft.decode(tok[:, None], s, positions=pj[:, None])
            logits = logits[:, 0]
            if greedy:
                nxt = jnp.argmax(logits, -1).astype(jnp.int32)
            else:
                nxt = categorical(kj, proc(logits))
            ok = valid_logits(logits) & (nxt >= 0)
            return (s, jnp.where(ok, nxt, 0)), (logits, nxt, ok, _strip(s))

        d_keys = jax.random.split(kd, k + 1)
        (d_new, _), (q_logits, drafts, d_ok, d_steps) = jax.lax.scan(
            d_step, (c["d_state"], x0), (d_keys, pos.T)
        )
        q_logits = jnp.swapaxes(q_logits, 0, 1)[:, :k]  # (B, K, V)
        drafts, d_ok = drafts.T[:, :k], d_ok.T[:, :k]  # (B, K)
        drafts = jnp.where(d_ok, drafts, 0)

        # target: one verification of x0, d_1 .. d_K
        block = jnp.concatenate([x0[:, None], drafts], axis=1)
        p_logits, t_new, t_steps = _decode_steps(target, block, c["t_state"], pos, parallel=t_par)
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
        return dict(
            tokens=tokens,
            n=n_next.astype(jnp.int32),
            t_state=_rollback(c["t_state"], t_new, t_steps, keep),
            d_state=_rollback(c["d_state"], d_new, d_steps, keep),
            it=c["it"] + 1,
            row_calls=c["row_calls"] + active,
            accepted=c["accepted"] + jnp.where(active, a, 0),
        )

    out = jax.lax.while_loop(lambda c: jnp.any(c["n"] < total), body, carry0)
    calls = out["row_calls"]
    stats = dict(
        target_calls=out["it"],
        draft_calls=out["it"] * (k + 1),
        row_calls=calls,
        accepted=out["accepted"],
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
