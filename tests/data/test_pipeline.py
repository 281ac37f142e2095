import numpy as np
import pytest

from jaxar.data import corpora, pipeline, sources


def test_packing_segment_ids():
    src = pipeline.PackedRows([b"abc", b"defgh", b"ij", b"k"], 4)
    assert len(src) == 2  # 11 bytes -> 2 full rows
    r0, r1 = src[0], src[1]
    assert bytes(r0["tokens"].astype(np.uint8)) == b"abcd"
    np.testing.assert_array_equal(r0["segment_ids"], [1, 1, 1, 2])
    assert bytes(r1["tokens"].astype(np.uint8)) == b"efgh"
    np.testing.assert_array_equal(r1["segment_ids"], [1, 1, 1, 1])
    src = pipeline.PackedRows([b"ab", b"c", b"de"], 5)
    np.testing.assert_array_equal(src[0]["segment_ids"], [1, 1, 2, 3, 3])
    assert r0["tokens"].dtype == np.int32


def test_padded_rows():
    src = pipeline.PaddedRows([b"abc", b"abcdefgh"], 5)
    np.testing.assert_array_equal(src[0]["segment_ids"], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(src[0]["tokens"], [97, 98, 99, 0, 0])
    np.testing.assert_array_equal(src[1]["segment_ids"], [1] * 5)


def _source(n=40, length=3):
    return pipeline.ArraySource({"x": np.arange(n * length).reshape(n, length)}, name="t")


def test_host_sharding_reads_the_same_global_batches():
    src = _source()
    one = pipeline.batched(src, 8, seed=3)
    hosts = [pipeline.batched(src, 8, seed=3, host=pipeline.HostShard(p, 2)) for p in (0, 1)]
    for step in range(12):  # crosses epoch boundaries (5 batches per epoch)
        joined = np.concatenate([h[step]["x"] for h in hosts])
        np.testing.assert_array_equal(joined, one[step]["x"])
    epoch0 = np.concatenate([one[i]["x"][:, 0] for i in range(5)])
    epoch1 = np.concatenate([one[i]["x"][:, 0] for i in range(5, 10)])
    assert sorted(epoch0) == sorted(epoch1) == list(range(0, 120, 3))
    assert not np.array_equal(epoch0, epoch1)  # reshuffled per epoch
    with pytest.raises(ValueError, match="multiple of the host count"):
        pipeline.batched(src, 7, host=pipeline.HostShard(0, 2))


def test_iterator_state_round_trips():
    ds = pipeline.batched(_source(), 4, seed=1)
    it = pipeline.DataIterator(ds)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["x"] for _ in range(4)]
    it2 = pipeline.DataIterator(pipeline.batched(_source(), 4, seed=1), prefetch=0)
    it2.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(it2)["x"], e)


def test_stdlib_corpus_deterministic_with_held_out_split():
    files = corpora.stdlib_files()
    assert files == tuple(sorted(files)) and len(files) > 100
    assert not any("/test/" in f or f.startswith("test/") for f in files)
    held = [f for f in files if corpora.is_held_out(f)]
    assert 0 < len(held) < len(files) // 10
    docs = corpora.stdlib_documents("test", max_bytes=50_000)
    assert docs == corpora.stdlib_documents("test", max_bytes=50_000)
    with pytest.raises(ValueError, match="accepted"):
        corpora.stdlib_documents("validation")


def test_digits():
    train, test = corpora.digits("train"), corpora.digits("test")
    assert train["image"].shape == (1500, 8, 8, 1) and train["image"].dtype == np.uint8
    assert test["label"].shape == (297,) and train["image"].max() == 255
    src, info = sources.load("digits", "test", seq_len=2)
    assert info.kind == "image" and info.image_shape == (8, 8, 1) and len(src) == 297


def test_bad_dataset_name():
    with pytest.raises(ValueError, match="'tfds:<dataset>'"):
        sources.load("wikitext", "train", seq_len=8)


def test_tfds_mock_data_source_offline():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        src, info = sources.load("tfds:mnist", "train", seq_len=8)
        assert info.kind == "image" and info.image_shape == (28, 28, 1)
        assert info.num_classes == 10
        batch = pipeline.batched(src, 4, seed=0)[0]
        assert batch["image"].shape == (4, 28, 28, 1) and batch["image"].dtype == np.uint8
        assert batch["label"].shape == (4,)
        text, info = sources.load("tfds:lm1b", "train", seq_len=16)
        assert info.kind == "text" and text[0]["tokens"].shape == (16,)
