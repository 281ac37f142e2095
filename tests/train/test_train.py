"""End-to-end trainer tests on the private toy family (tests/train/toy.py)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxar.data import pipeline
from jaxar.train import checkpoint, loop
from tests.train import toy

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMING = {"steps_per_sec", "tokens_per_sec", "mfu", "mfu_implausible"}


def _flat(params):
    return {
        "/".join(map(str, k)): np.asarray(jax.device_get(v))
        for k, v in jax.tree_util.tree_leaves_with_path(params)
    }


def _metrics(workdir):
    rows = [
        json.loads(x) for x in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    ]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


SLEEP_S = 0.5


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 12-step toy run on the default 8-device data mesh; every evaluation
    and checkpoint save sleeps SLEEP_S first (time the throughput figures must not see)."""
    workdir = tmp_path_factory.mktemp("ref")
    real_eval, real_save = loop.evaluate, checkpoint.Checkpointer.save

    def slow(fn):
        def wrapped(*args, **kwargs):
            time.sleep(SLEEP_S)
            return fn(*args, **kwargs)

        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "evaluate", slow(real_eval))
        mp.setattr(checkpoint.Checkpointer, "save", slow(real_save))
        summary = loop.train(toy.config(), workdir, quiet=True)
    return workdir, summary


def test_throughput_excludes_compile_eval_and_saves(reference_run):
    """2 evaluations + 3 saves slept 2.5 s; the timed steps (2..12; step 1 compiles) did not."""
    workdir, summary = reference_run
    tp = summary["throughput"]
    assert tp["timed_steps"] == 11 and tp["timed_seconds"] < SLEEP_S, tp
    assert tp["flops_source"] == "cost_analysis" and tp["peak_source"] == "measured"
    assert 0 < tp["mfu"] <= 1
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "loss" in r and "event" not in r]
    assert logged and all(0 < r["mfu"] <= 1 and r["tokens_per_sec"] > 0 for r in logged)


def test_loss_decreases_and_files_written(reference_run):
    workdir, summary = reference_run
    rows = [r for r in _metrics(workdir) if "loss" in r and "event" not in r]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1
    assert summary["eval"]["bits_per_token"] < 8.0
    assert (workdir / "config.json").exists()
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 8, 12]
    assert list((workdir / "tb").iterdir())
    assert "sample 0" in (workdir / "samples" / "step_12.txt").read_text()
    assert any("eval/bits_per_token" in r for r in _metrics(workdir))


def test_exact_resume_after_sigkill(reference_run, tmp_path):
    ref_dir, ref = reference_run
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "tests.train.run_toy", str(tmp_path)]
    killed = subprocess.run([*cmd, "--kill-after-log", "10"], env=env, cwd=ROOT, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert any(r["step"] == 10 for r in _metrics(tmp_path))  # logged past the checkpoint
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() in (4, 8)
    resumed = subprocess.run(cmd, env=env, cwd=ROOT, timeout=300, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    got = dict(np.load(tmp_path / "params_p0.npz"))
    want = _flat(ref["params"])
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert _metrics(tmp_path) == _metrics(ref_dir)


SHARD_KW = dict(steps=3, eval_every=100, checkpoint_every=100, num_samples=0)


@pytest.fixture(scope="module")
def single_device_params(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    run = loop.train(toy.config(**SHARD_KW), workdir, devices=jax.devices()[:1], quiet=True)
    return _flat(run["params"])


# (2, 2, 2) shards data, fsdp and tensor at once; the pure axes are the slow cases.
@pytest.mark.parametrize(
    "mesh",
    [(2, 2, 2)]
    + [pytest.param(m, marks=pytest.mark.slow) for m in [(8, 1, 1), (2, 4, 1), (2, 1, 4)]],
)
def test_sharded_equals_single_device(mesh, single_device_params, tmp_path, tol):
    from jaxar.train.config import MeshConfig

    sharded = loop.train(toy.config(mesh=MeshConfig(*mesh), **SHARD_KW), tmp_path, quiet=True)
    leaves = jax.tree.leaves(sharded["params"])
    if mesh[1] > 1 or mesh[2] > 1:
        assert any(not x.sharding.is_fully_replicated for x in leaves)
    got = _flat(sharded["params"])
    for k, v in single_device_params.items():
        np.testing.assert_allclose(got[k], v, **tol(np.float32, "long"))


def test_half_written_checkpoint_never_restored(reference_run, tmp_path):
    import shutil

    ref_dir, _ = reference_run
    shutil.copytree(ref_dir / "checkpoints", tmp_path / "checkpoints")
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(ckpts / "12", ckpts / "16.orbax-checkpoint-tmp-1700000000")  # mid-rename
    partial = ckpts / "20"  # a step directory whose write never finished
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "some_array").write_bytes(b"\0" * 10)
    shutil.copytree(ckpts / "12", ckpts / "24")
    (ckpts / "24" / "commit_success.txt").unlink()
    mgr = checkpoint.Checkpointer(ckpts, async_save=False)
    assert mgr.removed == ["20", "24"] and mgr.latest_step() == 12
    mgr.close()
    resumed = loop.train(toy.config(steps=14), tmp_path, quiet=True)
    assert resumed["start_step"] == 12


def test_nonfinite_batch_skipped_and_reported(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_next = pipeline.DataIterator.__next__

    def poisoned(self):
        batch = real_next(self)
        calls["n"] += 1
        if calls["n"] == 3:
            batch = dict(batch, tokens=batch["tokens"].copy())
            batch["tokens"][0, 0] = 255  # toy loss is NaN on byte 0xFF
        return batch

    monkeypatch.setattr(pipeline.DataIterator, "__next__", poisoned)
    kw = dict(steps=5, eval_every=100, checkpoint_every=100, num_samples=0, log_every=1)
    summary = loop.train(toy.config(**kw), tmp_path / "skip")
    assert summary["skipped_steps"] == [3] and summary["num_skipped"] == 1
    assert "step 3: non-finite loss or gradients" in capsys.readouterr().out
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(summary["params"])))
    events = [r for r in _metrics(tmp_path / "skip") if r.get("event")]
    assert events == [{"step": 3, "event": "nonfinite_skipped", "loss": events[0]["loss"]}]
    totals = [r["skipped_total"] for r in _metrics(tmp_path / "skip") if "skipped_total" in r]
    assert totals == [1]  # in the last step's row
    calls["n"] = 0
    with pytest.raises(loop.NonFiniteError, match="step 3"):
        loop.train(toy.config(nonfinite="stop", **kw), tmp_path / "stop", quiet=True)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "tests.train.run_toy", "--steps", "6"]
    one = subprocess.run(
        [*base, str(tmp_path / "one"), "--devices", "2"], env=env, cwd=ROOT, timeout=300
    )
    assert one.returncode == 0
    port = _free_port()
    procs = [
        subprocess.Popen(
            [*base, str(tmp_path / "two"), "--devices", "1"],
            env=dict(
                env,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
            cwd=ROOT,
        )
        for i in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    want = dict(np.load(tmp_path / "one" / "params_p0.npz"))
    for i in range(2):
        got = dict(np.load(tmp_path / "two" / f"params_p{i}.npz"))
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    rows_two, rows_one = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert len(rows_two) == len(rows_one)
    for a, b in zip(rows_two, rows_one, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    # each process read only its own half of every global batch: together exactly the rows
    # one process reads, none twice
    one_rows = np.load(tmp_path / "one" / "rows_p0.npy")  # (steps, 8, L)
    p0, p1 = (np.load(tmp_path / "two" / f"rows_p{i}.npy") for i in range(2))  # (steps, 4, L)
    assert p0.shape[1] == p1.shape[1] == one_rows.shape[1] // 2
    np.testing.assert_array_equal(np.concatenate([p0, p1], axis=1), one_rows)
    for a, b in zip(p0, p1, strict=True):
        assert not {r.tobytes() for r in a} & {r.tobytes() for r in b}
    # the checkpoint the two processes wrote restores in this one process to their params
    run = loop.load_run(tmp_path / "two")
    restored = _flat(run.state["params"])
    two = dict(np.load(tmp_path / "two" / "params_p0.npz"))
    assert restored.keys() == two.keys()
    for k in two:
        np.testing.assert_array_equal(restored[k], two[k], err_msg=k)
