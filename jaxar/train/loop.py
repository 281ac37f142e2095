"""The host loop: builds the run, restores, steps, logs one step late, evaluates, saves.

All I/O lives here; the device work is the jitted pure step (``jaxar.train.step``).
Metrics of step ``n`` are fetched after step ``n + 1`` is dispatched, so the device never
waits on the host. Files under ``workdir``: ``config.json``, ``metrics.jsonl`` (one JSON
object per log line: ``step``, ``loss``, ...; eval lines carry ``eval/...`` keys; skipped
non-finite steps an ``event``), TensorBoard events under ``tb/``, ``checkpoints/`` and
``samples/``; ``.lock`` is held while training (one trainer per workdir). SIGTERM or a
first Ctrl-C saves a checkpoint and returns cleanly (a second Ctrl-C aborts at once);
rerunning the same command in the same workdir resumes from the newest good checkpoint
(params, optimizer, step, RNG and data position; a damaged newer step is moved to
``damaged_checkpoints/`` with a warning), truncating ``metrics.jsonl`` to that step. A
rerun may change only resume-compatible fields (``jaxar.train.workdir.RESUMABLE``).

Log lines carry ``steps_per_sec``, ``tokens_per_sec`` and ``mfu`` over the train-step time
only: the first (compiling) step, evaluation and checkpoint saves are not timed
(``jaxar.train.throughput``); the summary's ``throughput`` holds the whole run's figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import signal
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxar import sharding
from jaxar.train import optim, tasks
from jaxar.train import step as step_lib
from jaxar.train import throughput as throughput_lib
from jaxar.train import workdir as workdir_lib
from jaxar.train.checkpoint import Checkpointer, warn
from jaxar.train.config import TrainConfig


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss or gradient (``nonfinite="stop"``, or
    ``max_consecutive_skips`` skipped steps in a row with ``nonfinite="skip"``)."""


def _multi_host_cluster(env) -> bool:
    """Whether a cluster manager jax can auto-detect launched several processes."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(env.get(var, "1") or 1) > 1:
            return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")  # a multi-host TPU slice


def maybe_initialize_distributed() -> bool:
    """``jax.distributed.initialize`` when the environment says so: an explicit
    coordinator (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), a
    multi-process SLURM / Open MPI launch or multi-host TPU slice (auto-detected by jax),
    or ``JAXAR_DISTRIBUTED=1``. Call before anything touches the devices."""
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env and "JAX_NUM_PROCESSES" in env:
        # CPU processes need a collectives backend; the option is ignored on GPU/TPU
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env.get("JAX_PROCESS_ID", "0")),
        )
        return True
    if env.get("JAXAR_DISTRIBUTED") == "1" or _multi_host_cluster(env):
        jax.distributed.initialize()
        return True
    return False


@dataclasses.dataclass
class Run:
    """Everything built from a config: model graph, state, steps, data, mesh."""

    cfg: TrainConfig
    task: tasks.Family
    info: object
    mesh: jax.sharding.Mesh
    graphdef: object
    rest: object
    state: dict
    train_step: object
    eval_step: object
    train_source: object
    eval_source: object
    restored_step: int | None = None

    def model(self, params=None):
        """The NNX model around ``params`` (default: EMA params if kept, else params) and
        the run's model state (if any)."""
        if params is None:
            params = self.state.get("ema", self.state["params"])
        if "model_state" in self.state:
            return nnx.merge(self.graphdef, params, self.state["model_state"], self.rest)
        return nnx.merge(self.graphdef, params, self.rest)

    def put_batch(self, local: dict) -> dict:
        """Assembles this host's rows into global arrays sharded over the batch axes."""
        out = {}
        for k, v in local.items():
            global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
            sh = sharding.batch_sharding(self.mesh, v.ndim)
            out[k] = jax.make_array_from_process_local_data(sh, v, global_shape)
        return out

    def tokens_per_row(self) -> int:
        if self.info.kind == "image":
            return int(np.prod(self.info.image_shape))
        return self.cfg.data.seq_len


def build(cfg: TrainConfig, *, devices=None, check_memory: bool = True) -> Run:
    """Model (params born sharded), optimizer state, jitted steps and data sources.

    With ``check_memory`` a CPU run whose estimated training memory exceeds the host's is
    refused before any parameter is allocated (``jaxar.train.workdir.check_memory``)."""
    from jaxar.data import sources

    task = tasks.get(cfg.model.family)
    d = cfg.data
    train_source, info = sources.load(
        d.name, d.train_split, seq_len=d.seq_len, packing=d.packing, data_dir=d.data_dir,
        image=d.image_prep(train=True),
    )  # fmt: skip
    eval_source, _ = sources.load(
        d.name, d.eval_split, seq_len=d.seq_len, packing=d.packing, data_dir=d.data_dir,
        image=d.image_prep(train=False),
    )  # fmt: skip
    if info.kind != task.kind:
        raise ValueError(
            f"config.model.family={cfg.model.family!r} trains on {task.kind} data but "
            f"config.data.name={d.name!r} is {info.kind} data"
        )
    train_source = task.source(cfg.model, train_source, data=d.name, split=d.train_split)
    eval_source = task.source(cfg.model, eval_source, data=d.name, split=d.eval_split)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.batch_size % (n_batch * jax.process_count()):
        raise ValueError(
            f"config.batch_size={cfg.batch_size} must be divisible by the batch mesh axes "
            f"data x fsdp = {n_batch} (and by the {jax.process_count()} processes)"
        )
    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32

    def make_model():
        with nnx.use_eager_sharding(False):
            return task.build(cfg.model, info, dtype, nnx.Rngs(cfg.seed))

    abstract = nnx.eval_shape(make_model)
    graphdef, abs_params, abs_ms, abs_rest = step_lib.split_model(abstract)
    if check_memory:
        row = int(np.prod(info.image_shape)) if info.kind == "image" else d.seq_len
        workdir_lib.check_memory(
            [x.shape for x in jax.tree.leaves(abs_params)],
            cfg,
            tokens_per_row=row,
            backend=jax.default_backend(),
        )
    out_sh = tuple(sharding.state_shardings(s, mesh) for s in (abs_params, abs_ms, abs_rest))

    def init():
        return step_lib.split_model(make_model())[1:]

    params, model_state, rest = jax.jit(init, out_shardings=out_sh)()
    tx = optim.make(cfg)
    with jax.set_mesh(mesh):
        state = step_lib.init_state(
            params, tx, seed=cfg.seed, ema=cfg.ema_decay > 0, model_state=model_state
        )
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train_fn = step_lib.make_train_step(
        graphdef,
        rest,
        task.loss,
        tx,
        grad_accum=cfg.grad_accum,
        ema_decay=cfg.ema_decay,
        lr_schedule=optim.schedule(cfg),
    )
    # traced with the mesh active: the models' activation constraints apply (jaxar.sharding)
    train_fn = sharding.traced_on(train_fn, mesh)
    train_step = jax.jit(train_fn, out_shardings=(state_sh, replicated), donate_argnums=(0,))
    eval_fn = sharding.traced_on(step_lib.make_eval_step(graphdef, rest, task.loss), mesh)
    eval_step = jax.jit(eval_fn, out_shardings=replicated)
    return Run(
        cfg, task, info, mesh, graphdef, rest, state, train_step, eval_step,
        train_source, eval_source,
    )  # fmt: skip


def evaluate(run: Run, params=None, *, num_batches: int | None = None) -> dict:
    """Mean held-out metrics over the first ``num_batches`` global batches (in order)."""
    from jaxar.data import pipeline

    cfg = run.cfg
    params = run.state.get("ema", run.state["params"]) if params is None else params
    n_rows = len(run.eval_source)
    batch = min(cfg.batch_size, n_rows - n_rows % jax.process_count())
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches={num_batches} is invalid; accepted: an integer >= 1")
    num = max(1, min(num_batches or cfg.eval_batches, n_rows // batch))
    host = pipeline.HostShard(jax.process_index(), jax.process_count())
    ds = pipeline.batched(run.eval_source, batch, shuffle=False, num_epochs=1, host=host)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1 << 20)
    totals: dict[str, float] = {}
    for i in range(num):
        metrics = jax.device_get(
            run.eval_step(
                params, run.put_batch(ds[i]), jax.random.fold_in(key, i),
                run.state.get("model_state"),
            )
        )  # fmt: skip
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / num for k, v in totals.items()}


class MetricsWriter:
    """``metrics.jsonl`` + TensorBoard events (process 0 only)."""

    def __init__(self, workdir: pathlib.Path, *, enabled: bool, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self.enabled = enabled
        self.prior_skipped = 0  # skipped-step events kept from earlier sessions
        self._tb = None
        if not enabled:
            return
        if self.path.exists():  # drop lines past the restored checkpoint (and torn ones)
            keep, note = workdir_lib.read_metrics(self.path, resume_step)
            if note:
                warn(note)
            self.prior_skipped = sum('"nonfinite_skipped"' in line for line in keep)
            self.path.write_text("".join(line + "\n" for line in keep))
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tb"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self._tb = None

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()


def _print(*args) -> None:
    if jax.process_index() == 0:
        print(*args, flush=True)


def write_samples(
    run: Run, workdir: pathlib.Path, *, num: int, seed: int, out=None
) -> pathlib.Path:
    """Samples from the run's model into ``out`` (default ``workdir/samples/step_N``):
    text (``.txt``) for sequence models, a PNG grid for image models."""
    step = int(run.state["step"])
    key = jax.random.fold_in(jax.random.key(seed), step)
    length = {"length": run.cfg.sample_length} if run.task.kind == "text" else {}
    samples = run.task.sample(run.model(), key, num, run=run, **length)
    if jax.process_index() != 0:  # every process samples (SPMD); process 0 writes
        return pathlib.Path(out or workdir / "samples")
    if out is None:
        suffix = ".png" if run.info.kind == "image" else ".txt"
        out = workdir / "samples" / f"step_{step}{suffix}"
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if run.info.kind == "image":
        save_png_grid(np.asarray(samples), out)
    else:
        out.write_text(decode_text(samples))
    return out


def decode_text(tokens) -> str:
    """Byte tokens (B, L) -> one text block per sample (ids >= 256 dropped)."""
    parts = []
    for i, row in enumerate(np.asarray(tokens)):
        data = bytes(int(t) for t in row if 0 <= int(t) < 256)
        parts.append(f"===== sample {i} =====\n{data.decode('utf-8', errors='replace')}\n")
    return "".join(parts)


def save_png_grid(images, path) -> None:
    """uint8 (B, H, W, C) images as a near-square PNG grid with 1-pixel gaps."""
    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    b, h, w, c = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = images[
            i
        ]
    scale = max(1, 256 // max(grid.shape[:2]))
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


class _Stopper:
    """SIGTERM and a first SIGINT ask for a checkpoint and a clean exit; a second SIGINT
    raises ``KeyboardInterrupt`` at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.event = threading.Event()
        self.name: str | None = None
        self._old = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.event.is_set():
            raise KeyboardInterrupt
        self.name = self.name or signal.Signals(signum).name
        self.event.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def _store_config(cfg: TrainConfig, workdir: pathlib.Path, say) -> None:
    """Refuses an incompatible rerun, then writes (or updates) ``config.json``."""
    path = workdir / "config.json"
    existed = path.exists()
    changed = workdir_lib.check_config(workdir, cfg)
    if jax.process_index() == 0 and (changed or not existed):
        workdir_lib.write_json_atomic(path, cfg.to_dict())
    if changed:
        say(f"config.json updated (resume-compatible changes: {', '.join(changed)})")


def _restore(run: Run, ckpt: Checkpointer, workdir: pathlib.Path, train_iter, say) -> int:
    """Restores the newest good checkpoint into ``run``; damaged newer steps are moved to
    ``workdir/damaged_checkpoints`` with one warning each. Returns the start step."""
    if ckpt.removed:
        warn(f"removed unfinished checkpoint step(s) {', '.join(ckpt.removed)}")
    if ckpt.latest_step() is None:
        return 0
    run.state, data_state = ckpt.restore(run.state)
    start = int(run.state["step"])
    for s, why in ckpt.skipped:
        moved = ckpt.set_aside(s, workdir / "damaged_checkpoints")
        warn(f"checkpoint step {s} is damaged ({why}); moved to {moved}; using step {start}")
    train_iter.set_state(data_state)
    say(f"resumed from {ckpt.directory / str(ckpt.restored_step)} (step {start})")
    return start


def train(cfg: TrainConfig, workdir, *, devices=None, quiet: bool = False) -> dict:
    """Trains (or resumes) ``cfg`` in ``workdir``; returns a summary dict.

    Raises:
      ValueError: the workdir is a file, not writable, in use by another trainer
        (``WorkdirBusy``), or holds a run with an incompatible config; no usable checkpoint
        or a failed save (``CheckpointError``); a config too large for this host.
      NonFiniteError: on a non-finite loss or gradient with ``nonfinite="stop"``, or after
        ``max_consecutive_skips`` skipped steps in a row.
    """
    workdir = workdir_lib.prepare(workdir)
    lock = workdir_lib.WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
    try:
        return _train(cfg, workdir, devices=devices, quiet=quiet)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: TrainConfig, workdir: pathlib.Path, *, devices, quiet: bool) -> dict:
    from jaxar.data import pipeline

    t_start = time.time()
    say = (lambda *a: None) if quiet else _print
    primary = jax.process_index() == 0
    _store_config(cfg, workdir, say)
    run = build(cfg, devices=devices)
    host = pipeline.HostShard(jax.process_index(), jax.process_count())
    train_ds = pipeline.batched(run.train_source, cfg.batch_size, seed=cfg.seed, host=host)
    train_iter = pipeline.DataIterator(train_ds, prefetch=cfg.data.prefetch)
    ckpt = Checkpointer(
        workdir / "checkpoints", keep=cfg.keep_checkpoints, async_save=cfg.async_checkpoints
    )
    try:
        start = _restore(run, ckpt, workdir, train_iter, say)
    except BaseException:
        ckpt.close()
        raise
    writer = MetricsWriter(workdir, enabled=primary, resume_step=start)
    n_params = sum(x.size for x in jax.tree.leaves(run.state["params"]))
    say(
        f"jaxar train: {cfg.model.family}/{cfg.model.preset} ({n_params / 1e6:.2f}M params) on "
        f"{cfg.data.name}, mesh {dict(run.mesh.shape)}, {cfg.steps} steps x "
        f"{cfg.batch_size} rows; workdir {workdir}"
    )

    tokens_per_step = cfg.batch_size * run.tokens_per_row()
    summary = {"workdir": str(workdir), "start_step": start, "skipped_steps": []}
    last = {"run": 0}
    timer = throughput_lib.StepTimer()
    perf = {}  # flops per step and peak FLOP/s, filled after the first (compiling) step

    def rates(steps: int, seconds: float) -> dict:
        if steps <= 0 or seconds <= 0:
            return {}
        sps = steps / seconds
        out = dict(steps_per_sec=sps, tokens_per_sec=sps * tokens_per_step)
        if perf:
            out.update(throughput_lib.mfu_fields(perf["flops"], 1.0 / sps, perf["peak"]))
        return out

    def handle(step_n: int, metrics) -> None:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if m.get("finite", 1.0) == 0.0:
            summary["skipped_steps"].append(step_n)
            last["run"] += 1
            say(f"step {step_n}: non-finite loss or gradients (loss={m['loss']}, "
                f"grad_norm={m['grad_norm']}); update skipped")  # fmt: skip
            writer.write(step_n, {"event": "nonfinite_skipped", "loss": m["loss"]})
            if cfg.nonfinite == "stop":
                raise NonFiniteError(
                    f"non-finite loss or gradients at step {step_n} (config.nonfinite='stop')"
                )
            if last["run"] >= cfg.max_consecutive_skips:
                raise NonFiniteError(
                    f"{last['run']} consecutive steps ({step_n - last['run'] + 1}-{step_n}) had "
                    f"non-finite loss or gradients and were skipped "
                    f"({len(summary['skipped_steps'])} skipped in this session; "
                    f"config.max_consecutive_skips={cfg.max_consecutive_skips}); giving up "
                    "without saving: lower config.learning_rate or check the data"
                )
            return
        last["run"] = 0
        summary["loss"] = m["loss"]
        if step_n % cfg.log_every == 0 or step_n == cfg.steps:
            r = rates(*timer.take(step_n))
            m.update(r)
            if step_n == cfg.steps:
                m["skipped_total"] = writer.prior_skipped + len(summary["skipped_steps"])
            writer.write(step_n, m)
            speed = (
                f"  {r['steps_per_sec']:.2f} steps/s  {r['tokens_per_sec']:,.0f} tokens/s"
                + (f"  MFU {r['mfu']:.2%}" if "mfu" in r else "")
                + (
                    f"  MFU n/a ({r['mfu_implausible']:.0%} of peak: the FLOP count or the "
                    "peak is wrong)"
                    if "mfu_implausible" in r
                    else ""
                )
                if r
                else "  (no timed step yet: the first step compiles)"
            )
            say(f"step {step_n}/{cfg.steps}  loss {m['loss']:.4f}{speed}")

    def first_step_done(step_n: int, batch, metrics) -> None:
        """Compile is over: measure the FLOPs and the peak, then start the timer."""
        jax.block_until_ready(metrics)
        traced = run.train_step.trace(run.state, batch)
        perf["flops"], perf["flops_source"] = throughput_lib.step_flops(
            traced.lower(), run.model(), tokens_per_step, run.tokens_per_row(), jaxpr=traced.jaxpr
        )
        perf["peak"], perf["peak_source"] = throughput_lib.peak_flops(
            jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32,
            run.mesh.devices.flat,
        )
        basis = (
            f"MFU basis: {perf['flops'] / 1e9:.4g} GFLOP/step ({perf['flops_source']}), "
            if perf["flops"] is not None
            else f"no MFU: {perf['flops_source']}; "
        )
        say(
            f"{basis}peak {perf['peak'] / 1e12:.4g} TFLOP/s ({perf['peak_source']}); "
            "throughput excludes the first step, evaluation and checkpointing"
        )
        timer.resume(step_n)

    pending = None
    step_n = start
    if start >= cfg.steps:
        say(f"already trained to step {start} (config.steps={cfg.steps}); nothing to do")
    stopper = _Stopper()
    failed = True
    try:
        with stopper:
            for step_n in range(start + 1, cfg.steps + 1):
                batch = run.put_batch(next(train_iter))
                run.state, metrics = run.train_step(run.state, batch)
                if step_n == start + 1:
                    first_step_done(step_n, batch, metrics)
                if pending is not None:
                    handle(*pending)
                pending = (step_n, metrics)
                stop = stopper.event.is_set()
                do_eval = step_n % cfg.eval_every == 0 or step_n == cfg.steps
                do_save = step_n % cfg.checkpoint_every == 0 or step_n == cfg.steps or stop
                if do_eval or do_save:
                    handle(*pending)  # a step must pass the skip guard before saving
                    pending = None
                    timer.pause(step_n)  # step_n is done: evaluation and saves are not timed
                if do_eval:
                    ev = evaluate(run)
                    writer.write(step_n, {f"eval/{k}": v for k, v in ev.items()})
                    summary["eval"] = ev
                    head = next((k for k in run.task.eval_keys if k in ev), "loss")
                    say(f"step {step_n}: held-out {head} {ev[head]:.4f}")
                if do_save:
                    ckpt.save(step_n, run.state, train_iter.get_state(), force=True)
                timer.resume(step_n)
                if stop:
                    ckpt.wait()
                    say(f"{stopper.name}: saved a checkpoint at step {step_n}; exiting")
                    summary["preempted"] = True
                    break
            if pending is not None:
                handle(*pending)
        failed = False
    finally:
        _close(ckpt, writer, raise_errors=not failed)
    summary["step"] = step_n
    timer.pause(step_n)
    summary["throughput"] = dict(
        timed_steps=timer.total_steps,
        timed_seconds=timer.total_seconds,
        **rates(timer.total_steps, timer.total_seconds),
        **perf,
    )
    summary["num_skipped"] = writer.prior_skipped + len(summary["skipped_steps"])
    if not summary.get("preempted") and cfg.num_samples and step_n == cfg.steps:
        try:
            path = write_samples(run, workdir, num=cfg.num_samples, seed=cfg.seed)
            summary["samples"] = str(path)
            say(f"samples: {path}")
        except Exception as e:  # noqa: BLE001 - training is saved; sampling is a bonus
            say(f"sampling failed ({type(e).__name__}: {e}); the checkpoint is saved")
    summary["wall_s"] = time.time() - t_start
    summary["params"] = run.state["params"]
    if "model_state" in run.state:
        summary["model_state"] = run.state["model_state"]
    skipped = f"; {summary['num_skipped']} steps skipped as non-finite" * bool(
        summary["num_skipped"]
    )
    say(
        f"done in {summary['wall_s']:.1f} s{skipped}; checkpoints {ckpt.directory}, metrics "
        f"{writer.path}, TensorBoard {workdir / 'tb'}"
    )
    sys.stdout.flush()
    return summary


def _close(ckpt: Checkpointer, writer: MetricsWriter, *, raise_errors: bool) -> None:
    """Closes the checkpointer (waiting for saves) and the metrics writer; their errors are
    raised only when nothing else is already propagating."""
    errors = []
    for close in (ckpt.close, writer.close):
        try:
            close()
        except Exception as e:  # noqa: BLE001 - re-raised below unless already failing
            errors.append(e)
    if errors and raise_errors:
        raise errors[0]


def load_run(workdir, *, step: int | None = None) -> Run:
    """The Run of a trained ``workdir`` (its config.json) with the checkpointed state.

    Opens the checkpoints read-only (nothing is deleted, so a trainer may be running on
    the same workdir); ``run.restored_step`` is the step used, and a warning line says why
    when it is not the newest step directory (being written, unfinished or damaged)."""
    from jaxar.train.config import from_config_dict

    workdir = pathlib.Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise ValueError(f"--workdir={str(workdir)!r} holds no config.json (not a training run)")
    cfg = from_config_dict(json.loads(path.read_text()))
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"no finalized checkpoint in {directory.absolute()}")
    run = build(cfg, check_memory=False)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        run.state, _ = ckpt.restore(run.state, step)
    finally:
        ckpt.close()
    used = run.restored_step = ckpt.restored_step
    if step is None:
        for s in ckpt.unfinished_steps():
            if s > used:
                warn(f"checkpoint step {s} is incomplete (being written, or never finished); "
                     f"using step {used}")  # fmt: skip
        for s, why in ckpt.skipped:
            warn(f"checkpoint step {s} is damaged ({why}); using step {used}")
    return run
