"""Masked-diffusion samplers on an exact toy joint (V=3, L=3; jaxar/MATHS.md s.5).

The test's denoiser returns the exact conditionals p(x_l | unmasked positions of z) of a
fixed joint table, so every sampler must reproduce the table: chi-square over the 27
sequences (fixed seeds).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxar.sampling.masked_diffusion import (
    Samples,
    _most_confident,
    confidence_of,
    process_logits,
    sample,
)
from jaxar.testing import assert_allclose

V, L, MASK = 3, 3, 3
SEQS = np.asarray(list(itertools.product(range(V), repeat=L)))  # (27, 3), row-major index
_W = np.arange(1, 28, dtype=np.float64) ** 1.5
JOINT = np.roll(_W / _W.sum(), 11)  # strongly non-product


def exact_denoiser(z_BxL):
    """logits[b, l, v] = log sum_s P(s) [s consistent with z_b] [s_l = v]."""
    seqs = jnp.asarray(SEQS)
    consistent_BxS = jnp.all((z_BxL[:, None, :] == MASK) | (z_BxL[:, None, :] == seqs[None]), -1)
    w_BxS = jnp.where(consistent_BxS, jnp.asarray(JOINT, jnp.float32)[None], 0.0)
    onehot_SxLxV = jax.nn.one_hot(seqs, V, dtype=jnp.float32)
    mass_BxLxV = jnp.einsum("bs,slv->blv", w_BxS, onehot_SxLxV)
    return jnp.log(mass_BxLxV + 1e-30)


def _index(tokens):
    tokens = np.asarray(tokens)
    assert tokens.min() >= 0 and tokens.max() < V
    return (tokens * V ** np.arange(L - 1, -1, -1)).sum(-1)


def _chi2_pvalue(tokens, probs):
    counts = np.bincount(_index(tokens), minlength=V**L)
    keep = probs > 0
    assert counts[~keep].sum() == 0
    return scipy.stats.chisquare(counts[keep], counts.sum() * probs[keep] / probs.sum()).pvalue


N = 10_000


@functools.cache
def _run(method, num_steps, seed, prompt=False, n=N, **opts):
    fn = functools.partial(
        sample,
        denoise_fn=exact_denoiser,
        batch_size=n,
        length=L,
        mask_id=MASK,
        method=method,
        num_steps=num_steps,
        prompt=jnp.asarray([[1]]) if prompt else None,
        **opts,
    )
    out = jax.jit(fn)(jax.random.key(seed))
    assert isinstance(out, Samples)
    return np.asarray(out.tokens), int(out.num_calls)


# 1000 steps: simultaneous reveals (the ancestral sampler's only error with exact
# conditionals) have probability ~3/1000, far below what 10k samples can detect.
@pytest.mark.parametrize("method,num_steps", [("ancestral", 1000), ("first_hitting", None)])
def test_samples_match_joint(method, num_steps):
    tokens, calls = _run(method, num_steps, seed=0)
    assert _chi2_pvalue(tokens, JOINT) > 1e-3
    if method == "first_hitting":
        assert calls == L
    else:
        assert calls <= num_steps


def test_cached_equals_ancestral_token_for_token():
    """Same key, same chain: the cached sampler reproduces the ancestral one exactly (so it
    samples the joint too) with at most as many denoiser calls."""
    a, calls_a = _run("ancestral", 300, seed=0, n=1000)
    c, calls_c = _run("cached", 300, seed=0, n=1000)
    np.testing.assert_array_equal(a, c)
    assert calls_a == 300 and calls_c <= 300


def test_cached_skips_calls_when_nothing_changes():
    out = jax.jit(
        functools.partial(
            sample,
            denoise_fn=exact_denoiser,
            batch_size=1,
            length=L,
            mask_id=MASK,
            method="cached",
            num_steps=500,
        )
    )(jax.random.key(1))
    assert 1 <= int(out.num_calls) <= L


def test_first_hitting_with_prompt_matches_conditional():
    tokens, calls = _run("first_hitting", None, seed=2, prompt=True)
    assert np.all(tokens[:, 0] == 1) and calls == L - 1
    conditional = np.where(SEQS[:, 0] == 1, JOINT, 0.0)
    assert _chi2_pvalue(tokens, conditional) > 1e-3


def test_first_hitting_one_call_per_revealed_token_batched():
    """Each sequence reveals its own positions; calls counted by a host callback too."""
    calls = []

    def counted(z):
        jax.debug.callback(lambda: calls.append(1))
        return exact_denoiser(z)

    length = 6
    prompt = jnp.asarray(
        [[MASK] * 6, [0, 1, MASK, 2, MASK, MASK], [0, 1, 2, 0, 1, MASK], [2, 2, 2, 2, 2, 2]]
    )

    def denoise6(z):  # conditionals of the first three positions, uniform elsewhere
        head = counted(z[:, :3])
        return jnp.concatenate([head, jnp.zeros_like(head)], axis=1)

    out = jax.jit(
        functools.partial(
            sample,
            denoise_fn=denoise6,
            batch_size=4,
            length=length,
            mask_id=MASK,
            method="first_hitting",
            prompt=prompt,
        )
    )(jax.random.key(3))
    jax.effects_barrier()
    tokens = np.asarray(out.tokens)
    assert int(out.num_calls) == 6 == len(calls)  # max over the batch of masked counts
    assert tokens.max() < V
    fixed = np.asarray(prompt) != MASK
    np.testing.assert_array_equal(tokens[fixed], np.asarray(prompt)[fixed])


def test_single_sequence_calls_equal_masked_tokens():
    calls = []

    def counted(z):
        jax.debug.callback(lambda: calls.append(1))
        return exact_denoiser(z)

    out = sample(
        jax.random.key(4),
        counted,
        batch_size=1,
        length=L,
        mask_id=MASK,
        method="first_hitting",
        prompt=jnp.asarray([[MASK, 2, MASK]]),
    )
    jax.effects_barrier()
    assert int(out.num_calls) == 2 == len(calls)


def test_temperature_zero_and_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(process_logits(logits, mask_id=9, top_p=0.7)))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = np.isfinite(np.asarray(process_logits(logits, mask_id=9, top_p=0.81)))
    np.testing.assert_array_equal(kept, [[True, True, True, False]])
    # SUBS: the mask row never wins
    np.testing.assert_array_equal(
        np.isfinite(np.asarray(process_logits(logits, mask_id=0))), [[False, True, True, True]]
    )
    out = sample(
        jax.random.key(5),
        exact_denoiser,
        batch_size=2,
        length=L,
        mask_id=MASK,
        method="first_hitting",
        temperature=0.0,
    )
    # greedy first hitting: every token is the argmax of its conditional at its turn
    assert np.asarray(out.tokens).max() < V
    out = sample(
        jax.random.key(5),
        exact_denoiser,
        batch_size=64,
        length=L,
        mask_id=MASK,
        method="ancestral",
        num_steps=4,
        top_p=1e-6,
    )
    seqs = {tuple(s) for s in np.asarray(out.tokens)}
    assert len(seqs) <= 8  # near-greedy: few distinct outcomes


def test_argument_errors():
    kw = dict(batch_size=1, length=L, mask_id=MASK)
    with pytest.raises(ValueError, match="method='gibbs'"):
        sample(jax.random.key(0), exact_denoiser, method="gibbs", **kw)
    with pytest.raises(ValueError, match="num_steps"):
        sample(jax.random.key(0), exact_denoiser, method="first_hitting", num_steps=0, **kw)
    with pytest.raises(ValueError, match="prompt"):
        sample(
            jax.random.key(0),
            exact_denoiser,
            method="ancestral",
            prompt=jnp.zeros((1, 5), jnp.int32),
            **kw,
        )


def test_sizes_and_ids_errors_name_the_argument():
    kw = dict(batch_size=1, length=L, mask_id=MASK, method="ancestral")
    key = jax.random.key(0)
    for name, value in [("length", 0), ("batch_size", -2), ("num_steps", 2.5), ("mask_id", -1)]:
        with pytest.raises(ValueError, match=rf"^{name}={value!r} is not accepted; expected"):
            sample(key, exact_denoiser, **{**kw, name: value})
    with pytest.raises(ValueError, match=r"prompt holds 1 id\(s\) outside \[0, 3\).* 7 at"):
        sample(key, exact_denoiser, **kw, prompt=jnp.asarray([[MASK, 7]]))
    with pytest.raises(ValueError, match="prompt must be integer"):
        sample(key, exact_denoiser, **kw, prompt=jnp.asarray([[0.5]]))
    # traced prompt: the row with the bad id comes back as -1, the other is sampled
    prompt = jnp.asarray([[1, MASK], [MASK, -5]])
    run = jax.jit(lambda p: sample(key, exact_denoiser, **{**kw, "batch_size": 2}, prompt=p))
    tokens = np.asarray(run(prompt).tokens)
    assert tokens[0, 0] == 1 and (tokens[0] >= 0).all()
    np.testing.assert_array_equal(tokens[1], [-1] * L)


def _garbage_denoiser(z_BxL):
    """Row 0 exact; row 1 NaN at position 1; row 2 with only the [MASK] logit finite (all
    -inf after SUBS)."""
    logits = jnp.concatenate([exact_denoiser(z_BxL), jnp.zeros((*z_BxL.shape, 1))], -1)
    b = jnp.arange(z_BxL.shape[0])[:, None, None]
    l = jnp.arange(L)[None, :, None]
    v = jnp.arange(V + 1)[None, None, :]
    logits = jnp.where((b == 1) & (l == 1), jnp.nan, logits)
    return jnp.where((b == 2) & (v != MASK), -jnp.inf, logits)


@pytest.mark.parametrize(
    "method,temperature,top_p",
    [("ancestral", 1.0, None), ("cached", 0.0, None), ("first_hitting", 0.5, 0.9)],
)
def test_garbage_logits_give_invalid_rows_never_tokens(method, temperature, top_p):
    opts = dict(batch_size=3, length=L, mask_id=MASK, method=method)
    opts.update(temperature=temperature, top_p=top_p)
    run = jax.jit(lambda k: sample(k, _garbage_denoiser, **opts))
    for seed in range(3):
        tokens = np.asarray(run(jax.random.key(seed)).tokens)
        assert ((tokens[0] >= 0) & (tokens[0] < V)).all()
        np.testing.assert_array_equal(tokens[1:], -np.ones((2, L), int))
    with pytest.raises(
        ValueError, match=r"masked_diffusion.sample: .* 2 of 3 row\(s\) \(rows \[1, 2\]\)"
    ):
        sample(jax.random.key(0), _garbage_denoiser, **opts)
    # process_logits keeps a garbage row garbage whatever the filtering
    logits = _garbage_denoiser(jnp.full((3, L), MASK))
    out = process_logits(logits, mask_id=MASK, temperature=0.5, top_p=0.5)
    assert np.isnan(np.asarray(out[1, 1])).all() and np.isnan(np.asarray(out[2])).all()
    assert not np.isnan(np.asarray(out[0])).any()


def test_first_hitting_num_steps_bounds_the_calls():
    """num_steps >= length is the exact sampler token for token; fewer steps reveal
    ceil(length / num_steps) tokens per call and make at most num_steps calls."""
    exact, calls = _run("first_hitting", None, seed=3, n=64)
    same, calls_same = _run("first_hitting", L + 3, seed=3, n=64)
    np.testing.assert_array_equal(exact, same)
    assert calls == calls_same == L
    fast, calls_fast = _run("first_hitting", 2, seed=3, n=64)
    assert calls_fast <= 2 and ((fast >= 0) & (fast < MASK)).all()


# --- confidence and threshold decoding (LLaDA, Fast-dLLM) ---


N_MDM = 6000


@pytest.mark.parametrize(
    "method,opts",
    [
        ("confidence", dict(confidence="prob")),
        ("threshold", dict(threshold=1.0, confidence="margin")),
    ],
)
def test_confidence_rank_before_matches_joint(method, opts):
    """Positions chosen from the input only, one token per step: an adaptive any-order
    sampler, exact with the exact denoiser (so is threshold 1.0: one reveal per step).
    On this joint the three kinds pick the same position in every state, so one run per
    method suffices; test_confidence_kinds_choose_different_orders tells the kinds apart."""
    tokens, calls = _run(method, None, 10 if method == "confidence" else 13, n=N_MDM, **opts)
    assert calls == L
    assert _chi2_pvalue(tokens, JOINT) > 1e-3


def _order_denoiser(z_BxL):
    """Length 2. Position 0: (0.5, 0.5, 0) while position 1 is masked, else token 2 surely;
    position 1: (0.45, 0.35, 0.2) while position 0 is masked, else token 1 surely. So the
    tokens tell which position went first: "prob" (0.5 > 0.45) and "entropy" (exp(-H) 0.5 >
    0.35) pick position 0, "margin" (0.1 > 0) position 1."""
    p0 = jnp.where(z_BxL[:, 1:2] == MASK, jnp.asarray([[0.5, 0.5, 0.0]]), jnp.eye(V)[2][None])
    p1 = jnp.where(z_BxL[:, 0:1] == MASK, jnp.asarray([[0.45, 0.35, 0.2]]), jnp.eye(V)[1][None])
    return jnp.log(jnp.stack([p0, p1], axis=1))


@pytest.mark.parametrize(
    "kind,first", [pytest.param("prob", 0, marks=pytest.mark.slow), ("margin", 1), ("entropy", 0)]
)
def test_confidence_kinds_choose_different_orders(kind, first):
    out = sample(
        jax.random.key(7),
        _order_denoiser,
        batch_size=64,
        length=2,
        mask_id=MASK,
        method="confidence",
        confidence=kind,
    )
    tokens = np.asarray(out.tokens)
    assert int(out.num_calls) == 2
    if first == 0:
        assert (tokens[:, 1] == 1).all() and (tokens[:, 0] < 2).all()
        assert len(set(tokens[:, 0])) == 2
    else:
        assert (tokens[:, 0] == 2).all() and len(set(tokens[:, 1])) == 3


def test_confidence_of_matches_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5)).astype(np.float32) * 2
    logits[1, 2] = -np.inf  # filtered token
    logits[2] = np.nan  # garbage row
    for dtype in (jnp.float32, jnp.bfloat16):
        x = jnp.asarray(logits, dtype)
        ref_logits = np.asarray(x.astype(jnp.float32), np.float64)
        p = np.exp(ref_logits - ref_logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        top = -np.sort(-p, axis=-1)
        neg_h = np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
        refs = dict(prob=top[:, 0], margin=top[:, 0] - top[:, 1], entropy=np.exp(neg_h))
        for kind, ref in refs.items():
            got = np.asarray(confidence_of(x, kind))
            assert got.dtype == np.float32 and np.isnan(got[2])
            keep = np.arange(4) != 2
            assert_allclose(got[keep], ref[keep], dtype=jnp.float32)


def test_ties_are_broken_uniformly_at_random():
    """All four positions equally confident: each is chosen first about 1/4 of the time."""
    keys = jax.random.split(jax.random.key(0), 4000)
    pick = jax.vmap(lambda k: _most_confident(k, jnp.zeros((1, 4)), 1)[0])(keys)
    counts = np.asarray(pick).sum(0)
    assert counts.sum() == 4000
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


def _greedy_confident_path():
    """numpy reference at temperature 0: reveal the masked position of largest max
    conditional probability with its argmax, until none is masked."""
    z = np.full(L, MASK)
    while (z == MASK).any():
        consistent = np.all((z == MASK) | (SEQS == z), axis=-1)
        best = (-1.0, None, None)
        for l in np.flatnonzero(z == MASK):
            mass = np.bincount(SEQS[consistent, l], JOINT[consistent], minlength=V)
            p = mass / mass.sum()
            if p.max() > best[0]:
                best = (p.max(), l, int(p.argmax()))
        z[best[1]] = best[2]
    return z


@pytest.mark.parametrize("rank", ["before", pytest.param("sampled", marks=pytest.mark.slow)])
def test_confidence_temperature_zero_is_deterministic_greedy(rank):
    runs = [_run("confidence", None, seed, n=8, temperature=0.0, rank=rank)[0] for seed in (0, 1)]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], np.broadcast_to(_greedy_confident_path(), (8, L)))


def test_confidence_rank_sampled_runs_and_is_biased_towards_likely_tokens():
    """LLaDA's variant: valid tokens, one call per token; no exactness claim."""
    tokens, calls = _run("confidence", None, 11, n=N_MDM, rank="sampled")
    assert calls == L and ((tokens >= 0) & (tokens < V)).all()
    assert _chi2_pvalue(tokens, JOINT) < 1e-3  # the bias is visible on this joint


def _peaked_denoiser(z_BxL):
    """Independent positions, p(token 1) = 0.8 everywhere (length free)."""
    logits = jnp.log(jnp.asarray([0.1, 0.8, 0.1], jnp.float32))
    return jnp.broadcast_to(logits, (*z_BxL.shape, V))


def test_threshold_and_num_steps_reduce_calls():
    """Threshold 0.5 reveals all 8 confident positions in one call (threshold 1.0 makes one
    call per token: test_confidence_rank_before_matches_joint)."""
    kw = dict(batch_size=4, length=8, mask_id=MASK)
    key = jax.random.key(0)
    run = functools.partial(sample, key, _peaked_denoiser, **kw)
    fast = run(method="threshold", threshold=0.5)
    assert int(fast.num_calls) == 1 and (np.asarray(fast.tokens) >= 0).all()
    steps = run(method="confidence", num_steps=3)  # ceil(8 / 3) = 3 per call
    assert int(steps.num_calls) == 3


@pytest.mark.slow
def test_confidence_with_prompt_keeps_it():
    prompt = jnp.asarray([[MASK, 2, MASK]])
    out = sample(
        jax.random.key(3),
        exact_denoiser,
        batch_size=16,
        length=L,
        mask_id=MASK,
        method="confidence",
        confidence="margin",
        prompt=prompt,
    )
    tokens = np.asarray(out.tokens)
    assert int(out.num_calls) == 2 and (tokens[:, 1] == 2).all() and tokens.max() < V


def test_confidence_and_threshold_argument_errors():
    kw = dict(batch_size=1, length=L, mask_id=MASK)
    key = jax.random.key(0)
    cases = [
        (dict(method="confidence", confidence="logit"), r"^confidence='logit' is not supported"),
        (dict(method="confidence", rank="after"), r"^rank='after' is not supported"),
        (
            dict(method="confidence", rank="sampled", confidence="margin"),
            r"^confidence='margin' is not accepted with rank='sampled'",
        ),
        (
            dict(method="threshold"),
            r"^threshold=None is not accepted; expected a float in \(0, 1\]",
        ),
        (dict(method="threshold", threshold=0.0), r"^threshold=0.0 is not accepted"),
        (dict(method="threshold", threshold=1.5), r"^threshold=1.5 is not accepted"),
        (dict(method="first_hitting", threshold=0.5), r"^threshold=0.5 is not accepted with"),
    ]
    for opts, match in cases:
        with pytest.raises(ValueError, match=match):
            sample(key, exact_denoiser, **kw, **opts)


@pytest.mark.parametrize(
    "opts",
    [
        pytest.param(dict(method="confidence", confidence="entropy"), marks=pytest.mark.slow),
        dict(method="threshold", threshold=0.9, rank="sampled"),
    ],
)
def test_confidence_garbage_logits_give_invalid_rows(opts):
    opts = dict(batch_size=3, length=L, mask_id=MASK, **opts)
    tokens = np.asarray(
        jax.jit(lambda k: sample(k, _garbage_denoiser, **opts))(jax.random.key(0)).tokens
    )
    assert ((tokens[0] >= 0) & (tokens[0] < V)).all()
    np.testing.assert_array_equal(tokens[1:], -np.ones((2, L), int))
    with pytest.raises(ValueError, match=r"masked_diffusion.sample: .* 2 of 3 row"):
        sample(jax.random.key(0), _garbage_denoiser, **opts)
