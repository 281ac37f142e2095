"""Logical axis names, the one rules table, and mesh construction.

Parameters carry logical names (``nnx.with_partitioning(init, ("embed", "mlp"))``);
``RULES`` maps each logical name to a mesh axis (or to none = replicated). Nothing else
in jaxar names mesh axes.

Logical names:
  batch, length            activations
  vocab, embed, mlp        embedding / MLP parameters
  heads, kv_heads, head_dim  attention parameters
  state, conv              recurrent state width, convolution / SSM kernel axes
  norm                     per-feature scales and biases (replicated)
Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel with parameters
sharded), ``tensor`` (tensor / model parallel).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of mesh axes, or None = replicated). The one table.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", None),
    ("head_dim", None),
    ("state", None),
    ("conv", None),
    ("norm", None),
)


def logical_to_mesh(names: Sequence[str | None], rules=RULES) -> PartitionSpec:
    """PartitionSpec over mesh axes for a tuple of logical axis names."""
    table = dict(rules)
    out = []
    for n in names:
        if n is not None and n not in table:
            raise ValueError(f"logical axis {n!r} has no rule; known: {sorted(table)}")
        out.append(None if n is None else table[n])
    return PartitionSpec(*out)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, *, devices=None) -> jax.sharding.Mesh:
    """A ``(data, fsdp, tensor)`` mesh with Auto axis types; ``-1`` takes the rest.

    Raises:
      ValueError: if the sizes do not multiply to the number of devices.
    """
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(
            f"at most one mesh axis may be -1; got data={data}, fsdp={fsdp}, tensor={tensor}"
        )
    known = 1
    for s in sizes:
        if s != -1:
            if s < 1:
                raise ValueError(f"mesh axis sizes must be >= 1 or -1; got {sizes}")
            known *= s
    if -1 in sizes:
        if n % known:
            raise ValueError(
                f"{n} devices do not divide into mesh {dict(zip(MESH_AXES, sizes, strict=True))}"
            )
        sizes[sizes.index(-1)] = n // known
    if sizes[0] * sizes[1] * sizes[2] != n:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
            f"{sizes[0] * sizes[1] * sizes[2]} devices; {n} available"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
