"""Implementation choice and Pallas kernels, resolved in one place.

Every op with several implementations takes ``impl`` (typed by the ``Literal`` aliases
below) with an ``"auto"`` default. ``resolve`` turns ``"auto"`` into a concrete
implementation from the table ``AUTO`` by platform; ``kernel`` returns a Pallas kernel
ready for this platform (its ``interpret`` flag bound from ``INTERPRET``). Nothing else in
jaxar asks which platform it runs on. Pallas kernels are imported lazily, on first use.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from typing import Literal, get_args

import jax

__all__ = [
    "AUTO",
    "AttentionImpl",
    "CHOICES",
    "DeltaRuleImpl",
    "GateLoopImpl",
    "INTERPRET",
    "KERNELS",
    "LinearAttentionImpl",
    "LinearScanImpl",
    "interpret",
    "kernel",
    "kernel_backends",
    "platform",
    "resolve",
    "target_platform",
]

LinearScanImpl = Literal["auto", "sequential", "associative", "chunked", "pallas"]
GateLoopImpl = Literal["auto", "recurrent", "parallel", "attention", "chunked", "pallas"]
AttentionImpl = Literal["auto", "xla", "reference", "jax", "pallas"]
DeltaRuleImpl = Literal["auto", "recurrent", "chunked", "pallas"]
LinearAttentionImpl = Literal["auto", "recurrent", "chunked", "pallas"]

# op -> implementations it accepts (besides "auto"), from the Literal types above.
CHOICES: dict[str, tuple[str, ...]] = {
    op: tuple(c for c in get_args(lit) if c != "auto")
    for op, lit in (
        ("linear_scan", LinearScanImpl),
        ("gateloop", GateLoopImpl),
        ("attention", AttentionImpl),
        ("delta_rule", DeltaRuleImpl),
        ("linear_attention", LinearAttentionImpl),
    )
}

# op -> {platform: implementation chosen by "auto"}; measured choices, see jaxar/bench/README.md.
AUTO: dict[str, dict[str, str]] = {
    "linear_scan": {"cpu": "sequential", "gpu": "chunked", "tpu": "chunked"},
    "gateloop": {"cpu": "recurrent", "gpu": "chunked", "tpu": "chunked"},
    "attention": {"cpu": "xla", "gpu": "xla", "tpu": "xla"},
    # chunked: 2.1x the recurrent form fwd+bwd on CPU (B=4, L=4096, H=4, K=V=32), though
    # 2-3x slower for the forward pass alone there
    "delta_rule": {"cpu": "chunked", "gpu": "chunked", "tpu": "chunked"},
    # chunked: 3.6-6.2x the recurrent form fwd+bwd on CPU with real diagonal gates, 2.2x
    # complex, 4.1-4.3x scalar (B=4, L=4096, H=4, K=E=32..128; jaxar/bench/README.md),
    # though 1.3-1.6x slower for the forward pass alone there
    "linear_attention": {"cpu": "chunked", "gpu": "chunked", "tpu": "chunked"},
}

# platform -> the kernels' ``interpret`` argument: compiled (Triton on GPU, Mosaic on TPU)
# where a compiler exists, the generic Pallas interpreter elsewhere.
INTERPRET: dict[str, bool] = {"cpu": True, "gpu": False, "tpu": False}

# kernel name -> module holding the function of that name (``pallas_kernels.<name>.ops``).
KERNELS: dict[str, str] = {
    "delta_rule": "pallas_kernels.delta_rule.ops",
    "flash_attention": "pallas_kernels.flash_attention.ops",
    "gateloop": "pallas_kernels.gateloop.ops",
    "linear_attention": "pallas_kernels.gateloop.ops",
    "linear_scan": "pallas_kernels.linear_scan.ops",
}


_TARGET: list[str] = []  # platforms pushed by ``target_platform`` (innermost last)


def platform() -> str:
    """The platform code is traced for: 'cpu', 'gpu' or 'tpu' (the default backend's, or
    the innermost ``target_platform``)."""
    p = _TARGET[-1] if _TARGET else jax.default_backend()
    return "gpu" if p in ("cuda", "rocm", "gpu") else p


@contextlib.contextmanager
def target_platform(name: str):
    """Traces for ``name`` ('cpu', 'gpu' or 'tpu') instead of the default backend: ``auto``
    implementations, the kernels' ``interpret`` flag and their lowering (Mosaic / Triton)
    follow it. ``jaxar compile`` compiles for a TPU slice on a CPU host this way.

    Raises:
      ValueError: for another platform name.
    """
    if name not in INTERPRET:
        raise ValueError(f"target platform {name!r} is unknown; accepted: {sorted(INTERPRET)}")
    _TARGET.append(name)
    try:
        yield
    finally:
        _TARGET.pop()


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


def interpret() -> bool:
    """The Pallas ``interpret`` flag for this platform (``INTERPRET``; True if unknown)."""
    return INTERPRET.get(platform(), True)


def kernel(name: str) -> Callable:
    """The Pallas kernel ``name`` ready for this platform: ``interpret`` is bound.

    ``kernel("gateloop")(q, k, v, a, state0=..., chunk_size=...)`` runs compiled on GPU /
    TPU and in the Pallas interpreter on CPU. Other keyword arguments pass through.

    Raises:
      ValueError: for a name not in ``KERNELS``.
    """
    if name not in KERNELS:
        raise ValueError(f"kernel {name!r} is unknown; accepted: {sorted(KERNELS)}")
    return functools.partial(_load(name), interpret=interpret())


@functools.cache
def _load(name: str) -> Callable:
    return getattr(importlib.import_module(KERNELS[name]), name)


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
