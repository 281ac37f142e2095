"""Diagonal linear scan (Pallas; Mosaic on TPU, Triton on GPU) with a custom VJP."""

import sys
import types

from pallas_kernels.linear_scan.kernel import BlockSizes, select_lowering
from pallas_kernels.linear_scan.ops import linear_scan

__all__ = ["BlockSizes", "linear_scan", "select_lowering"]


class _KernelPackage(types.ModuleType):
    """Calling the package calls the kernel. Once ``pallas_kernels.linear_scan`` is imported,
    Python binds that attribute of ``pallas_kernels`` to this package (not to the lazily
    exported function), so ``jaxar.dispatch.kernel("linear_scan")`` may return the package."""

    def __call__(self, *args, **kwargs):
        return linear_scan(*args, **kwargs)


sys.modules[__name__].__class__ = _KernelPackage
