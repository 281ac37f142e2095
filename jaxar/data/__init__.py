"""jaxar.data: embedded corpora, tfds by name, grain pipelines (packing, host sharding,
image resize / crop / flip).

Imported lazily by the trainer; importing ``jaxar`` does not import grain or tfds.
"""

from jaxar.data.corpora import digits, photos, stdlib_documents
from jaxar.data.images import ImagePrep, PreparedImages
from jaxar.data.pipeline import (
    ArraySource,
    DataIterator,
    HostShard,
    PackedRows,
    PaddedRows,
    batched,
)
from jaxar.data.sources import DataInfo, describe, load

__all__ = [
    "ArraySource",
    "DataInfo",
    "DataIterator",
    "HostShard",
    "ImagePrep",
    "PackedRows",
    "PaddedRows",
    "PreparedImages",
    "batched",
    "describe",
    "digits",
    "load",
    "photos",
    "stdlib_documents",
]
