"""Quickstart: a tiny byte-level causal transformer LM on the Python standard library's source.

Run (from the repository root; no download, the corpus ships with Python):

    jaxar train                                   # this config, workdir jaxar_runs/quickstart
    jaxar train --config experiments/quickstart/config.py --workdir /tmp/qs --config.steps=100
    jaxar sample --workdir jaxar_runs/quickstart  # prints Python-looking text
    jaxar eval --workdir jaxar_runs/quickstart    # held-out bits/token

Hardware / time: 2 CPU cores, about 1-2 minutes (see README.md for measured numbers).
Expected: training loss from ~5.5 nats to ~2 nats per byte; held-out ~3 bits/token.
"""

from jaxar.train.cli import quickstart_config


def get_config():
    """The quickstart (defined once in ``jaxar.train.cli`` so that a plain ``pip install``
    without this folder still trains it)."""
    return quickstart_config()
