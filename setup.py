"""Package discovery for the one distribution (everything else is in pyproject.toml).

Installs ``jaxar`` and ``pallas_kernels``, and maps the repository's ``experiments/`` folder to
``jaxar.experiments`` (its shared module and every ``<name>/config.py``), so that
``pip install jaxar`` runs every experiment by name (``jaxar train --config gss_lm:tiny``)
without putting a top-level package named ``experiments`` into site-packages.
"""

import pathlib

import setuptools

EXPERIMENTS = sorted(p.parent.name for p in pathlib.Path("experiments").glob("*/config.py"))

setuptools.setup(
    packages=setuptools.find_packages(include=["jaxar", "jaxar.*", "pallas_kernels*"])
    + ["jaxar.experiments"]
    + [f"jaxar.experiments.{name}" for name in EXPERIMENTS],
    package_dir={"jaxar.experiments": "experiments"},
)
