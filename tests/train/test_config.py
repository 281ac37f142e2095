import pathlib

import pytest

from jaxar.train import cli, experiments
from jaxar.train import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_quickstart_by_name_path_and_default():
    from_file = experiments.load_config(ROOT / "experiments/quickstart/config.py")
    assert from_file.to_dict() == cli.quickstart_config().to_dict()
    cfg = config_lib.from_config_dict(from_file)
    assert cfg.model.family == "lm" and cfg.data.name == "stdlib"
    default, workdir = cli.parse_train_args([])
    assert default == cfg and workdir.endswith("quickstart")


def test_overrides():
    c = cli.quickstart_config()
    config_lib.apply_overrides(
        c,
        ["steps=7", "learning_rate=1", "data.seq_len=64", "model.mixer=gateloop", "ema_decay=0.9"],
    )
    cfg = config_lib.from_config_dict(c)
    assert cfg.steps == 7 and cfg.learning_rate == 1.0 and cfg.data.seq_len == 64
    assert dict(cfg.model.overrides)["mixer"] == "gateloop" and cfg.ema_decay == 0.9


@pytest.mark.parametrize(
    "override, match",
    [
        ("stepz=3", r"unknown config field 'stepz'; accepted: .*'steps'"),
        ("data.nme=x", r"unknown config field 'data.nme'; accepted: .*'data.name'"),
        ("nonfinite=ignore", r"config.nonfinite='ignore' is invalid; accepted: \('skip', 'stop'\)"),
        ("steps=-1", r"config.steps=-1 is invalid; accepted: an integer > 0"),
        ("steps=abc", r"config.steps='abc' has the wrong type; expected int"),
        ("grad_accum=5", r"config.grad_accum=5 is invalid; accepted: a divisor of batch_size=16"),
        ("data.name=wiki", r"config.data.name='wiki' is invalid"),
        ("compute_dtype=float16", r"accepted: \('float32', 'bfloat16'\)"),
    ],
)
def test_bad_values_are_clear_errors(override, match):
    with pytest.raises(ValueError, match=match):
        c = config_lib.apply_overrides(cli.quickstart_config(), [override])
        config_lib.from_config_dict(c)


def test_cli_bad_override_exit_code(capsys):
    assert cli.train_main(["--config.steps=-3"]) == cli.EXIT_ERROR
    assert "config.steps=-3 is invalid" in capsys.readouterr().err


def test_unknown_family():
    from jaxar.train import tasks

    with pytest.raises(ValueError, match=r"model.family='gpt'.*accepted: \('lm'"):
        tasks.get("gpt")


def test_to_dict_round_trips():
    c = config_lib.apply_overrides(cli.quickstart_config(), ["model.mixer_options={'window': 8}"])
    cfg = config_lib.from_config_dict(c)
    assert config_lib.from_config_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("family", ["lm", "mdlm", "bd3"])
def test_families_build_from_quickstart_options(family):
    pytest.importorskip(f"jaxar.models.{family}")
    pytest.importorskip("jaxar.nn.attention")
    import jax.numpy as jnp
    from flax import nnx

    from jaxar.data.sources import DataInfo
    from jaxar.train import tasks

    c = config_lib.apply_overrides(cli.quickstart_config(), [f"model.family={family}"])
    cfg = config_lib.from_config_dict(c)
    task = tasks.get(family)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(
            lambda: task.build(cfg.model, DataInfo("text"), jnp.float32, nnx.Rngs(0))
        )
    assert model is not None
    bad = config_lib.ModelConfig(family, "tiny", (("d_modle", 3),))
    with pytest.raises(ValueError, match="d_modle"):
        task.build(bad, DataInfo("text"), jnp.float32, nnx.Rngs(0))


def test_config_variant_argument(tmp_path):
    """``config.py:tiny`` calls ``get_config("tiny")``; the run is named after both. A config
    file outside the repository imports the shared recipes as ``jaxar.experiments.common``."""
    f = tmp_path / "exp" / "config.py"
    f.parent.mkdir()
    f.write_text(
        "from jaxar.experiments.common import config_dict\n"
        "def get_config(variant='full'):\n"
        "    steps = 3 if variant == 'tiny' else 1000\n"
        "    return config_dict(model=dict(family='lm'), recipe='cpu_tiny', steps=steps)\n"
    )
    assert experiments.load_config(f"{f}:tiny").steps == 3
    assert experiments.load_config(f).steps == 1000
    cfg, workdir = cli.parse_train_args(["--config", f"{f}:tiny"])
    assert cfg.steps == 3 and workdir.endswith("exp_tiny")
    with pytest.raises(ValueError, match="no such file"):
        experiments.load_config(f"{tmp_path}/nope.py:tiny")


def test_config_by_experiment_name():
    """``NAME[:variant]`` finds ``jaxar.experiments.<name>.config``; the run is named
    ``<name>_<variant>``; the name and path forms give the same config."""
    cfg, workdir = cli.parse_train_args(["--config", "gss_lm:tiny", "--config.steps=5"])
    by_path = experiments.load_config(ROOT / "experiments/gss_lm/config.py:tiny")
    assert cfg == config_lib.from_config_dict(config_lib.apply_overrides(by_path, ["steps=5"]))
    assert workdir.endswith("gss_lm_tiny") and cfg.steps == 5
    assert experiments.resolve("gss_lm").variant is None
    assert experiments.default_variant("gss_lm") == "full"


def test_every_experiment_variant_loads():
    """Every experiment on disk is listed, and each listed variant converts."""
    on_disk = sorted(p.parent.name for p in (ROOT / "experiments").glob("*/config.py"))
    assert list(experiments.names()) == on_disk and "quickstart" in on_disk
    for name in on_disk:
        for variant in experiments.variants(name) or (None,):
            arg = name if variant is None else f"{name}:{variant}"
            config_lib.from_config_dict(experiments.load_config(arg))


@pytest.mark.parametrize(
    "arg, match",
    [
        ("gss:tiny", r"--config='gss:tiny': no experiment named 'gss'; experiments: .*gss_lm"),
        ("gss_lm:huge", r"unknown variant 'huge'; accepted: \('full', 'tiny'\)"),
        ("quickstart:tiny", r"takes no variant"),
        ("no/such/config.py:tiny", r"no/such/config.py'.*no such file"),
    ],
)
def test_bad_config_arguments_are_one_line_errors(arg, match, capsys):
    with pytest.raises(ValueError, match=match):
        experiments.load_config(arg)
    assert cli.train_main(["--config", arg]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("jaxar train: error: --config=") and err.count("\n") == 1


def test_config_dict_recipes_and_errors():
    import jaxar

    package = experiments.package()  # in a source checkout: the repository's experiments/
    from jaxar.experiments.common import config_dict

    assert jaxar.experiments is package

    c = config_dict(model=dict(family="lm"), recipe="cpu_tiny", batch_size=8)
    cfg = config_lib.from_config_dict(c)
    assert cfg.steps == 300 and cfg.batch_size == 8 and cfg.b2 == 0.95  # recipe, field, default
    with pytest.raises(ValueError, match="recipe='nope'"):
        config_dict(model=dict(family="lm"), recipe="nope")
    with pytest.raises(ValueError, match="stepz"):
        config_dict(model=dict(family="lm"), stepz=3)


def test_the_library_holds_no_recipes():
    assert not hasattr(config_lib, "RECIPES") and not hasattr(config_lib, "config_dict")
