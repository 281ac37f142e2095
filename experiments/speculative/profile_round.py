"""Where a speculative round's time goes on the CPU: XLA's per-op (thunk) trace.

    python experiments/speculative/profile_round.py [--batch 1] [--num-draft 4]

Loads the trained ``deep_target`` / ``deep_draft`` runs (as ``jaxar bench decoding``:
``jaxar_runs/speculative_deep_{target,draft}`` or ``$JAXAR_SPECULATIVE_RUNS/{target,draft}``),
then traces the compiled loops of greedy ``generate``, draft speculative decoding (K =
``--num-draft``) and self-speculative decoding (the heads, K = 3) for 32 new tokens with
XLA's per-op TraceMe events (``--xla_cpu_enable_xprof_traceme``, set here before jax loads).
Each op's time is its median duration times its count (robust to the preemptions of a
shared machine), summed per HLO computation (the while bodies: generate's step, the
speculative round, the draft's inner loop; ``main``: prefill and set-up) and per op kind,
divided by the number of target calls. Best of 3 traces of 5 calls each.

Reads XLA's trace through ``jax._src.lib._profile_data`` (private; jax 0.10.2).
"""

from __future__ import annotations

import argparse
import collections
import glob
import importlib
import os
import re
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax._src.lib import _profile_data  # noqa: E402

from jaxar.bench import decoding  # noqa: E402
from jaxar.sampling import speculative  # noqa: E402
from jaxar.train import loop  # noqa: E402

generate_lib = importlib.import_module("jaxar.sampling.generate")
NEW, CALLS, TRACES = 32, 5, 3
SKIP = ("ThunkExecutor", "end:", "while")


def _computations(hlo: str) -> dict[str, str]:
    """Op name -> name of the HLO computation holding it."""
    owner, cur = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            cur = head.group(1)
            continue
        op = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = ", line)
        if op and cur:
            owner.setdefault(op.group(1), cur)
    return owner


def _trace(fn, args, folder):
    """Per-op median duration x count (ns) over CALLS calls of ``fn(*args)``."""
    jax.block_until_ready(fn(*args))
    with jax.profiler.trace(folder):
        for _ in range(CALLS):
            jax.block_until_ready(fn(*args))
    (path,) = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)
    durations = collections.defaultdict(list)
    for plane in _profile_data.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for ev in line.events:
                if not ev.name.startswith(SKIP) and "Execute" not in ev.name:
                    durations[ev.name].append(ev.duration_ns)
    return {name: float(np.median(d)) * len(d) / CALLS for name, d in durations.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--num-draft", type=int, default=4)
    a = ap.parse_args()
    target = loop.load_run(str(decoding._workdir("deep_target"))).model()
    draft = loop.load_run(str(decoding._workdir("deep_draft"))).model()
    prompt = jnp.broadcast_to(
        jnp.asarray(np.frombuffer(decoding.PROMPT, np.uint8), jnp.int32)[None],
        (a.batch, len(decoding.PROMPT)),
    )
    tg, tp = nnx.split(target)
    dg, dp = nnx.split(draft)
    key = jax.random.key(0)
    gen, spec = generate_lib._generate, speculative._speculative
    plans = {
        "generate": (gen, (tg, tp, key, prompt, NEW, 0.0, None, None)),
        f"draft K={a.num_draft}": (
            spec,
            (tg, tp, dg, dp, key, prompt, NEW, a.num_draft, 0.0, None, None),
        ),
        "heads K=3": (spec, (tg, tp, None, None, key, prompt, NEW, 3, 0.0, None, None)),
    }
    print(f"B={a.batch}, {NEW} new tokens, load {os.getloadavg()[0]:.1f}")
    for name, (fn, args) in plans.items():
        owner = _computations(fn.lower(*args).compile().as_text())
        out = fn(*args)
        calls = int(out[1]["target_calls"]) if isinstance(out, tuple) else NEW
        best = None
        for _ in range(TRACES):
            with tempfile.TemporaryDirectory() as folder:
                ops = _trace(fn, args, folder)
            if best is None or sum(ops.values()) < sum(best.values()):
                best = ops
        per_comp, per_kind = collections.Counter(), collections.Counter()
        for op, ns in best.items():
            per_comp[owner.get(op, "?")] += ns
            per_kind[re.sub(r"[.\d]+$", "", op)] += ns
        total = sum(best.values())
        print(f"\n== {name}: {total / 1e6:.2f} ms of ops per call, {calls} target calls")
        for comp, ns in per_comp.most_common(3):
            print(f"  {ns / 1e3 / calls:8.1f} us per target call  {comp}")
        for kind, ns in per_kind.most_common(5):
            print(f"  {ns / 1e3 / calls:8.1f} us per target call  op kind {kind}")


if __name__ == "__main__":
    main()
