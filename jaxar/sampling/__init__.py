"""jaxar.sampling: decoding loops above :mod:`jaxar.models`.

``sample_<family>(model, key, num, **options)`` draws ``num`` samples from a model of that
family, checking its options once (:class:`Sampler`); the loops they drive are in the
modules (``generate``, ``masked_diffusion``, ``block_diffusion``, ``axial``, ``mar``,
``diffusion_head``). Faster exact autoregressive decoding: ``speculative.generate`` (a
draft LM or the target's multi-token heads propose, the target verifies; same law as
``generate``), ``tree.generate`` (greedy; a token tree of the heads' or a draft LM's
candidates verified in one call), ``jacobi.generate`` (fixed-point greedy) and :func:`beam_search`. Discrete image
tokens: ``token_ar`` (raster order) and ``var`` (next-scale), with classifier-free guidance
on logits (:func:`cfg`, :class:`Guided` for any LM sampler).
"""

from jaxar.sampling import guidance, jacobi, speculative, token_ar, tree, var
from jaxar.sampling.beam import beam_search
from jaxar.sampling.block_diffusion import BlockSamples, sample_blocks
from jaxar.sampling.generate import generate
from jaxar.sampling.guidance import Guided, cfg
from jaxar.sampling.masked_diffusion import Samples
from jaxar.sampling.samplers import (
    Sampler,
    sample_axial,
    sample_bd3,
    sample_lm,
    sample_mar,
    sample_mdlm,
    sample_token_ar,
    sample_var,
)

__all__ = (
    "Sampler",
    "sample_lm",
    "sample_mdlm",
    "sample_bd3",
    "sample_axial",
    "sample_mar",
    "sample_token_ar",
    "sample_var",
    "cfg",
    "Guided",
    "guidance",
    "token_ar",
    "var",
    "generate",
    "Samples",
    "BlockSamples",
    "sample_blocks",
    "speculative",
    "jacobi",
    "tree",
    "beam_search",
)
