"""jaxar.models: assembled models, each family with a frozen config and one preset table.

Every family module (``lm``, ``mdlm``, ``bd3``, ``axial``, ``mar``, ``vq``, ``token_ar``,
``var``) has ``Config.preset(name,
**overrides)``, the model ``Model(config, rngs=...)`` and a pure ``loss(model, batch, key)
-> (loss, metrics)``; the samplers live in :mod:`jaxar.sampling`.
"""

from jaxar.models import axial, bd3, lm, mar, mdlm, token_ar, var, vq
from jaxar.models.axial import AxialTransformer, AxialTransformerConfig
from jaxar.models.bd3 import BD3, BD3Config
from jaxar.models.lm import LM, Backbone, LMConfig
from jaxar.models.mar import MAR, MARConfig
from jaxar.models.mdlm import MDLM, MDLMConfig
from jaxar.models.token_ar import TokenAR, TokenARConfig
from jaxar.models.var import VAR, VARConfig
from jaxar.models.vq import VQ, VQConfig

__all__ = (
    "LM",
    "LMConfig",
    "Backbone",
    "MDLM",
    "MDLMConfig",
    "BD3",
    "BD3Config",
    "AxialTransformer",
    "AxialTransformerConfig",
    "MAR",
    "MARConfig",
    "lm",
    "mdlm",
    "bd3",
    "axial",
    "mar",
    "VQ",
    "VQConfig",
    "TokenAR",
    "TokenARConfig",
    "VAR",
    "VARConfig",
    "vq",
    "token_ar",
    "var",
)
