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
    _is_cache,
    _mtp_heads,
    _prefill_self,
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


def generate(target, prompt_BxP, *, max_new_tokens: int, tree=(2, 2, 2), return_stats=False):
    """Greedy decoding of ``max_new_tokens`` by tree verification of the multi-token heads.

    Args:
      target: an attention-only LM (every layer a KV cache, no sliding window) with
        ``LMConfig(mtp_heads >= len(tree))``.
      prompt_BxP: int (B, P) prompt, P >= 1.
      max_new_tokens: >= 1 tokens.
      tree: ``(k_1, .., k_D)`` candidates per depth (:func:`tree_structure`).
      return_stats: also return the statistics.

    Returns:
      int32 (B, P + max_new_tokens), equal to greedy ``generate`` (``-1`` from a step with
      garbage logits on); with ``return_stats`` also a dict: ``target_calls``,
      ``row_calls`` (B,), ``accepted`` (B,) accepted tree tokens, ``tokens_per_call`` (B,),
      ``tree_size`` N.

    Raises:
      ValueError: bad arguments (one line naming the argument and what is accepted).
    """
    _check_lm(target, "target")
    _check_self(target, "tree decoding")
    prompt = _check_common(prompt_BxP, max_new_tokens)
    parents, depths, ranks = tree_structure(tree)
    if len(tree) > _mtp_heads(target):
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
    graphdef, params = nnx.split(target)
    if not isinstance(prompt, jax.core.Tracer):
        _check_prompt_ids(np.asarray(prompt), _vocab(graphdef, params))
    tokens, stats = _tree(
        graphdef, params, prompt.astype(jnp.int32), max_new_tokens, tuple(int(k) for k in tree)
    )
    check_draws(tokens[:, prompt.shape[1] :], "tree.generate")
    return (tokens, stats) if return_stats else tokens


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _tree(graphdef, params, prompt, max_new, tree):
    target = nnx.merge(graphdef, params)
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
    state, mtp_q, mtp_ok = _prefill_self(target, prompt, max_len, depth)
    carry0 = dict(
        tokens=tokens,
        n=jnp.where(bad_prompt, total, p).astype(jnp.int32),
        state=state,
        mtp_q=mtp_q,
        mtp_ok=mtp_ok,
        it=jnp.zeros((), jnp.int32),
        row_calls=jnp.zeros((b,), jnp.int32),
        accepted=jnp.zeros((b,), jnp.int32),
    )
    # path[i, d]: the depth-d ancestor of node i (itself at its depth; 0 past it)
    on_path = mask[:, :, None] & (depths[None, :, None] == jnp.arange(depth + 1)[None, None])
    path = jnp.argmax(on_path, axis=1).astype(jnp.int32)  # (N, D+1)

    def body(c):
        active = c["n"] < total
        n = c["n"]
        x0 = jnp.maximum(c["tokens"][rows, n - 1], 0)
        _, top = jax.lax.top_k(c["mtp_q"], kmax)  # (B, D, kmax)
        cand = top[:, jnp.maximum(depths - 1, 0), ranks]  # (B, N)
        cand_ok = c["mtp_ok"][:, None] & jnp.all(valid_logits(c["mtp_q"]), -1)[:, None]
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
        m_q = target.mtp_logits(h[rows, best][:, None])[:, 0, :depth].astype(jnp.float32)
        return dict(
            tokens=tokens,
            n=jnp.where(active, jnp.where(dead, total, n + a + 1), n).astype(jnp.int32),
            state=state,
            mtp_q=jnp.where(active[:, None, None], m_q, c["mtp_q"]),
            mtp_ok=jnp.where(active, True, c["mtp_ok"]),
            it=c["it"] + 1,
            row_calls=c["row_calls"] + active,
            accepted=c["accepted"] + jnp.where(active, a, 0),
        )

    out = jax.lax.while_loop(lambda c: jnp.any(c["n"] < total), body, carry0)
    calls = out["row_calls"]
    stats = dict(
        target_calls=out["it"],
        row_calls=calls,
        accepted=out["accepted"],
        tokens_per_call=max_new / jnp.maximum(calls, 1).astype(jnp.float32),
        tree_size=n_nodes,
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
