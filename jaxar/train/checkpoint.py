"""Checkpoints (orbax in one file): model, optimizer, EMA, step, RNG and data position together.

One orbax ``CheckpointManager`` under ``workdir/checkpoints``: item ``state`` (the train
state pytree, ``StandardSave``) and item ``data`` (the data iterator's state, JSON) are
written in one step directory. Orbax writes a step into a temporary directory and renames
it only when every item is complete, and lists only finalized steps, so a checkpoint
interrupted half-way (SIGKILL, preemption) is never restored; leftover temporaries are
removed on the next start. A step directory without orbax's completion markers
(``_CHECKPOINT_METADATA`` and ``commit_success.txt``, written last; e.g. left by a
non-atomic filesystem) is likewise removed before the manager opens. Keeps the last ``keep`` steps; saves asynchronously when asked
(the host copies arrays first, so training can go on while files are written).
"""

from __future__ import annotations

import pathlib
import shutil

import jax
import orbax.checkpoint as ocp


def abstract_like(tree):
    """ShapeDtypeStructs with the concrete shardings of ``tree``'s arrays (restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


COMPLETE_MARKERS = ("_CHECKPOINT_METADATA", "commit_success.txt")


def is_complete(step_dir: pathlib.Path) -> bool:
    """Whether a step directory was finalized (all of orbax's completion markers)."""
    return all((step_dir / m).exists() for m in COMPLETE_MARKERS)


def remove_incomplete(directory: pathlib.Path) -> list[str]:
    """Deletes step directories (named by an integer) that were never finalized."""
    removed = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.is_dir() and p.name.isdigit() and not is_complete(p):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return sorted(removed)


class Checkpointer:
    """Saves and restores ``(train state, data iterator state)`` per step."""

    def __init__(self, directory, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self.removed = remove_incomplete(self.directory) if jax.process_index() == 0 else []
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, state, data_state: dict | None, *, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state)}
        args["data"] = ocp.args.JsonSave(data_state or {})
        return self._mgr.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, state_like, step: int | None = None):
        """``(state, data_state)`` at ``step`` (default: the latest finalized one), with
        arrays placed like ``state_like`` (a concrete state or abstract target)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no finalized checkpoint in {self.directory}")
        target = jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else abstract_like(x), state_like
        )
        out = self._mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["data"]

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
