"""Diagonal linear scan (Pallas; Mosaic on TPU, Triton on GPU) with a custom VJP."""

from pallas_kernels.linear_scan.kernel import BlockSizes, select_lowering
from pallas_kernels.linear_scan.ops import linear_scan

__all__ = ["BlockSizes", "linear_scan", "select_lowering"]
