"""``jaxar compile`` for the token families before their tokenizer is trained: the code grid
and vocabulary come from the tokenizer's experiment config; a real run still needs the
trained tokenizer. The TPU compiles are skipped only where libtpu cannot be imported."""

import importlib.util
import json

import jax
import pytest

from jaxar import cli, sharding
from jaxar.data import sources
from jaxar.train import compile as compile_lib
from jaxar.train import config as config_lib
from jaxar.train import experiments, tasks
from jaxar.train import tokenizer as tokenizer_lib

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="needs libtpu (pip install -e '.[tpu]')"
)


def _cfg(spec, *overrides):
    d = experiments.load_config(spec)
    for o in overrides:
        config_lib.apply_overrides(d, [o])
    return config_lib.from_config_dict(d.to_dict())


def test_planned_tokenizer_configs_of_the_paper_settings():
    vq, spec = tokenizer_lib.planned_config("jaxar_runs/vq_tokenizer_full")
    assert spec == "vq_tokenizer:full" and (vq.image_size, vq.grid, vq.num_codes) == (
        256,
        16,
        16384,
    )
    msrq, spec = tokenizer_lib.planned_config("/elsewhere/vq_tokenizer_full_msrq")
    assert spec == "vq_tokenizer:full_msrq" and msrq.scales[-1] == 16 and msrq.num_codes == 4096
    # the token models' configs agree with the tokenizers' (as they will once trained)
    for family, spec, tok in (("token_ar", "llamagen:full", vq), ("var", "var:full", msrq)):
        cfg = _cfg(spec)
        info = sources.describe(cfg.data.name, image=cfg.data.image_prep(train=False))
        model_cfg = tasks.get(family).make_config(cfg.model, info, jax.numpy.float32, tokenizer=tok)
        assert model_cfg.num_codes == tok.num_codes and model_cfg.image_size == 256


def test_a_workdir_naming_no_vq_experiment_is_refused(tmp_path):
    for name in ("nowhere", "llamagen_tiny", "vq_tokenizer_huge"):
        with pytest.raises(ValueError, match=r"^config.model.tokenizer_workdir=.* does not exist"):
            tokenizer_lib.planned_config(str(tmp_path / name))


def test_abstract_batch_takes_codes_from_the_tokenizer_run(tmp_path):
    """With a tokenizer run (config.json, no weights needed) its own config shapes the codes."""
    tok = tmp_path / "tok"
    tok.mkdir()
    tok_config = experiments.load_config("vq_tokenizer:photos_msrq").to_dict()
    (tok / "config.json").write_text(json.dumps(tok_config))
    cfg = _cfg("var:photos", f"model.tokenizer_workdir='{tok}'")
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    said = []
    _, state, batch = compile_lib.abstract_train_step(cfg, mesh, say=said.append)
    assert said == []  # a run exists: nothing planned
    assert batch["codes"].shape == (32, 1 + 4 + 16 + 64) and batch["label"].shape == (32,)
    assert "tokenizer" not in str(jax.tree.structure(state))


@needs_libtpu
def test_token_ar_tiny_compiles_for_a_v5e_slice_without_a_tokenizer(capsys, tmp_path):
    workdir = tmp_path / "vq_tokenizer_tiny_vq"  # not trained
    rc = cli.main(
        ["compile", "--config", "llamagen:tiny", "--topology", "v5e:2x2",
         "--config.mesh.fsdp=2", "--config.batch_size=8", "--config.model.num_layers=1",
         f"--config.model.tokenizer_workdir={workdir}"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"no tokenizer run in '{workdir}': code batches of 16 codes per row over 64 " in out.out
    assert "from vq_tokenizer:tiny_vq's config; a real run needs the trained tokenizer" in out.out
    assert "4 (4 chips of TPU v5e)" in out.out and "MFU            <= " in out.out


@needs_libtpu
@pytest.mark.slow
def test_var_tiny_compiles_for_a_v5e_slice_without_a_tokenizer(capsys):
    rc = cli.main(["compile", "--config", "var:tiny", "--topology", "v5e:2x2"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "code batches of 21 codes per row over 64 codes from vq_tokenizer:tiny_msrq" in out.out


def test_a_real_run_still_needs_the_trained_tokenizer(tmp_path):
    cfg = _cfg("llamagen:tiny", f"model.tokenizer_workdir='{tmp_path / 'vq_tokenizer_tiny_vq'}'")
    info = sources.describe("digits")
    with pytest.raises(ValueError, match=r"holds no config.json; accepted: the run directory"):
        tasks.get("token_ar").make_config(cfg.model, info, jax.numpy.float32)


@pytest.mark.slow
def test_token_activations_stay_batch_sharded_under_fsdp(tmp_path):
    """Block-boundary constraints: with parameters sharded over fsdp = 8 a device's
    temporaries stay near the data-parallel ones (unconstrained, VAR-d16's grew 7x)."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    temps = {}
    for mesh in ((8, 1, 1), (1, 8, 1)):
        cfg = _cfg(
            "var:photos", "batch_size=64", "model.d_model=128",
            f"model.tokenizer_workdir='{tmp_path / 'vq_tokenizer_photos_msrq'}'",
        )  # fmt: skip
        step, state, batch = compile_lib.abstract_train_step(
            cfg, sharding.make_mesh(*mesh, devices=jax.devices()[:8]), say=lambda _: None
        )
        temps[mesh] = step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
    assert temps[1, 8, 1] <= 1.5 * temps[8, 1, 1], temps
