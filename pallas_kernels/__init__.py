"""Pallas kernels for jaxar's hot paths, each beside its reference in ``jaxar.ops``.

One folder per kernel: ``kernel.py`` (pallas_call + BlockSpecs per lowering), ``ops.py``
(public wrapper, custom VJP, ``interpret`` flag), ``README.md`` (maths, shapes, dtypes,
measured speed), ``bench.py``.

The kernels are imported eagerly: each subpackage shares its kernel's name, and a lazy
lookup would let ``import pallas_kernels.gateloop`` replace the function by the package.
``import jaxar`` never imports this package; ``jaxar.dispatch.kernel`` does, on first use.
"""

from pallas_kernels.delta_rule.ops import delta_rule
from pallas_kernels.flash_attention.ops import flash_attention
from pallas_kernels.gateloop.ops import gateloop
from pallas_kernels.linear_scan.ops import linear_scan

__all__ = ["delta_rule", "flash_attention", "gateloop", "linear_scan"]
