"""``jaxar sample`` masked-diffusion flags (remasking, blocks, caches, EOS): reach the
sampler; bad values are one-line errors (exit 2) naming the option."""

import re

import pytest

from jaxar.train import cli
from tests.train.test_sample_cli import use_run  # noqa: F401 (fixture)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--cache", "full"], r"cache='full' is not supported; accepted: None or \('prefix'"),
        (["--length", "6", "--block-length", "4"], r"block_length=4 is not accepted; expected"),
        (["--method", "remdm", "--eta", "2"], r"eta=2.0 is not accepted; expected a float in"),
        (["--method", "remdm", "--remask", "often"], r"remask='often' is not supported"),
        (["--method", "ancestral", "--eos-id", "10"], r"eos_id=10 is not accepted with method"),
        (["--refresh-every", "2"], r"refresh_every=2 is not accepted without a cache"),
    ],
)
def test_bad_mdm_flags_are_one_line_errors(use_run, capsys, argv, match):  # noqa: F811
    use_run("mdlm")
    assert cli.sample_main(["--workdir", "unused", *argv]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxar sample: error: ")
    assert re.search(match, err), err


@pytest.mark.slow
def test_mdm_flags_reach_the_sampler(use_run, capsys):  # noqa: F811
    use_run("mdlm")
    argv = ["--workdir", "unused", "--num", "1", "--length", "6"]
    remdm = ["--method", "remdm", "--remask", "loop", "--eta", "0.2", "--num-steps", "9"]
    assert cli.sample_main([*argv, *remdm]) == 0
    assert "sample 0" in capsys.readouterr().out
    blocks = ["--method", "threshold", "--threshold", "0.5", "--block-length", "3"]
    assert cli.sample_main([*argv, *blocks, "--cache", "dual", "--eos-id", "10"]) == 0
    assert "sample 0" in capsys.readouterr().out
    use_run("lm")
    assert cli.sample_main(["--workdir", "unused", "--cache", "prefix"]) == cli.EXIT_ERROR
    assert "--cache not accepted by the 'lm' family's sampler" in capsys.readouterr().err
