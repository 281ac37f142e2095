"""jaxar.nn: thin Flax NNX modules over :mod:`jaxar.ops` (layers, sequence mixers, heads).

A sequence mixer is a frozen config with ``make(d_model, *, rngs, dtype, param_dtype)``
returning a module that follows :class:`Mixer`. ``MIXERS`` names every mixer config;
``jaxar.models.LMConfig(mixer=name)`` builds its layers through it, so a new mixer is one
entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from flax import nnx

from jaxar.nn.attention import AttentionConfig, AttentionImpl, MultiHeadAttention
from jaxar.nn.axial import AxialAttention
from jaxar.nn.diffusion_head import DiffusionHead, DiffusionHeadConfig, timestep_embedding
from jaxar.nn.gateloop import GateLoop, GateLoopConfig
from jaxar.nn.gss import GSS, GSSConfig
from jaxar.nn.layers import MLP, Embed, RMSNorm
from jaxar.nn.linear_attention import (
    GLA,
    GatedDeltaNet,
    GatedDeltaNetConfig,
    GLAConfig,
    Mamba2,
    Mamba2Config,
    RetNet,
    RetNetConfig,
)

__all__ = (
    "MIXERS",
    "Mixer",
    "MixerConfig",
    "AttentionImpl",
    "AttentionConfig",
    "MultiHeadAttention",
    "GateLoopConfig",
    "GateLoop",
    "GSSConfig",
    "GSS",
    "GLAConfig",
    "GLA",
    "RetNetConfig",
    "RetNet",
    "Mamba2Config",
    "Mamba2",
    "GatedDeltaNetConfig",
    "GatedDeltaNet",
    "AxialAttention",
    "DiffusionHeadConfig",
    "DiffusionHead",
    "timestep_embedding",
    "Embed",
    "MLP",
    "RMSNorm",
)


class Mixer(Protocol):
    """A sequence mixer: ``(B, L, D) -> (B, L, D)``, plus incremental decoding.

    ``decode`` appends ``T`` inputs after the ``state`` (from ``init_state``) and returns
    the outputs and the new state; ``decode`` over a sequence in pieces equals
    ``__call__`` on the whole sequence (tested per mixer). With ``return_steps`` it also
    returns the state after each of the ``T`` inputs (a pytree like ``state`` with a
    leading ``T`` axis; ``None`` for attention caches, rolled back by their index), which
    speculative decoding uses to roll a recurrent mixer back without recomputing.
    """

    def __call__(self, x_BxLxD, *, segment_ids=None, positions=None, mask=None) -> Any: ...

    def init_state(self, batch_size: int, max_len: int, dtype: Any) -> Any: ...

    def decode(
        self,
        x_BxTxD,
        state,
        *,
        positions=None,
        bidirectional: bool = False,
        return_steps: bool = False,
    ) -> tuple[Any, ...]: ...


class MixerConfig(Protocol):
    """A frozen mixer configuration that builds its :class:`Mixer`."""

    def make(self, d_model: int, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any) -> Mixer: ...


# mixer name -> config class (``LMConfig(mixer=name, mixer_options=...)``)
MIXERS: Mapping[str, type] = {
    "attention": AttentionConfig,
    "gateloop": GateLoopConfig,
    "gss": GSSConfig,
    "gla": GLAConfig,
    "retnet": RetNetConfig,
    "mamba2": Mamba2Config,
    "gated_deltanet": GatedDeltaNetConfig,
}
