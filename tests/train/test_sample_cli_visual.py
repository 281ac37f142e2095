"""``jaxar sample --cfg-scale S --cfg-schedule constant|linear`` for the token families:
the flags reach the token-AR / VAR samplers; a bad scale or schedule, or the flag on a
family whose sampler has no guidance, is a one-line error (exit 2). The runs are stand-ins
(``loop.load_run`` replaced; no model is compiled): guidance itself is tested in
tests/sampling/test_visual_sampling.py."""

import dataclasses
import re
import types

import numpy as np
import pytest

from jaxar.data.sources import DataInfo
from jaxar.models.token_ar import TokenARConfig
from jaxar.models.var import VARConfig
from jaxar.sampling.samplers import Sampler
from jaxar.train import cli, loop, tasks
from jaxar.train.config import ModelConfig, TrainConfig

INFO = DataInfo("image", (8, 8, 1), 10)
CONFIGS = {"token_ar": TokenARConfig(), "var": VARConfig()}


def _run(family: str, sampler=None):
    """A stand-in run: the family's real sampler (options checked before any compile) or
    ``sampler``; the model is only a config (and a tokenizer placeholder)."""
    task = tasks.get(family)
    if sampler is not None:
        task = dataclasses.replace(task, sampler=sampler)
    model = types.SimpleNamespace(
        config=CONFIGS.get(family), tokenizer=object(), decode_codes=lambda codes: codes
    )
    cfg = TrainConfig(model=ModelConfig(family))
    return types.SimpleNamespace(task=task, cfg=cfg, info=INFO, model=lambda: model)


@pytest.mark.parametrize("family", ["token_ar", "var"])
def test_cfg_flags_reach_the_sampler(family, monkeypatch, tmp_path):
    seen = []

    def record(model, key, num, **options):
        seen.append(options)
        return np.zeros((num, 8, 8, 1), np.uint8)

    real = tasks.get(family).sampler
    fake = Sampler(real.name, record, real.defaults)
    monkeypatch.setattr(loop, "load_run", lambda workdir, step=None: _run(family, fake))
    argv = ["--workdir", "unused", "--num", "2", "--out", str(tmp_path / "g.png")]
    assert cli.sample_main([*argv, "--cfg-scale", "2.5", "--cfg-schedule", "linear"]) == 0
    assert cli.sample_main(argv) == 0
    assert seen[0]["cfg_scale"] == 2.5 and seen[0]["cfg_schedule"] == "linear"
    assert seen[1]["cfg_scale"] is None  # no flag: the sampler's default (no guidance)
    assert seen[1]["cfg_schedule"] == real.defaults["cfg_schedule"]
    assert (tmp_path / "g.png").stat().st_size > 0


@pytest.mark.parametrize(
    "family, argv, match",
    [
        ("token_ar", ["--cfg-scale", "-1"], r"--cfg-scale=-1.0 is invalid; accepted: a finite"),
        ("var", ["--cfg-scale", "nan"], r"--cfg-scale=nan is invalid"),
        ("var", ["--cfg-scale", "inf"], r"--cfg-scale=inf is invalid"),
        ("token_ar", ["--cfg-schedule", "cosine"], r"cfg_schedule='cosine' is not supported; "),
        ("var", ["--cfg-schedule", "cosine"], r"accepted: \('constant', 'linear'\)"),
    ],
)
def test_bad_cfg_flags_are_one_line_errors(family, argv, match, monkeypatch, capsys):
    monkeypatch.setattr(loop, "load_run", lambda workdir, step=None: _run(family))
    assert cli.sample_main(["--workdir", "unused", *argv]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxar sample: error: ")
    assert re.search(match, err), err


def test_cfg_scale_on_a_family_without_guidance(monkeypatch, capsys):
    monkeypatch.setattr(loop, "load_run", lambda workdir, step=None: _run("lm"))
    assert cli.sample_main(["--workdir", "unused", "--cfg-scale", "2"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "--cfg-scale not accepted by the 'lm' family's sampler" in err
