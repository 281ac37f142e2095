"""jaxar: autoregressive and masked-diffusion sequence models in JAX / Flax NNX.

Layers of the package (dependencies point left):
``ops`` (pure functions, the reference maths) <- ``nn`` (NNX modules) <- ``models``
<- ``sampling`` / ``train``. Heavy outside systems (orbax, grain, tfds, Pallas
kernels) are imported only where they are used, so ``import jaxar`` stays light.
``jaxar.models``, ``jaxar.nn`` and ``jaxar.sampling`` export their public names
(``jaxar.models.LMConfig.preset("tiny")``, ``jaxar.sampling.sample_lm``, ...).
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("ops", "nn", "models", "sampling", "train", "data", "bench", "sharding", "dispatch")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxar.{name}")
    raise AttributeError(f"module 'jaxar' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
