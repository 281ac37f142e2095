"""The token families' code cache: the dataset is encoded once by the frozen tokenizer;
cached codes equal an on-the-fly encode; a second use reads the cache (no encode); a
cache of another key or row count is detected (rebuilt, or a one-line error)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.data import corpora, images, pipeline
from jaxar.models.vq import VQ, VQConfig
from jaxar.train import tokenizer as tok_lib

KEY = dict(data="digits", split="test", step=7, hash="0123456789abcdef")


@pytest.fixture(scope="module")
def tokenizer():
    cfg = VQConfig.preset("tiny", image_size=8, channels=1, num_classes=10, width=8)
    # random weights set from numpy (eager initialisers compile one program per conv)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: VQ(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: jnp.asarray(0.5 * rng.standard_normal(x.shape), x.dtype), state)
    return nnx.merge(graphdef, state)


def _source(n):
    arrays = corpora.digits("test")
    return pipeline.ArraySource({k: v[:n] for k, v in arrays.items()}, name=f"digits{n}")


def test_cache_equals_on_the_fly_and_is_reused(tokenizer, tmp_path, monkeypatch):
    src = _source(21)  # not a multiple of the batch: the padded last batch is cut
    arrays, built = tok_lib.cached_codes(tokenizer, src, directory=tmp_path, key=KEY, batch_size=4)
    assert built
    images = np.stack([src[i]["image"] for i in range(len(src))])
    expect = np.asarray(
        nnx.jit(lambda m, x: tok_lib.flat_codes(m.encode_ids(x)))(tokenizer, images)
    )
    assert len(np.unique(expect)) > 4  # a real encoding, not one code everywhere
    np.testing.assert_array_equal(arrays["codes"], expect)
    np.testing.assert_array_equal(arrays["label"], corpora.digits("test")["label"][:21])
    assert arrays["codes"].shape == (21, 16)
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed

    def no_encode(*a, **k):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(tok_lib, "encode_source", no_encode)
    again, built = tok_lib.cached_codes(tokenizer, src, directory=tmp_path, key=KEY)
    assert not built
    np.testing.assert_array_equal(again["codes"], arrays["codes"])


def test_mismatched_cache_is_detected(tokenizer, tmp_path):
    src = _source(9)
    _, built = tok_lib.cached_codes(tokenizer, src, directory=tmp_path, key=KEY, batch_size=4)
    (path,) = tmp_path.glob("*.npz")
    full = dict(KEY, rows=9, codes_per_row=16, num_codes=64)
    assert tok_lib.read_codes(path, full)["codes"].shape == (9, 16)
    with pytest.raises(ValueError, match=r"another tokenizer/data \(rows=9 != 10\)$"):
        tok_lib.read_codes(path, dict(full, rows=10))
    # another row count (the split changed) is another file; the first one stays valid
    said = []
    arrays, built = tok_lib.cached_codes(
        tokenizer, _source(5), directory=tmp_path, key=KEY, say=said.append, batch_size=4
    )
    assert built and arrays["codes"].shape == (5, 16) and not said
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert tok_lib.read_codes(path, full)["codes"].shape == (9, 16)
    # a file under the expected name written for another key: rebuilt, with a warning line
    tok_lib.write_codes(
        path, {"codes": np.zeros((9, 16)), "label": np.zeros(9)}, dict(full, step=6)
    )
    _, built = tok_lib.cached_codes(
        tokenizer, src, directory=tmp_path, key=KEY, say=said.append, batch_size=4
    )
    assert built and len(said) == 1 and "step=6 != 7" in said[0] and "rebuilding" in said[0]
    assert tok_lib.read_codes(path, full)["codes"].shape == (9, 16)
    # codes of the wrong count or out of range under a matching key
    tok_lib.write_codes(path, {"codes": np.zeros((5, 4)), "label": np.zeros(5)}, dict(full, rows=5))
    with pytest.raises(ValueError, match=r"holds codes \(5, 4\); expected \(5, 16\)"):
        tok_lib.read_codes(path, dict(full, rows=5))
    bad = np.full((5, 16), 64)
    tok_lib.write_codes(path, {"codes": bad, "label": np.zeros(5)}, dict(full, rows=5))
    with pytest.raises(ValueError, match=r"ids outside \[0, 64\)"):
        tok_lib.read_codes(path, dict(full, rows=5))
    path.write_bytes(path.read_bytes()[:50])  # a truncated file
    with pytest.raises(ValueError, match="is unreadable"):
        tok_lib.read_codes(path, full)


def test_flat_codes_concatenates_scales():
    ids = [np.full((2, s, s), s) for s in (1, 2, 4)]
    flat = np.asarray(tok_lib.flat_codes(ids))
    assert flat.shape == (2, 21)
    np.testing.assert_array_equal(flat[0], [1] * 1 + [2] * 4 + [4] * 16)


def test_caches_of_other_crops_are_kept_apart(tokenizer, tmp_path):
    """The resize-and-crop step is part of the key and of the file name: centre 8x8 of a 1x
    or a 1.25x resize are encoded once each, and alternating runs reuse both."""
    src = _source(5)
    for ratio, built_want in ((1.0, True), (1.0, False), (1.25, True), (1.0, False), (1.25, False)):
        prepped = images.PreparedImages(src, images.ImagePrep(8, ratio), name="d")
        _, built = tok_lib.cached_codes(
            tokenizer, prepped, directory=tmp_path, key=KEY, batch_size=5, say=lambda _: None
        )
        assert built == built_want, ratio
