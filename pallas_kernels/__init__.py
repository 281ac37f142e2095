"""Pallas kernels for jaxar's hot paths, each beside its reference in ``jaxar.ops``.

One folder per kernel: ``kernel.py`` (pallas_call + BlockSpecs per lowering), ``ops.py``
(public wrapper, custom VJP, ``interpret`` flag), ``README.md`` (maths, shapes, dtypes,
measured speed), ``bench.py``. Names resolve lazily.
"""

import importlib

_EXPORTS = {
    "linear_scan": "pallas_kernels.linear_scan.ops",
    "gateloop": "pallas_kernels.gateloop.ops",
    "flash_attention": "pallas_kernels.flash_attention.ops",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pallas_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
