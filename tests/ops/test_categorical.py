"""Faithfulness of the float32 categorical sampler (jaxar/MATHS.md s.5, "Precision").

The heavy-tailed test distribution is one step of an MDLM ancestral sampler with many
steps: one "stay masked" outcome with probability 1 - eps and 50256 tokens sharing eps
with probabilities log-uniform in [1.5e-8, 1.5e-7] (eps ~ 0.003). Those are exactly the
tokens that naive float32 Gumbel-max cannot represent (its exponential variates stop at
2^-23 ~ 1.2e-7), so its tail mass drops to about a third.

Statistics (z-scores against the exact float64 distribution): tail mass (binomial) and
the entropy estimate mean(-log p(x)) over samples (unbiased for H(p) when x ~ p).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxar.ops import categorical, gumbel_categorical
from jaxar.ops.categorical import INVALID, check_draws, exponential, valid_logits

V = 50257
_CHUNK = 500


def _heavy_tail():
    tail = np.exp(np.linspace(np.log(1.5e-8), np.log(1.5e-7), V - 1))
    eps = tail.sum()
    return np.concatenate([[1.0 - eps], tail])


def _draw(sampler, logits, n, seed):
    # rbg keys: the same algorithm on any uniform bits, ~4x cheaper bits than threefry on CPU.
    @jax.jit
    def run(key):
        keys = jax.random.split(key, n // _CHUNK)
        return jax.lax.map(lambda k: sampler(k, logits, shape=(_CHUNK,)), keys).reshape(-1)

    return np.asarray(run(jax.random.key(seed, impl="rbg")))


def _z_scores(p, x):
    n = x.size
    eps = p[1:].sum()
    z_tail = ((x >= 1).mean() - eps) / np.sqrt(eps * (1 - eps) / n)
    nlp = -np.log(p)
    entropy = (p * nlp).sum()
    sd = np.sqrt((p * (nlp - entropy) ** 2).sum() / n)
    z_entropy = (nlp[x].mean() - entropy) / sd
    return z_tail, z_entropy


def _check(n, seed, naive_below):
    p = _heavy_tail()
    logits = jnp.asarray(np.log(p), jnp.float32)
    z_tail, z_ent = _z_scores(p, _draw(categorical, logits, n, seed))
    assert abs(z_tail) < 4 and abs(z_ent) < 4, (z_tail, z_ent)
    z_tail, z_ent = _z_scores(p, _draw(gumbel_categorical, logits, n, seed))
    # The same statistics expose the naive sampler's truncated tail (expected z ~ -0.036
    # sqrt(n): a third of the tail mass survives).
    assert z_tail < naive_below and z_ent < naive_below, (z_tail, z_ent)


@pytest.mark.slow
def test_faithful_tail_and_entropy_v50257():
    _check(n=10_000, seed=0, naive_below=-3.0)


@pytest.mark.slow
def test_faithful_tail_and_entropy_v50257_large():
    _check(n=60_000, seed=1, naive_below=-6.0)


def test_small_vocab_chi_square_and_shapes():
    logits = jnp.log(jnp.asarray([0.5, 0.25, 0.125, 0.0625, 0.0625]))
    x = categorical(jax.random.key(3), logits, shape=(20_000,))
    assert x.shape == (20_000,) and x.dtype == jnp.int32
    counts = np.bincount(np.asarray(x), minlength=5)
    p = np.exp(np.asarray(logits, np.float64))
    assert scipy.stats.chisquare(counts, 20_000 * p / p.sum()).pvalue > 1e-3
    # axis, broadcasting of ``shape`` and -inf logits
    logits_VxB = jnp.asarray([[0.0, -jnp.inf], [-jnp.inf, 0.0], [1.0, 0.0]])
    y = categorical(jax.random.key(4), logits_VxB, axis=0, shape=(7, 2))
    assert y.shape == (7, 2)
    assert set(np.asarray(y[:, 0]).tolist()) <= {0, 2}
    assert set(np.asarray(y[:, 1]).tolist()) <= {1, 2}
    with pytest.raises(ValueError, match="shape"):
        categorical(jax.random.key(0), jnp.zeros((3, 4)), shape=(5,))


def test_exponential_moments_and_small_quantile():
    e = np.asarray(exponential(jax.random.key(5, impl="rbg"), (1 << 22,)))
    assert e.min() > 0 and e.dtype == np.float32
    assert abs(e.mean() - 1.0) < 5 / np.sqrt(1 << 22)
    x = 1e-4
    expected = (1 << 22) * -np.expm1(-x)
    assert abs((e < x).sum() - expected) < 5 * np.sqrt(expected)


_GARBAGE_ROWS = {
    "all -inf": [-np.inf] * 5,
    "all nan": [np.nan] * 5,
    "one nan": [0.0, 0.0, np.nan, 0.0, 0.0],
    "one +inf": [0.0, np.inf, 0.0, 0.0, 0.0],
    "-inf and nan": [-np.inf, np.nan, -np.inf, -np.inf, -np.inf],
}


@pytest.mark.parametrize("sampler", [categorical, gumbel_categorical])
def test_garbage_rows_draw_invalid_under_jit(sampler):
    """Every garbage row draws -1 (never a plausible index), the valid rows beside it are
    untouched (0 or 4 only, their finite entries); also with a broadcast ``shape``."""
    good = [0.0, -np.inf, -np.inf, -np.inf, 0.0]
    names = list(_GARBAGE_ROWS)
    logits = jnp.asarray([good, *_GARBAGE_ROWS.values(), good], jnp.float32)
    draws = np.asarray(
        jax.jit(lambda k, x: sampler(k, x, shape=(64, x.shape[0])))(jax.random.key(7), logits)
    )
    for i, name in enumerate(names, start=1):
        assert (draws[:, i] == INVALID).all(), name
    for i in (0, len(names) + 1):
        assert set(draws[:, i].tolist()) == {0, 4}
    np.testing.assert_array_equal(
        np.asarray(valid_logits(logits)), [True] + [False] * len(names) + [True]
    )
    # bfloat16 logits keep their non-finite values
    assert (
        int(sampler(jax.random.key(0), jnp.asarray(_GARBAGE_ROWS["one nan"], jnp.bfloat16))) == -1
    )


def test_check_draws_raises_on_concrete_invalid_only():
    ok = jnp.asarray([[1, 2], [3, 0]], jnp.int32)
    assert check_draws(ok, "t") is ok
    with pytest.raises(
        ValueError, match=r"t: no token could be drawn in 1 of 3 row\(s\) \(rows \[1\]\)"
    ):
        check_draws(jnp.asarray([[1, 2], [3, INVALID], [0, 0]]), "t")
    # traced: nothing to check, the sentinel flows out
    out = jax.jit(lambda x: check_draws(x, "t"))(jnp.asarray([INVALID]))
    assert int(out[0]) == INVALID
