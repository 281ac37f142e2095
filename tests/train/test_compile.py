"""``jaxar compile``: the sharded train step compiled for a TPU slice on this CPU host.

Skipped only where libtpu cannot be imported (``pip install -e ".[tpu]"``).
"""

import pytest

from jaxar import cli
from jaxar.train import compile as compile_lib

pytest.importorskip("libtpu", reason="needs libtpu (pip install -e '.[tpu]')")


def _run(capsys, *args):
    rc = cli.main(["compile", "--config", "transformer_lm:tiny", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_tiny_train_step_compiles_for_a_v5e_slice(capsys):
    rc, out, err = _run(capsys, "--topology", "v5e:2x2", "--config.mesh.fsdp=2")
    assert rc == 0, err
    assert "on v5e:2x2, mesh {'data': 2, 'fsdp': 2, 'tensor': 1}" in out
    assert "4 (4 chips of TPU v5e)" in out and "of 16.000 GiB HBM" in out
    assert "roofline       >= " in out and "MFU            <= " in out


def test_report_arithmetic():
    chip = compile_lib.CHIPS["v5p"]
    rep = compile_lib.CompileReport(
        devices=8, chips=4, argument_bytes=10, output_bytes=6, alias_bytes=4, temp_bytes=3,
        code_bytes=1, flops=459e12, bytes_accessed=2765e9 / 4, chip=chip,
    )  # fmt: skip
    assert rep.peak_bytes == 16 and rep.hbm_bytes == chip.hbm_bytes // 2 and rep.fits
    assert rep.roofline_s == pytest.approx(2.0)  # two devices share a chip's peak
    assert rep.mfu == pytest.approx(1.0)


def test_a_step_that_does_not_fit_exits_2(capsys):
    rc, out, err = _run(
        capsys, "--topology", "v5e:2x2", "--config.batch_size=1024", "--config.data.seq_len=4096"
    )
    assert rc == 2
    assert err.startswith("jaxar compile: error: the train step does not fit a TPU v5 lite")
    assert "exceeds available HBM" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "topology,why",
    [("v9:2x2", "is invalid; accepted: <generation>"), ("v5e:3x3", "no such TPU slice here")],
)
def test_bad_topology_exits_2(capsys, topology, why):
    rc, _, err = _run(capsys, "--topology", topology)
    assert rc == 2 and f"--topology={topology!r}" in err and why in err
    assert err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("topology", ["v4:2x2x1", "v5p:2x2x1", "v6e:2x2"])
def test_tiny_train_step_compiles_for_other_generations(capsys, topology):
    rc, out, err = _run(capsys, "--topology", topology, "--config.mesh.fsdp=2")
    assert rc == 0, err
    assert f"on {topology}, mesh" in out and "MFU            <= " in out


def test_images_of_variable_shape_are_refused():
    """tfds:imagenet2012's images have no fixed shape: a one-line error, not a trace error."""
    from jaxar.data import sources
    from jaxar.train import config as config_lib

    cfg = config_lib.from_config_dict(
        {"model": {"family": "vq", "preset": "tiny"}, "data": {"name": "tfds:imagenet2012"}}
    )
    info = sources.DataInfo("image", image_shape=(None, None, 3), num_classes=1000)
    with pytest.raises(ValueError, match=r"^config.data.name='tfds:imagenet2012' has images of"):
        compile_lib._batch(cfg, info, None)


def test_model_state_travels_in_the_abstract_train_state():
    """A model with non-gradient state (the EMA codebook) compiles as the trainer runs it:
    the codebook is in ``model_state``, not a constant of the step nor a parameter."""
    import jax

    from jaxar import sharding
    from jaxar.train import config as config_lib
    from jaxar.train import experiments

    cfg = config_lib.from_config_dict(experiments.load_config("vq_tokenizer:tiny_vq_ema"))
    step, state, batch = compile_lib.abstract_train_step(cfg, sharding.make_mesh(8, 1, 1))
    assert "model_state" in state
    assert not any(
        "codebook" in jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(state["params"])[0]
    )
