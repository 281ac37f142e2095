"""Quickstart: a tiny byte-level causal transformer LM on the Python standard library's source.

Run (no download, the corpus ships with Python):

    jaxar train                                   # this config, workdir jaxar_runs/quickstart
    jaxar train --config quickstart --workdir /tmp/qs --config.steps=100
    jaxar sample --workdir jaxar_runs/quickstart  # prints Python-looking text
    jaxar eval --workdir jaxar_runs/quickstart    # held-out bits/token

Hardware / time: 2 CPU cores, about 1-2 minutes (see README.md for measured numbers).
Expected: training loss from ~5.5 nats to ~2 nats per byte; held-out ~3 bits/token.
"""

from jaxar.experiments.common import config_dict

VARIANTS = ()  # get_config() takes none


def get_config():
    """The quickstart's ConfigDict (what ``jaxar train`` runs without ``--config``)."""
    return config_dict(
        model=dict(family="lm", preset="tiny"),
        data=dict(name="stdlib", seq_len=128, packing="concat"),
        steps=300,
        batch_size=16,
        warmup_steps=30,
        log_every=25,
        eval_every=150,
        checkpoint_every=100,
        keep_checkpoints=2,
        sample_length=200,
    )
