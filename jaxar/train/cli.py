"""``jaxar train | sample | eval``: argument parsing and the run directory.

``jaxar train [--config PATH] [--workdir DIR] [--config.field=value ...]``: with no
``--config`` the quickstart (``experiments/quickstart/config.py``, also shipped as
:func:`quickstart_config`) trains a tiny byte-level LM on the embedded stdlib corpus.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

DEFAULT_ROOT = "jaxar_runs"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def quickstart_config():
    """The quickstart's ConfigDict (the same as ``experiments/quickstart/config.py``)."""
    from jaxar.train.config import config_dict

    return config_dict(
        model=dict(
            family="lm", preset="tiny", mixer="attention", d_model=128, num_layers=2, num_heads=4
        ),
        data=dict(name="stdlib", seq_len=128, packing="concat"),
        steps=300,
        batch_size=16,
        warmup_steps=30,
        log_every=25,
        eval_every=150,
        checkpoint_every=100,
        keep_checkpoints=2,
        sample_length=200,
    )


def _drop_orbax_tracebacks(record: logging.LogRecord) -> bool:
    """Orbax logs a traceback for every failed background write, and warnings such as "Given
    directory is read only" for a reader; jaxar reports failures itself in one line
    (``CheckpointError``), so those records are dropped (orbax's plain errors stay)."""
    if not (record.exc_info or record.levelno < logging.ERROR):
        return True
    if "/orbax/" in record.pathname:
        return False
    frame = sys._getframe(1)  # absl reports its own file as the pathname: find the caller
    while frame is not None:
        if "/orbax/" in frame.f_code.co_filename:
            return False
        frame = frame.f_back
    return True


def _setup() -> None:
    import absl.flags

    if not absl.flags.FLAGS.is_parsed():
        absl.flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    absl_logger = logging.getLogger("absl")
    if _drop_orbax_tracebacks not in absl_logger.filters:
        absl_logger.addFilter(_drop_orbax_tracebacks)


def _error(cmd: str, e: Exception) -> int:
    print(f"jaxar {cmd}: error: {e}", file=sys.stderr)
    return EXIT_ERROR


def parse_train_args(argv: list[str]):
    """``(TrainConfig, workdir)`` from ``jaxar train`` arguments."""
    from jaxar.train import config as config_lib

    p = argparse.ArgumentParser(
        prog="jaxar train",
        description="Train a model from an ml_collections config (default: the quickstart).",
        epilog="Override any field with --config.<field>=<value>, e.g. --config.steps=100 "
        "--config.model.d_model=256.",
    )
    p.add_argument("--config", default=None, help="experiment config file with get_config()")
    p.add_argument("--workdir", default=None, help=f"run directory (default {DEFAULT_ROOT}/<name>)")
    args, rest = p.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            p.error(f"unrecognized argument {item!r} (overrides look like --config.steps=100)")
        overrides.append(item[len("--config.") :])
    if args.config is None:
        cfg_dict, name = quickstart_config(), "quickstart"
    else:
        cfg_dict = config_lib.load_config_file(args.config)
        path, variant = config_lib.split_config_arg(args.config)
        name = path.parent.name if path.stem == "config" else path.stem
        if variant:
            name = f"{name}_{variant}"
    config_lib.apply_overrides(cfg_dict, overrides)
    cfg = config_lib.from_config_dict(cfg_dict)
    workdir = args.workdir or str(pathlib.Path(DEFAULT_ROOT) / name)
    return cfg, workdir


def train_main(argv: list[str]) -> int:
    """``jaxar train``: trains (or resumes) a config in a workdir."""
    _setup()
    try:
        cfg, workdir = parse_train_args(argv)
    except ValueError as e:
        return _error("train", e)
    from jaxar.train import loop

    loop.maybe_initialize_distributed()
    try:
        summary = loop.train(cfg, workdir)
    except (ValueError, OSError, loop.NonFiniteError) as e:
        return _error("train", e)
    except KeyboardInterrupt:
        msg = "interrupted (second Ctrl-C); the last saved checkpoint is kept"
        print(f"jaxar train: {msg}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.get("preempted"):
        print("rerun the same command to resume.")
        return 0
    w = summary["workdir"]
    print(f"next: jaxar sample --workdir {w}   |   jaxar eval --workdir {w}")
    return 0


def _workdir_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--workdir",
        default=str(pathlib.Path(DEFAULT_ROOT) / "quickstart"),
        help="a training run directory (default: the quickstart's)",
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return p


def sample_main(argv: list[str]) -> int:
    """``jaxar sample``: prints text samples, or writes a PNG grid for image models."""
    _setup()
    p = _workdir_parser("jaxar sample", "Sample from a trained workdir.")
    p.add_argument("--num", type=int, default=4, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--length", type=int, default=None, help="tokens per text sample")
    p.add_argument("--out", default=None, help="output file (.txt or .png)")
    args = p.parse_args(argv)
    from jaxar.train import loop

    try:
        run = loop.load_run(args.workdir, step=args.step)
    except (ValueError, FileNotFoundError) as e:
        return _error("sample", e)
    if args.length is not None:
        import dataclasses

        run.cfg = dataclasses.replace(run.cfg, sample_length=args.length)
    out = args.out
    if out is None and run.info.kind == "image":
        out = str(pathlib.Path(args.workdir) / "samples" / f"sample_seed{args.seed}.png")
    if out is None:
        import jax

        key = jax.random.key(args.seed)
        tokens = run.task.sample(run.model(), key, args.num, run.info, run.cfg.sample_length)
        print(loop.decode_text(tokens))
        return 0
    path = loop.write_samples(
        run, pathlib.Path(args.workdir), num=args.num, seed=args.seed, out=out
    )
    print(f"wrote {path}")
    return 0


def eval_main(argv: list[str]) -> int:
    """``jaxar eval``: held-out bits/token (bits/dim for images, the NELBO bound for
    diffusion models) of a trained workdir."""
    _setup()
    p = _workdir_parser("jaxar eval", "Held-out NLL of a trained workdir.")
    p.add_argument("--batches", type=int, default=None, help="eval batches (default: config)")
    args = p.parse_args(argv)
    if args.batches is not None and args.batches < 1:
        return _error(
            "eval", ValueError(f"--batches={args.batches} is invalid; accepted: an integer >= 1")
        )
    from jaxar.train import loop

    try:
        run = loop.load_run(args.workdir, step=args.step)
    except (ValueError, FileNotFoundError) as e:
        return _error("eval", e)
    metrics = loop.evaluate(run, num_batches=args.batches)
    head = next((k for k in run.task.eval_keys if k in metrics), "loss")
    step = int(run.state["step"])
    print(f"step {step}: held-out {head} = {metrics[head]:.4f}")
    for k in sorted(metrics):
        if k != head:
            print(f"  {k} = {metrics[k]:.4f}")
    return 0
