"""Fixtures shared by the kernel tests."""

import jax
import pytest


@pytest.fixture
def tpu_info_on_cpu(monkeypatch):
    """Lets the Mosaic lowering query a TPU v5e's info on a CPU host (lowering only: with
    ``jax.default_backend`` patched to "tpu" and ``lower(lowering_platforms=("tpu",))``)."""
    from jax._src.pallas.mosaic import tpu_info

    info = lambda: tpu_info.get_tpu_info_for_chip(tpu_info.ChipVersion.TPU_V5E, 1)
    monkeypatch.setitem(tpu_info.registry, jax.devices()[0].device_kind, info)
