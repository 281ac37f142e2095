"""Datasets by name: the embedded corpora and tfds datasets read through ``tfds.data_source``.

Names: ``"stdlib"`` (text), ``"digits"`` (8x8 images), ``"photos"`` (32x32 RGB crops of
scikit-learn's two sample photos, 2 classes), ``"tfds:<name>"`` for any tfds
dataset prepared under ``data_dir`` in array_record format (``tfds:mnist``,
``tfds:cifar10``, ``tfds:imagenet_resized/32x32``, ``tfds:lm1b``). tfds is never asked
to download: a dataset that is not prepared is an error telling how to prepare it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxar.data import corpora, pipeline

EMBEDDED = ("stdlib", "digits", "photos")
TEXT_KEYS = ("text", "content", "sentence")


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data."""

    kind: str  # "text" or "image"
    vocab_size: int = pipeline.TEXT_VOCAB
    image_shape: tuple[int, ...] | None = None  # (H, W, C) for images
    num_classes: int | None = None


def _check_name(name: str) -> None:
    if name not in EMBEDDED and not name.startswith("tfds:"):
        raise ValueError(
            f"data.name={name!r} is not supported; accepted: {EMBEDDED} or 'tfds:<dataset>'"
        )


def load(name: str, split: str, *, seq_len: int, packing: str = "concat", data_dir=None):
    """``(source, DataInfo)`` for a dataset name and split (``"train"``/``"test"`` for the
    embedded sets, any tfds split string for tfds)."""
    _check_name(name)
    if packing not in ("concat", "pad"):
        raise ValueError(f"data.packing={packing!r} is not supported; accepted: ('concat', 'pad')")
    if name == "stdlib":
        docs = corpora.stdlib_documents(split)
        if packing == "pad":
            return pipeline.PaddedRows(docs, seq_len, name=f"stdlib/{split}"), DataInfo("text")
        return pipeline.PackedRows(docs, seq_len, name=f"stdlib/{split}"), DataInfo("text")
    if name == "digits":
        arrays = corpora.digits(split)
        info = DataInfo("image", image_shape=arrays["image"].shape[1:], num_classes=10)
        return pipeline.ArraySource(arrays, name=f"digits/{split}"), info
    if name == "photos":
        arrays = corpora.photos(split)
        info = DataInfo("image", image_shape=arrays["image"].shape[1:], num_classes=2)
        return pipeline.ArraySource(arrays, name=f"photos/{split}"), info
    return _tfds(name[len("tfds:") :], split, seq_len=seq_len, packing=packing, data_dir=data_dir)


def _tfds(name: str, split: str, *, seq_len: int, packing: str, data_dir):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - unknown name, not prepared, missing module, ...
        raise ValueError(
            f"tfds dataset {name!r} (split {split!r}) cannot be opened from data_dir="
            f"{data_dir!r}: {e}. Prepare it first, e.g. `tfds build {name} "
            f"--file_format=array_record` (jaxar never downloads during training)"
        ) from e
    features = builder.info.features
    if "image" in features:
        shape = tuple(features["image"].shape)
        classes = features["label"].num_classes if "label" in features else None

        def to_image(rec):
            return {
                "image": np.asarray(rec["image"], np.uint8),
                "label": np.asarray(rec.get("label", 0), np.int32),
            }

        src = pipeline.MapRecords(source, to_image, name=f"tfds:{name}/{split}")
        return src, DataInfo("image", image_shape=shape, num_classes=classes)
    key = next((k for k in TEXT_KEYS if k in features), None)
    if key is None:
        raise ValueError(
            f"tfds dataset {name!r} has neither an 'image' nor a text feature {TEXT_KEYS}; "
            f"features: {list(features)}"
        )
    if packing == "pad":
        return pipeline.PaddedRows(source, seq_len, key=key, name=f"tfds:{name}/{split}"), (
            DataInfo("text")
        )
    docs = []
    for i in range(len(source)):
        d = source[i][key]
        docs.append(d.encode() if isinstance(d, str) else bytes(d))
    return pipeline.PackedRows(docs, seq_len, name=f"tfds:{name}/{split}"), DataInfo("text")
