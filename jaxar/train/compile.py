"""Compile the sharded train step for a TPU slice without one: memory, FLOPs, roofline.

With libtpu installed (the ``tpu`` extra), ``jax.experimental.topologies`` describes any TPU
slice on a CPU host; jitting over its devices runs the real TPU compiler (Pallas Mosaic
kernels included). :func:`compile_train_step` builds the run abstractly (``nnx.eval_shape``:
nothing is allocated), lowers the sharded train step with the trainer's shardings and
compiles it; :func:`report` reads the compiled module:

  per-chip memory  arguments (params, optimizer state, batch) + outputs - donated aliases
                   + temporaries + code, against the chip's HBM (``CHIPS``);
  cost             FLOPs and bytes accessed per step and chip (XLA's cost analysis of the
                   partitioned module);
  roofline         t >= max(FLOPs / peak FLOP/s, bytes / HBM bandwidth) per step, and the
                   MFU it implies, FLOPs / (t peak) (an upper bound: collectives, pipeline
                   bubbles and the host are not counted).

The same abstract build compiles over any devices (8 fake CPU devices in the tests).
``jaxar compile --config NAME[:variant] --topology v5p:4x4x4`` is the command.
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar import dispatch, sharding
from jaxar.models import token_ar, var
from jaxar.train import optim, tasks
from jaxar.train import step as step_lib
from jaxar.train import tokenizer as tokenizer_lib
from jaxar.train.config import TrainConfig

__all__ = [
    "CHIPS",
    "Chip",
    "CompileReport",
    "DoesNotFit",
    "abstract_train_step",
    "compile_train_step",
    "data_info",
    "report",
    "topology_devices",
]

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: HBM per chip (bytes), peak dense bf16 FLOP/s and HBM bytes/s;
    ``accelerator_type`` names a small slice of it for libtpu's start-up checks."""

    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bytes_per_s: float
    accelerator_type: str = ""


# Per chip, from Google Cloud's TPU system-architecture pages (cloud.google.com/tpu/docs/
# v4, /v5e, /v5p, /v6e): peak bf16 compute, HBM capacity and HBM bandwidth.
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1200e9, "v4-8"),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9, "v5litepod-4"),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9, "v5p-8"),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9, "v6e-4"),
}
_TOPOLOGY = re.compile(r"(v\w+):(\d+(?:x\d+)+)")


def topology_devices(topology: str) -> list:
    """The TPU devices of a slice, e.g. ``"v5p:4x4x4"`` (64 chips), on any host.

    Raises:
      ValueError: a malformed name, an unknown generation, a slice libtpu rejects, or no
        libtpu (naming the argument and what is accepted).
    """
    accepted = f"<generation>:<AxB[xC]> with generation in {sorted(CHIPS)}, e.g. 'v5p:4x4x4'"
    m = _TOPOLOGY.fullmatch(topology)
    if m is None or m.group(1) not in CHIPS:
        raise ValueError(f"--topology={topology!r} is invalid; accepted: {accepted}")
    # on a host without TPU chips libtpu is only a compiler: let several processes load it,
    # and give its start-up checks a host name and a slice type (else it logs errors)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", CHIPS[m.group(1)].accelerator_type)
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    except Exception as e:  # noqa: BLE001 - libtpu missing or the slice shape rejected
        why = " ".join(str(e).split())[:200]
        raise ValueError(
            f"--topology={topology!r}: no such TPU slice here ({type(e).__name__}: {why}); "
            f"accepted: {accepted} in multiples of a host's chips (needs pip install "
            "'jaxar[tpu]')"
        ) from None
    return list(desc.devices)


def data_info(cfg: TrainConfig):
    """The data fields a model needs (vocabulary, image shape, classes), without reading
    the data (``jaxar.data.sources.describe``; tfds image sets by their metadata, at
    ``data.image_size`` when set)."""
    from jaxar.data import sources

    if tasks.get(cfg.model.family).kind == "text":
        return sources.DataInfo("text")
    d = cfg.data
    return sources.describe(d.name, data_dir=d.data_dir, image=d.image_prep(train=True))


# the token families' models, built without their frozen tokenizer: the train step reads
# batch["codes"] (the trainer's cached codes), so the tokenizer is dead code in it
_TOKEN_MODELS = {token_ar.TokenARConfig: token_ar.TokenAR, var.VARConfig: var.VAR}


def _token_model(cfg: TrainConfig, task, info, dtype, say):
    """``(make_model, codes per row)`` of a token family, from the tokenizer's config: its
    run's ``config.json``, or (no run yet) the experiment its workdir name denotes."""
    workdir = dict(cfg.model.overrides).get("tokenizer_workdir", "")
    spec = None
    if tokenizer_lib.has_run(workdir):
        tok = tokenizer_lib.tokenizer_config(workdir)
    else:
        tok, spec = tokenizer_lib.planned_config(workdir)
    config = task.make_config(cfg.model, info, dtype, tokenizer=tok)
    if spec is not None:
        say(
            f"no tokenizer run in {workdir!r}: code batches of {config.seq_len} codes per row "
            f"over {tok.num_codes} codes from {spec}'s config; a real run needs the trained "
            "tokenizer"
        )
    model_cls = _TOKEN_MODELS[type(config)]
    return lambda: model_cls(config, rngs=nnx.Rngs(cfg.seed)), config.seq_len


def _batch(cfg: TrainConfig, info, mesh, *, codes_per_row: int | None = None) -> dict:
    b = cfg.batch_size
    if info.kind == "text":
        shapes = {"tokens": ((b, cfg.data.seq_len), jnp.int32)}
        shapes["segment_ids"] = shapes["tokens"]
    elif codes_per_row is not None:  # a token family trains on its tokenizer's codes
        shapes = {"codes": ((b, codes_per_row), jnp.int32), "label": ((b,), jnp.int32)}
    else:
        if not all(isinstance(n, int) for n in info.image_shape):
            raise ValueError(
                f"config.data.name={cfg.data.name!r} has images of shape {info.image_shape}; "
                "accepted: a fixed shape: set config.data.image_size (resize and crop), or a "
                "dataset whose images all have one shape (e.g. tfds:imagenet_resized/64x64)"
            )
        shapes = {"image": ((b, *info.image_shape), jnp.uint8), "label": ((b,), jnp.int32)}
    return {
        k: jax.ShapeDtypeStruct(s, d, sharding=sharding.batch_sharding(mesh, len(s)))
        for k, (s, d) in shapes.items()
    }


def _say(line: str) -> None:
    print(f"jaxar compile: {line}")


def abstract_train_step(cfg: TrainConfig, mesh, info=None, *, say=_say):
    """``(jitted train step, abstract state, abstract batch)`` for ``cfg`` on ``mesh``,
    with the trainer's shardings; nothing is allocated. The token families (``token_ar``,
    ``var``) take code batches shaped by their tokenizer's config, read from its run or,
    before it is trained, from its experiment (a line to ``say`` tells which).

    Raises:
      ValueError: when the batch does not divide over the mesh's batch axes.
    """
    n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
    if cfg.batch_size % n_batch or (cfg.batch_size // cfg.grad_accum) % n_batch:
        raise ValueError(
            f"config.batch_size={cfg.batch_size} (grad_accum={cfg.grad_accum}) must divide "
            f"into micro-batches over the batch mesh axes data x fsdp = {n_batch}"
        )
    info = data_info(cfg) if info is None else info
    task = tasks.get(cfg.model.family)
    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32

    codes_per_row = None
    if isinstance(task, tasks.TokenFamily):
        build, codes_per_row = _token_model(cfg, task, info, dtype, say)
    else:
        build = lambda: task.build(cfg.model, info, dtype, nnx.Rngs(cfg.seed))  # noqa: E731

    def make_model():
        with nnx.use_eager_sharding(False):
            return build()

    # params, the non-gradient model state (travels in the train state, as in the trainer)
    # and the fixed rest (closed over by the step)
    graphdef, abs_params, abs_ms, abs_rest = step_lib.split_model(nnx.eval_shape(make_model))
    if jax.tree.leaves(abs_rest):  # closed over by the step: must be concrete, and small
        # jitted, returning only the rest: XLA drops the parameters' initialisers
        rest = jax.jit(lambda: step_lib.split_model(make_model())[3])()
    else:
        rest = abs_rest
    tx = optim.make(cfg)
    ema = cfg.ema_decay > 0
    abs_state = jax.eval_shape(
        lambda p, ms: step_lib.init_state(p, tx, seed=cfg.seed, ema=ema, model_state=ms),
        abs_params,
        abs_ms,
    )
    # optimizer moments and the EMA carry the params' logical names: shard them alike
    state_sh = sharding.state_shardings(abs_state, mesh)
    train_fn = step_lib.make_train_step(
        graphdef, rest, task.loss, tx, grad_accum=cfg.grad_accum, ema_decay=cfg.ema_decay,
        lr_schedule=optim.schedule(cfg),
    )  # fmt: skip
    batch = _batch(cfg, info, mesh, codes_per_row=codes_per_row)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    step = jax.jit(
        sharding.traced_on(train_fn, mesh),
        in_shardings=(state_sh, jax.tree.map(lambda x: x.sharding, batch)),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,),
    )
    return step, abs_state, batch


def compile_train_step(
    cfg: TrainConfig, devices, *, platform: str | None = None, info=None, say=_say
):
    """The train step of ``cfg`` compiled over ``devices`` with the config's mesh.

    Args:
      cfg: the run's config (its ``mesh`` fields pick the mesh shape).
      devices: e.g. :func:`topology_devices` (a TPU slice) or ``jax.devices()``.
      platform: trace for this platform (``jaxar.dispatch.target_platform``); default
        the devices' own.
      info: the data's ``DataInfo`` (default :func:`data_info`).
      say: prints a line (how a token family's code batch was derived).

    Returns:
      ``(compiled, mesh)``.
    """
    devices = list(devices)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices=devices)
    platform = platform or devices[0].platform
    with dispatch.target_platform("gpu" if platform in ("cuda", "rocm") else platform):
        step, state, batch = abstract_train_step(cfg, mesh, info, say=say)
        lowered = step.lower(state, batch)
    try:
        return lowered.compile(), mesh
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        why = " ".join(str(e).split("RESOURCE_EXHAUSTED:", 1)[1].split())[:300]
        raise DoesNotFit(
            f"the train step does not fit a {devices[0].device_kind} device ({why}); shard "
            "more (--config.mesh.fsdp=...) or lower --config.batch_size"
        ) from None


class DoesNotFit(ValueError):
    """The compiler found that the step needs more memory than a device has."""


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """Per-device figures of one compiled train step (bytes, FLOPs, seconds)."""

    devices: int
    chips: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    flops: float
    bytes_accessed: float
    chip: Chip | None = None

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs not donated back + temporaries + code, per device."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.code_bytes
        )

    @property
    def per_chip(self) -> int:
        return self.devices // self.chips

    @property
    def hbm_bytes(self) -> int | None:
        """HBM per device (a chip's HBM shared by its devices)."""
        return None if self.chip is None else self.chip.hbm_bytes // self.per_chip

    @property
    def fits(self) -> bool:
        return self.hbm_bytes is None or self.peak_bytes <= self.hbm_bytes

    @property
    def roofline_s(self) -> float | None:
        """max(FLOPs / peak, bytes / bandwidth) per device: a lower bound on step time."""
        if self.chip is None:
            return None
        peak = self.chip.peak_flops / self.per_chip
        bandwidth = self.chip.hbm_bytes_per_s / self.per_chip
        return max(self.flops / peak, self.bytes_accessed / bandwidth)

    @property
    def mfu(self) -> float | None:
        """FLOPs / (roofline time x peak): the MFU the roofline bound allows."""
        t = self.roofline_s
        if not t:
            return None
        return self.flops / (t * self.chip.peak_flops / self.per_chip)

    def lines(self, *, tokens_per_step: int | None = None) -> list[str]:
        """The report as printable lines."""
        g = lambda b: f"{b / GiB:8.3f} GiB"
        out = [
            f"devices        {self.devices} ({self.chips} chips"
            + (f" of {self.chip.name})" if self.chip else ")"),
            f"arguments      {g(self.argument_bytes)} per device (params, optimizer, batch)",
            f"outputs        {g(self.output_bytes)} per device ({g(self.alias_bytes).strip()} "
            "donated back)",
            f"temporaries    {g(self.temp_bytes)} per device",
            f"peak           {g(self.peak_bytes)} per device"
            + (
                f" of {g(self.hbm_bytes).strip()} HBM ({self.peak_bytes / self.hbm_bytes:.0%})"
                if self.hbm_bytes
                else ""
            ),
            f"FLOPs          {self.flops:.4g} per device and step",
            f"bytes accessed {self.bytes_accessed:.4g} per device and step",
        ]
        if self.chip is not None:
            t = self.roofline_s
            bound = (
                "compute"
                if self.flops / self.chip.peak_flops
                >= self.bytes_accessed / self.chip.hbm_bytes_per_s
                else "memory"
            )
            out.append(
                f"roofline       >= {t * 1e3:.3f} ms per step ({bound}-bound; "
                f"{self.chip.peak_flops / 1e12:.0f} TFLOP/s bf16, "
                f"{self.chip.hbm_bytes_per_s / 1e9:.0f} GB/s HBM per chip)"
            )
            out.append(f"MFU            <= {self.mfu:.1%} at that bound")
            if tokens_per_step:
                out.append(f"tokens/s       <= {tokens_per_step / t:,.0f} on the slice")
        return out


def report(compiled, devices, chip: Chip | None = None) -> CompileReport:
    """Reads ``compiled.memory_analysis()`` and ``cost_analysis()`` (per device)."""
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    devices = list(devices)
    if all(getattr(d, "coords", None) is not None for d in devices):  # TPU: cores of a chip
        chips = {(tuple(d.coords), getattr(d, "slice_index", 0)) for d in devices}
    else:
        chips = set(devices)
    return CompileReport(
        devices=len(devices),
        chips=len(chips),
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        chip=chip,
    )
