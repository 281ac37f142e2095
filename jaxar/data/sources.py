"""Datasets by name: the embedded corpora and tfds datasets read through ``tfds.data_source``.

Names: ``"stdlib"`` (text), ``"digits"`` (8x8 images), ``"photos"`` (32x32 RGB crops of
scikit-learn's two sample photos, 2 classes), ``"tfds:<name>"`` for any tfds
dataset prepared under ``data_dir`` in array_record format (``tfds:mnist``,
``tfds:cifar10``, ``tfds:imagenet_resized/32x32``, ``tfds:lm1b``). tfds is never asked
to download: a dataset that is not prepared is an error telling how to prepare it.

An ``image=ImagePrep(size, ...)`` step (``jaxar.data.images``) resizes and crops image
records to ``size`` x ``size`` (e.g. ImageNet 256, whose stored images vary in shape);
``describe`` gives a dataset's :class:`DataInfo` without reading any record.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxar.data import corpora, images, pipeline

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


def _not_text(info: DataInfo, image: images.ImagePrep | None, name: str) -> None:
    if image is not None and info.kind != "image":
        raise ValueError(
            f"config.data.image_size={image.size} resizes images, but config.data.name="
            f"{name!r} is {info.kind} data; accepted: image_size=0 for text"
        )


def _prepared(source, info: DataInfo, image: images.ImagePrep | None, name: str, split: str):
    _not_text(info, image, name)
    if info.kind != "image":
        return source, info
    if image is None:
        if not all(isinstance(n, int) for n in info.image_shape):
            raise ValueError(
                f"config.data.name={name!r} has images of shape {info.image_shape} (they vary); "
                "accepted: set config.data.image_size (resize the short side and crop)"
            )
        return source, info
    shaped = dataclasses.replace(info, image_shape=image.shape(info.image_shape[-1]))
    return images.PreparedImages(source, image, name=f"{name}/{split}"), shaped


def load(
    name: str,
    split: str,
    *,
    seq_len: int,
    packing: str = "concat",
    data_dir=None,
    image: images.ImagePrep | None = None,
):
    """``(source, DataInfo)`` for a dataset name and split (``"train"``/``"test"`` for the
    embedded sets, any tfds split string for tfds); ``image`` resizes and crops image
    records (ignored for text)."""
    _check_name(name)
    if packing not in ("concat", "pad"):
        raise ValueError(f"data.packing={packing!r} is not supported; accepted: ('concat', 'pad')")
    if name == "stdlib":
        _not_text(DataInfo("text"), image, name)
        docs = corpora.stdlib_documents(split)
        if packing == "pad":
            return pipeline.PaddedRows(docs, seq_len, name=f"stdlib/{split}"), DataInfo("text")
        return pipeline.PackedRows(docs, seq_len, name=f"stdlib/{split}"), DataInfo("text")
    if name in ("digits", "photos"):
        arrays = getattr(corpora, name)(split)
        info = DataInfo(
            "image", image_shape=arrays["image"].shape[1:], num_classes=_EMBEDDED_CLASSES[name]
        )
        src = pipeline.ArraySource(arrays, name=f"{name}/{split}")
        return _prepared(src, info, image, name, split)
    src, info = _tfds(
        name[len("tfds:") :], split, seq_len=seq_len, packing=packing, data_dir=data_dir
    )
    return _prepared(src, info, image, name, split)


_EMBEDDED_CLASSES = {"digits": 10, "photos": 2}


def describe(name: str, *, data_dir=None, image: images.ImagePrep | None = None) -> DataInfo:
    """A dataset's :class:`DataInfo` without reading its records: text is byte-level, the
    embedded image sets are known, tfds image sets are described by their builder's
    metadata (offline; the dataset need not be prepared). ``image`` fixes the shape."""
    _check_name(name)
    if name == "stdlib":
        info = DataInfo("text")
    elif name in ("digits", "photos"):
        side = 8 if name == "digits" else corpora.PHOTO_SIZE
        info = DataInfo(
            "image",
            image_shape=(side, side, 1 if name == "digits" else 3),
            num_classes=_EMBEDDED_CLASSES[name],
        )
    else:
        import tensorflow_datasets as tfds

        tname = name[len("tfds:") :]
        try:
            features = tfds.builder(tname, data_dir=data_dir).info.features
        except Exception as e:  # noqa: BLE001 - unknown name, missing module, ...
            raise ValueError(f"config.data.name={name!r}: no tfds builder ({e})") from e
        if "image" not in features:
            _not_text(DataInfo("text"), image, name)
            return DataInfo("text")
        classes = features["label"].num_classes if "label" in features else None
        info = DataInfo("image", image_shape=tuple(features["image"].shape), num_classes=classes)
    _not_text(info, image, name)
    if image is not None:
        info = dataclasses.replace(info, image_shape=image.shape(info.image_shape[-1]))
    return info


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
