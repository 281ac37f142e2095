"""Speculative decoding: the exact target law (chi-square), greedy identity, batches, errors."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import chisquare

from jaxar.models import LM, LMConfig
from jaxar.sampling import generate, speculative
from jaxar.sampling.logits import process

V, P, N = 4, 2, 20_000
PROMPT = jnp.asarray([[1, 3]], jnp.int32)
MTP = 3  # multi-token heads of the self-speculative targets
P_MIN = 1e-4  # fixed seeds; a wrong rule (accept always) gives p ~ 0 here


@functools.cache
def lm(kind, seed, d_model=16, vocab=V, mtp_heads=0, **overrides):
    cfg = LMConfig.preset(
        kind,
        vocab_size=vocab,
        d_model=d_model,
        num_heads=2,
        num_layers=1,
        mlp_ratio=2.0,
        tie_embeddings=False,  # tied heads favour repeating the input: acceptance near 1
        mtp_heads=mtp_heads,
        **overrides,
    )
    return LM(cfg, rngs=nnx.Rngs(seed))


def exact_law(model, prompt_1xP, n_new, temperature, top_k, top_p):
    """P(x_1..x_n | prompt) for all V^n continuations, by teacher forcing."""
    conts = np.array(list(itertools.product(range(V), repeat=n_new)), np.int32)
    p = prompt_1xP.shape[1]
    toks = jnp.concatenate([jnp.broadcast_to(prompt_1xP, (len(conts), p)), conts], axis=1)
    logits = model(toks)[:, p - 1 : p - 1 + n_new]
    x = process(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    logp = jnp.take_along_axis(jax.nn.log_softmax(x, -1), conts[..., None], -1)[..., 0]
    return np.exp(np.asarray(logp, np.float64).sum(-1))


def chi2_pvalue(new_NxT, probs):
    """Chi-square of the joint counts against ``probs``; cells under 5 expected are pooled.

    Cells of probability 0 must be empty (asserted)."""
    cell = np.ravel_multi_index(tuple(new_NxT.T), (V,) * new_NxT.shape[1])
    obs = np.bincount(cell, minlength=len(probs))
    zero = probs == 0
    assert obs[zero].sum() == 0, "a token outside the target's support was sampled"
    exp = probs / probs.sum() * len(new_NxT)
    big, small = exp >= 5, (exp < 5) & ~zero
    o, e = list(obs[big]), list(exp[big])
    if small.any():
        o.append(obs[small].sum())
        e.append(exp[small].sum())
    return chisquare(np.asarray(o), np.asarray(e)).pvalue


def _check_law(kind, num_draft, temperature, top_k=None, top_p=None, seed=0, self_spec=False):
    if self_spec:  # draft=None: the target's multi-token heads propose
        target, draft = lm(kind, 0, mtp_heads=MTP), None
    else:
        target, draft = lm(kind, 0), lm(kind, 1)
    out, stats = speculative.generate(
        jax.random.key(seed),
        target,
        draft,
        jnp.broadcast_to(PROMPT, (N, P)),
        max_new_tokens=3,
        num_draft=num_draft,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        return_stats=True,
    )
    assert out.shape == (N, P + 3) and out.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out[:, :P]), np.broadcast_to(PROMPT, (N, P)))
    probs = exact_law(target, PROMPT, 3, temperature, top_k, top_p)
    pval = chi2_pvalue(np.asarray(out[:, P:]), probs)
    assert pval > P_MIN, pval
    rate = float(np.mean(stats["acceptance_rate"]))
    assert 0.0 < rate < 0.9, rate  # the rejection branch is exercised


@pytest.mark.parametrize(
    "kind,num_draft,temperature,top_k",
    [
        ("transformer-tiny", 1, 0.7, None),
        ("gateloop-tiny", 3, 1.0, 3),
    ],
)
def test_joint_law_of_three_tokens(kind, num_draft, temperature, top_k):
    _check_law(kind, num_draft, temperature, top_k)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,num_draft,temperature,top_k,top_p",
    [
        ("transformer-tiny", 3, 0.7, 3, None),
        ("gateloop-tiny", 1, 0.7, None, None),
        ("gss-tiny", 1, 1.0, None, None),
        ("gss-tiny", 3, 0.7, 3, None),
        ("transformer-tiny", 5, 1.0, None, 0.8),
        ("gateloop-tiny", 5, 0.7, 2, None),
        ("gss-tiny", 5, 1.0, None, None),
    ],
)
def test_joint_law_of_three_tokens_slow(kind, num_draft, temperature, top_k, top_p):
    _check_law(kind, num_draft, temperature, top_k, top_p)


@pytest.mark.parametrize(
    "kind", ["transformer-tiny", "gateloop-tiny", pytest.param("gss-tiny", marks=pytest.mark.slow)]
)
def test_greedy_equals_greedy_generate(kind):
    target, draft = lm(kind, 0), lm(kind, 1)
    prompt = jnp.asarray([[1, 2, 3], [3, 0, 2], [0, 1, 1]], jnp.int32)
    want = generate(jax.random.key(0), target, prompt, max_new_tokens=9, temperature=0.0)
    got, stats = speculative.generate(
        jax.random.key(1),
        target,
        draft,
        prompt,
        max_new_tokens=9,
        num_draft=3,
        temperature=0.0,
        return_stats=True,
    )
    # rows accept different numbers of drafts in one call, yet each row is its greedy
    # generation (== the row decoded alone: greedy generate treats rows independently)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert len(set(np.asarray(stats["accepted"]).tolist())) > 1
    assert int(stats["target_calls"]) <= 9
    if kind != "transformer-tiny":
        return
    # a perfect draft (the target itself) is always accepted: ceil(9 / (K + 1)) calls
    _, self_stats = speculative.generate(
        jax.random.key(1),
        target,
        target,
        prompt,
        max_new_tokens=9,
        num_draft=3,
        temperature=0.0,
        return_stats=True,
    )
    assert int(self_stats["target_calls"]) == 3
    np.testing.assert_allclose(np.asarray(self_stats["acceptance_rate"]), 1.0)


@pytest.mark.parametrize(
    "kind,num_draft,temperature,top_k",
    [
        ("gateloop-tiny", 2, 0.7, None),
        pytest.param("transformer-tiny", 3, 1.0, 3, marks=pytest.mark.slow),
        pytest.param("gss-tiny", 1, 0.7, None, marks=pytest.mark.slow),
    ],
)
def test_self_speculative_joint_law(kind, num_draft, temperature, top_k):
    _check_law(kind, num_draft, temperature, top_k, self_spec=True)


@pytest.mark.parametrize(
    "kind", ["transformer-tiny", pytest.param("gss-tiny", marks=pytest.mark.slow)]
)
def test_self_speculative_greedy_equals_greedy_generate(kind):
    target = lm(kind, 0, mtp_heads=MTP)
    prompt = jnp.asarray([[1, 2, 3], [3, 0, 2], [0, 1, 1]], jnp.int32)
    want = generate(jax.random.key(0), target, prompt, max_new_tokens=9, temperature=0.0)
    got, stats = speculative.generate(
        jax.random.key(1),
        target,
        None,
        prompt,
        max_new_tokens=9,
        num_draft=MTP,
        temperature=0.0,
        return_stats=True,
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert int(stats["draft_calls"]) == 0
    assert int(stats["target_calls"]) <= 9


def test_bad_input_errors():
    target = lm("transformer-tiny", 0)
    draft = lm("transformer-tiny", 1)
    call = lambda t, d, **kw: speculative.generate(  # noqa: E731
        jax.random.key(0), t, d, PROMPT, **{"max_new_tokens": 2, **kw}
    )
    with pytest.raises(ValueError, match="vocabulary size 5 differs from the target's 4"):
        call(target, lm("transformer-tiny", 1, vocab=5))
    with pytest.raises(ValueError, match="num_draft=0"):
        call(target, draft, num_draft=0)
    with pytest.raises(ValueError, match="draft=function is not an LM"):
        call(target, lambda x: x)
    with pytest.raises(ValueError, match="draft=None .* mtp_heads=0; accepted"):
        call(target, None)
    with pytest.raises(ValueError, match="num_draft=4 exceeds the target's mtp_heads=3"):
        call(lm("transformer-tiny", 0, mtp_heads=MTP), None, num_draft=4)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        call(target, draft, max_new_tokens=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        speculative.generate(
            jax.random.key(0), target, draft, jnp.asarray([[1, 9]]), max_new_tokens=2
        )


def _nan_copy(model):
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x * jnp.nan, state))


def test_garbage_draft_is_rejected_and_garbage_target_raises():
    """One compiled loop for all three calls (same structures, shapes and options)."""
    target = lm("transformer-tiny", 0)
    prompt = jnp.asarray([[1, 2], [3, 0]], jnp.int32)
    kw = dict(max_new_tokens=4, temperature=0.0, return_stats=True)
    # a perfect draft gives greedy generate (test_greedy_equals_greedy_generate)
    want, _ = speculative.generate(jax.random.key(0), target, target, prompt, **kw)
    got, stats = speculative.generate(jax.random.key(0), target, _nan_copy(target), prompt, **kw)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(stats["accepted"]), 0)  # every draft rejected
    with pytest.raises(ValueError, match="speculative.generate: no token could be drawn in 2"):
        speculative.generate(jax.random.key(0), _nan_copy(target), target, prompt, **kw)
