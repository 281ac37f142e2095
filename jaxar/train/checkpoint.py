"""Checkpoints (orbax in one file): model, optimizer, EMA, model state, step, RNG and data
position together.

One orbax ``CheckpointManager`` under ``workdir/checkpoints``: item ``state`` (the train
state pytree, ``StandardSave``) and item ``data`` (the data iterator's state, JSON) are
written in one step directory (``model_state`` only for models that keep one, so the
checkpoints of the others are unchanged; a step saved without it does not restore into a
run that keeps one: a one-line error). Orbax writes a step into a temporary directory and renames
it only when every item is complete, so a checkpoint interrupted half-way (SIGKILL,
preemption) is never restored. A step directory without orbax's completion markers
(``_CHECKPOINT_METADATA`` and ``commit_success.txt``, written last) is never restored either.

Integrity is jaxar's own: once orbax has finalised a step, a manifest
(``jaxar_manifest.json``: the SHA-256 of every file under the step directory) is written
atomically beside it, and restoring checks the manifest, then that every restored
floating-point array is finite. A checkpoint with non-finite parameters is never written.
Restoring without a step falls back from a damaged newest step to the newest good one
(``Checkpointer.skipped`` says which steps were passed over and why). Retention is
managed here, not by orbax: ``keep`` counts good steps, and a step is deleted only when
``keep`` newer good ones exist, so the last good checkpoint always survives.

The trainer opens the manager read-write (it removes leftover temporaries and unfinished
steps); readers (``jaxar eval`` / ``sample``) open it with ``read_only=True``, which deletes
nothing, so that they can run beside a training process on the same workdir.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sys
import threading
import time

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint._src.futures import future as orbax_future

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "abstract_like",
    "all_finite",
    "is_complete",
    "remove_incomplete",
    "verify_manifest",
    "warn",
    "write_manifest",
]

COMPLETE_MARKERS = ("_CHECKPOINT_METADATA", "commit_success.txt")
MANIFEST = "jaxar_manifest.json"
TMP_INFIX = ".orbax-checkpoint-tmp"
REMOVED = "the unfinished step was removed"


class CheckpointError(ValueError):
    """A checkpoint could not be saved, or no usable checkpoint could be restored (a
    ``ValueError``: the command line reports it in one line, like bad input)."""


def abstract_like(tree):
    """ShapeDtypeStructs with the concrete shardings of ``tree``'s arrays (restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def is_complete(step_dir: pathlib.Path) -> bool:
    """Whether a step directory was finalized (all of orbax's completion markers)."""
    return all((step_dir / m).exists() for m in COMPLETE_MARKERS)


def _step_dirs(directory: pathlib.Path) -> dict[int, pathlib.Path]:
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()}


def remove_incomplete(directory: pathlib.Path) -> list[str]:
    """Deletes step directories (named by an integer) that were never finalized."""
    removed = []
    for step, p in _step_dirs(pathlib.Path(directory)).items():
        if not is_complete(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(str(step))
    return sorted(removed)


def _sha256(path: pathlib.Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(step_dir: pathlib.Path) -> pathlib.Path:
    """Writes ``step_dir/jaxar_manifest.json`` (SHA-256 of every file) atomically."""
    step_dir = pathlib.Path(step_dir)
    files = {str(p.relative_to(step_dir)): _sha256(p) for p in _files(step_dir)}
    out = step_dir / MANIFEST
    tmp = step_dir / f".{MANIFEST}.tmp"
    try:
        with tmp.open("w") as f:
            json.dump({"algorithm": "sha256", "files": files}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def verify_manifest(step_dir: pathlib.Path) -> str | None:
    """Why ``step_dir`` fails its manifest (a one-line reason), or None when it passes or
    has no manifest (older checkpoints, or a crash between orbax's commit and the manifest;
    such steps are still checked for finite values when restored)."""
    step_dir = pathlib.Path(step_dir)
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    for rel, digest in files.items():
        p = step_dir / rel
        if not p.is_file():
            return f"{rel} is missing"
        if _sha256(p) != digest:
            return f"{rel} does not match its checksum ({p.stat().st_size} bytes)"
    return None


@jax.jit
def _finite(leaves):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree) -> bool:
    """Whether every floating-point array in ``tree`` is finite (no NaN or inf)."""
    leaves = [
        x
        for x in jax.tree.leaves(tree)
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return not leaves or bool(_finite(leaves))


def _reason(e: BaseException) -> str:
    """A one-line reason from an exception chain (the innermost OSError if any)."""
    seen, cur, best = set(), e, e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError):
            best = cur
        cur = cur.__cause__ or cur.__context__
    text = " ".join(str(best).split()) or type(best).__name__
    return f"{type(best).__name__}: {text[:240]}"


def _join_orbax_threads(timeout: float = 120.0) -> None:
    """Waits for orbax's background save threads (still writing after a failed save)."""
    cls = getattr(orbax_future, "_SignalingThread", None)
    if cls is None:
        time.sleep(1.0)
        return
    for t in threading.enumerate():
        if isinstance(t, cls) and t is not threading.current_thread():
            t.join(timeout)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def warn(message: str) -> None:
    """One warning line on stderr (process 0)."""
    if jax.process_index() == 0:
        print(f"jaxar: warning: {message}", file=sys.stderr, flush=True)


class Checkpointer:
    """Saves and restores ``(train state, data iterator state)`` per step.

    Args:
      directory: the checkpoints directory.
      keep: good steps to keep (older ones are deleted once ``keep`` newer good ones exist).
      async_save: write files in the background (the host copies arrays first).
      read_only: open for reading only (no cleanup, no save, no delete).
    """

    def __init__(
        self, directory, *, keep: int = 3, async_save: bool = True, read_only: bool = False
    ):
        self.directory = pathlib.Path(directory).absolute()
        self.read_only = read_only
        self.keep = keep
        self.skipped: list[tuple[int, str]] = []  # (step, why) passed over by restore
        self.restored_step: int | None = None
        self._pending: list[int] = []
        self._async = async_save
        primary = jax.process_index() == 0
        if read_only:
            self.removed = []
            options = ocp.CheckpointManagerOptions(
                read_only=True,
                cleanup_tmp_directories=False,
                create=False,
                save_interval_steps=0,
                lightweight_initialize=True,  # no per-step reads: a trainer may delete steps
            )
        else:
            self.removed = remove_incomplete(self.directory) if primary else []
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None,
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
            )
        for attempt in range(3):  # a running trainer may delete a step while it is listed
            try:
                self._mgr = ocp.CheckpointManager(self.directory, options=options)
                break
            except FileNotFoundError:
                if not read_only or attempt == 2:
                    raise
        self._good = {s for s, p in _step_dirs(self.directory).items() if (p / MANIFEST).exists()}

    def _step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        """Finalized steps, ascending."""
        return sorted(s for s, p in _step_dirs(self.directory).items() if is_complete(p))

    def incomplete_steps(self) -> list[int]:
        """Step directories without orbax's completion markers (a write in progress, or
        one that never finished)."""
        return sorted(s for s, p in _step_dirs(self.directory).items() if not is_complete(p))

    def unfinished_steps(self) -> list[int]:
        """Steps with an orbax temporary directory (a save in flight, or one interrupted
        before its rename) or a step directory without the completion markers."""
        names = [p.name.split(".")[0] for p in self.directory.glob(f"*{TMP_INFIX}*")]
        tmp = {int(n) for n in names if n.isdigit()}
        return sorted(tmp.union(self.incomplete_steps()))

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ---- saving -------------------------------------------------------------------------

    def _cleanup_failed(self, step: int) -> None:
        """Removes what a failed save of ``step`` left, once the other items' background
        writes (which orbax does not cancel) have ended."""
        try:
            self._mgr.wait_until_finished()
        except Exception:  # noqa: BLE001, S110 - the failure is being reported already
            pass
        _join_orbax_threads()
        if jax.process_index() == 0:
            for p in [*self.directory.glob(f"{step}{TMP_INFIX}*"), self._step_dir(step)]:
                if p.exists() and not is_complete(p):
                    shutil.rmtree(p, ignore_errors=True)
        _sync("jaxar_checkpoint_cleanup")
        self._mgr.reload()

    def _failed(self, step: int | None, e: BaseException, what: str) -> CheckpointError:
        good = sorted(self._good)
        last = f"step {good[-1]}" if good else "none"
        return CheckpointError(
            f"saving checkpoint step {step} in {self.directory} failed ({_reason(e)}); "
            f"{what}; last good checkpoint: {last}"
        )

    def _finish_pending(self) -> None:
        """Waits for in-flight saves, writes their manifests and applies retention."""
        try:
            self._mgr.wait_until_finished()
        except Exception as e:
            steps, self._pending = self._pending, []
            for s in steps:
                self._cleanup_failed(s)
            raise self._failed(steps[-1] if steps else None, e, REMOVED) from e
        steps, self._pending = self._pending, []
        for s in steps:  # saved: the same decision on every process
            p = self._step_dir(s)
            if jax.process_index() == 0 and is_complete(p):
                try:
                    write_manifest(p)
                except OSError as e:
                    raise self._failed(s, e, "its checksum manifest could not be written") from e
            self._good.add(s)
        if steps:
            self._retain()

    def _retain(self) -> None:
        good = sorted(self._good)
        if len(good) <= self.keep:
            return
        oldest_kept = good[-self.keep]
        for s in self._mgr.all_steps():
            if s < oldest_kept:
                self._mgr.delete(s)
                self._good.discard(s)

    def save(self, step: int, state, data_state: dict | None, *, force: bool = False) -> bool:
        """Saves ``state`` and the data position at ``step``; False when nothing was saved
        (non-finite parameters are never saved: a warning says so).

        Raises:
          CheckpointError: the write failed (e.g. disk full); the unfinished step is removed.
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        self._finish_pending()
        if not all_finite(state):
            warn(f"step {step}: the train state holds non-finite values; checkpoint not saved")
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})
        )
        try:
            saved = self._mgr.save(step, args=args, force=force)
        except Exception as e:
            self._cleanup_failed(step)
            raise self._failed(step, e, REMOVED) from e
        if saved:
            self._pending.append(step)
            if not self._async:
                self._finish_pending()
        return saved

    # ---- restoring ----------------------------------------------------------------------

    def _restore_step(self, step: int, target):
        problem = verify_manifest(self._step_dir(step))
        if problem is not None:
            raise CheckpointError(problem)
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            if "model_state" in target and "do not match" in str(e) and "model_state" in str(e):
                raise CheckpointError(
                    "saved without the model state this run keeps ('model_state', e.g. the "
                    "vq_ema codebook): written by an older jaxar or for another model"
                ) from e
            step_dir = self._step_dir(step)
            empty = [str(p.relative_to(step_dir)) for p in _files(step_dir) if not p.stat().st_size]
            where = f"empty file(s) {', '.join(empty)}; " if empty else ""
            raise CheckpointError(f"unreadable ({where}{_reason(e)})") from e
        if not all_finite(out["state"]):
            raise CheckpointError("holds non-finite values (NaN or inf)")
        return out["state"], out["data"]

    def restore(self, state_like, step: int | None = None):
        """``(state, data_state)`` at ``step``, with arrays placed like ``state_like`` (a
        concrete state or abstract target). Without ``step``: the newest good step,
        passing over damaged ones (recorded in ``self.skipped`` with the reason).

        Raises:
          FileNotFoundError: no finalized checkpoint (or no step ``step``).
          CheckpointError: the asked-for step, or every step, is damaged.
        """
        target = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else abstract_like(x), state_like
        )
        steps = self.all_steps()
        self.skipped = []
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(
                    f"--step={step}: no finalized checkpoint at that step in {self.directory}; "
                    f"accepted: {steps}"
                )
            try:
                out = self._restore_step(step, target)
            except CheckpointError as e:
                raise CheckpointError(f"checkpoint step {step} is damaged: {e}") from e
            self.restored_step = step
            return out
        if not steps:
            raise FileNotFoundError(f"no finalized checkpoint in {self.directory}")
        tried = set()
        while steps := [s for s in self.all_steps() if s not in tried]:
            s = steps[-1]
            tried.add(s)
            try:
                out = self._restore_step(s, target)
            except (CheckpointError, OSError) as e:
                if self._step_dir(s).exists():  # else deleted by a running trainer's retention
                    self.skipped.append((s, str(e)))
                continue
            self.restored_step = s
            self._good.add(s)
            return out
        why = "; ".join(f"step {s}: {r}" for s, r in self.skipped) or "all deleted meanwhile"
        raise CheckpointError(f"no usable checkpoint in {self.directory} ({why})")

    def set_aside(self, step: int, dest: pathlib.Path) -> pathlib.Path | None:
        """Moves a damaged step directory to ``dest/<step>`` (so that training can write
        that step again) and returns where it went (None off process 0)."""
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        moved = None
        if jax.process_index() == 0:
            dest.mkdir(parents=True, exist_ok=True)
            moved = dest / str(step)
            i = 1
            while moved.exists():
                moved, i = dest / f"{step}.{i}", i + 1
            shutil.move(str(self._step_dir(step)), moved)
        _sync("jaxar_checkpoint_set_aside")
        self._good.discard(step)
        self._mgr.reload()
        return moved

    def wait(self) -> None:
        if not self.read_only:
            self._finish_pending()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._mgr.close()
