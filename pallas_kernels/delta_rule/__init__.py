"""Chunked (gated) delta rule (Pallas; Mosaic on TPU, Triton on GPU): the state on chip."""

from pallas_kernels.delta_rule.kernel import select_lowering
from pallas_kernels.delta_rule.ops import delta_rule

__all__ = ["delta_rule", "select_lowering"]
