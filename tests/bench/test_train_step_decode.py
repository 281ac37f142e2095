"""The measuring functions of ``jaxar bench train_step`` and ``jaxar bench decode``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxar.bench import BENCHMARKS, decode, harness, remat, train_step
from jaxar.models.lm import LM, PRESET_KINDS, LMConfig

MICRO = dict(vocab_size=32, d_model=16, num_layers=2, num_heads=2)


def test_train_step_cases_cover_every_family_and_kind():
    names = {(f, p) for f, p, _ in train_step.cases(quick=True)}
    assert {("lm", f"{k}-tiny") for k in PRESET_KINDS} <= names
    assert {f for f, _ in names} == {"lm", "mdlm", "bd3", "axial", "mar"}
    remat = [o["remat"] for _, _, o in train_step.cases(quick=False) if o]
    assert set(remat) == {"block", "dots_saveable"}


def test_vs_transformer_ratio():
    rows = [
        harness.Result("train_step", "lm/transformer-tiny", "remat=none", "float32", 1.0,
                       extra={"tokens/s": 100}),
        harness.Result("train_step", "lm/gss-tiny", "remat=none", "float32", 2.0,
                       extra={"tokens/s": 50}),
        harness.Result("train_step", "lm/transformer-tiny remat=block", "remat=block",
                       "float32", 1.5, extra={"tokens/s": 80}),
    ]  # fmt: skip
    train_step._vs_transformer(rows)
    assert [r.extra["vs_transformer"] for r in rows] == [1.0, 0.5, 0.8]


@pytest.mark.slow  # builds and compiles a trainer run (~5 s)
def test_train_step_measure_smoke():
    (row,) = train_step.measure(
        [("lm", "tiny", {"num_layers": 1})], rounds=1, steps=1, seq_len=16, batch_size=2
    )
    assert row.median_ms > 0 and row.extra["tokens/s"] > 0
    assert 0 < row.extra["mfu"] <= 1 and row.extra["flops"] == "cost_analysis"
    assert row.extra["temp_MiB"] > 0


def _model(cfg):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0))))
    params = jax.jit(lambda: nnx.split(LM(cfg, rngs=nnx.Rngs(0)))[1])()
    return graphdef, params


def test_decode_steps_are_greedy_decoding():
    """From an empty state, the timed scan (attention and GSS layers) emits exactly the
    greedy continuation: each token is the argmax of the full forward pass before it."""
    graphdef, params = _model(LMConfig(**MICRO, mixer=("attention", "gss")))
    model = nnx.merge(graphdef, params)
    first = jnp.asarray([3, 7], jnp.int32)
    steps = 5
    state, last = decode.decode_steps(graphdef, steps)(params, model.init_state(2, 8), first)
    forward = jax.jit(lambda p, seq: nnx.merge(graphdef, p)(seq))
    seq = jnp.zeros((2, steps + 1), jnp.int32).at[:, 0].set(first)
    for i in range(steps):  # causal: logits at i see only seq[:, :i + 1]
        seq = seq.at[:, i + 1].set(jnp.argmax(forward(params, seq)[:, i], axis=-1))
    np.testing.assert_array_equal(last, seq[:, -1])
    assert int(state[0]["index"]) == steps


@pytest.mark.slow  # compiles a decode loop (~5 s)
def test_fill_state_and_latency():
    cfg = LMConfig(**MICRO, mixer=("attention", "gateloop"))
    graphdef, params = _model(cfg)
    empty = nnx.merge(graphdef, params).init_state(2, 12)
    state = jax.jit(lambda s: decode.fill_state(s, 9, jax.random.key(0)))(empty)
    assert int(state[0]["index"]) == 9
    assert float(jnp.abs(state[1]).max()) > 0 and state[1].dtype == jnp.complex64
    sec, compile_s = decode.latency(cfg, 1, 9, steps=1, repeats=1)
    assert sec > 0 and compile_s >= 0


def test_remat_cases_and_ratios():
    assert BENCHMARKS["remat"] == "jaxar.bench.remat"
    names = {(p, o["remat"]) for _, p, o in remat.cases(quick=False)}
    assert names == {
        (f"{k}-small", r) for k in remat.KINDS for r in ("none", "block", "dots_saveable")
    }
    rows = [
        harness.Result("train_step", f"lm/transformer-small remat={r}", f"remat={r}", "float32",
                       ms, extra={"temp_MiB": mib})
        for r, ms, mib in (("none", 2.0, 100.0), ("block", 3.0, 25.0))
    ]  # fmt: skip
    remat.with_vs_none(rows)
    assert [(r.extra["vs_none_time"], r.extra["vs_none_temp"]) for r in rows] == [
        (1.0, 1.0),
        (1.5, 0.25),
    ]


def test_decode_state_grows_only_with_a_cache():
    assert decode.state_grows(LMConfig(**MICRO, mixer=("attention", "gateloop")))
    assert not decode.state_grows(LMConfig(**MICRO, mixer="gateloop"))
