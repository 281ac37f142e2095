"""The ``jaxar`` command: ``train``, ``sample``, ``eval``, ``compile``, ``bench``, ``info``.

Each subcommand's implementation lives with the code it drives and is imported only
when that subcommand runs, so ``jaxar --help`` and ``jaxar info`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, function taking the remaining argv and returning an exit code, help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("jaxar.train.cli", "train_main", "train a model from a config (default: quickstart)"),
    "sample": (
        "jaxar.train.cli",
        "sample_main",
        "sample from a trained workdir (text or PNG grid)",
    ),
    "eval": ("jaxar.train.cli", "eval_main", "held-out NLL of a trained workdir"),
    "compile": (
        "jaxar.train.cli",
        "compile_main",
        "compile the sharded train step for a TPU slice (no TPU needed): memory, FLOPs",
    ),
    "bench": ("jaxar.bench.cli", "bench_main", "benchmarks against in-run baselines"),
    "info": (
        "jaxar.cli",
        "info_main",
        "versions, backend, devices, kernel backends, experiments and their variants",
    ),
}
NOT_AVAILABLE = 2


def info_main(argv: list[str]) -> int:
    """Prints versions, the backend, the devices, the usable kernel backends and the
    experiments (``jaxar train --config NAME[:variant]``) with their variants."""
    argparse.ArgumentParser(prog="jaxar info", description=SUBCOMMANDS["info"][2]).parse_args(argv)
    import flax
    import jax
    import jaxlib

    import jaxar
    from jaxar import dispatch
    from jaxar.train import experiments

    print(f"jaxar    {jaxar.__version__}")
    print(f"python   {sys.version.split()[0]}")
    print(f"jax      {jax.__version__} (jaxlib {jaxlib.__version__})")
    print(f"flax     {flax.__version__}")
    print(f"backend  {jax.default_backend()} ({dispatch.platform()})")
    devices = jax.devices()
    print(
        f"devices  {len(devices)} local, {jax.device_count()} global, {jax.process_count()} process(es)"
    )
    for d in devices:
        print(f"  - {d.id}: {d.device_kind} ({d.platform})")
    print("kernel backends:")
    for name, ok in dispatch.kernel_backends().items():
        print(f"  - {name}: {'yes' if ok else 'no'}")
    print("auto implementations here:")
    for op in dispatch.AUTO:
        print(f"  - {op}: {dispatch.resolve(op, 'auto')}")
    print("experiments (jaxar train --config NAME[:variant]):")
    try:
        names = experiments.names()
    except ValueError as e:
        print(f"  none: {e}")
        names = ()
    for name in names:
        try:
            default = experiments.default_variant(name)
            variants = ", ".join(
                f"{v} (default)" if v == default else v for v in experiments.variants(name)
            )
            variants = variants or "(no variants)"
        except Exception as e:  # one broken config must not hide the others
            variants = f"cannot load: {type(e).__name__}: {e}"
        print(f"  - {name}: {variants}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from jaxar import __version__

    p = argparse.ArgumentParser(
        prog="jaxar",
        description="jaxar: autoregressive and masked-diffusion sequence models in JAX.",
        epilog="Run 'jaxar <command> --help' for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"jaxar {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (_, _, help_) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # --help / --version / an error naming the choices
        parser.print_help()
        return NOT_AVAILABLE
    name, rest = argv[0], argv[1:]
    module_name, func_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        func = getattr(module, func_name)
    except (ImportError, AttributeError) as e:
        if isinstance(e, ImportError) and e.name not in (None, module_name):
            raise
        print(
            f"jaxar {name}: not available yet in this version ({module_name} missing).",
            file=sys.stderr,
        )
        return NOT_AVAILABLE
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
