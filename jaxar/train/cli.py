"""``jaxar train | sample | eval``: argument parsing and the run directory.

``jaxar train [--config NAME[:variant] | PATH[:variant]] [--workdir DIR]
[--config.field=value ...]``: an experiment by name (``jaxar info`` lists them) or a config
file; with no ``--config`` the ``quickstart`` experiment trains a tiny byte-level LM on the
embedded stdlib corpus.
"""

from __future__ import annotations

import argparse
import logging
import math
import pathlib
import sys

DEFAULT_ROOT = "jaxar_runs"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def quickstart_config():
    """The quickstart's ConfigDict (``get_config()`` of the ``quickstart`` experiment)."""
    from jaxar.train import experiments

    return experiments.load_config("quickstart")


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


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default="quickstart",
        help="an experiment NAME[:variant] (see 'jaxar info') or a config file "
        "PATH[:variant] with get_config() (default: quickstart)",
    )


def _config_from(p: argparse.ArgumentParser, args, rest: list[str]):
    """``(TrainConfig, ConfigRef)`` from ``--config`` and the ``--config.a.b=v`` overrides."""
    from jaxar.train import config as config_lib
    from jaxar.train import experiments

    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            p.error(f"unrecognized argument {item!r} (overrides look like --config.steps=100)")
        overrides.append(item[len("--config.") :])
    ref = experiments.resolve(args.config)
    cfg_dict = experiments.load_config(ref)
    config_lib.apply_overrides(cfg_dict, overrides)
    return config_lib.from_config_dict(cfg_dict), ref


def parse_train_args(argv: list[str]):
    """``(TrainConfig, workdir)`` from ``jaxar train`` arguments."""
    p = argparse.ArgumentParser(
        prog="jaxar train",
        description="Train a model from an ml_collections config (default: the quickstart).",
        epilog="Override any field with --config.<field>=<value>, e.g. --config.steps=100 "
        "--config.model.d_model=256.",
    )
    _config_arg(p)
    p.add_argument("--workdir", default=None, help=f"run directory (default {DEFAULT_ROOT}/<name>)")
    args, rest = p.parse_known_args(argv)
    cfg, ref = _config_from(p, args, rest)
    workdir = args.workdir or str(pathlib.Path(DEFAULT_ROOT) / ref.run_name)
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


def compile_main(argv: list[str]) -> int:
    """``jaxar compile``: compiles a config's sharded train step for a TPU slice (no TPU
    needed) and prints per-chip memory against HBM, FLOPs and the roofline bound; exit 2
    when it does not fit."""
    _setup()
    p = argparse.ArgumentParser(
        prog="jaxar compile",
        description="Compile the sharded train step for a TPU slice on this host (needs "
        "libtpu: pip install 'jaxar[tpu]'); print memory per chip, FLOPs and the roofline.",
        epilog="The mesh comes from --config.mesh.data/fsdp/tensor (default: all chips on "
        "data), e.g. --config.mesh.fsdp=8.",
    )
    _config_arg(p)
    p.add_argument(
        "--topology", required=True, help="a TPU slice GEN:AxB[xC], e.g. v5e:2x2, v5p:4x4x4"
    )
    args, rest = p.parse_known_args(argv)
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu compiles; it must not claim the host
    try:
        cfg, ref = _config_from(p, args, rest)
        from jaxar.train import compile as compile_lib

        devices = compile_lib.topology_devices(args.topology)
        chip = compile_lib.CHIPS[args.topology.split(":")[0]]
        compiled, mesh = compile_lib.compile_train_step(cfg, devices)
    except ValueError as e:
        return _error("compile", e)
    rep = compile_lib.report(compiled, devices, chip)
    rows = cfg.batch_size * (cfg.data.seq_len if cfg.model.family in _TEXT else 1)
    print(
        f"jaxar compile: {ref.run_name} ({cfg.model.family}/{cfg.model.preset}) on "
        f"{args.topology}, mesh {dict(mesh.shape)}, batch {cfg.batch_size}"
    )
    for line in rep.lines(tokens_per_step=rows if cfg.model.family in _TEXT else None):
        print("  " + line)
    if not rep.fits:
        return _error(
            "compile",
            ValueError(
                f"the train step needs {rep.peak_bytes / 2**30:.2f} GiB per device; a "
                f"{chip.name} device has {rep.hbm_bytes / 2**30:.2f} GiB (shard more: "
                "--config.mesh.fsdp=..., or lower --config.batch_size)"
            ),
        )
    return 0


_TEXT = ("lm", "mdlm", "bd3")  # families whose rows are data.seq_len tokens


def _workdir_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--workdir",
        default=str(pathlib.Path(DEFAULT_ROOT) / "quickstart"),
        help="a training run directory (default: the quickstart's)",
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    return p


# ``jaxar sample`` flag -> the sampler option it sets (passed only when given)
SAMPLE_FLAGS = {
    "method": "--method",
    "num_steps": "--num-steps",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "threshold": "--threshold",
    "block_length": "--block-length",
    "cache": "--cache",
    "refresh_every": "--refresh-every",
    "remask": "--remask",
    "eta": "--eta",
    "eos_id": "--eos-id",
    "prompt": "--prompt",
    "length": "--length",
    "cfg_scale": "--cfg-scale",
    "cfg_schedule": "--cfg-schedule",
}


def _memory_limit() -> int:
    """Bytes of memory on the sampling device (host memory when the device says nothing)."""
    import os

    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _sample_options(args, family, cfg) -> dict:
    """The sampler options given on the command line; ValueError naming a bad flag."""
    for flag, value in (("--num", args.num), ("--length", args.length)):
        if value is not None and value < 1:
            raise ValueError(f"{flag}={value} is invalid; accepted: an integer >= 1")
    options = {k: getattr(args, k) for k in SAMPLE_FLAGS if getattr(args, k) is not None}
    bad = [k for k in options if k not in family.sampler.options]
    if bad:
        accepted = [f for k, f in SAMPLE_FLAGS.items() if k in family.sampler.options]
        raise ValueError(
            f"{', '.join(SAMPLE_FLAGS[k] for k in bad)} not accepted by the "
            f"{cfg.model.family!r} family's sampler; accepted: {accepted}"
        )
    scale = options.get("cfg_scale")
    if scale is not None and not (math.isfinite(scale) and scale >= 0):
        raise ValueError(
            f"--cfg-scale={scale} is invalid; accepted: a finite float >= 0 (1 = conditional)"
        )
    if "prompt" in options:
        import numpy as np

        data = options["prompt"].encode("utf-8")
        if not data:
            raise ValueError("--prompt='' is invalid; accepted: a non-empty text")
        options["prompt"] = np.frombuffer(data, np.uint8).astype(np.int32)[None]
    if "length" not in options and "length" in family.sampler.options:
        options["length"] = cfg.sample_length
    family.sampler.check(options)
    return options


def sample_main(argv: list[str]) -> int:
    """``jaxar sample``: prints text samples, or writes a PNG grid for image models."""
    _setup()
    p = _workdir_parser("jaxar sample", "Sample from a trained workdir.")
    p.add_argument("--num", type=int, default=4, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--length", type=int, default=None, help="tokens per text sample")
    p.add_argument("--method", default=None, help="the family's sampling method")
    p.add_argument("--num-steps", type=int, default=None, help="sampler steps")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus mass")
    p.add_argument(
        "--threshold", type=float, default=None, help="confidence threshold (mdlm 'threshold')"
    )
    p.add_argument(
        "--block-length", type=int, default=None, help="semi-AR blocks (mdlm; divides --length)"
    )
    p.add_argument("--cache", default=None, help="mdlm block KV cache: 'prefix' or 'dual'")
    p.add_argument(
        "--refresh-every", type=int, default=None, help="mdlm cache: full forward every k calls"
    )
    p.add_argument("--remask", default=None, help="mdlm 'remdm' schedule: cap, rescale, loop")
    p.add_argument("--eta", type=float, default=None, help="mdlm 'remdm' remasking eta in [0, 1]")
    p.add_argument("--eos-id", type=int, default=None, help="stop a row at this token id (mdlm)")
    p.add_argument("--prompt", default=None, help="text the samples continue (UTF-8 bytes)")
    p.add_argument(
        "--cfg-scale", type=float, default=None, help="classifier-free guidance scale (>= 0)"
    )
    p.add_argument("--cfg-schedule", default=None, help="guidance schedule: 'constant' or 'linear'")
    p.add_argument("--out", default=None, help="output file (.txt or .png)")
    _add_speculative_flags(p)
    args = p.parse_args(argv)
    if args.num < 1:
        return _error(
            "sample", ValueError(f"--num={args.num} is invalid; accepted: an integer >= 1")
        )
    try:
        _check_speculative_flags(args)
    except ValueError as e:
        return _error("sample", e)
    from jaxar.train import loop

    try:
        run = loop.load_run(args.workdir, step=args.step)
        options = _sample_options(args, run.task, run.cfg)
        model = run.model()
        if "length" in options and run.task.sample_bytes is not None:
            need = run.task.sample_bytes(model.config, args.num, options["length"])
            have = _memory_limit()
            if need > have:
                raise ValueError(
                    f"--length={options['length']} with --num={args.num} needs about "
                    f"{need / 2**30:.1f} GiB to sample; this device has {have / 2**30:.1f} GiB"
                )
    except (ValueError, FileNotFoundError) as e:
        return _error("sample", e)
    import jax

    try:
        if _speculative_requested(args):
            samples = _speculative_sample(args, run, model, options)
        else:
            samples = run.task.sample(
                model, jax.random.key(args.seed), args.num, run=run, **options
            )
    except (ValueError, FileNotFoundError) as e:
        return _error("sample", e)
    out = args.out
    if out is None and run.info.kind == "image":
        out = str(pathlib.Path(args.workdir) / "samples" / f"sample_seed{args.seed}.png")
    if out is None:
        print(loop.decode_text(samples))
        return 0
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if run.info.kind == "image":
        loop.save_png_grid(samples, out)
    else:
        out.write_text(loop.decode_text(samples))
    print(f"wrote {out}")
    return 0


def _add_speculative_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--draft-workdir", default=None, help="speculative decoding with this run as the draft"
    )
    p.add_argument(
        "--speculative",
        default=None,
        help="'self': speculative decoding drafted by the model's multi-token heads",
    )
    p.add_argument("--num-draft", type=int, default=None, help="draft tokens per call (4)")


def _speculative_requested(args) -> bool:
    return args.draft_workdir is not None or args.speculative is not None


def _check_speculative_flags(args) -> None:
    if args.speculative is not None and args.speculative != "self":
        raise ValueError(f"--speculative={args.speculative!r} is not supported; accepted: 'self'")
    if args.speculative is not None and args.draft_workdir is not None:
        raise ValueError("--speculative=self and --draft-workdir both given; accepted: one of them")
    if args.num_draft is not None:
        if not _speculative_requested(args):
            raise ValueError(
                f"--num-draft={args.num_draft} needs --draft-workdir or --speculative=self"
            )
        from jaxar.ops.checks import positive_int  # jax-free parsing: imported when used

        positive_int("--num-draft", args.num_draft)
    if _speculative_requested(args) and args.out is not None and args.out.endswith(".png"):
        raise ValueError(f"--out={args.out!r}: speculative decoding samples text (.txt)")


def _speculative_sample(args, run, model, options):
    """Speculative samples; prints the acceptance rate and the measured speed-up over
    ``generate`` (both timed after a compiling call) before the samples."""
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxar.sampling import generate, speculative
    from jaxar.sampling.samplers import DEFAULT_PROMPT_ID
    from jaxar.train import loop

    if run.cfg.model.family != "lm":
        raise ValueError(
            f"--draft-workdir/--speculative need an autoregressive 'lm' run; --workdir is a "
            f"{run.cfg.model.family!r} run"
        )
    draft = None
    if args.draft_workdir is not None:
        draft_run = loop.load_run(args.draft_workdir)
        if draft_run.cfg.model.family != "lm":
            raise ValueError(
                f"--draft-workdir={args.draft_workdir!r} is a {draft_run.cfg.model.family!r} "
                "run; accepted: an 'lm' run with the same vocabulary"
            )
        draft = draft_run.model()
    prompt = options.get("prompt")
    if prompt is None:
        prompt = np.full((1, 1), DEFAULT_PROMPT_ID, np.int32)
    prompt = jnp.broadcast_to(jnp.asarray(prompt, jnp.int32), (args.num, np.shape(prompt)[1]))
    length = options.get("length", run.cfg.sample_length)
    if length <= prompt.shape[1]:
        raise ValueError(f"--length={length} must exceed the prompt's {prompt.shape[1]} tokens")
    kw = dict(
        max_new_tokens=length - prompt.shape[1],
        temperature=options.get("temperature", 1.0),
        top_k=options.get("top_k"),
        top_p=options.get("top_p"),
    )
    key = jax.random.key(args.seed)
    num_draft = args.num_draft or (
        min(4, model.config.mtp_heads) if draft is None and model.config.mtp_heads else 4
    )

    def spec():
        return speculative.generate(
            key, model, draft, prompt, num_draft=num_draft, return_stats=True, **kw
        )

    def plain():
        return generate(key, model, prompt, **kw)

    def timed(fn):
        jax.block_until_ready(fn())  # compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        return out, time.perf_counter() - t0

    (samples, stats), t_spec = timed(spec)
    _, t_plain = timed(plain)
    rate = float(np.mean(np.asarray(stats["acceptance_rate"])))
    per_call = float(np.mean(np.asarray(stats["tokens_per_call"])))
    what = "self (multi-token heads)" if draft is None else f"draft {args.draft_workdir}"
    print(
        f"speculative [{what}, num_draft={num_draft}]: acceptance rate {rate:.3f}, "
        f"{per_call:.2f} tokens/target call, speed-up {t_plain / t_spec:.2f}x "
        f"({t_spec * 1e3:.1f} ms vs generate {t_plain * 1e3:.1f} ms)"
    )
    return samples


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
