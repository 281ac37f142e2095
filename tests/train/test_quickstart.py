"""The quickstart config with the real LM family (skips until jaxar.models.lm exists)."""

import json

import pytest

from jaxar.train import cli, loop
from jaxar.train import config as config_lib


@pytest.mark.slow
def test_quickstart_sized_lm_loss_decreases(tmp_path):
    pytest.importorskip("jaxar.models.lm")
    pytest.importorskip("jaxar.nn.attention")
    c = cli.quickstart_config()
    config_lib.apply_overrides(
        c,
        [
            "steps=40",
            "batch_size=8",
            "data.seq_len=64",
            "model.d_model=64",
            "log_every=10",
            "eval_every=40",
            "eval_batches=1",
            "checkpoint_every=40",
            "num_samples=0",
            "sample_length=8",
        ],
    )
    summary = loop.train(config_lib.from_config_dict(c), tmp_path, quiet=True)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "event" not in r]
    assert losses[-1] < losses[0] - 0.5
    assert summary["eval"]["bits_per_token"] < 7.0
