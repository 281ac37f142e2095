"""Chunked GateLoop (Pallas; Mosaic on TPU, Triton on GPU): key-value state kept on chip."""

import sys
import types

from pallas_kernels.gateloop.kernel import BlockSizes, select_lowering
from pallas_kernels.gateloop.ops import gateloop
from pallas_kernels.gateloop.xla import gateloop_chunked

__all__ = ["BlockSizes", "gateloop", "gateloop_chunked", "select_lowering"]


class _KernelPackage(types.ModuleType):
    """Calling the package calls the kernel. Once ``pallas_kernels.gateloop`` is imported,
    Python binds that attribute of ``pallas_kernels`` to this package (not to the lazily
    exported function), so ``jaxar.dispatch.kernel("gateloop")`` may return the package."""

    def __call__(self, *args, **kwargs):
        return gateloop(*args, **kwargs)


sys.modules[__name__].__class__ = _KernelPackage
