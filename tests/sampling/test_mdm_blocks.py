"""Semi-autoregressive blocks, prefix / dual KV caches and early stop at EOS for the
masked-diffusion samplers (jaxar/MATHS.md s.11)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.models import mdlm
from jaxar.sampling import masked_diffusion as md
from jaxar.testing import assert_allclose
from tests.sampling.test_masked_diffusion_samplers import (
    JOINT,
    MASK,
    SEQS,
    L,
    _chi2_pvalue,
    _run,
    exact_denoiser,
)

TV, TL = 11, 8  # the tiny MDLM's data vocabulary and length


@pytest.fixture(scope="module")
def model():
    cfg = mdlm.MDLMConfig(vocab_size=TV, d_model=16, num_layers=2, num_heads=2, mlp_ratio=2.0)
    return mdlm.MDLM(cfg, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_forward_kv_and_span_match_the_full_forward(model):
    x = jax.random.randint(jax.random.key(0), (2, TL), 0, TV + 1)
    full = model(x)
    logits, kv = model.forward_kv(x)
    assert_allclose(logits, full, dtype=jnp.float32)
    for start, end in [(2, 5), (4, TL)]:  # with the K/V of the same input: exact
        span = model.forward_span(x[:, start:end], kv, start)
        assert_allclose(span, full[:, start:end], dtype=jnp.float32)
    # a cached K/V from another input makes the span's logits an approximation
    other = model.forward_kv(jnp.full_like(x, TV))[1]
    assert not np.allclose(model.forward_span(x[:, 2:5], other, 2), full[:, 2:5], atol=1e-4)


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def _sample_jit(graphdef, state, key, options):
    model = nnx.merge(graphdef, state)
    return md.sample(key, model, mask_id=model.config.mask_id, **dict(options))


def _mdlm_sample(model, seed, **opts):
    """Jitted over the split model (its parameters are arguments, not constants)."""
    kw = {**dict(batch_size=4, length=TL, method="confidence"), **opts}
    graphdef, state = nnx.split(model)
    return _sample_jit(graphdef, state, jax.random.key(seed), tuple(sorted(kw.items())))


def test_dual_cache_refreshed_every_call_equals_uncached_blocks(model):
    """refresh_every=1 reruns the full sequence at every call: the uncached result, token
    for token."""
    opts = dict(block_length=4, num_steps=4)
    ref = _mdlm_sample(model, 1, **opts)
    got = _mdlm_sample(model, 1, cache="dual", refresh_every=1, **opts)
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    assert int(got.num_calls) == int(ref.num_calls) == 4


@pytest.mark.slow
def test_prefix_cache_with_one_block_equals_no_cache(model):
    opts = dict(method="threshold", threshold=0.2)
    ref = _mdlm_sample(model, 2, **opts)
    np.testing.assert_array_equal(_mdlm_sample(model, 2, cache="prefix", **opts).tokens, ref.tokens)


@pytest.mark.slow
@pytest.mark.parametrize("method,opts", [("threshold", dict(threshold=0.3)), ("ancestral", {})])
def test_prefix_cache_refreshed_every_call_equals_uncached_blocks(model, method, opts):
    opts = dict(method=method, block_length=4, num_steps=6, **opts)
    ref = _mdlm_sample(model, 1, **opts)
    got = _mdlm_sample(model, 1, cache="prefix", refresh_every=1, **opts)
    np.testing.assert_array_equal(got.tokens, ref.tokens)
    assert int(got.num_calls) == int(ref.num_calls)


@pytest.mark.slow
def test_caches_once_per_block_are_valid_approximations(model):
    for cache in ("prefix", "dual"):
        out = _mdlm_sample(model, 3, block_length=2, num_steps=8, cache=cache)
        tokens = np.asarray(out.tokens)
        assert ((tokens >= 0) & (tokens < TV)).all() and int(out.num_calls) == 8


def test_blocks_are_decoded_left_to_right():
    """Every denoiser input: a block holds a revealed token only once every block before it
    is fully revealed."""
    seen = []

    def recorded(z):
        jax.debug.callback(lambda z: seen.append(np.asarray(z)), z)
        return jnp.zeros((*z.shape, 4))

    out = md.sample(
        jax.random.key(0),
        recorded,
        batch_size=2,
        length=6,
        mask_id=3,
        method="first_hitting",
        block_length=2,
    )
    jax.effects_barrier()
    assert int(out.num_calls) == 6 == len(seen)
    for z in seen:
        blocks_done = (z != 3).reshape(2, 3, 2)
        for b in range(1, 3):
            started = blocks_done[:, b].any(-1)
            assert (~started | blocks_done[:, :b].all((-1, -2))).all()


def test_first_hitting_in_blocks_of_one_is_exact():
    """Blocks of one position: left-to-right sampling from exact conditionals."""
    tokens, calls = _run("first_hitting", None, seed=21, n=6000, block_length=1)
    assert calls == L and _chi2_pvalue(tokens, JOINT) > 1e-3


EOS = 0


def _eos_fill(seqs):
    seqs = np.array(seqs)
    for row in seqs:
        hit = np.flatnonzero(row == EOS)
        if hit.size:
            row[hit[0] + 1 :] = EOS
    return seqs


def test_threshold_early_stop_at_eos_keeps_the_law_of_the_text():
    """threshold=1.0 (one exact reveal per call), stopping once an EOS and all before it are
    revealed: the text up to the first EOS keeps the data law (the rest is EOS)."""
    tokens, _ = _run("threshold", None, 22, n=6000, threshold=1.0, eos_id=EOS)
    np.testing.assert_array_equal(tokens, _eos_fill(tokens))
    law = np.zeros(len(SEQS))
    index = {tuple(s): i for i, s in enumerate(SEQS)}
    for seq, p in zip(_eos_fill(SEQS), JOINT, strict=True):
        law[index[tuple(seq)]] += p
    assert _chi2_pvalue(tokens, law) > 1e-3
    # a sequence starting with EOS needs one call
    one = md.sample(
        jax.random.key(0),
        exact_denoiser,
        batch_size=1,
        length=L,
        mask_id=MASK,
        method="threshold",
        threshold=1.0,
        eos_id=EOS,
        prompt=jnp.asarray([[EOS]]),
    )
    assert int(one.num_calls) == 0
    np.testing.assert_array_equal(one.tokens, [[EOS] * L])


def test_block_cache_and_eos_argument_errors(model):
    kw = dict(batch_size=1, length=6, mask_id=MASK)
    key = jax.random.key(0)
    cases = [
        (
            dict(method="confidence", block_length=4),
            r"^block_length=4 is not accepted; expected None or a divisor of length=6",
        ),
        (dict(method="confidence", block_length=0), r"^block_length=0 is not accepted"),
        (dict(method="confidence", cache="full"), r"^cache='full' is not supported"),
        (dict(method="confidence", cache="prefix"), r"^cache='prefix' needs a denoiser with"),
        (dict(method="confidence", refresh_every=2), r"^refresh_every=2 is not accepted"),
        (dict(method="ancestral", eos_id=0), r"^eos_id=0 is not accepted with"),
        (dict(method="threshold", threshold=0.5, eos_id=MASK), r"^eos_id=3 is not accepted"),
    ]
    for opts, match in cases:
        with pytest.raises(ValueError, match=match):
            md.sample(key, exact_denoiser, **kw, **opts)
    with pytest.raises(ValueError, match=r"^refresh_every=0 is not accepted"):
        _mdlm_sample(model, 0, block_length=4, cache="dual", refresh_every=0)
