"""Shared test set-up: 8 fake CPU devices, strict rank promotion, markers, tolerances.

Reference computations run in float64 through ``jaxar.testing.reference_x64`` (x64 is
enabled only inside them); every comparison takes its tolerance from the one table in
``jaxar.testing.TOLERANCES``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# With libtpu installed (the tpu extra) every process that compiles for a TPU topology
# loads it; without this, the first one locks /tmp/libtpu_lockfile and the others fail.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# The suite compiles far more than it runs (hundreds of small programs): LLVM at -O0
# compiles about twice as fast on CPU, and the fast suite ran ~18% faster (a 120-test
# subset, 660 s vs 801 s side by side). XLA's HLO passes (fusion, layout) are unchanged,
# and child processes (CLI runs, notebooks) inherit the flag. JAXAR_TEST_XLA_OPT=1 keeps
# XLA's default back-end optimisation.
if os.environ.get("JAXAR_TEST_XLA_OPT") != "1":
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
    ).strip()

import absl.flags  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

# Must run before any backend is initialised: the sharding tests need 8 devices.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
# grain's worker processes read absl flags.
absl.flags.FLAGS.mark_as_parsed()

from jaxar import testing  # noqa: E402


def pytest_collection_modifyitems(config, items):
    platform = jax.default_backend()
    for item in items:
        for mark, needed in (("gpu", ("gpu", "cuda", "rocm")), ("tpu", ("tpu",))):
            if mark in item.keywords and platform not in needed:
                item.add_marker(pytest.mark.skip(reason=f"needs a real {mark.upper()}"))


@pytest.fixture
def tol():
    """``tol(dtype, kind="fwd") -> dict(rtol=, atol=)`` from the one tolerance table."""
    return testing.tolerance


@pytest.fixture
def key():
    return jax.random.key(0)
