"""Test helpers shared by jaxar's tests, kernels' tests and notebooks.

The one tolerance table lives here. A tolerance is never loosened to make a test pass
without a commit message saying why.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

# dtype name -> kind -> (rtol, atol). "fwd": forward values; "grad": gradients (one more
# reduction, so looser); "long": long reductions / sequences (L >= 4096).
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "float64": {"fwd": (1e-10, 1e-10), "grad": (1e-9, 1e-9), "long": (1e-8, 1e-8)},
    "float32": {"fwd": (1e-5, 1e-5), "grad": (1e-4, 1e-4), "long": (1e-3, 1e-3)},
    "bfloat16": {"fwd": (2e-2, 2e-2), "grad": (5e-2, 5e-2), "long": (1e-1, 1e-1)},
    "float16": {"fwd": (2e-3, 2e-3), "grad": (1e-2, 1e-2), "long": (3e-2, 3e-2)},
}
_COMPLEX_TO_REAL = {"complex128": "float64", "complex64": "float32"}


def tolerance(dtype, kind: str = "fwd") -> dict[str, float]:
    """``dict(rtol=..., atol=...)`` for ``dtype`` (complex maps to its real part)."""
    name = jnp.dtype(dtype).name
    name = _COMPLEX_TO_REAL.get(name, name)
    if name not in TOLERANCES:
        raise ValueError(f"dtype={name!r} has no tolerance; known: {sorted(TOLERANCES)}")
    if kind not in TOLERANCES[name]:
        raise ValueError(f"kind={kind!r} is not in the table; known: {sorted(TOLERANCES[name])}")
    rtol, atol = TOLERANCES[name][kind]
    return {"rtol": rtol, "atol": atol}


def assert_allclose(actual, desired, *, dtype=None, kind: str = "fwd", err_msg: str = ""):
    """Asserts ``actual`` ~= ``desired`` within the table's tolerance for ``dtype``.

    ``dtype`` defaults to the dtype of ``actual`` (the computation under test). Pytrees
    are compared leaf by leaf. ``desired`` is usually a float64 reference.
    """
    a_leaves, a_tree = jax.tree.flatten(actual)
    d_leaves, d_tree = jax.tree.flatten(desired)
    if a_tree != d_tree:
        raise AssertionError(f"tree structures differ: {a_tree} vs {d_tree}")
    for a, d in zip(a_leaves, d_leaves, strict=True):
        tol = tolerance(dtype if dtype is not None else jnp.asarray(a).dtype, kind)
        a = np.asarray(a)
        a = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
        d = np.asarray(d).astype(a.dtype)
        np.testing.assert_allclose(a, d, err_msg=err_msg, **tol)


@contextlib.contextmanager
def enable_x64():
    """Enables float64 inside the block only (reference computations)."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is not None:
        with ctx(True):
            yield
        return
    from jax.experimental import enable_x64 as legacy  # older jax

    with legacy():
        yield


def to_x64(tree):
    """Casts float/complex leaves to float64/complex128 numpy arrays (ints untouched)."""

    def cast(x):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.complexfloating):
            return x.astype(np.complex128)
        if np.issubdtype(x.dtype, np.floating) or x.dtype == jnp.bfloat16:
            return x.astype(np.float64)
        return x

    return jax.tree.map(cast, tree)


def reference_x64(fn, *args, **kwargs):
    """Runs ``fn`` on float64 copies of ``args`` with x64 enabled; returns numpy arrays.

    The reference side of every equivalence test: ``fn`` is usually the plain formula
    (or the sequential implementation) and the result is compared with
    ``assert_allclose``.
    """
    with enable_x64():
        out = fn(*to_x64(args), **to_x64(kwargs))
        return jax.tree.map(np.asarray, out)
