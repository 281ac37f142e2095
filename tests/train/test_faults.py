"""Fault injection for the trainer's files: damaged checkpoints, non-finite states, disk full,
a busy or foreign workdir, torn metrics, readers beside a running trainer.

One toy run (8 steps, checkpoints at 4 and 8) is trained once per module; each test damages
its own copy. Checkpoint-level faults restore through :class:`Checkpointer` (no training);
the end-to-end ones go through ``jaxar train`` / ``jaxar eval`` in-process.
"""

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from jaxar.train import checkpoint, cli, loop, workdir
from tests.train import toy

ROOT = pathlib.Path(__file__).resolve().parents[2]
KW = dict(steps=8, checkpoint_every=4, eval_every=100, num_samples=0, log_every=2)
CONFIG = f"""
import ml_collections

from tests.train import toy


def get_config():
    return ml_collections.ConfigDict(toy.config(**{KW!r}).to_dict())
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, run)``: a finished toy run and a built Run to restore into."""
    wd = tmp_path_factory.mktemp("faults")
    loop.train(toy.config(**KW), wd, quiet=True)
    return wd, loop.build(toy.config(**KW), check_memory=False)


@pytest.fixture
def wd(trained, tmp_path):
    shutil.copytree(trained[0], tmp_path / "run")
    return tmp_path / "run"


def _restore(wd, run, **kw):
    ckpt = checkpoint.Checkpointer(wd / "checkpoints", read_only=True)
    try:
        state, _ = ckpt.restore(run.state, **kw)
    finally:
        ckpt.close()
    return ckpt, state


def _biggest(step_dir: pathlib.Path) -> pathlib.Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def _flip(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped_bytes": lambda d: _flip(_biggest(d)),
    "truncated_array": lambda d: _biggest(d).write_bytes(_biggest(d).read_bytes()[:100]),
    "empty_data_metadata": lambda d: (d / "data" / "metadata").write_bytes(b""),
    "empty_state_metadata": lambda d: (d / "state" / "_METADATA").write_bytes(b""),
}


def test_manifest_written_for_every_step(wd):
    for step in (4, 8):
        assert (wd / "checkpoints" / str(step) / checkpoint.MANIFEST).exists()
        assert checkpoint.verify_manifest(wd / "checkpoints" / str(step)) is None


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_falls_back(wd, trained, damage):
    DAMAGE[damage](wd / "checkpoints" / "8")
    assert checkpoint.verify_manifest(wd / "checkpoints" / "8") is not None
    ckpt, state = _restore(wd, trained[1])
    assert ckpt.restored_step == 4 and int(state["step"]) == 4
    assert [s for s, _ in ckpt.skipped] == [8]
    with pytest.raises(checkpoint.CheckpointError, match="step 8 is damaged"):
        _restore(wd, trained[1], step=8)


@pytest.mark.parametrize(
    "name, file",
    [("empty_data_metadata", "data/metadata"), ("empty_state_metadata", "state/_METADATA")],
)
def test_damage_without_manifest_is_named(wd, trained, name, file):
    """An older checkpoint (no manifest) with an empty metadata file: the reason names it."""
    d = wd / "checkpoints" / "8"
    (d / checkpoint.MANIFEST).unlink()
    DAMAGE[name](d)
    ckpt, _ = _restore(wd, trained[1])
    assert ckpt.restored_step == 4 and ckpt.skipped[0][0] == 8
    assert f"empty file(s) {file};" in ckpt.skipped[0][1]


def test_every_step_damaged_is_an_error(wd, trained):
    for step in (4, 8):
        _flip(_biggest(wd / "checkpoints" / str(step)))
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint.*step 8.*step 4"):
        _restore(wd, trained[1])


def test_nan_checkpoint_without_manifest_falls_back(wd, trained):
    """Damage the manifest cannot see (no manifest: an older checkpoint): the restored
    state's finiteness catches it."""
    run = trained[1]
    d = wd / "checkpoints"
    shutil.rmtree(d / "8")
    nan_state = jax.tree.map(lambda x: x, run.state)
    nan_state["params"] = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), run.state["params"])
    mgr = checkpoint.ocp.CheckpointManager(d)
    args = checkpoint.ocp.args
    mgr.save(8, args=args.Composite(state=args.StandardSave(nan_state), data=args.JsonSave({})))
    mgr.close()
    assert not (d / "8" / checkpoint.MANIFEST).exists()
    ckpt, _ = _restore(wd, run)
    assert ckpt.restored_step == 4 and "non-finite" in ckpt.skipped[0][1]


def test_nonfinite_state_never_saved_and_retention_keeps_good(tmp_path, trained, capsys):
    state = trained[1].state
    bad = dict(state, params=jax.tree.map(lambda x: x * jnp.nan, state["params"]))
    ckpt = checkpoint.Checkpointer(tmp_path, keep=2, async_save=False)
    assert ckpt.save(1, state, {}) and ckpt.save(2, state, {})
    for step in (3, 4, 5):
        assert not ckpt.save(step, bad, {})
    assert "step 3: the train state holds non-finite values" in capsys.readouterr().err
    assert ckpt.all_steps() == [1, 2]
    assert ckpt.save(6, state, {})
    ckpt.close()
    assert ckpt.all_steps() == [2, 6]


@pytest.mark.parametrize("async_save", [False, True])
def test_disk_full_removes_the_failed_step(tmp_path, trained, monkeypatch, async_save):
    state = trained[1].state
    ckpt = checkpoint.Checkpointer(tmp_path, keep=3, async_save=async_save)
    assert ckpt.save(1, state, {"pos": 1})
    ckpt.wait()  # an async save's manifest is written once orbax has finalised the step
    assert checkpoint.verify_manifest(tmp_path / "1") is None
    assert (tmp_path / "1" / checkpoint.MANIFEST).exists()

    async def full(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full)
    with pytest.raises(checkpoint.CheckpointError) as e:
        ckpt.save(2, state, {"pos": 2})
        ckpt.wait()
    ckpt.close()
    msg = str(e.value)
    assert "step 2" in msg and "No space left on device" in msg and "step 1" in msg
    assert "\n" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
    assert checkpoint.verify_manifest(tmp_path / "1") is None


def test_resume_from_damaged_and_torn_metrics(wd, capsys):
    """``jaxar train`` on a workdir whose newest checkpoint has flipped bytes and whose
    metrics end in a torn line: falls back to step 4 with one warning naming step 8, moves
    the damaged step aside, accepts a resume-compatible change (steps) and trains on."""
    _flip(_biggest(wd / "checkpoints" / "8"))
    with (wd / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "lo')
    path = wd.parent / "config.py"
    path.write_text(CONFIG)
    argv = ["--config", str(path), "--workdir", str(wd), "--config.steps=10"]
    assert cli.train_main(argv) == 0
    out, err = capsys.readouterr()
    damaged = [line for line in err.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and "checkpoint step 8 is damaged" in damaged[0]
    assert "does not match its checksum" in damaged[0] and "using step 4" in damaged[0]
    assert "torn line" in err and "Traceback" not in err
    assert "resumed from" in out and "(step 4)" in out
    assert (wd / "damaged_checkpoints" / "8").is_dir()
    assert json.loads((wd / "config.json").read_text())["steps"] == 10
    rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r and "event" not in r] == [2, 4, 6, 8, 10]
    ckpt, state = _restore(wd, loop.build(toy.config(**KW), check_memory=False))
    assert ckpt.restored_step == 10 and not ckpt.skipped


def test_different_model_refused_config_kept(wd, capsys):
    before = (wd / "config.json").read_bytes()
    path = wd.parent / "config.py"
    path.write_text(CONFIG)
    argv = ["--config", str(path), "--workdir", str(wd), "--config.model.d=64"]
    assert cli.train_main(argv) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "jaxar train: error:" in err
    assert "model.d None -> 64" in err
    assert (wd / "config.json").read_bytes() == before


def test_workdir_lock(wd, capsys):
    path = wd.parent / "config.py"
    path.write_text(CONFIG)
    with workdir.WorkdirLock(wd):
        assert cli.train_main(["--config", str(path), "--workdir", str(wd)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert f"in use by another jaxar train (pid {os.getpid()})" in err
    # a holder killed by the OS leaves no stale lock
    code = "import sys, time; from jaxar.train import workdir; workdir.WorkdirLock(sys.argv[1])"
    code += ".acquire(); print('locked', flush=True); time.sleep(60)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(wd)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(workdir.WorkdirBusy, match=f"pid {proc.pid}"):
        workdir.WorkdirLock(wd).acquire()
    proc.kill()
    proc.wait()
    workdir.WorkdirLock(wd).acquire().release()


def test_eval_is_read_only_and_says_which_step(wd, capsys):
    d = wd / "checkpoints"
    shutil.copytree(d / "8", d / "12.orbax-checkpoint-tmp-1700000000")  # a save in flight
    shutil.copytree(d / "8", d / "16")
    (d / "16" / "commit_success.txt").unlink()  # not committed (yet)
    listing = sorted(p.name for p in d.iterdir())
    assert cli.eval_main(["--workdir", str(wd)]) == 0
    out, err = capsys.readouterr()
    assert "step 8: held-out bits_per_token" in out
    assert "checkpoint step 16 is incomplete" in err and "using step 8" in err
    assert "checkpoint step 12 is incomplete" in err
    assert sorted(p.name for p in d.iterdir()) == listing
    assert cli.sample_main(["--workdir", str(wd), "--num", "1"]) == 0
    assert "sample 0" in capsys.readouterr().out
    assert sorted(p.name for p in d.iterdir()) == listing
    _flip(_biggest(d / "8"))
    assert cli.eval_main(["--workdir", str(wd)]) == 0
    out, err = capsys.readouterr()
    assert "step 4: held-out" in out and "checkpoint step 8 is damaged" in err
    assert sorted(p.name for p in d.iterdir()) == listing


@pytest.mark.parametrize("batches", ["0", "-1"])
def test_eval_batches_validated(wd, capsys, batches):
    assert cli.eval_main(["--workdir", str(wd), "--batches", batches]) == cli.EXIT_ERROR
    assert f"jaxar eval: error: --batches={batches}" in capsys.readouterr().err


def test_bad_workdir(tmp_path, capsys):
    path = tmp_path / "config.py"
    path.write_text(CONFIG)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for wd, why in ((afile, "is a file"), (afile / "sub", "is not a writable directory")):
        assert cli.train_main(["--config", str(path), "--workdir", str(wd)]) == cli.EXIT_ERROR
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--workdir='{wd}' {why}" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
def test_read_only_workdir(tmp_path, capsys):
    path = tmp_path / "config.py"
    path.write_text(CONFIG)
    wd = tmp_path / "ro"
    wd.mkdir(mode=0o500)
    assert cli.train_main(["--config", str(path), "--workdir", str(wd)]) == cli.EXIT_ERROR
    assert "is not a writable directory" in capsys.readouterr().err


def test_full_config_refused_on_cpu(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(workdir.MEMORY_CHECK_ENV, raising=False)
    argv = [
        "--config",
        str(ROOT / "experiments" / "gateloop_lm" / "config.py:full"),
        "--workdir",
        str(tmp_path),
        "--config.data.name=stdlib",
        "--config.data.train_split=train",
        "--config.data.eval_split=test",
    ]
    assert cli.train_main(argv) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "':tiny' variant" in err and "106.4M params" in err


def test_memory_estimate():
    # a 12-layer width-768 transformer's matrices: ~7.1M params per layer
    shapes = [(768, 768)] * 4 * 12 + [(768, 3072), (3072, 768)] * 12
    state, acts = workdir.estimate_train_bytes(
        shapes, batch_size=8, tokens_per_row=1024, compute_bytes=2, ema=False
    )
    n = 12 * 12 * 768 * 768
    assert state == 16 * n
    assert acts == pytest.approx(8 * 1024 * 34 * 768 * 12, rel=1e-6)  # 34 * s * b * h * L


@pytest.mark.slow
def test_eval_beside_a_running_trainer(tmp_path):
    """A trainer saving every step while ``jaxar eval`` reads the same workdir."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    wd = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "tests.train.run_toy", str(wd), "--steps", "60",
         "--checkpoint-every", "1", "--devices", "1"],
        env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while not (wd / "checkpoints" / "2").exists() and time.time() < deadline:
        time.sleep(0.2)
    evals = 0
    while trainer.poll() is None:
        code = cli.eval_main(["--workdir", str(wd), "--batches", "1"])
        assert code == 0
        evals += 1
    _, err = trainer.communicate()
    assert trainer.returncode == 0, err[-2000:]
    assert evals >= 2
    assert np.load(wd / "params_p0.npz")


def test_sigint_saves_then_second_aborts(tmp_path, monkeypatch, capsys):
    write = loop.MetricsWriter.write

    def write_then_int(self, step, values):
        write(self, step, values)
        if step == 4 and "loss" in values:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop.MetricsWriter, "write", write_then_int)
    kw = dict(steps=10, log_every=2, eval_every=1000, checkpoint_every=1000, num_samples=0)
    summary = loop.train(toy.config(**kw), tmp_path / "once")
    assert summary["preempted"] and summary["step"] in (5, 6)
    assert f"SIGINT: saved a checkpoint at step {summary['step']}" in capsys.readouterr().out
    assert (tmp_path / "once" / "checkpoints" / str(summary["step"])).is_dir()

    def write_then_int_twice(self, step, values):
        write(self, step, values)
        if step == 6 and "loss" in values:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop.MetricsWriter, "write", write_then_int_twice)
    path = tmp_path / "config.py"
    path.write_text(CONFIG)
    argv = ["--config", str(path), "--workdir", str(tmp_path / "twice")]
    assert cli.train_main(argv) == cli.EXIT_INTERRUPTED
    assert "interrupted (second Ctrl-C)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "twice" / "checkpoints").iterdir()) == ["4"]
    workdir.WorkdirLock(tmp_path / "twice").acquire().release()  # lock released


@pytest.mark.slow  # the mechanism is tested fast above, at the Checkpointer level
def test_disk_full_cli_one_line(wd, monkeypatch, capsys):
    save_fn = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def full_at_12(self, x, directory):
        if "/12." in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return await save_fn(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_at_12)
    path = wd.parent / "config.py"
    path.write_text(CONFIG)
    argv = ["--config", str(path), "--workdir", str(wd), "--config.steps=12"]
    assert cli.train_main(argv) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("jaxar train: error: saving checkpoint step 12") and err.count("\n") == 1
    assert "No space left on device" in err and "last good checkpoint: step 8" in err
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["4", "8"]
    assert checkpoint.verify_manifest(wd / "checkpoints" / "8") is None


def test_nonfinite_skip_gives_up(tmp_path, monkeypatch, capsys):
    """With every batch from the 3rd on poisoned (NaN loss), ``nonfinite="skip"`` stops
    after ``max_consecutive_skips`` skipped steps with a one-line error and exit 2."""
    from jaxar.data import pipeline

    calls = {"n": 0}
    real_next = pipeline.DataIterator.__next__

    def poisoned(self):
        batch = real_next(self)
        calls["n"] += 1
        if calls["n"] >= 3:
            batch = dict(batch, tokens=batch["tokens"].copy())
            batch["tokens"][0, 0] = 255  # toy loss is NaN on byte 0xFF
        return batch

    monkeypatch.setattr(pipeline.DataIterator, "__next__", poisoned)
    path = tmp_path / "config.py"
    path.write_text(CONFIG)
    wd = tmp_path / "run"
    argv = ["--config", str(path), "--workdir", str(wd), "--config.steps=20"]
    argv += ["--config.max_consecutive_skips=3", "--config.checkpoint_every=1"]
    assert cli.train_main(argv) == cli.EXIT_ERROR
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "jaxar train: error: 3 consecutive steps (3-5)" in err
    assert "config.max_consecutive_skips=3" in err
    assert "step 5: non-finite loss" in out
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir()) == [2, 3, 4]
