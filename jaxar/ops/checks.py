"""Argument checks shared by every layer (ops, nn, models, sampling, train, pallas_kernels).

One wording for one check, so a bad argument reads the same wherever it is refused.
"""

from __future__ import annotations

import numpy as np

__all__ = ["positive_int"]


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int when it is an integer ``>= minimum``.

    Python and NumPy integers are accepted; bools are refused (``True`` is no count).

    Raises:
      ValueError: one line, ``"<name>=<value!r> is not supported; accepted: an int >=
        <minimum>"``.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        ok = False
    else:
        ok = value >= minimum
    if not ok:
        raise ValueError(f"{name}={value!r} is not supported; accepted: an int >= {minimum}")
    return int(value)
