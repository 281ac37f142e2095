import contextlib
import functools
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxar import sharding


def test_logical_to_mesh():
    assert sharding.logical_to_mesh(("embed", "mlp")) == P("fsdp", "tensor")
    assert sharding.logical_to_mesh(("batch", None)) == P(("data", "fsdp"), None)
    with pytest.raises(ValueError, match="'bogus'"):
        sharding.logical_to_mesh(("bogus",))


@pytest.mark.parametrize("sizes", [(8, 1, 1), (2, 4, 1), (2, 1, 4), (-1, 2, 2)])
def test_make_mesh(sizes):
    mesh = sharding.make_mesh(*sizes)
    assert mesh.axis_names == sharding.MESH_AXES
    assert mesh.devices.size == 8


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="needs 24 devices"):
        sharding.make_mesh(2, 3, 4)
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(-1, -1, 1)


def test_constrain_applies_only_under_a_mesh():
    x = jnp.ones((8, 4, 16))
    names = ("batch", "length", "embed")
    assert sharding.constrain(x, names) is x
    mesh = sharding.make_mesh(2, 2, 2)
    f = jax.jit(sharding.traced_on(lambda x: sharding.constrain(x, names) * 2, mesh))
    text = f.lower(x).as_text()
    assert "sharding_constraint" in text and '[{"data", "fsdp"}, {}, {}]' in text
    np.testing.assert_array_equal(f(x), 2 * x)


# Activation sharding: every family's train step compiles on every mesh shape without
# resharding activations. Rows B = 24 and text rows of 24 (bd3: 48) tokens: an all-gather
# whose result has L or L - 1 in it, or a leading dimension 3k (B over data x fsdp),
# gathers activations; parameters (FSDP) are gathered freely.
FAMILIES = {
    "transformer": ("lm", "transformer-tiny"),
    "gateloop": ("lm", "gateloop-tiny"),
    "gss": ("lm", "gss-tiny"),
    "gss_hybrid": ("lm", "gss_hybrid-tiny"),
    "mdlm": ("mdlm", "tiny"),
    "bd3": ("bd3", "tiny"),  # rows of 48 tokens (its blocks of 16)
    "axial": ("axial", "tiny"),
    "mar": ("mar", "tiny"),
}
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]
FAST = {("transformer", (2, 2, 2)), ("transformer", (1, 8, 1)), ("axial", (1, 2, 4))}
KNOWN: dict[tuple[str, tuple[int, int, int]], str] = {}  # (family, mesh) -> xfail reason
_GATHER = re.compile(r"= \w+\[([\d,]*)\][^ ]* all-gather\(")


def _activation_gathers(hlo: str, state) -> list[str]:
    """The all-gathers of ``hlo`` that gather activations (the shapes above).

    Not counted: a gather whose result has a parameter's full shape in ``state["params"]``
    (FSDP / tensor gathering that parameter; VAR's positional table is (75, D), and 75 =
    3 x 25 looks like a batch of 3k), and one that gathers a single slice from each device
    along its gathered axis (a cross-shard reduction's partial results: a softmax over a
    vocabulary sharded on tensor gathers (B, L, tensor)).
    """
    params = {tuple(x.shape) for x in jax.tree.leaves(state["params"])}
    bad = []
    for line in hlo.splitlines():
        m = _GATHER.search(line)
        if m is None or not m.group(1):
            continue
        dims = tuple(int(d) for d in m.group(1).split(","))
        if not ({23, 24, 47, 48} & set(dims) or (dims[0] % 3 == 0 and len(dims) > 1)):
            continue
        axis = re.search(r"dimensions=\{(\d+)\}", line)
        group = re.search(r"replica_groups=\[[\d,]*?(\d+)\]<=", line)
        partials = axis and group and dims[int(axis.group(1))] == int(group.group(1))
        if dims not in params and not partials:
            bad.append(line.strip()[:200])
    return bad


def _cases():
    for fam in FAMILIES:
        for mesh in MESHES:
            marks = () if (fam, mesh) in FAST else (pytest.mark.slow,)
            if (fam, mesh) in KNOWN:
                marks += (pytest.mark.xfail(reason=KNOWN[fam, mesh], strict=True),)
            yield pytest.param(fam, mesh, marks=marks, id=f"{fam}-{'x'.join(map(str, mesh))}")


@functools.cache
def _compiled(family: str, mesh: tuple[int, int, int]):
    """``(compiled train step, XLA's log while compiling, abstract state, batch)``."""
    from jaxar.data.sources import DataInfo
    from jaxar.train import compile as compile_lib
    from jaxar.train import config as config_lib

    name, preset = FAMILIES[family]
    image = name in ("axial", "mar")
    info = DataInfo("image", image_shape=(8, 8, 1), num_classes=10) if image else DataInfo("text")
    cfg = config_lib.TrainConfig(
        model=config_lib.ModelConfig(family=name, preset=preset),
        data=config_lib.DataConfig(
            name="digits" if image else "stdlib", seq_len=48 if name == "bd3" else 24
        ),
        mesh=config_lib.MeshConfig(*mesh),
        batch_size=24,
    )
    with _stderr() as log:
        step, state, batch = compile_lib.abstract_train_step(cfg, sharding.make_mesh(*mesh), info)
        compiled = step.lower(state, batch).compile()
    return compiled, "".join(log), state, batch


@contextlib.contextmanager
def _stderr():
    """Collects what is written to file descriptor 2 (XLA's C++ logging) into a list."""
    out = []
    with tempfile.TemporaryFile("w+") as f:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            out.append(f.read())


@pytest.mark.parametrize("family,mesh", list(_cases()))
def test_train_step_keeps_activations_sharded(family, mesh):
    compiled, log, state, _ = _compiled(family, mesh)
    assert "Involuntary full rematerialization" not in log, log[-2000:]
    assert _activation_gathers(compiled.as_text(), state) == []


def test_fsdp_divides_the_train_state():
    """Per-device arguments (params, optimizer state, batch) <= 1.15 x total / 8 under
    FSDP over 8 devices (the base presets: tests/train/test_memory_scaling.py)."""
    compiled, _, state, batch = _compiled("transformer", (1, 8, 1))
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((state, batch)))
    assert compiled.memory_analysis().argument_size_in_bytes <= 1.15 * total / 8


# The visual-token families (issue 14) on the same meshes: the VQ tokenizer, and the token
# models compiled on code batches planned from their (untrained) tokenizer's experiment.
TOKEN_FAMILIES = {
    "vq": ("vq_tokenizer:tiny_vq", None),
    "token_ar": ("llamagen:tiny", "vq_tokenizer_tiny_vq"),
    "var": ("var:tiny", "vq_tokenizer_tiny_msrq"),
}


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
@pytest.mark.parametrize("family", sorted(TOKEN_FAMILIES))
def test_token_family_train_steps_keep_activations_sharded(family, mesh, tmp_path):
    from jaxar.train import compile as compile_lib
    from jaxar.train import config as config_lib
    from jaxar.train import experiments

    spec, tokenizer = TOKEN_FAMILIES[family]
    d = experiments.load_config(spec)
    overrides = ["batch_size=24", "grad_accum=1"]
    overrides += [f"mesh.{a}={n}" for a, n in zip(("data", "fsdp", "tensor"), mesh, strict=True)]
    if tokenizer:
        overrides.append(f"model.tokenizer_workdir='{tmp_path / tokenizer}'")
    config_lib.apply_overrides(d, overrides)
    cfg = config_lib.from_config_dict(d.to_dict())
    with _stderr() as log:
        step, state, batch = compile_lib.abstract_train_step(
            cfg, sharding.make_mesh(*mesh), say=lambda _: None
        )
        compiled = step.lower(state, batch).compile()
    log = "".join(log)
    assert "Involuntary full rematerialization" not in log, log[-2000:]
    assert _activation_gathers(compiled.as_text(), state) == []
