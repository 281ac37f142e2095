"""``jaxar sample`` flags: passed to the family's sampler when given; a flag the sampler does
not take, a bad method, ``--num``/``--length`` < 1 and an impossible ``--length`` are
one-line errors (exit 2) naming the flag. The run is a tiny untrained model (no training:
``loop.load_run`` is replaced), so only the flag handling is under test here;
tests/train/test_cli.py samples a trained workdir end to end."""

import re
import types

import pytest
from flax import nnx

from jaxar import models
from jaxar.data.sources import DataInfo
from jaxar.train import cli, loop, tasks
from jaxar.train.config import ModelConfig, TrainConfig

V = 256


def _run(family: str):
    info = DataInfo("text") if family != "axial" else DataInfo("image", (4, 4, 1), 10)
    if family == "mdlm":
        model = models.MDLM(
            models.MDLMConfig(d_model=16, num_layers=1, num_heads=2), rngs=nnx.Rngs(0)
        )
    elif family == "lm":
        model = models.LM(models.LMConfig(d_model=16, num_layers=1, num_heads=2), rngs=nnx.Rngs(0))
    else:
        cfg = models.AxialTransformerConfig.preset("tiny", height=4, width=4, d_model=16)
        model = models.AxialTransformer(cfg, rngs=nnx.Rngs(0))
    cfg = TrainConfig(model=ModelConfig(family), sample_length=8)
    return types.SimpleNamespace(task=tasks.get(family), cfg=cfg, info=info, model=lambda: model)


@pytest.fixture
def use_run(monkeypatch):
    def use(family):
        monkeypatch.setattr(loop, "load_run", lambda workdir, step=None: _run(family))

    return use


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--method", "bogus"], r"method='bogus' is not supported; accepted: \('ancestral'"),
        (["--top-k", "5"], r"--top-k not accepted by the 'mdlm' family's sampler; accepted: \["),
        (["--num", "0"], r"--num=0 is invalid; accepted: an integer >= 1"),
        (["--num", "-3"], r"--num=-3 is invalid"),
        (["--length", "0"], r"--length=0 is invalid; accepted: an integer >= 1"),
        (["--length", "-5"], r"--length=-5 is invalid"),
        (["--length", "1000000000"], r"--length=1000000000 with --num=4 needs about .* GiB"),
        (["--num-steps", "0"], r"num_steps=0 is not accepted"),
        (["--method", "threshold", "--threshold", "1.5"], r"threshold=1.5 is not accepted"),
    ],
)
def test_bad_flags_are_one_line_errors(use_run, capsys, argv, match):
    use_run("mdlm")
    assert cli.sample_main(["--workdir", "unused", *argv]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxar sample: error: ")
    assert re.search(match, err), err


def test_image_family_rejects_text_flags(use_run, capsys):
    use_run("axial")
    assert cli.sample_main(["--workdir", "unused", "--length", "5"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "--length not accepted by the 'axial' family's sampler; accepted: ['--method']" in err
    assert cli.sample_main(["--workdir", "unused", "--num", "0"]) == cli.EXIT_ERROR
    assert "--num=0 is invalid" in capsys.readouterr().err


def test_flags_reach_the_sampler(use_run, capsys, tmp_path):
    use_run("mdlm")
    argv = ["--workdir", "unused", "--num", "2", "--length", "6"]
    assert cli.sample_main([*argv, "--method", "cached", "--num-steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "sample 1" in out and "sample 2" not in out
    assert cli.sample_main([*argv, "--method", "first_hitting", "--num-steps", "64"]) == 0
    assert "sample 1" in capsys.readouterr().out
    assert cli.sample_main([*argv, "--method", "threshold", "--threshold", "0.9"]) == 0
    assert "sample 1" in capsys.readouterr().out
    use_run("lm")
    out_file = tmp_path / "s.txt"
    argv = ["--workdir", "unused", "--num", "1", "--prompt", "def ", "--temperature", "0"]
    assert cli.sample_main([*argv, "--top-k", "3", "--length", "7", "--out", str(out_file)]) == 0
    assert out_file.read_text().startswith("===== sample 0 =====\ndef ")
