"""Chunked GateLoop (Pallas; Mosaic on TPU, Triton on GPU): key-value state kept on chip."""

from pallas_kernels.gateloop.kernel import BlockSizes, select_lowering
from pallas_kernels.gateloop.ops import gateloop
from pallas_kernels.gateloop.xla import gateloop_chunked

__all__ = ["BlockSizes", "gateloop", "gateloop_chunked", "select_lowering"]
