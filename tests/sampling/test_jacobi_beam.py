"""Jacobi decoding == greedy generate; beam search == brute force when it covers the search."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.sampling import beam_search, generate, jacobi
from tests.sampling.test_speculative import lm as _lm


def lm(kind, seed=0, vocab=8):
    """The speculative tests' tiny untied LM, over 8 tokens by default."""
    return _lm(kind, seed, vocab=vocab)


@pytest.mark.parametrize(
    "kind", ["transformer-tiny", "gateloop-tiny", pytest.param("gss-tiny", marks=pytest.mark.slow)]
)
def test_jacobi_equals_greedy_generate(kind):
    model = lm(kind)
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6], [0, 7, 7]], jnp.int32)
    want = generate(jax.random.key(0), model, prompt, max_new_tokens=10, temperature=0.0)
    got, stats = jacobi.generate(model, prompt, max_new_tokens=10, window=4)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    calls = np.asarray(stats["row_iterations"])
    assert 3 <= int(stats["iterations"]) <= 10 and np.all((calls >= 3) & (calls <= 10))


@pytest.mark.slow
def test_jacobi_window_one_and_rows_alone():
    model = lm("transformer-tiny", seed=3)
    prompt = jnp.asarray([[1, 2], [6, 5]], jnp.int32)
    want = generate(jax.random.key(0), model, prompt, max_new_tokens=5, temperature=0.0)
    one, stats = jacobi.generate(model, prompt, max_new_tokens=5, window=1)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(want))
    assert int(stats["iterations"]) == 5  # W = 1 is plain greedy decoding
    alone, _ = jacobi.generate(model, prompt[1:], max_new_tokens=5, window=3)
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(want[1:]))


def _brute_force(model, prompt_1xP, n_new, vocab, eos_id=None, length_penalty=0.0):
    """All continuations scored by teacher forcing (after eos only eos is allowed)."""
    conts = np.array(list(itertools.product(range(vocab), repeat=n_new)), np.int32)
    if eos_id is not None:
        after = np.cumsum(conts == eos_id, axis=1) - (conts == eos_id) > 0
        conts = conts[~np.any(after & (conts != eos_id), axis=1)]
    p = prompt_1xP.shape[1]
    toks = jnp.concatenate([jnp.broadcast_to(prompt_1xP, (len(conts), p)), conts], axis=1)
    logp = jax.nn.log_softmax(model(toks)[:, p - 1 : p - 1 + n_new], -1)
    per = np.asarray(jnp.take_along_axis(logp, conts[..., None], -1)[..., 0], np.float64)
    if eos_id is not None:  # tokens after the first eos are free
        first = np.argmax(conts == eos_id, axis=1)
        first = np.where(np.any(conts == eos_id, axis=1), first, n_new - 1)
        per = np.where(np.arange(n_new)[None] <= first[:, None], per, 0.0)
        length = first + 1
    else:
        length = np.full(len(conts), n_new)
    score = per.sum(1) / length.astype(np.float64) ** length_penalty
    return conts, score


@pytest.mark.parametrize(
    "kind,eos_id,length_penalty",
    [("transformer-tiny", None, 0.0), ("gateloop-tiny", 1, 0.7)],
)
def test_beam_top_equals_brute_force(kind, eos_id, length_penalty):
    vocab, n_new, beam = 4, 3, 64
    model = lm(kind, seed=1, vocab=vocab)
    prompts = jnp.asarray([[2, 3], [0, 1]], jnp.int32)
    beams, scores = beam_search(
        model,
        prompts,
        beam_size=beam,
        max_new_tokens=n_new,
        length_penalty=length_penalty,
        eos_id=eos_id,
    )
    assert beams.shape == (2, beam, 2 + n_new) and scores.shape == (2, beam)
    for r in range(2):
        conts, want = _brute_force(model, prompts[r : r + 1], n_new, vocab, eos_id, length_penalty)
        best = int(np.argmax(want))
        np.testing.assert_array_equal(np.asarray(beams[r, 0, 2:]), conts[best])
        np.testing.assert_allclose(float(scores[r, 0]), want[best], rtol=1e-5, atol=1e-5)
        finite = np.asarray(scores[r])[np.isfinite(np.asarray(scores[r]))]
        np.testing.assert_allclose(np.sort(finite)[::-1], np.sort(want)[::-1], atol=1e-4)


def test_beam_one_is_greedy_and_errors():
    model = lm("transformer-tiny", seed=2)
    prompt = jnp.asarray([[1, 2]], jnp.int32)
    beams, _ = beam_search(model, prompt, beam_size=1, max_new_tokens=4)
    want = generate(jax.random.key(0), model, prompt, max_new_tokens=4, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(beams[:, 0]), np.asarray(want))
    with pytest.raises(ValueError, match="beam_size=0"):
        beam_search(model, prompt, beam_size=0, max_new_tokens=2)
    with pytest.raises(ValueError, match="eos_id=8"):
        beam_search(model, prompt, beam_size=2, max_new_tokens=2, eos_id=8)
    with pytest.raises(ValueError, match="window=0"):
        jacobi.generate(model, prompt, max_new_tokens=2, window=0)
    with pytest.raises(ValueError, match="model=int is not an LM"):
        jacobi.generate(3, prompt, max_new_tokens=2)
