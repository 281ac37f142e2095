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

Activations are constrained by the same names at block boundaries
(``constrain(x_BxLxD, ("batch", "length", "embed"))``): with a mesh active while tracing
(``jax.set_mesh``, or :func:`traced_on`) the names become a sharding constraint through
``RULES``, with none it is the identity. A mesh axis used by an earlier dimension is not
used again, so ``embed`` activations stay whole when ``batch`` takes ``fsdp``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
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
    ("kv_heads", "tensor"),  # GQA with fewer kv heads than the axis: replicated
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
    axis_types = (AxisType.Auto,) * 3
    try:
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices)
    except AssertionError:  # TPU v4 slices listed per core: no physical layout, device order
        grid = np.array(devices, dtype=object).reshape(sizes)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


def _axis_size(mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size


def logical_sharding(
    names: Sequence[str | None] | None, shape: Sequence[int], mesh, rules=RULES
) -> jax.sharding.NamedSharding:
    """NamedSharding on ``mesh`` for an array of ``shape`` with logical axis ``names``.

    A dimension whose size the mapped mesh axes do not divide is replicated instead (tiny
    models on big meshes), as is a mesh axis already used by an earlier dimension.
    """
    if not names:
        return jax.sharding.NamedSharding(mesh, PartitionSpec())
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    spec, used = [], set()
    for axes, size in zip(logical_to_mesh(names, rules), shape, strict=True):
        flat = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        if not flat or size % _axis_size(mesh, flat) or used & set(flat):
            spec.append(None)
        else:
            used |= set(flat)
            spec.append(axes)
    return jax.sharding.NamedSharding(mesh, PartitionSpec(*spec))


def variable_names(variable) -> tuple[str | None, ...] | None:
    """The logical axis names an NNX variable was annotated with (None if none)."""
    meta = variable.get_metadata() if hasattr(variable, "get_metadata") else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names is not None and not isinstance(names, jax.sharding.Sharding):
            return tuple(names)
    return None


def state_shardings(state, mesh, rules=RULES):
    """The NamedShardings for an (abstract) NNX state, from its variables' logical names.

    The result has a NamedSharding where the state has a variable, so it serves as
    ``out_shardings`` of a jitted init (params born sharded) and as a restore target.
    """
    from flax import nnx

    def one(v):
        if isinstance(v, nnx.Variable):
            return logical_sharding(variable_names(v), v.get_value().shape, mesh, rules)
        return logical_sharding(None, getattr(v, "shape", ()), mesh, rules)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _active_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return None
    return mesh


def constrain(x, names: Sequence[str | None], rules=RULES):
    """``x`` constrained to the sharding of its logical axis ``names`` on the active mesh
    (identity without one, or on a mesh of other axes); dimensions the mapped mesh axes do
    not divide stay whole (:func:`logical_sharding`)."""
    mesh = _active_mesh()
    if mesh is None:
        return x
    spec = logical_sharding(names, x.shape, mesh, rules).spec
    return jax.lax.with_sharding_constraint(x, spec)


def traced_on(fn: Callable, mesh) -> Callable:
    """``fn`` traced with ``mesh`` active, so that :func:`constrain` applies inside a
    ``jax.jit`` of it (jit it as usual; calling it needs no mesh context)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return wrapped


def batch_sharding(mesh, ndim: int = 2, rules=RULES) -> jax.sharding.NamedSharding:
    """Batch arrays sharded along their leading dimension over the ``batch`` mesh axes."""
    return jax.sharding.NamedSharding(
        mesh, logical_to_mesh(("batch",) + (None,) * (ndim - 1), rules)
    )
