"""Embedded corpora that are on every machine: no download, deterministic, with a held-out split.

- ``stdlib``: byte-level text of the Python standard library's own ``.py`` files
  (``sysconfig.get_paths()["stdlib"]``, test suites and site-packages excluded), one
  document per file in sorted path order; a file is held out when ``crc32(path) % 20 == 0``.
- ``digits``: scikit-learn's bundled ``load_digits`` (1797 8x8 grey images, 10 classes),
  rescaled from 0..16 to uint8 0..255; the last 297 images are held out.
- ``photos``: 32x32 RGB crops of the two photographs shipped inside scikit-learn
  (``load_sample_images``: china.jpg and flower.jpg, 427x640), each first halved by 2x2
  averaging (213x320), cropped on a stride-8 grid; the label is the photo (2 classes).
  Crops starting in the right-most 64 columns (of 320) are held out; train crops end
  before them (no pixel is shared between the splits).
"""

from __future__ import annotations

import functools
import pathlib
import sysconfig
import zlib

import numpy as np

SPLITS = ("train", "test")
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "dist-packages"}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not supported; accepted: {SPLITS}")


@functools.cache
def stdlib_files() -> tuple[str, ...]:
    """Relative paths (posix, sorted) of the standard library's ``.py`` source files."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]):
            continue
        out.append(rel.as_posix())
    return tuple(sorted(out))


def is_held_out(path: str) -> bool:
    return zlib.crc32(path.encode()) % 20 == 0


def stdlib_documents(split: str = "train", *, max_bytes: int | None = None) -> list[bytes]:
    """The stdlib corpus as a list of byte documents (one per file), deterministic order.

    Args:
      split: ``"train"`` or ``"test"`` (held-out files, about 5% of the bytes).
      max_bytes: stop once this many bytes are collected (None = all, ~12 MB).
    """
    _check_split(split)
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for rel in stdlib_files():
        if is_held_out(rel) != (split == "test"):
            continue
        try:
            data = (root / rel).read_bytes()
        except OSError:
            continue
        if not data:
            continue
        docs.append(data)
        total += len(data)
        if max_bytes is not None and total >= max_bytes:
            break
    return docs


@functools.cache
def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    return images, d.target.astype(np.int32)


DIGITS_TEST = 297


def digits(split: str = "train") -> dict[str, np.ndarray]:
    """``{"image": uint8 (N, 8, 8, 1), "label": int32 (N,)}``; 1500 train / 297 test."""
    _check_split(split)
    images, labels = _digits()
    sl = slice(None, -DIGITS_TEST) if split == "train" else slice(-DIGITS_TEST, None)
    return {"image": images[sl], "label": labels[sl]}


PHOTO_SIZE = 32
PHOTO_STRIDE = 8
PHOTO_TEST_COLUMNS = 64


@functools.cache
def _photos():
    from sklearn.datasets import load_sample_images

    out = {split: ([], []) for split in SPLITS}
    for label, img in enumerate(load_sample_images().images):
        h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
        half = img[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
        half = np.round(half).astype(np.uint8)
        hh, ww = half.shape[:2]
        cut = ww - PHOTO_TEST_COLUMNS
        for y in range(0, hh - PHOTO_SIZE + 1, PHOTO_STRIDE):
            for x in range(0, ww - PHOTO_SIZE + 1, PHOTO_STRIDE):
                if x >= cut:
                    split = "test"
                elif x + PHOTO_SIZE <= cut:
                    split = "train"
                else:
                    continue
                out[split][0].append(half[y : y + PHOTO_SIZE, x : x + PHOTO_SIZE])
                out[split][1].append(label)
    return {
        split: {"image": np.stack(imgs), "label": np.asarray(labels, np.int32)}
        for split, (imgs, labels) in out.items()
    }


def photos(split: str = "train") -> dict[str, np.ndarray]:
    """``{"image": uint8 (N, 32, 32, 3), "label": int32 (N,)}`` crops of scikit-learn's two
    sample photos (label = photo); 1334 train / 230 test."""
    _check_split(split)
    return _photos()[split]
