"""Chunked GateLoop (Pallas; Mosaic on TPU, Triton on GPU): key-value state kept on chip."""

from pallas_kernels.gateloop.kernel import BlockSizes, select_lowering
from pallas_kernels.gateloop.ops import gateloop, linear_attention

__all__ = ["BlockSizes", "gateloop", "linear_attention", "select_lowering"]
