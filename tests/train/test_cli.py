"""``jaxar train / sample / eval`` in-process on the toy family; SIGTERM saves and resumes."""

import os
import signal

from jaxar.train import cli, loop
from tests.train import toy  # noqa: F401  (registers the toy family)

CONFIG = """
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(family="toy", preset="tiny"))
    c.data = ml_collections.ConfigDict(dict(name="stdlib", seq_len=32))
    c.steps = 100
    c.batch_size = 8
    c.log_every = 2
    c.eval_every = 1000
    c.eval_batches = 2
    c.checkpoint_every = 1000
    c.num_samples = 2
    c.sample_length = 16
    c.async_checkpoints = False
    return c
"""


def test_train_sample_eval(tmp_path, capsys):
    path = tmp_path / "config.py"
    path.write_text(CONFIG)
    workdir = str(tmp_path / "run")
    argv = ["--config", str(path), "--workdir", workdir, "--config.steps=4"]
    assert cli.train_main(argv) == 0
    out = capsys.readouterr().out
    assert "steps/s" in out and "tokens/s" in out and "jaxar eval --workdir" in out
    assert cli.eval_main(["--workdir", workdir]) == 0
    assert "held-out bits_per_token" in capsys.readouterr().out
    assert cli.sample_main(["--workdir", workdir, "--num", "2"]) == 0
    assert "sample 1" in capsys.readouterr().out
    assert cli.train_main(argv[:-1] + ["--config.stepz=4"]) == cli.EXIT_ERROR
    assert "unknown config field 'stepz'" in capsys.readouterr().err


def test_sigterm_saves_and_resumes(tmp_path, monkeypatch):
    write = loop.MetricsWriter.write

    def write_then_term(self, step, values):
        write(self, step, values)
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.MetricsWriter, "write", write_then_term)
    kw = dict(steps=10, log_every=2, eval_every=1000, checkpoint_every=1000, num_samples=0)
    summary = loop.train(toy.config(**kw), tmp_path, quiet=True)
    assert summary["preempted"] and summary["step"] in (5, 6)
    monkeypatch.setattr(loop.MetricsWriter, "write", write)
    resumed = loop.train(toy.config(**kw), tmp_path, quiet=True)
    assert resumed["start_step"] == summary["step"] and resumed["step"] == 10


def test_png_grid_and_text_decoding(tmp_path):
    import numpy as np
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    loop.save_png_grid(images, tmp_path / "g.png")
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape[:2] == (19 * 9, 28 * 9)  # 2 rows x 3 cols of 8x8 + 1-px gaps, x9
    text = loop.decode_text(np.array([[104, 105, 300], [10, 255, 65]]))
    assert "sample 0 =====\nhi\n" in text and "sample 1" in text


def test_orbax_noise_dropped_from_stderr():
    import logging

    def record(path, level, exc=None):
        return logging.LogRecord("absl", level, path, 1, "msg", None, exc)

    orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    keep = cli._drop_orbax_tracebacks
    assert not keep(record(orbax, logging.WARNING))
    assert not keep(record(orbax, logging.ERROR, (OSError, OSError(28, "full"), None)))
    assert keep(record(orbax, logging.ERROR))  # orbax's plain errors stay
    assert keep(record("/jaxar/train/loop.py", logging.WARNING))
