"""Measured device limits: matmul FLOP/s and copy bytes/s, so ratios to the limit show.

The matmul figure is ``jaxar.train.throughput.matmul_flops``, the peak the trainer's MFU
uses on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxar.train.throughput import matmul_flops
from pallas_kernels._bench import PUBLISHED, Result, published_peak, timeit

__all__ = ["PUBLISHED", "measure", "published_peak", "run"]


def measure(quick: bool = False) -> dict[str, float]:
    """Measured matmul FLOP/s (float32 and bfloat16) and copy bytes/s on the default device."""
    n = 1024 if quick else 2048
    out = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        out[f"matmul_{jnp.dtype(dtype).name}_flops"] = matmul_flops(dtype, n)
    m = (16 if quick else 64) * 2**20 // 4  # float32 elements
    y = jnp.ones((m,), jnp.float32)
    t = timeit(jax.jit(lambda a: a * 1.0001), y, repeats=5)
    out["copy_bytes_per_s"] = 2 * 4 * m / t.median_s  # read + write
    return out


def run(quick: bool) -> list[Result]:
    m = measure(quick)
    rows = []
    for name, value in m.items():
        unit = "TFLOP/s" if name.endswith("flops") else "GB/s"
        scaled = value / (1e12 if unit == "TFLOP/s" else 1e9)
        dtype = name.split("_")[1] if name.startswith("matmul") else "float32"
        rows.append(
            Result(
                bench="roofline",
                case=name.rsplit("_", 1)[0] if unit == "TFLOP/s" else "copy",
                impl="measured",
                dtype=dtype,
                median_ms=float("nan"),
                extra={unit: round(scaled, 4)},
            )
        )
    return rows
