"""jaxar.data: embedded corpora, tfds by name, grain pipelines (packing, host sharding).

Imported lazily by the trainer; importing ``jaxar`` does not import grain or tfds.
"""

from jaxar.data.corpora import digits, photos, stdlib_documents
from jaxar.data.pipeline import (
    ArraySource,
    DataIterator,
    HostShard,
    PackedRows,
    PaddedRows,
    batched,
)
from jaxar.data.sources import DataInfo, load

__all__ = [
    "ArraySource",
    "DataInfo",
    "DataIterator",
    "HostShard",
    "PackedRows",
    "PaddedRows",
    "batched",
    "digits",
    "load",
    "photos",
    "stdlib_documents",
]
