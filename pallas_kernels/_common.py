"""What the kernels share: the choice of lowering and tile arithmetic."""

from __future__ import annotations

from typing import Any

from jax.experimental.pallas import tpu as pltpu

from jaxar import dispatch
from jaxar.ops.checks import positive_int


def select_lowering(interpret: Any, kernel: str) -> str:
    """The lowering for one call of ``kernel``: the one place that looks at the platform.

    ``interpret=True`` runs the generic ("triton") kernel in the Pallas interpreter; a
    ``pltpu.InterpretParams`` runs the Mosaic kernel in the TPU interpreter; ``False``
    compiles for the platform being traced for (``jaxar.dispatch.platform``: Mosaic on
    TPU, Triton on GPU).
    """
    if isinstance(interpret, pltpu.InterpretParams):
        return "mosaic"
    if interpret is True:
        return "triton"
    if interpret is not False:
        raise ValueError(
            f"interpret={interpret!r} is not supported; accepted: False, True or "
            "jax.experimental.pallas.tpu.InterpretParams()"
        )
    backend = dispatch.platform()
    if backend == "tpu":
        return "mosaic"
    if backend == "gpu":
        return "triton"
    raise ValueError(
        f"{kernel} has no compiled lowering for platform {backend!r}; accepted: tpu, gpu, "
        "or interpret=True / pltpu.InterpretParams() on CPU"
    )


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, (n - 1).bit_length())


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def check_block_sizes(blocks, names: tuple[str, ...]) -> None:
    """Validates a ``BlockSizes``: each of ``names`` an int >= 1, ``num_warps`` None or a
    power of two up to 16 (Triton's launch width)."""
    for name in names:
        positive_int(f"BlockSizes.{name}", getattr(blocks, name))
    if blocks.num_warps is not None and blocks.num_warps not in (1, 2, 4, 8, 16):
        raise ValueError(
            f"BlockSizes.num_warps={blocks.num_warps!r}; accepted: None, 1, 2, 4, 8, 16"
        )
