"""Pure functions on arrays: the reference mathematics of every jaxar block.

No Flax, no state; random keys are passed in. Every fast path (chunked forms, Pallas
kernels) is tested against a function here. Names resolve lazily from the table
below so that ``import jaxar.ops`` costs nothing until a function is used.
"""

import importlib

# public name -> submodule of jaxar.ops that defines it
_EXPORTS = {
    # linear recurrences (REFERENCES.md s.1-3)
    "linear_scan": "scan",
    "gateloop": "gateloop",
    "causal_conv": "ssm",
    "dss_kernel": "ssm",
    "dss_recurrent": "ssm",
    # attention (s.4, s.6)
    "dot_product_attention": "attention",
    "axial_attention": "attention",
    "apply_rope": "attention",
    "block_mask_for": "masks",
    "causal_mask": "masks",
    "local_mask": "masks",
    "chunk_mask": "masks",
    "segment_mask": "masks",
    "block_causal_mask": "masks",
    "block_diffusion_mask": "masks",
    # masked / block diffusion (s.5, s.6)
    "masked_diffusion_loss": "masked_diffusion",
    "mask_schedule": "masked_diffusion",
    "sample_t": "masked_diffusion",
    "add_mask_noise": "masked_diffusion",
    "subs_logits": "masked_diffusion",
    "categorical": "categorical",
    "gumbel_categorical": "categorical",
    # per-token Gaussian diffusion and flow (s.7)
    "diffusion_schedule": "gaussian_diffusion",
    "gaussian_diffusion_loss": "gaussian_diffusion",
    "flow_matching_loss": "gaussian_diffusion",
    "sample_diffusion_noise": "gaussian_diffusion",
    "add_gaussian_noise": "gaussian_diffusion",
    "diffusion_target": "gaussian_diffusion",
    "eps_from_prediction": "gaussian_diffusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'jaxar.ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxar.ops.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
