"""jaxar.ops.checks: the one "an int >= 1" argument check."""

import numpy as np
import pytest

from jaxar.ops import positive_int


def test_positive_int_accepts_python_and_numpy_ints():
    assert positive_int("n", 3) == 3
    out = positive_int("n", np.int32(2))
    assert out == 2 and type(out) is int
    assert positive_int("n", 0, minimum=0) == 0


@pytest.mark.parametrize("value", [0, -2, 2.0, True, np.bool_(True), "3", None])
def test_positive_int_refuses_in_one_line(value):
    with pytest.raises(ValueError) as e:
        positive_int("Cfg.width", value)
    assert str(e.value) == f"Cfg.width={value!r} is not supported; accepted: an int >= 1"


def test_positive_int_minimum():
    with pytest.raises(ValueError, match=r"^k=-1 is not supported; accepted: an int >= 0$"):
        positive_int("k", -1, minimum=0)
