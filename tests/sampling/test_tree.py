"""Tree verification: tree_mask == brute force; tree decoding == greedy generate; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.ops import tree_mask
from jaxar.sampling import generate, tree
from tests.sampling.test_speculative import lm


def _brute_mask(parents):
    n = len(parents)
    m = np.zeros((n, n), bool)
    for i in range(n):
        j = i
        while j >= 0:
            m[i, j] = True
            j = parents[j]
    return m


def test_tree_mask_equals_brute_force():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 17):
        parents = np.array([-1] + [int(rng.integers(-1, i)) for i in range(1, n)], np.int32)
        np.testing.assert_array_equal(np.asarray(tree_mask(parents)), _brute_mask(parents))
    par, depth, rank = tree.tree_structure((2, 3))
    assert len(par) == 1 + 2 + 6 and depth.tolist() == [0, 1, 1] + [2] * 6
    np.testing.assert_array_equal(np.asarray(tree_mask(par)), _brute_mask(par))
    assert rank.tolist() == [0, 0, 1, 0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match=r"parents\[1\]=1 is invalid"):
        tree_mask(np.array([-1, 1]))
    with pytest.raises(ValueError, match="parents has shape"):
        tree_mask(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match=r"tree=\(2, 0\) is invalid"):
        tree.tree_structure((2, 0))


def test_tree_decoding_equals_greedy_generate():
    target = lm("transformer-tiny", 0, vocab=8, mtp_heads=3)
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6], [0, 7, 7], [6] * 3], jnp.int32)
    want = generate(jax.random.key(0), target, prompt, max_new_tokens=9, temperature=0.0)
    got, stats = tree.generate(target, prompt, max_new_tokens=9, tree=(2, 2, 1), return_stats=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    acc = np.asarray(stats["accepted"])
    # rows accept different lengths in the same calls (a row alone is its greedy row)
    assert len(set(acc.tolist())) > 1 and int(stats["target_calls"]) <= 9
    assert np.all(np.asarray(stats["row_calls"]) + acc >= 9)  # a + 1 tokens per call


def test_tree_bad_input():
    target = lm("transformer-tiny", 0, mtp_heads=3)
    prompt = jnp.asarray([[1, 2]], jnp.int32)
    with pytest.raises(ValueError, match="depth 4 > the target's mtp_heads=3"):
        tree.generate(target, prompt, max_new_tokens=2, tree=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="tree=\\(\\) is invalid"):
        tree.generate(target, prompt, max_new_tokens=2, tree=())
    with pytest.raises(
        ValueError,
        match="tree decoding without a draft needs multi-token prediction heads; .* mtp_heads=0",
    ):
        tree.generate(lm("transformer-tiny", 0), prompt, max_new_tokens=2)
    with pytest.raises(ValueError, match="recurrent or sliding-window layer"):
        tree.generate(lm("gateloop-tiny", 0, mtp_heads=3), prompt, max_new_tokens=2)


@pytest.mark.slow  # ~35 s of CPU: the Pallas interpreter traces the kernel per call shape
def test_tree_decoding_on_the_flash_kernel_equals_greedy_generate(monkeypatch):
    """The tree mask reaches the Pallas flash kernel as its dense block mask (interpret mode
    on CPU); the tokens are greedy ``generate``'s (of the same weights, XLA attention)."""
    from jaxar import dispatch

    masks = []
    kernel = dispatch.kernel

    def spy(name):
        fn = kernel(name)

        def call(*args, block_mask=None, **kw):
            masks.append(None if block_mask is None else block_mask.shape)
            return fn(*args, block_mask=block_mask, **kw)

        return call

    monkeypatch.setattr(dispatch, "kernel", spy)
    ref = lm("transformer-tiny", 0, vocab=8, mtp_heads=2)
    flash = lm("transformer-tiny", 0, vocab=8, mtp_heads=2, mixer_options=(("impl", "pallas"),))
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    want = generate(jax.random.key(0), ref, prompt, max_new_tokens=5, temperature=0.0)
    assert not masks
    got = tree.generate(flash, prompt, max_new_tokens=5, tree=(2, 1))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    n_nodes = 1 + 2 + 2
    # (B, 1, N, cache): prefix columns visible, the tree part from tree_mask
    assert (2, 1, n_nodes) in {m[:3] for m in masks if m is not None}


def _noisy_copy(model, scale, seed):
    """The model with Gaussian noise on its weights: a draft that agrees only partly."""
    graphdef, params = nnx.split(model)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [
        x + scale * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, noisy))


def test_draft_tree_decoding_equals_greedy_generate():
    target = lm("transformer-tiny", 0, vocab=8, mtp_heads=3)  # greedy generate compiled above
    draft = _noisy_copy(target, 0.3, 1)
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6], [0, 7, 7], [6] * 3], jnp.int32)
    want = generate(jax.random.key(0), target, prompt, max_new_tokens=9, temperature=0.0)
    got, stats = tree.generate(
        target, prompt, max_new_tokens=9, tree=(2, 2, 1), draft=draft, return_stats=True
    )
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    acc = np.asarray(stats["accepted"])
    assert len(set(acc.tolist())) > 1 and acc.sum() > 0
    assert int(stats["draft_calls"]) == 3 * int(stats["target_calls"])


@pytest.mark.slow
def test_draft_tree_decoding_with_a_recurrent_draft():
    target = lm("transformer-tiny", 0, vocab=8)
    prompt = jnp.asarray([[1, 2, 3], [4, 5, 6], [0, 7, 7], [6] * 3], jnp.int32)
    want = generate(jax.random.key(0), target, prompt, max_new_tokens=9, temperature=0.0)
    for kind, seed in (("gateloop-tiny", 2), ("gss-tiny", 3)):
        draft = lm(kind, seed, vocab=8)
        got = tree.generate(target, prompt, max_new_tokens=9, tree=(3, 1, 1, 1), draft=draft)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_draft_tree_bad_input():
    target = lm("transformer-tiny", 0, vocab=8)
    prompt = jnp.asarray([[1, 2]], jnp.int32)
    with pytest.raises(ValueError, match="draft vocabulary size 4 differs from the target's 8"):
        tree.generate(target, prompt, max_new_tokens=2, draft=lm("transformer-tiny", 1))
    with pytest.raises(ValueError, match="draft=str is not an LM"):
        tree.generate(target, prompt, max_new_tokens=2, draft="tiny")
    with pytest.raises(ValueError, match="recurrent or sliding-window layer"):
        tree.generate(lm("gateloop-tiny", 0, vocab=8), prompt, max_new_tokens=2, draft=target)
    with pytest.raises(ValueError, match="asks for 9 candidates per depth from a vocabulary of 8"):
        tree.generate(target, prompt, max_new_tokens=2, tree=(9,), draft=target)
