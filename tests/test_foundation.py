"""The package itself: light import, CLI, dispatch, tolerance table."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxar
from jaxar import cli, dispatch, testing

HEAVY = ("orbax", "grain", "tensorflow_datasets", "pallas_kernels", "tensorflow")


def test_import_jaxar_is_light():
    code = (
        "import sys, jaxar, jaxar.ops, jaxar.cli; "
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import jaxar pulled in: {out.stdout.strip()}"


def test_version():
    assert isinstance(jaxar.__version__, str) and jaxar.__version__.count(".") == 2


def test_info_prints_facts(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for fact in ("jax ", "flax ", "backend", "devices", "kernel backends", "pallas-interpret"):
        assert fact in out


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "sample", "eval", "bench", "info"):
        assert name in out


def test_python_dash_m():
    out = subprocess.run(
        [sys.executable, "-m", "jaxar", "--help"], capture_output=True, text=True, check=True
    )
    assert "info" in out.stdout


def test_unknown_subcommand_is_an_error():
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2


def test_fake_devices():
    assert jax.device_count() == 8


def test_rank_promotion_raises():
    with pytest.raises(ValueError):
        jnp.ones((2, 3)) + jnp.ones((3,))


def test_resolve_auto_and_errors():
    assert dispatch.resolve("linear_scan", "auto") in dispatch.CHOICES["linear_scan"]
    assert dispatch.resolve("linear_scan", "associative") == "associative"
    with pytest.raises(ValueError, match=r"impl='bogus'.*accepted"):
        dispatch.resolve("linear_scan", "bogus")


def test_tolerance_table():
    assert testing.tolerance(jnp.float32) == {"rtol": 1e-5, "atol": 1e-5}
    assert testing.tolerance(jnp.complex64) == testing.tolerance(jnp.float32)
    assert testing.tolerance(jnp.bfloat16)["rtol"] > testing.tolerance(jnp.float32)["rtol"]
    with pytest.raises(ValueError, match="int32"):
        testing.tolerance(jnp.int32)


def test_reference_x64_is_float64_and_scoped():
    out = testing.reference_x64(lambda x: jnp.cumsum(x) * (1 + 1e-12), jnp.ones(4, jnp.float32))
    assert out.dtype == np.float64
    assert out[-1] != 4.0  # float64 kept the 1e-12
    assert jnp.ones(2).dtype == jnp.float32  # x64 is off again outside


def test_assert_allclose_fails_outside_tolerance():
    testing.assert_allclose(jnp.ones(3), np.ones(3) + 1e-7)
    with pytest.raises(AssertionError):
        testing.assert_allclose(jnp.ones(3), np.ones(3) + 1e-3)


def test_ops_names_survive_submodule_imports():
    """``import jaxar.ops.gateloop`` must not replace the function by its module."""
    import importlib

    import jaxar.ops as ops

    for name in ("gateloop", "categorical"):
        importlib.import_module(f"jaxar.ops.{name}")
        assert callable(getattr(ops, name)), name
    for name in ops.__all__:  # functions, and constants such as INVALID (upper case)
        assert callable(getattr(ops, name)) or name.isupper(), name
