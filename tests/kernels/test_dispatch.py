"""jaxar.dispatch: the typed impl tables and kernels made ready for the platform."""

import typing
from unittest import mock

import jax
import pytest

from jaxar import dispatch
from pallas_kernels.gateloop.ops import gateloop as gateloop_kernel


def test_choices_are_the_literal_types():
    for op, lit in (
        ("linear_scan", dispatch.LinearScanImpl),
        ("gateloop", dispatch.GateLoopImpl),
        ("attention", dispatch.AttentionImpl),
        ("linear_attention", dispatch.LinearAttentionImpl),
        ("delta_rule", dispatch.DeltaRuleImpl),
    ):
        assert ("auto", *dispatch.CHOICES[op]) == typing.get_args(lit)
        assert set(dispatch.AUTO[op].values()) <= set(dispatch.CHOICES[op])


@pytest.mark.parametrize("backend,interpret", [("cpu", True), ("cuda", False), ("tpu", False)])
def test_kernel_binds_interpret_for_the_platform(backend, interpret):
    with mock.patch.object(jax, "default_backend", lambda: backend):
        fn = dispatch.kernel("gateloop")
    assert fn.func is gateloop_kernel and fn.keywords == {"interpret": interpret}


def test_unknown_kernel_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"kernel 'nope' is unknown; accepted: \['delta_rule'"):
        dispatch.kernel("nope")


def test_target_platform_overrides_the_backend():
    with dispatch.target_platform("tpu"):
        assert dispatch.platform() == "tpu"
        assert dispatch.resolve("gateloop", "auto") == dispatch.AUTO["gateloop"]["tpu"]
        assert dispatch.kernel("gateloop").keywords == {"interpret": False}
    assert dispatch.platform() == jax.default_backend()
    with pytest.raises(ValueError, match=r"target platform 'tpu7' is unknown; accepted: \["):
        with dispatch.target_platform("tpu7"):
            pass
