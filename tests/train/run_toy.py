"""Subprocess entry for the resume and multi-process tests: trains the toy config.

    python -m tests.train.run_toy WORKDIR [--kill-after-log STEP] [--devices N] [--steps N]

``--kill-after-log S`` SIGKILLs this process right after the metrics line of step S is
written (a crash between checkpoints). With ``JAX_COORDINATOR_ADDRESS`` etc. set it
joins a ``jax.distributed`` job. Writes final params to ``WORKDIR/params_p<i>.npz`` and
the training rows this process read, step by step, to ``WORKDIR/rows_p<i>.npy``.
"""

import argparse
import os
import signal

import jax


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--kill-after-log", type=int, default=None)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--async-checkpoints", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=4)
    args = p.parse_args()
    jax.config.update("jax_num_cpu_devices", args.devices)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()
    import numpy as np

    from jaxar.train import loop
    from tests.train import toy

    loop.maybe_initialize_distributed()
    if args.kill_after_log is not None:
        write = loop.MetricsWriter.write

        def write_then_die(self, step, values):
            write(self, step, values)
            if step == args.kill_after_log and "loss" in values:
                os.kill(os.getpid(), signal.SIGKILL)

        loop.MetricsWriter.write = write_then_die
    rows = []
    put_batch = loop.Run.put_batch

    def put_and_record(self, local):
        if local["tokens"].shape[0] * jax.process_count() == self.cfg.batch_size:  # training
            rows.append(np.asarray(local["tokens"]))
        return put_batch(self, local)

    loop.Run.put_batch = put_and_record
    cfg = toy.config(
        steps=args.steps,
        async_checkpoints=bool(args.async_checkpoints),
        checkpoint_every=args.checkpoint_every,
    )
    summary = loop.train(cfg, args.workdir, quiet=True)
    from jax.experimental import multihost_utils

    def fetch(v):
        if v.is_fully_replicated:
            return np.asarray(v.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(v, tiled=True))

    flat = {
        "/".join(map(str, k)): fetch(v)
        for k, v in jax.tree_util.tree_leaves_with_path(summary["params"])
    }
    np.savez(os.path.join(args.workdir, f"params_p{jax.process_index()}.npz"), **flat)
    np.save(os.path.join(args.workdir, f"rows_p{jax.process_index()}.npy"), np.stack(rows))


if __name__ == "__main__":
    main()
