"""``jaxar sample --draft-workdir D | --speculative self``: acceptance rate and speed-up are
printed next to the samples; bad combinations are one-line errors (exit 2). The runs are
tiny untrained LMs (``loop.load_run`` is replaced, as in tests/train/test_sample_cli.py)."""

import re
import types

import pytest
from flax import nnx

from jaxar import models
from jaxar.data.sources import DataInfo
from jaxar.train import cli, loop, tasks
from jaxar.train.config import ModelConfig, TrainConfig


def _lm_run(seed, mtp_heads=0, vocab=256, family="lm"):
    cfg = models.LMConfig(
        vocab_size=vocab, d_model=16, num_layers=1, num_heads=2, mtp_heads=mtp_heads
    )
    model = models.LM(cfg, rngs=nnx.Rngs(seed))
    if family != "lm":
        model = models.MDLM(
            models.MDLMConfig(d_model=16, num_layers=1, num_heads=2), rngs=nnx.Rngs(0)
        )
    tcfg = TrainConfig(model=ModelConfig(family), sample_length=6)
    return types.SimpleNamespace(
        task=tasks.get(family), cfg=tcfg, info=DataInfo("text"), model=lambda: model
    )


RUNS = {
    "target": lambda: _lm_run(0),
    "draft": lambda: _lm_run(1),
    "mtp": lambda: _lm_run(0, mtp_heads=2),
    "small_vocab": lambda: _lm_run(1, vocab=128),
    "mdlm": lambda: _lm_run(0, family="mdlm"),
}


@pytest.fixture(autouse=True)
def runs(monkeypatch):
    cache = {}

    def load(workdir, step=None):
        if workdir not in cache:
            cache[workdir] = RUNS[workdir]()
        return cache[workdir]

    monkeypatch.setattr(loop, "load_run", load)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(
            ["--workdir", "target", "--draft-workdir", "draft", "--num-draft", "2"],
            marks=pytest.mark.slow,
        ),
        ["--workdir", "mtp", "--speculative", "self"],
    ],
)
def test_speculative_sample_prints_rate_and_speedup(capsys, argv):
    assert cli.sample_main([*argv, "--num", "2", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    line = out.splitlines()[0]
    assert re.match(
        r"speculative \[.*num_draft=2\]: acceptance rate [01]\.\d{3}, \d+\.\d\d tokens/target "
        r"call, speed-up \d+\.\d\dx",
        line,
    ), line
    assert "sample 1" in out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--speculative", "tree"], r"--speculative='tree' is not supported; accepted: 'self'"),
        (
            ["--speculative", "self", "--draft-workdir", "draft"],
            "--speculative=self and --draft-workdir both given",
        ),
        (["--num-draft", "3"], "--num-draft=3 needs --draft-workdir or --speculative=self"),
        (
            ["--draft-workdir", "draft", "--num-draft", "0"],
            "--num-draft=0 is not supported; accepted: an int >= 1",
        ),
        (["--speculative", "self"], "draft=None .* mtp_heads=0; accepted"),
        (["--draft-workdir", "small_vocab"], "draft vocabulary size 128 differs"),
        (["--draft-workdir", "mdlm"], "--draft-workdir='mdlm' is a 'mdlm' run"),
    ],
)
def test_bad_speculative_flags_are_one_line_errors(capsys, argv, match):
    assert cli.sample_main(["--workdir", "target", *argv]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxar sample: error: "), err
    assert re.search(match, err), err
    assert cli.sample_main(["--workdir", "mdlm", "--speculative", "self"]) == cli.EXIT_ERROR
    assert "need an autoregressive 'lm' run" in capsys.readouterr().err
