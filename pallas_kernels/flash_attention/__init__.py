"""Block-sparse flash attention (Pallas; Mosaic on TPU, Triton on GPU) with a Pallas backward."""

from pallas_kernels.flash_attention import masks
from pallas_kernels.flash_attention.kernel import BlockSizes, select_lowering
from pallas_kernels.flash_attention.ops import flash_attention, visited_tiles

__all__ = ["BlockSizes", "flash_attention", "masks", "select_lowering", "visited_tiles"]
