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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """A wheel built offline from a copy of the sources (the checkout gets no build/)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.png", "*.egg-info", "build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
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
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"jaxar", "pallas_kernels"}
    # every package of the checkout is in the wheel
    for pkg in ("jaxar", "pallas_kernels"):
        for init in (ROOT / pkg).rglob("__init__.py"):
            assert init.relative_to(ROOT).as_posix() in names, init


@pytest.mark.slow
def test_installed_wheel_trains_an_experiment_by_name(wheel, tmp_path):
    """``pip install <wheel>`` in a fresh venv (dependencies: this environment's, through a
    .pth file; no network), then ``jaxar train --config gss_lm:tiny`` from an empty folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (pathlib.Path(purelib) / "_jaxar_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the checkout
    env["JAX_PLATFORMS"] = "cpu"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
    pip += ["--force-reinstall", str(wheel)]  # even where an editable jaxar is on the path
    proc = subprocess.run(pip, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [python, "-c", "import jaxar.experiments.common as c; print(c.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert pathlib.Path(where.stdout.strip()).is_relative_to(venv), where.stderr[-2000:]
    cmd = [bindir / "jaxar", "train", "--config", "gss_lm:tiny", "--config.steps=5"]
    proc = subprocess.run(cmd, cwd=empty, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (empty / "jaxar_runs" / "gss_lm_tiny" / "config.json").is_file()
    assert "next: jaxar sample --workdir" in proc.stdout
