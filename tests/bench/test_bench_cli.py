import json

import jax
import jax.numpy as jnp

from jaxar import cli
from jaxar.bench import cli as bench_cli
from jaxar.bench import harness


def test_timeit_and_ratios():
    f = jax.jit(lambda x: x + 1)
    t = harness.timeit(f, jnp.ones(8), repeats=3)
    assert t.repeats == 3 and t.median_s > 0 and t.min_s <= t.median_s
    rows = [
        harness.Result("b", "c", "base", "float32", 2.0),
        harness.Result("b", "c", "fast", "float32", 1.0),
        harness.Result("b", "other", "fast", "float32", 1.0),
    ]
    harness.with_ratios(rows, "base")
    assert rows[1].ratio == 2.0 and rows[1].baseline == "base"
    assert rows[2].ratio is None


def test_kernel_bench_helpers(capsys):
    from pallas_kernels import _bench

    def fn(x, w):
        return jnp.sin(x) * w

    x, w, g = jnp.arange(3.0), jnp.full(3, 2.0), jnp.array([1.0, -1.0, 0.5])
    (m0, f0, a0), (m1, f1, a1) = _bench.fwd_and_fwd_bwd(fn, (x, w), g)
    assert (m0, m1) == ("fwd", "fwd+bwd") and len(a1) == 3
    assert jnp.allclose(f0(*a0), fn(x, w))
    want = jax.vjp(fn, x, w)[1](g)
    assert all(jnp.allclose(a, b) for a, b in zip(f1(*a1), want, strict=True))
    t = _bench.try_timeit("b", "ok", f0, *a0, repeats=2)
    assert t.repeats == 2
    r = _bench.row("b", "case", "impl", t, dtype="float32", extra={"GB/s": 1.0})
    assert (r.bench, r.case, r.impl, r.dtype, r.extra) == ("b", "case", "impl", "float32",
                                                          {"GB/s": 1.0})  # fmt: skip
    assert r.median_ms == 1e3 * t.median_s and r.compile_s == t.compile_s
    assert _bench.try_timeit("b", "bad case", lambda: 1 / 0) is None
    assert "[b] bad case: ZeroDivisionError" in capsys.readouterr().out


def test_table_formats_rows():
    row = harness.Result("b", "c", "fast", "float32", 1.5, 0.1, "base", 2.0, {"GB/s": 3.0}).asdict()
    table = bench_cli.format_table([row])
    assert "fast" in table and "GB/s=3" in table and "2" in table


def test_bench_roofline_quick_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["bench", "roofline", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["jax"] == jax.__version__
    units = {k for r in data["results"] for k in r["extra"]}
    assert units == {"TFLOP/s", "GB/s"}
    assert "roofline" in capsys.readouterr().out


def test_bench_unknown_name_errors(capsys):
    try:
        cli.main(["bench", "nope"])
    except SystemExit as e:
        assert e.code == 2
    assert "known" in capsys.readouterr().err


def test_harness_lives_below_jaxar_bench(capsys):
    """pallas_kernels._bench is the harness (jaxar.bench re-exports it); a kernel's bench
    script runs through it alone (on CPU: skipped, interpret mode is never timed)."""
    from pallas_kernels import _bench
    from pallas_kernels.linear_scan import bench

    assert harness.Result is _bench.Result and harness.timeit is _bench.timeit
    assert _bench.main(bench.BENCH, bench.run, ["--quick"]) == 0
    assert "never timed" in capsys.readouterr().out
