"""Greedy tree speculative decoding with multi-token heads (attention models).

Medusa (Cai et al., "Medusa: Simple LLM Inference Acceleration Framework with Multiple
Decoding Heads", arXiv:2401.10774) and SpecInfer (arXiv:2305.09781): instead of one draft
chain, the candidates form a token tree verified by one target call. With
``tree=(k_1, .., k_D)`` the multi-token head ``d`` (``LMConfig(mtp_heads >= D)``, head d
predicting the token ``d`` after the next one) offers its top ``k_d`` tokens at depth d, and
every depth-d node gets the ``k_{d+1}`` candidates of depth d + 1 as children: ``N = 1 + k_1
+ k_1 k_2 + ..`` nodes, the root being the last committed token ``x0``.

One ``decode`` of the N nodes, each at position ``(its depth) + n - 1`` and seeing only
its own path (:func:`jaxar.ops.tree_mask` as the decode ``mask``), gives the target's
argmax ``g_i`` after every path. A node is accepted when its token equals ``g`` of its
parent and its parent is accepted; the deepest accepted node ``i*`` (depth a) and its path
are the greedy continuation, and ``g_{i*}`` is one more greedy token: ``a + 1`` tokens per
call, exactly the tokens of greedy :func:`jaxar.sampling.generate`. The KV cache entries of
the path (written at slots ``index + node``) are moved to ``index + depth`` and the index
set past them (per row); the heads at ``i*`` propose the next tree. The loop is one jitted
``lax.while_loop``.

A draft LM instead of the heads (``draft=``): the draft runs its greedy chain ``x0, c_1, ..,
c_{D-1}`` (D calls) and its logits ``q_d`` after each give the top ``k_d`` candidates at depth
d: the same product tree, whose all-rank-0 path is the draft's greedy chain (as in SpecInfer's
token trees, the candidates at depth d are those after the chain's depth-(d-1) node). The draft
state keeps the committed tokens up to where the accepted path leaves its chain; the rest
(at most D + 1 tokens: the accepted ones past that point and the bonus) opens the next
round's first draft call, one parallel ``decode`` (rolled back per row as in
:mod:`jaxar.sampling.speculative`, so the draft may be any LM family; the target must be
attention). On the Pallas flash kernel (``AttentionConfig(impl="pallas")``) the tree mask
reaches the kernel as its dense block mask (prefix columns visible), whose all-False tiles
are skipped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar.ops.categorical import INVALID, check_draws, valid_logits
from jaxar.ops.masks import tree_mask
from jaxar.sampling.generate import _check_prompt_ids
from jaxar.sampling.speculative import (
    _check_common,
    _check_lm,
    _check_self,
    _commit,
    _decode_steps,
    _is_cache,
    _mtp_heads,
    _prefill,
    _prefill_self,
    _rollback,
    _split_pair,
    _strip,
    _verify_mode,
    _vocab,
)

__all__ = ["generate", "tree_structure"]


def tree_structure(tree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(parents, depths, ranks)`` (N,) of the product tree of ``tree = (k_1, .., k_D)``.

    Node 0 is the root (depth 0); nodes are in breadth-first order; ``ranks[i]`` is the
    candidate rank (0 = the head's argmax) of node i among its head's tokens.
    """
    if (
        not isinstance(tree, tuple | list)
        or not tree
        or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in tree)
    ):
        raise ValueError(
            f"tree={tree!r} is invalid; accepted: a non-empty tuple of ints >= 1 (candidates "
            "per depth)"
        )
    parents, depths, ranks = [-1], [0], [0]
    level = [0]
    for d, k in enumerate(tree, start=1):
        nxt = []
        for p in level:
            for r in range(k):
                parents.append(p)
                depths.append(d)
                ranks.append(r)
                nxt.append(len(parents) - 1)
        level = nxt
    return (np.asarray(parents, np.int32), np.asarray(depths, np.int32), np.asarray(ranks))


def generate(
    target, prompt_BxP, *, max_new_tokens: int, tree=(2, 2, 2), draft=None, return_stats=False
):
    """Greedy decoding of ``max_new_tokens`` by tree verification of multi-token heads' or a
    draft LM's top-k candidates per depth.

    Args:
      target: an attention-only LM (every layer a KV cache, no sliding window), with
        ``LMConfig(mtp_heads >= len(tree))`` when ``draft`` is None.
      prompt_BxP: int (B, P) prompt, P >= 1.
      max_new_tokens: >= 1 tokens.
      tree: ``(k_1, .., k_D)`` candidates per depth (:func:`tree_structure`).
      draft: optional LM (any family, the target's vocabulary) whose greedy chain's top
        ``k_d`` tokens per depth form the tree (module docstring); None: the target's heads.
      return_stats: also return the statistics.

    Returns:
      int32 (B, P + max_new_tokens), equal to greedy ``generate`` (``-1`` from a step with
      garbage logits on); with ``return_stats`` also a dict: ``target_calls``,
      ``row_calls`` (B,), ``accepted`` (B,) accepted tree tokens, ``tokens_per_call`` (B,),
      ``tree_size`` N, ``draft_calls`` (batched draft calls after the prefill: D per round,
      0 without a draft).

    Raises:
      ValueError: bad arguments (one line naming the argument and what is accepted).
    """
    _check_lm(target, "target")
    if draft is None:
        _check_self(target, "tree decoding without a draft")
    else:
        _check_lm(draft, "draft")
    prompt = _check_common(prompt_BxP, max_new_tokens)
    parents, depths, ranks = tree_structure(tree)
    if draft is None and len(tree) > _mtp_heads(target):
        raise ValueError(
            f"tree={tuple(tree)} has depth {len(tree)} > the target's mtp_heads="
            f"{_mtp_heads(target)}; accepted: at most one depth per head"
        )
    state = jax.eval_shape(lambda: target.init_state(1, 2))
    windows = [
        getattr(getattr(getattr(b, "mixer", None), "config", None), "window", None)
        for b in getattr(getattr(target, "backbone", None), "blocks", ())
    ]
    if not all(_is_cache(s) for s in state) or any(w is not None for w in windows):
        raise ValueError(
            "target has a recurrent or sliding-window layer; tree verification accepts an LM "
            "whose layers are all global attention (use speculative.generate otherwise)"
        )
    graphdef, params, d_graph, d_params, v_t = _split_pair(target, draft)
    if max(tree) > v_t:
        raise ValueError(
            f"tree={tuple(tree)} asks for {max(tree)} candidates per depth from a vocabulary "
            f"of {v_t}; accepted: every k_d <= {v_t}"
        )
    if not isinstance(prompt, jax.core.Tracer):
        _check_prompt_ids(np.asarray(prompt), v_t)
    tokens, stats = _tree(
        graphdef,
        params,
        d_graph,
        d_params,
        prompt.astype(jnp.int32),
        max_new_tokens,
        tuple(int(k) for k in tree),
    )
    check_draws(tokens[:, prompt.shape[1] :], "tree.generate")
    return (tokens, stats) if return_stats else tokens


@functools.partial(jax.jit, static_argnums=(0, 2, 5, 6))
def _tree(graphdef, params, d_graph, d_params, prompt, max_new, tree):
    target = nnx.merge(graphdef, params)
    draft = None if d_graph is None else nnx.merge(d_graph, d_params)
    d_mode = None if draft is None else _verify_mode(draft, prompt.shape[0])
    parents, depths, ranks = (jnp.asarray(a) for a in tree_structure(tree))
    n_nodes, depth = parents.shape[0], len(tree)
    mask = tree_mask(parents)  # (N, N)
    b, p = prompt.shape
    total = p + max_new
    max_len = total + n_nodes + depth + 1
    kmax = max(tree)
    rows = jnp.arange(b)
    bad_prompt = jnp.any((prompt < 0) | (prompt >= _vocab(graphdef, params)), axis=1)
    tokens = jnp.concatenate([prompt, jnp.zeros((b, max_new + depth + 1), jnp.int32)], axis=1)
    tokens = tokens.at[:, p:].set(jnp.where(bad_prompt[:, None], INVALID, 0))
    carry0 = dict(
        tokens=tokens,
        n=jnp.where(bad_prompt, total, p).astype(jnp.int32),
        it=jnp.zeros((), jnp.int32),
        row_calls=jnp.zeros((b,), jnp.int32),
        accepted=jnp.zeros((b,), jnp.int32),
    )
    if draft is None:
        carry0["state"], carry0["mtp_q"], carry0["mtp_ok"] = _prefill_self(
            target, prompt, max_len, depth
        )
    else:
        carry0["state"] = _prefill(target, prompt, max_len)
        # the draft covers tokens[:, :d_len]; past x0 it writes up to 2 D + 1 more slots
        carry0["d_state"] = _prefill(draft, prompt, total + 2 * depth + 2)
        carry0["d_len"] = jnp.full((b,), p - 1, jnp.int32)
    # path[i, d]: the depth-d ancestor of node i (itself at its depth; 0 past it)
    on_path = mask[:, :, None] & (depths[None, :, None] == jnp.arange(depth + 1)[None, None])
    path = jnp.argmax(on_path, axis=1).astype(jnp.int32)  # (N, D+1)

    def propose_draft(c, active):
        """The draft's logits q_1 .. q_D along its greedy chain after x0, its chain c_1 ..
        c_D and its state after the pending tokens and after each chain input."""
        n, s = c["n"], c["d_len"]
        j = jnp.arange(depth + 1, dtype=jnp.int32)[None]
        pend = c["tokens"][rows[:, None], jnp.minimum(s[:, None] + j, c["tokens"].shape[1] - 1)]
        pend = jnp.where(s[:, None] + j < n[:, None], jnp.maximum(pend, 0), 0)
        out, new, steps = _decode_steps(draft, pend, c["d_state"], s[:, None] + j, mode=d_mode)
        # an idle row keeps all but its last token (the next round's x0), as at the start
        keep = jnp.clip(jnp.where(active, n - s, n - 1 - s), 0, depth + 1)
        state1 = _rollback(c["d_state"], new, steps, keep)
        q1 = out[rows, jnp.clip(n - 1 - s, 0, depth)].astype(jnp.float32)

        def step(carry, pos):
            st, q = carry
            tok = jnp.maximum(jnp.argmax(q, -1), 0).astype(jnp.int32)
            logits, st = draft.decode(tok[:, None], st, positions=pos[:, None])
            return (st, logits[:, 0].astype(jnp.float32)), (q, tok, _strip(st))

        chain_pos = n[None] + jnp.arange(depth - 1, dtype=jnp.int32)[:, None]  # (D-1, B)
        (st, q_last), (qs, toks, chain_steps) = jax.lax.scan(step, (state1, q1), chain_pos)
        q = jnp.concatenate([jnp.swapaxes(qs, 0, 1), q_last[:, None]], axis=1)  # (B, D, V)
        chain = jnp.concatenate(
            [toks.T, jnp.maximum(jnp.argmax(q_last, -1), 0).astype(jnp.int32)[:, None]], axis=1
        )
        return q, chain, (state1, st, chain_steps)

    def body(c):
        active = c["n"] < total
        n = c["n"]
        x0 = jnp.maximum(c["tokens"][rows, n - 1], 0)
        if draft is None:
            q, q_ok = c["mtp_q"], c["mtp_ok"]
        else:
            q, chain, (d_state1, d_new, d_steps) = propose_draft(c, active)
            q_ok = jnp.ones((b,), bool)
        _, top = jax.lax.top_k(q, kmax)  # (B, D, kmax)
        cand = top[:, jnp.maximum(depths - 1, 0), ranks]  # (B, N)
        cand_ok = q_ok[:, None] & jnp.all(valid_logits(q), -1)[:, None]
        node_tok = jnp.where(depths[None] == 0, x0[:, None], cand).astype(jnp.int32)
        pos = (n - 1)[:, None] + depths[None]
        h, new = target.decode_hidden(node_tok, c["state"], positions=pos, mask=mask)
        logits = target.logits(h)  # (B, N, V)
        ok_logits = valid_logits(logits)
        g = jnp.argmax(logits, -1).astype(jnp.int32)  # (B, N)
        par = jnp.maximum(parents, 0)
        ok = (node_tok == g[:, par]) & ok_logits[:, par] & cand_ok
        ok = ok | (depths[None] == 0)
        acc = jnp.all(jnp.where(mask[None], ok[:, None, :], True), axis=-1)  # (B, N)
        best = jnp.argmax(jnp.where(acc, depths[None], -1), axis=1)  # deepest accepted node
        a = depths[best]
        bonus = jnp.where(ok_logits[rows, best], g[rows, best], INVALID)
        dead = bonus == INVALID
        path_b = path[best]  # (B, D+1) node indices, path_b[:, 0] = root
        j = jnp.arange(depth + 1, dtype=jnp.int32)[None]
        path_tok = node_tok[rows[:, None], path_b]  # (B, D+1), x0 first
        committed = jnp.concatenate([path_tok[:, 1:], jnp.zeros((b, 1), jnp.int32)], axis=1)
        committed = jnp.where(j < a[:, None], committed, 0)
        committed = jnp.where(j == a[:, None], bonus[:, None], committed)
        keep = jnp.where(active, a + 1, 0)
        tokens = _commit(c["tokens"], n, committed, keep)
        tail = (jnp.arange(tokens.shape[1])[None] >= (n + a)[:, None]) & (dead & active)[:, None]
        tokens = jnp.where(tail, INVALID, tokens)
        state = tuple(_compact(o, s, path_b, keep) for o, s in zip(c["state"], new, strict=True))
        nxt = dict(
            tokens=tokens,
            n=jnp.where(active, jnp.where(dead, total, n + a + 1), n).astype(jnp.int32),
            state=state,
            it=c["it"] + 1,
            row_calls=c["row_calls"] + active,
            accepted=c["accepted"] + jnp.where(active, a, 0),
        )
        if draft is None:
            m_q = target.mtp_logits(h[rows, best][:, None])[:, 0, :depth].astype(jnp.float32)
            nxt["mtp_q"] = jnp.where(active[:, None, None], m_q, c["mtp_q"])
            nxt["mtp_ok"] = jnp.where(active, True, c["mtp_ok"])
        else:
            # keep the chain inputs c_1 .. c_m that the accepted path follows (m <= D - 1)
            jd = jnp.arange(1, depth, dtype=jnp.int32)[None]  # (1, D-1)
            follows = (path_tok[:, 1:depth] == chain[:, : depth - 1]) & (jd <= a[:, None])
            m = jnp.sum(jnp.cumprod(follows.astype(jnp.int32), axis=1), axis=1)
            m = jnp.where(active & ~dead, m, 0)
            nxt["d_state"] = _rollback(d_state1, d_new, d_steps, m)
            nxt["d_len"] = jnp.where(active, n + m, n - 1).astype(jnp.int32)
        return nxt

    out = jax.lax.while_loop(lambda c: jnp.any(c["n"] < total), body, carry0)
    calls = out["row_calls"]
    stats = dict(
        target_calls=out["it"],
        row_calls=calls,
        accepted=out["accepted"],
        tokens_per_call=max_new / jnp.maximum(calls, 1).astype(jnp.float32),
        tree_size=n_nodes,
        draft_calls=out["it"] * (0 if draft is None else depth),
    )
    return out["tokens"][:, :total], stats


def _compact(old, new, path_BxD1, keep_B):
    """A cache after the tree call, with the path's entries moved to consecutive slots."""
    idx = old["index"]  # (B,)
    src = idx[:, None] + path_BxD1  # (B, D+1) slots written by the tree call
    dst = idx[:, None] + jnp.arange(path_BxD1.shape[1])[None]
    rows = jnp.arange(src.shape[0])[:, None]

    def move(c):
        return c.at[rows, dst].set(c[rows, src], mode="drop")

    return dict(new, k=move(new["k"]), v=move(new["v"]), index=idx + keep_B)
