"""The run directory: its lock, its stored config, its metrics file, and a memory check.

* :class:`WorkdirLock`: an exclusive ``fcntl.flock`` on ``workdir/.lock`` held for a
  training run (the holder's PID written inside). The OS releases it when the process
  exits, so a crashed run leaves no stale lock; a second trainer refuses at once.
* :func:`check_config`: a rerun in an existing workdir must train the same model on the
  same data with the same optimisation; only the fields in ``RESUMABLE`` (schedule
  length, logging / eval / checkpoint intervals, sampling, mesh, ...) may change. The
  stored ``config.json`` is compared first and kept; it is rewritten (atomically) only
  for allowed changes.
* :func:`read_metrics`: ``metrics.jsonl`` up to a step, tolerating a torn last line.
* :func:`check_memory`: a rough training-memory estimate (parameters, gradients, AdamW
  moments, EMA and activations) against the host's memory on CPU.
"""

from __future__ import annotations

import collections
import fcntl
import json
import math
import os
import pathlib

from jaxar.train.config import from_config_dict

__all__ = [
    "MEMORY_CHECK_ENV",
    "RESUMABLE",
    "WorkdirBusy",
    "WorkdirLock",
    "check_config",
    "check_memory",
    "estimate_train_bytes",
    "host_memory_bytes",
    "prepare",
    "read_metrics",
    "write_json_atomic",
]

LOCK_NAME = ".lock"
MEMORY_CHECK_ENV = "JAXAR_SKIP_MEMORY_CHECK"

# TrainConfig fields a resumed run may change (dotted names; a section name covers it all)
RESUMABLE = (
    "steps",
    "log_every",
    "eval_every",
    "eval_batches",
    "checkpoint_every",
    "keep_checkpoints",
    "async_checkpoints",
    "nonfinite",
    "max_consecutive_skips",
    "num_samples",
    "sample_length",
    "mesh",
    "data.prefetch",
    "data.data_dir",
)


class WorkdirBusy(ValueError):
    """Another process holds the workdir's lock."""


def prepare(workdir) -> pathlib.Path:
    """Creates ``workdir`` if needed; a one-line ``ValueError`` naming ``--workdir`` when it
    is a file, cannot be created or is not writable."""
    path = pathlib.Path(workdir).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--workdir={str(workdir)!r} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"--workdir={str(workdir)!r} is not a writable directory ({e.strerror or e})"
        ) from e
    return path


class WorkdirLock:
    """Exclusive lock on ``workdir/.lock`` (``fcntl.flock``), released by :meth:`release`
    or by the OS when the process ends."""

    def __init__(self, workdir):
        self.path = pathlib.Path(workdir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirBusy(
                f"--workdir={str(self.path.parent)!r} is in use by another jaxar train "
                f"(pid {holder}); wait for it to finish or choose another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_json_atomic(path: pathlib.Path, obj) -> None:
    """Writes JSON to ``path`` through a temporary file and a rename."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("model", "data", "mesh") and not prefix:
            out.update(_flatten(v, f"{k}."))
        else:
            out[prefix + k] = v
    return out


def _resumable(name: str) -> bool:
    return any(name == r or name.startswith(r + ".") for r in RESUMABLE)


def check_config(workdir, cfg) -> list[str]:
    """Compares ``cfg`` with the run's stored ``config.json`` (if any) and returns the
    changed resume-compatible fields (the caller then rewrites the file).

    Raises:
      ValueError: one line naming every field that differs and may not change.
    """
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        return []
    try:
        stored = from_config_dict(json.loads(path.read_text())).to_dict()
    except ValueError as e:  # unreadable JSON or a config this version cannot read
        raise ValueError(
            f"--workdir={str(workdir)!r}: its config.json cannot be read ({e}); use a new --workdir"
        ) from e
    old, new = (
        _flatten(json.loads(json.dumps(stored, default=str))),
        _flatten(json.loads(json.dumps(cfg.to_dict(), default=str))),
    )
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    refused = [k for k in changed if not _resumable(k)]
    if refused:
        diffs = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in refused)
        raise ValueError(
            f"--workdir={str(workdir)!r} holds a run with a different config ({diffs}); "
            "resume it unchanged, or train in a new --workdir"
        )
    return changed


def read_metrics(path: pathlib.Path, upto_step: int) -> tuple[list[str], str | None]:
    """The lines of ``metrics.jsonl`` with ``step <= upto_step``, and a note when a torn
    (unparsable) line was dropped, e.g. the last line of a run killed mid-write."""
    path = pathlib.Path(path)
    if not path.exists():
        return [], None
    keep, torn = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            torn.append(i + 1)
            continue
        if row.get("step", 0) <= upto_step:
            keep.append(line)
    note = None
    if torn:
        note = f"{path}: dropped {len(torn)} torn line(s) (line {', '.join(map(str, torn))})"
    return keep, note


def host_memory_bytes() -> int:
    """Physical memory, or the cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = pathlib.Path(f).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def estimate_train_bytes(
    param_shapes, *, batch_size: int, tokens_per_row: int, compute_bytes: int, ema: bool
) -> tuple[int, int]:
    """``(state_bytes, activation_bytes)`` of one training step, roughly.

    State: float32 parameters, gradients and the two AdamW moments (+ EMA). Activations:
    about ``34 * d`` bytes per token and layer at 16-bit precision ("Reducing Activation
    Recomputation in Large Transformer Models", arXiv:2205.05198), with the width ``d``
    the most common parameter dimension and ``layers * d ~ params / (12 d)``.
    """
    shapes = [tuple(s) for s in param_shapes]
    n = sum(math.prod(s) for s in shapes)
    state = 4 * n * (4 + int(ema))
    dims = collections.Counter(d for s in shapes if len(s) >= 2 for d in s)
    if not dims:
        return state, 0
    width = dims.most_common(1)[0][0]
    per_token = 34 * (compute_bytes / 2) * n / (12 * width)
    return state, int(batch_size * tokens_per_row * per_token)


def check_memory(param_shapes, cfg, *, tokens_per_row: int, backend: str) -> None:
    """Refuses (one-line ``ValueError``) a config whose estimated training memory exceeds
    the host's on CPU; set ``JAXAR_SKIP_MEMORY_CHECK=1`` to try anyway."""
    if backend != "cpu" or os.environ.get(MEMORY_CHECK_ENV, "") not in ("", "0"):
        return
    state, acts = estimate_train_bytes(
        param_shapes,
        batch_size=cfg.batch_size // cfg.grad_accum,
        tokens_per_row=tokens_per_row,
        compute_bytes=2 if cfg.compute_dtype == "bfloat16" else 4,
        ema=cfg.ema_decay > 0,
    )
    host = host_memory_bytes()
    if state + acts > host:
        gib = 2**30
        n = sum(math.prod(tuple(s)) for s in param_shapes)
        raise ValueError(
            f"config model.preset={cfg.model.preset!r} ({n / 1e6:.1f}M params, batch_size="
            f"{cfg.batch_size}) needs about {(state + acts) / gib:.1f} GiB to train (state "
            f"{state / gib:.1f} GiB, activations {acts / gib:.1f} GiB) but this CPU host has "
            f"{host / gib:.1f} GiB; use the config's ':tiny' variant (or set "
            f"{MEMORY_CHECK_ENV}=1 to try anyway)"
        )
