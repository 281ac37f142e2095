"""Quickstart: a tiny byte-level causal transformer LM on the Python standard library's source.

Run (from the repository root; no download, the corpus ships with Python):

    jaxar train                                   # this config, workdir jaxar_runs/quickstart
    jaxar train --config experiments/quickstart/config.py --workdir /tmp/qs --config.steps=100
    jaxar sample --workdir jaxar_runs/quickstart  # prints Python-looking text
    jaxar eval --workdir jaxar_runs/quickstart    # held-out bits/token

Hardware / time: 2 CPU cores, about 1-2 minutes (see README.md for measured numbers).
Expected: training loss from ~5.5 nats to ~2 nats per byte; held-out ~3 bits/token.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(family="lm", preset="tiny", mixer="attention", d_model=128, num_layers=2, num_heads=4)
    )
    c.data = ml_collections.ConfigDict(dict(name="stdlib", seq_len=128, packing="concat"))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.steps = 300
    c.batch_size = 16
    c.seed = 0
    c.learning_rate = 3e-3
    c.warmup_steps = 30
    c.min_lr_ratio = 0.1
    c.weight_decay = 0.1
    c.grad_clip = 1.0
    c.grad_accum = 1
    c.ema_decay = 0.0
    c.compute_dtype = "float32"
    c.log_every = 25
    c.eval_every = 150
    c.eval_batches = 8
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    c.async_checkpoints = True
    c.nonfinite = "skip"
    c.num_samples = 4
    c.sample_length = 200
    return c
