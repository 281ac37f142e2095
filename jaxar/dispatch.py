"""Implementation choice, resolved in one place.

Every op with several implementations takes ``impl`` (or ``mode``) with an ``"auto"``
default. ``resolve`` turns ``"auto"`` into a concrete implementation from the table
``AUTO`` by platform; nothing else in jaxar asks which platform it runs on.
Pallas kernels are imported lazily through ``kernel``.
"""

from __future__ import annotations

import functools
import importlib

import jax

# op -> {platform: implementation chosen by "auto"}; measured choices, see jaxar/bench/README.md.
AUTO: dict[str, dict[str, str]] = {
    "linear_scan": {"cpu": "sequential", "gpu": "chunked", "tpu": "chunked"},
    "gateloop": {"cpu": "recurrent", "gpu": "chunked", "tpu": "chunked"},
    "attention": {"cpu": "xla", "gpu": "xla", "tpu": "xla"},
}

# op -> implementations it accepts (besides "auto").
CHOICES: dict[str, tuple[str, ...]] = {
    "linear_scan": ("sequential", "associative", "chunked", "pallas"),
    "gateloop": ("recurrent", "parallel", "attention", "chunked", "pallas"),
    "attention": ("xla", "reference", "jax", "pallas"),
}


def platform() -> str:
    """The default backend's platform: 'cpu', 'gpu' or 'tpu'."""
    p = jax.default_backend()
    return "gpu" if p in ("cuda", "rocm", "gpu") else p


def resolve(op: str, impl: str, *, arg: str = "impl") -> str:
    """Returns the concrete implementation of ``op`` for ``impl`` ("auto" resolved).

    Raises:
      ValueError: naming ``arg``, the value given and the values accepted.
    """
    if op not in CHOICES:
        raise ValueError(f"unknown op {op!r}; known: {sorted(CHOICES)}")
    accepted = ("auto", *CHOICES[op])
    if impl not in accepted:
        raise ValueError(f"{arg}={impl!r} is not supported by {op}; accepted: {accepted}")
    if impl == "auto":
        return AUTO[op].get(platform(), AUTO[op]["cpu"])
    return impl


@functools.cache
def kernel(name: str):
    """The Pallas kernel ``pallas_kernels.<name>.ops.<name>``, imported on first use."""
    return getattr(importlib.import_module(f"pallas_kernels.{name}.ops"), name)


def kernel_backends() -> dict[str, bool]:
    """Which Pallas lowerings can run here (interpret mode always can)."""
    p = platform()
    out = {"pallas-interpret": True, "pallas-tpu-interpret": _has_tpu_interpreter()}
    out["pallas-triton (GPU)"] = p == "gpu"
    out["pallas-mosaic-gpu (Hopper)"] = p == "gpu" and _is_hopper()
    out["pallas-mosaic (TPU)"] = p == "tpu"
    return out


def _has_tpu_interpreter() -> bool:
    try:
        from jax.experimental.pallas import tpu as pltpu

        return hasattr(pltpu, "InterpretParams") or hasattr(pltpu, "force_tpu_interpret_mode")
    except Exception:  # pragma: no cover - depends on the jax build
        return False


def _is_hopper() -> bool:
    try:
        return any(
            "H100" in d.device_kind or "H200" in d.device_kind or "GH200" in d.device_kind
            for d in jax.devices()
        )
    except Exception:  # pragma: no cover
        return False
