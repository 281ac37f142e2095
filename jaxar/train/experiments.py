"""Experiment configs by name or by path: what ``jaxar train --config`` accepts.

``--config NAME[:variant]`` names an experiment (``gss_lm:tiny``); ``--config
path/to/config.py[:variant]`` loads any config file. Either way the file's
``get_config(variant)`` returns an ``ml_collections.ConfigDict`` (the big_vision convention),
which :func:`jaxar.train.config.from_config_dict` then converts once.

The experiments are the package ``jaxar.experiments``: each ``<name>/config.py`` defines
``get_config`` and lists its variants in ``VARIANTS`` (none: ``get_config()`` takes no
argument). A wheel installs them there (the repository's ``experiments/`` folder, mapped by
setup.py); when jaxar runs from a source checkout, that checkout's ``experiments/`` folder is
the package, so its configs import ``jaxar.experiments.common`` in both cases.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import pathlib
import re
import sys
import types

__all__ = [
    "PACKAGE",
    "ConfigRef",
    "default_variant",
    "load_config",
    "names",
    "package",
    "resolve",
    "variants",
]

PACKAGE = "jaxar.experiments"
_NAME = re.compile(r"[A-Za-z_]\w*")


def package() -> types.ModuleType:
    """The ``jaxar.experiments`` package: a source checkout's ``experiments/`` folder when the
    imported jaxar sits in one (next to ``pyproject.toml``), else the installed package.

    Raises:
      ValueError: when neither exists (a jaxar installed without its experiments).
    """
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    here = pathlib.Path(__file__).resolve().parents[1]  # the jaxar package folder
    root = here.parent
    init = root / "experiments" / "__init__.py"
    inside = here / "experiments"
    if not inside.is_dir() and init.is_file() and (root / "pyproject.toml").is_file():
        spec = importlib.util.spec_from_file_location(
            PACKAGE, init, submodule_search_locations=[str(init.parent)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
        sys.modules["jaxar"].experiments = module  # as an ordinary import of a subpackage
        return module
    try:
        return importlib.import_module(PACKAGE)
    except ModuleNotFoundError as e:
        if e.name != PACKAGE:
            raise
        raise ValueError(
            f"no experiments found: {PACKAGE} is not installed (reinstall jaxar)"
        ) from None


def _folder() -> pathlib.Path:
    return pathlib.Path(next(iter(package().__path__)))


def names() -> tuple[str, ...]:
    """The experiments: every folder of ``jaxar.experiments`` with a ``config.py``."""
    return tuple(sorted(p.parent.name for p in _folder().glob("*/config.py")))


def _module(name: str) -> types.ModuleType:
    package()
    return importlib.import_module(f"{PACKAGE}.{name}.config")


def variants(name: str) -> tuple[str, ...]:
    """The variants an experiment accepts (its config's ``VARIANTS``; empty: none)."""
    return tuple(getattr(_module(name), "VARIANTS", ()))


def default_variant(name: str) -> str | None:
    """The variant ``--config NAME`` runs (``get_config``'s default), or None."""
    params = list(inspect.signature(_module(name).get_config).parameters.values())
    if not params or params[0].default is inspect.Parameter.empty:
        return None
    return params[0].default


@dataclasses.dataclass(frozen=True)
class ConfigRef:
    """A resolved ``--config`` argument ``arg``: the config file, the variant (None: the
    file's default) and the run's name (default workdir ``jaxar_runs/<run_name>``);
    ``experiment`` is set when it was given by name."""

    arg: str
    path: pathlib.Path
    variant: str | None
    run_name: str
    experiment: str | None = None


def resolve(arg: str | pathlib.Path) -> ConfigRef:
    """``"gss_lm:tiny"`` (an experiment by name) or ``"path/config.py:tiny"`` (a file) ->
    :class:`ConfigRef`.

    Raises:
      ValueError: an unknown experiment (listing the experiments) or a missing file.
    """
    text = str(arg)
    head, sep, variant = text.partition(".py:")
    if sep or text.endswith(".py") or "/" in text or "\\" in text:
        path = pathlib.Path(head + ".py") if sep else pathlib.Path(text)
        if not path.is_file():
            raise ValueError(f"--config={str(path)!r}: no such file")
        name = path.parent.name if path.stem == "config" else path.stem
        variant = variant if sep else None
        experiment = None
    else:
        name, _, variant = text.partition(":")
        available = names()
        if not _NAME.fullmatch(name) or name not in available:
            raise ValueError(
                f"--config={text!r}: no experiment named {name!r}; experiments: "
                f"{', '.join(available)} (or give a path to a config file)"
            )
        path = _folder() / name / "config.py"
        experiment = name
    variant = variant or None
    run_name = f"{name}_{variant}" if variant else name
    return ConfigRef(text, path, variant, run_name, experiment)


def load_config(arg: str | pathlib.Path | ConfigRef):
    """The ``ml_collections.ConfigDict`` of a ``--config`` argument (see :func:`resolve`):
    ``get_config(variant)``, or ``get_config()`` without a variant.

    Raises:
      ValueError: naming the argument and what is accepted (experiments, variants), or a
        config file without ``get_config``.
    """
    ref = arg if isinstance(arg, ConfigRef) else resolve(arg)
    shown = ref.arg
    if ref.experiment is not None:
        module = _module(ref.experiment)
    else:
        try:  # a config file in a checkout imports jaxar.experiments.common: make it importable
            package()
        except ValueError:
            pass
        spec = importlib.util.spec_from_file_location(f"_jaxar_config_{ref.run_name}", ref.path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ValueError(f"--config={shown!r}: {ref.path} defines no get_config()")
    accepted = tuple(getattr(module, "VARIANTS", ()))
    takes_variant = bool(inspect.signature(get_config).parameters)
    if ref.variant is None:
        return get_config()
    if not takes_variant:
        raise ValueError(f"--config={shown!r}: this config takes no variant (give it alone)")
    if accepted and ref.variant not in accepted:
        raise ValueError(
            f"--config={shown!r}: unknown variant {ref.variant!r}; accepted: {accepted}"
        )
    return get_config(ref.variant)
