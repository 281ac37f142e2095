"""Pure functions on arrays: the reference mathematics of every jaxar block.

No Flax, no state; random keys are passed in. Every fast path (chunked forms, Pallas
kernels) is tested against a function here.

The functions are imported eagerly (the submodules need only jax): several submodules
share their function's name (``gateloop``, ``categorical``), and a lazy lookup would let
``import jaxar.ops.gateloop`` replace the function ``jaxar.ops.gateloop`` by its module.
"""

from jaxar.ops.attention import apply_rope, apply_rope_nd, axial_attention, dot_product_attention
from jaxar.ops.categorical import (
    INVALID,
    categorical,
    check_draws,
    gumbel_categorical,
    valid_logits,
)
from jaxar.ops.checks import positive_int
from jaxar.ops.delta_rule import delta_rule
from jaxar.ops.gateloop import gateloop
from jaxar.ops.gaussian_diffusion import (
    add_gaussian_noise,
    diffusion_schedule,
    diffusion_target,
    eps_from_prediction,
    flow_matching_loss,
    gaussian_diffusion_loss,
    sample_diffusion_noise,
)
from jaxar.ops.linear_attention import linear_attention
from jaxar.ops.masked_diffusion import (
    add_mask_noise,
    mask_schedule,
    masked_diffusion_loss,
    sample_t,
    subs_logits,
)
from jaxar.ops.masks import (
    block_causal_mask,
    block_diffusion_mask,
    block_mask_for,
    causal_mask,
    chunk_mask,
    local_mask,
    scale_causal_mask,
    segment_mask,
    tree_mask,
)
from jaxar.ops.quantize import (
    codebook_usage,
    ema_codebook_update,
    fsq,
    lfq,
    multiscale_residual_dequantize,
    multiscale_residual_quantize,
    residual_quantize,
    vector_quantize,
)
from jaxar.ops.scan import linear_scan
from jaxar.ops.ssm import causal_conv, dss_chunked, dss_kernel, dss_recurrent

__all__ = [
    "positive_int",
    "linear_scan",
    "gateloop",
    "linear_attention",
    "delta_rule",
    "causal_conv",
    "dss_kernel",
    "dss_chunked",
    "dss_recurrent",
    "dot_product_attention",
    "axial_attention",
    "apply_rope",
    "apply_rope_nd",
    "block_mask_for",
    "causal_mask",
    "local_mask",
    "chunk_mask",
    "segment_mask",
    "tree_mask",
    "block_causal_mask",
    "block_diffusion_mask",
    "scale_causal_mask",
    "masked_diffusion_loss",
    "mask_schedule",
    "sample_t",
    "add_mask_noise",
    "subs_logits",
    "categorical",
    "gumbel_categorical",
    "INVALID",
    "valid_logits",
    "check_draws",
    "diffusion_schedule",
    "gaussian_diffusion_loss",
    "flow_matching_loss",
    "sample_diffusion_noise",
    "add_gaussian_noise",
    "diffusion_target",
    "eps_from_prediction",
    "vector_quantize",
    "ema_codebook_update",
    "fsq",
    "lfq",
    "residual_quantize",
    "multiscale_residual_quantize",
    "multiscale_residual_dequantize",
    "codebook_usage",
]
