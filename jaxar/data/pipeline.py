"""Grain pipelines: random-access sources, packing, shuffling, batching, host sharding.

A pipeline is a ``grain.MapDataset`` of host-local batches: record indices are shuffled
(a fresh permutation each epoch), grouped into *global* batches, and each host reads only
its contiguous slice ``[p * B / P, (p + 1) * B / P)`` of every global batch, so P hosts
together see exactly the rows one host would, in the same order. Iteration goes through
``grain``'s ``DatasetIterator``, whose ``get_state()`` / ``set_state()`` is checkpointed
with the model.

Sources:
  ``PackedRows``  documents concatenated into one byte stream and cut into rows of
                  ``seq_len`` tokens; ``segment_ids`` number the documents inside a row
                  from 1 (a document cut at a row boundary continues as a new segment).
  ``PaddedRows``  one document per row, truncated or padded (segment id 0 = padding).
  ``ArraySource`` rows of in-memory arrays (images and labels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

TEXT_VOCAB = 256  # byte-level tokens 0..255


class PackedRows:
    """Documents packed into fixed-length rows with segment ids (random access).

    Row ``i`` is bytes ``[i * L, (i + 1) * L)`` of the concatenated stream; its
    ``segment_ids[j] = 1 + (document of byte j) - (document of byte 0)``.
    """

    def __init__(self, documents: Sequence[bytes], seq_len: int, *, name: str = "packed"):
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len} must be >= 2")
        self.seq_len = int(seq_len)
        self.name = name
        self._stream = np.frombuffer(b"".join(documents), dtype=np.uint8)
        lengths = np.array([len(d) for d in documents], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self._len = len(self._stream) // self.seq_len
        if self._len == 0:
            raise ValueError(f"{name}: {len(self._stream)} bytes make no row of {seq_len}")

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        i = int(i)
        lo = i * self.seq_len
        pos = np.arange(lo, lo + self.seq_len)
        doc = np.searchsorted(self._starts, pos, side="right")
        return {
            "tokens": self._stream[lo : lo + self.seq_len].astype(np.int32),
            "segment_ids": (doc - doc[0] + 1).astype(np.int32),
        }

    def __repr__(self) -> str:  # stable: grain checks it when restoring an iterator state
        return f"PackedRows(name={self.name!r}, seq_len={self.seq_len}, rows={self._len})"


class PaddedRows:
    """One document per row: truncated to ``seq_len`` or padded with segment id 0."""

    def __init__(self, source, seq_len: int, *, key: str = "text", name: str = "padded"):
        self.source, self.seq_len, self.key, self.name = source, int(seq_len), key, name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rec = self.source[int(i)]
        data = rec[self.key] if isinstance(rec, dict) else rec
        if isinstance(data, str):
            data = data.encode()
        raw = np.frombuffer(bytes(data), dtype=np.uint8)[: self.seq_len]
        tokens = np.zeros(self.seq_len, np.int32)
        seg = np.zeros(self.seq_len, np.int32)
        tokens[: len(raw)] = raw
        seg[: len(raw)] = 1
        return {"tokens": tokens, "segment_ids": seg}

    def __repr__(self) -> str:
        return f"PaddedRows(name={self.name!r}, seq_len={self.seq_len}, rows={len(self)})"


class ArraySource:
    """Rows of a dict of equal-length arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], *, name: str = "arrays"):
        lens = {k: len(v) for k, v in arrays.items()}
        if len(set(lens.values())) != 1:
            raise ValueError(f"{name}: arrays have different lengths {lens}")
        self.arrays, self.name = arrays, name
        self._len = next(iter(lens.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[int(i)] for k, v in self.arrays.items()}

    def __repr__(self) -> str:
        return f"ArraySource(name={self.name!r}, rows={self._len})"


class MapRecords:
    """A source whose records go through ``fn`` (e.g. tfds image dicts -> uint8 arrays)."""

    def __init__(self, source, fn: Callable[[Any], dict], *, name: str):
        self.source, self.fn, self.name = source, fn, name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        return self.fn(self.source[int(i)])

    def __repr__(self) -> str:
        return f"MapRecords(name={self.name!r}, rows={len(self)})"


def _collate(records: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


@dataclasses.dataclass(frozen=True)
class HostShard:
    """This host's place among ``count`` hosts reading one global batch."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"host index={self.index} must be in [0, count={self.count})")


def batched(
    source,
    global_batch: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    host: HostShard = HostShard(),
):
    """A ``grain.MapDataset`` of this host's slice of each global batch.

    Args:
      source: a random-access source (``len`` and ``__getitem__``).
      global_batch: rows per step summed over hosts; divisible by ``host.count``.
      seed: shuffling seed (each epoch gets a different permutation).
      shuffle: shuffle rows (False for evaluation: rows in order). A shuffled source with
        random augmentation (``PreparedImages`` with a random crop or flip) is read
        through its ``augmented(i, rng)``.
      num_epochs: None = repeat forever.
      host: which slice of each global batch this host reads.
    """
    import grain

    if global_batch < 1 or global_batch % host.count:
        raise ValueError(
            f"global_batch={global_batch} must be a positive multiple of the host count "
            f"{host.count}"
        )
    if len(source) < global_batch:
        raise ValueError(f"{source!r} has {len(source)} rows < global_batch={global_batch}")
    local = global_batch // host.count
    lo = host.index * local
    ds = grain.MapDataset.range(len(source))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).batch(global_batch, drop_remainder=True)
    if shuffle and getattr(source, "is_random", False):  # random crops / flips (training)

        def rows(j, idx):
            # one generator per (seed, global batch j, row of the global batch): every
            # host draws its rows' crops as one host would, and a resumed iterator replays them
            return _collate(
                [
                    source.augmented(int(i), np.random.default_rng((seed, j, lo + r)))
                    for r, i in enumerate(idx[lo : lo + local])
                ]
            )

        return ds.map_with_index(rows)
    return ds.map(lambda idx: _collate([source[int(i)] for i in idx[lo : lo + local]]))


class DataIterator:
    """Iterator over host-local batches with a checkpointable position (grain state)."""

    def __init__(self, dataset, *, prefetch: int = 2):
        import grain

        opts = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
        self._ds = dataset.to_iter_dataset(opts)
        self._it = iter(self._ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict:
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        self._it.set_state(state)
