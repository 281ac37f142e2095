"""The visual-token experiments: every variant's config loads; the token families read
their tokenizer's run directory and refuse a missing one or a wrong code count with a
one-line error; (slow) tokenizer -> VAR / token-AR train, sample and eval end to end."""

import importlib.util
import json
import pathlib

import jax
import pytest
from flax import nnx

from jaxar.data.sources import DataInfo
from jaxar.train import cli, experiments, tasks
from jaxar.train import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DIGITS = DataInfo("image", image_shape=(8, 8, 1), num_classes=10)


def _load(name, variant, *overrides):
    d = experiments.load_config(ROOT / f"experiments/{name}/config.py:{variant}")
    config_lib.apply_overrides(d, list(overrides))
    return config_lib.from_config_dict(d)


@pytest.mark.parametrize("name", ["vq_tokenizer", "llamagen", "var"])
def test_every_variant_loads(name):
    path = ROOT / f"experiments/{name}/config.py"
    experiments.package()  # makes jaxar.experiments importable from a source checkout
    spec = importlib.util.spec_from_file_location(f"_visual_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for v in module.VARIANTS:
        cfg = _load(name, v)
        assert config_lib.from_config_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="accepted"):
        experiments.load_config(f"{path}:huge")


def test_tokenizer_variants_build_at_64_codes():
    for q in ("vq", "vq_ema", "fsq", "lfq", "msrq"):
        cfg = _load("vq_tokenizer", f"tiny_{q}")
        family = tasks.get("vq")
        config = family.make_config(cfg.model, DIGITS, jax.numpy.float32)
        assert config.num_codes == 64 and config.grid == 4, q
        model = nnx.eval_shape(
            lambda: family.build(cfg.model, DIGITS, jax.numpy.float32, nnx.Rngs(0))
        )  # noqa: B023
        assert model.config.quantizer == q


def test_token_family_tokenizer_errors(tmp_path):
    family = tasks.get("token_ar")
    cfg = _load("llamagen", "tiny", "model.tokenizer_workdir=''")
    with pytest.raises(ValueError, match=r"tokenizer_workdir='' is required"):
        family.make_config(cfg.model, DIGITS, jax.numpy.float32)
    cfg = _load("llamagen", "tiny", f"model.tokenizer_workdir='{tmp_path / 'nope'}'")
    with pytest.raises(ValueError, match="holds no config.json"):
        family.make_config(cfg.model, DIGITS, jax.numpy.float32)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "config.json").write_text(json.dumps(_load("vq_tokenizer", "tiny_vq").to_dict()))
    cfg = _load("llamagen", "tiny", f"model.tokenizer_workdir='{tok}'", "model.num_codes=128")
    with pytest.raises(
        ValueError, match=r"num_codes=128 does not match the tokenizer .*num_codes = 64"
    ):
        family.make_config(cfg.model, DIGITS, jax.numpy.float32)
    cfg = _load("llamagen", "tiny", f"model.tokenizer_workdir='{tok}'")
    assert family.make_config(cfg.model, DIGITS, jax.numpy.float32).num_codes == 64
    (tok / "config.json").write_text(json.dumps(_load("vq_tokenizer", "tiny_msrq").to_dict()))
    with pytest.raises(ValueError, match="token_ar needs one code per position"):
        family.make_config(cfg.model, DIGITS, jax.numpy.float32)


@pytest.mark.slow  # six tiny trainer runs
def test_tokenizer_then_token_models_end_to_end(tmp_path, capsys):
    short = ["--config.steps=2", "--config.eval_every=2", "--config.checkpoint_every=2",
             "--config.eval_batches=1", "--config.num_samples=2", "--config.batch_size=8"]  # fmt: skip
    for q, model in (("vq", "llamagen"), ("msrq", "var"), ("vq_ema", "llamagen")):
        tok = tmp_path / f"tok_{q}"
        argv = ["--config", str(ROOT / f"experiments/vq_tokenizer/config.py:tiny_{q}")]
        assert cli.train_main([*argv, "--workdir", str(tok), *short]) == 0
        run = tmp_path / f"{model}_{q}"
        argv = [
            "--config",
            str(ROOT / f"experiments/{model}/config.py:tiny"),
            "--workdir",
            str(run),
        ]
        assert cli.train_main([*argv, *short, f"--config.model.tokenizer_workdir={tok}"]) == 0
        out = tmp_path / f"{model}_{q}.png"
        assert cli.sample_main(["--workdir", str(run), "--num", "4", "--out", str(out)]) == 0
        assert out.stat().st_size > 0
        assert cli.eval_main(["--workdir", str(run), "--batches", "1"]) == 0
        assert "held-out bits_per_token" in capsys.readouterr().out
    assert cli.sample_main(["--workdir", str(tmp_path / "tok_vq"), "--num", "3"]) == 0
