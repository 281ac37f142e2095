"""The wheel: ``pip install jaxar`` carries every experiment config (as ``jaxar.experiments``,
no top-level ``experiments`` package), and an installed jaxar trains an experiment by name
from an empty directory (the slow test, in a fresh virtual environment)."""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/config.py"))
SOURCES = ("pyproject.toml", "setup.py", "README.md", "jaxar", "pallas_kernels", "experiments")


def _copy_sources(dest: pathlib.Path) -> pathlib.Path:
    """The files a build reads, copied (so the checkout gets no build/ or egg-info)."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.png", "*.egg-info", "build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the checkout
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _venv(tmp: pathlib.Path, *install: str) -> pathlib.Path:
    """A fresh venv's python with ``pip install --no-deps *install``; the dependencies are
    this environment's (a .pth file; no network)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True)
    python = tmp / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    pth = pathlib.Path(purelib.stdout.strip()) / "_jaxar_test_deps.pth"
    pth.write_text("\n".join(sorted(deps)) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    pip += ["--no-build-isolation", "--force-reinstall", *install]  # beside an editable jaxar
    proc = subprocess.run(pip, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return python


def _where(python: pathlib.Path, cwd: pathlib.Path) -> pathlib.Path:
    """Where ``python`` run in ``cwd`` imports the experiments' shared module from."""
    code = "import jaxar.experiments.common as c; print(c.__file__)"
    proc = subprocess.run([python, "-c", code], cwd=cwd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return pathlib.Path(proc.stdout.strip())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """A wheel built offline from a copy of the sources."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_sources(tmp / "src")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--quiet", str(src), "-w", str(tmp / "dist")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    (found,) = (tmp / "dist").glob("jaxar-*.whl")
    return found


def test_wheel_ships_every_experiment_under_jaxar(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert EXPERIMENTS and "quickstart" in EXPERIMENTS
    for name in EXPERIMENTS:
        assert f"jaxar/experiments/{name}/config.py" in names, name
    assert {"jaxar/experiments/__init__.py", "jaxar/experiments/common.py"} <= names
    assert "jaxar/MATHS.md" in names  # what the docstrings cite
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"jaxar", "pallas_kernels"}
    # every package of the checkout is in the wheel
    for pkg in ("jaxar", "pallas_kernels"):
        for init in (ROOT / pkg).rglob("__init__.py"):
            assert init.relative_to(ROOT).as_posix() in names, init


@pytest.mark.slow
def test_installed_wheel_trains_an_experiment_by_name(wheel, tmp_path):
    """``pip install <wheel>`` in a fresh venv, then ``jaxar train --config gss_lm:tiny``
    from an empty folder."""
    python = _venv(tmp_path, str(wheel))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _where(python, empty).is_relative_to(tmp_path / "venv")
    cmd = [python.parent / "jaxar", "train", "--config", "gss_lm:tiny", "--config.steps=5"]
    proc = subprocess.run(cmd, cwd=empty, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (empty / "jaxar_runs" / "gss_lm_tiny" / "config.json").is_file()
    assert "next: jaxar sample --workdir" in proc.stdout


@pytest.mark.slow
def test_editable_install_maps_the_checkouts_experiments(tmp_path):
    """``pip install -e <checkout>``: ``jaxar.experiments`` is the checkout's folder."""
    src = _copy_sources(tmp_path / "src")
    python = _venv(tmp_path, "-e", str(src))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _where(python, empty) == src / "experiments" / "common.py"
    proc = subprocess.run(
        [python.parent / "jaxar", "info"], cwd=empty, env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0 and "  - gss_lm: full (default), tiny" in proc.stdout
