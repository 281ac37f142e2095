"""One sampler per model family, each ``sample_<family>(model, key, num, **options)``.

A :class:`Sampler` holds its accepted options with their defaults and checks a call's
options once, before any tracing: an unknown option is an error listing the accepted
ones, and ``method`` must be one of the family's methods. Text samplers return int32
tokens ``(num, length)``; image samplers uint8 images ``(num, H, W, C)``.

============  ==============================================================
sampler       options (defaults in ``sampler.defaults``)
============  ==============================================================
sample_lm     length (counts the prompt), prompt, temperature, top_k, top_p
              (:mod:`.generate`)
sample_mdlm   length, method, num_steps, prompt, temperature, top_p, confidence,
              rank, threshold, remask, eta, t_on, t_off, eos_id, block_length, cache,
              refresh_every, position_skew (None: the model's) (:mod:`.masked_diffusion`)
sample_bd3    length, prompt, eos_id, pad_id, min_entropy, temperature, top_p,
              use_cache (:mod:`.block_diffusion`)
sample_axial  method (:mod:`.axial`)
sample_mar    labels, num_iter, cfg_scale, cfg_schedule, temperature, num_steps,
              method, use_cache (:mod:`.mar`)
sample_token_ar  labels, cfg_scale, cfg_schedule, temperature, top_k, top_p,
              use_cache (:mod:`.token_ar`)
sample_var    labels, cfg_scale, cfg_schedule, temperature, top_k, top_p, use_cache
              (:mod:`.var`)
============  ==============================================================
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxar.models import mar as mar_model
from jaxar.ops.categorical import check_draws
from jaxar.ops.checks import positive_int
from jaxar.sampling import axial as axial_sampling
from jaxar.sampling import block_diffusion, masked_diffusion
from jaxar.sampling import mar as mar_sampling
from jaxar.sampling import token_ar as token_ar_sampling
from jaxar.sampling import var as var_sampling
from jaxar.sampling.generate import generate

__all__ = [
    "Sampler",
    "DEFAULT_PROMPT_ID",
    "sample_lm",
    "sample_mdlm",
    "sample_bd3",
    "sample_axial",
    "sample_mar",
    "sample_token_ar",
    "sample_var",
]

# a text sampler's default prompt: one newline byte per row (byte-level vocabularies)
DEFAULT_PROMPT_ID = ord("\n")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A family's sampler: ``sampler(model, key, num, **options)``.

    Attributes:
      name: the sampler's name, used in error messages.
      fn: ``fn(model, key, num, **all_options)``.
      defaults: every accepted option and its default.
      methods: the accepted values of the ``method`` option (empty: not checked here).
    """

    name: str
    fn: Callable[..., Any]
    defaults: Mapping[str, Any]
    methods: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))

    @property
    def options(self) -> tuple[str, ...]:
        """The accepted option names."""
        return tuple(self.defaults)

    def check(self, options: Mapping[str, Any]) -> None:
        """ValueError on an unknown option or method, listing the accepted ones."""
        bad = sorted(set(options) - set(self.defaults))
        if bad:
            raise ValueError(
                f"{self.name} does not take option(s) {bad}; accepted: {sorted(self.defaults)}"
            )
        if self.methods and options.get("method") is not None:
            if options["method"] not in self.methods:
                raise ValueError(
                    f"{self.name} method={options['method']!r} is not supported; "
                    f"accepted: {self.methods}"
                )

    def __call__(self, model, key, num: int, **options):
        positive_int(f"{self.name}: num", num)
        self.check(options)
        return self.fn(model, key, num, **{**self.defaults, **options})


def _prompt(prompt, num: int):
    """int32 (num, P): ``prompt`` (P,), (1, P) or (num, P); None -> one newline per row."""
    if prompt is None:
        return jnp.full((num, 1), DEFAULT_PROMPT_ID, jnp.int32)
    prompt = jnp.asarray(prompt)
    if prompt.ndim == 1:
        prompt = prompt[None]
    if prompt.ndim != 2 or prompt.shape[0] not in (1, num) or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (P,), (1, P) or ({num}, P); got shape {prompt.shape}")
    return jnp.broadcast_to(prompt, (num, prompt.shape[1])).astype(jnp.int32)


def _check_length(length, prompt_len: int = 0):
    positive_int("length", length)
    if length <= prompt_len:
        raise ValueError(
            f"length={length} must exceed the prompt's {prompt_len} tokens (length counts "
            "the prompt)"
        )


def _lm(model, key, num, *, length, prompt, temperature, top_k, top_p):
    prompt = _prompt(prompt, num)
    _check_length(length, prompt.shape[1])
    return generate(
        key,
        model,
        prompt,
        max_new_tokens=length - prompt.shape[1],
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def _mdlm_jit(graphdef, state, key, prompt, options):
    model = nnx.merge(graphdef, state)
    return masked_diffusion.sample(
        key, model, prompt=prompt, mask_id=model.config.mask_id, **dict(options)
    ).tokens


def _mdlm(
    model,
    key,
    num,
    *,
    length,
    method,
    num_steps,
    prompt,
    temperature,
    top_p,
    confidence,
    rank,
    threshold,
    position_skew,
    **mdm,
):
    _check_length(length)
    if position_skew is None:
        position_skew = getattr(model.config, "position_skew", 0.0)
    options = dict(
        batch_size=num,
        length=length,
        method=method,
        num_steps=num_steps,
        temperature=float(temperature),
        top_p=top_p,
        confidence=confidence,
        rank=rank,
        threshold=threshold,
        position_skew=position_skew,
        **mdm,
    )
    graphdef, state = nnx.split(model)
    prompt = None if prompt is None else jnp.asarray(prompt, jnp.int32)
    tokens = _mdlm_jit(graphdef, state, key, prompt, tuple(sorted(options.items())))
    return check_draws(tokens, "sample_mdlm")


@functools.partial(jax.jit, static_argnames=("graphdef", "options"))
def _bd3_jit(graphdef, state, key, prompt, options):
    model = nnx.merge(graphdef, state)
    cfg = model.config
    return block_diffusion.sample_blocks(
        key,
        model,
        prompt=prompt,
        block_size=cfg.block_size,
        mask_id=cfg.mask_id,
        vocab_size=cfg.data_vocab_size,
        **dict(options),
    ).tokens


def _bd3(model, key, num, *, length, prompt, temperature, top_p, **stop):
    """Whole blocks up to ``length`` rounded up to a block, cut back to ``length``."""
    _check_length(length)
    block = model.config.block_size
    options = dict(
        batch_size=num,
        max_len=-(-length // block) * block,
        temperature=float(temperature),
        top_p=top_p,
        **stop,
    )
    graphdef, state = nnx.split(model)
    prompt = None if prompt is None else jnp.asarray(prompt, jnp.int32)
    tokens = _bd3_jit(graphdef, state, key, prompt, tuple(sorted(options.items())))
    return check_draws(tokens, "sample_bd3")[:, :length]


def _mar(model, key, num, **options):
    tokens = mar_sampling.sample_tokens(model, key, num, **options)
    return mar_model.tokens_to_images(tokens, model.config)


_TEXT = dict(length=256, prompt=None, temperature=1.0)

sample_lm = Sampler("sample_lm", _lm, dict(_TEXT, top_k=None, top_p=None))
sample_mdlm = Sampler(
    "sample_mdlm",
    _mdlm,
    dict(
        _TEXT,
        method="first_hitting",
        num_steps=None,
        top_p=None,
        confidence="prob",
        rank="before",
        threshold=None,
        remask=None,
        eta=None,
        t_on=0.55,
        t_off=0.05,
        eos_id=None,
        block_length=None,
        cache=None,
        refresh_every=None,
        position_skew=None,
    ),
    methods=masked_diffusion.METHODS,
)
sample_bd3 = Sampler(
    "sample_bd3",
    _bd3,
    dict(_TEXT, top_p=None, eos_id=None, pad_id=None, min_entropy=None, use_cache=True),
)
sample_axial = Sampler(
    "sample_axial",
    axial_sampling.sample,
    dict(method="semi_parallel"),
    methods=axial_sampling.METHODS,
)
sample_mar = Sampler(
    "sample_mar",
    _mar,
    dict(
        labels=None,
        num_iter=64,
        cfg_scale=None,
        cfg_schedule="linear",
        temperature=1.0,
        num_steps=100,
        method=None,
        use_cache=True,
    ),
)


def _token_ar(model, key, num, **options):
    return model.decode_codes(token_ar_sampling.sample_codes(model, key, num, **options))


_TOKENS = dict(labels=None, cfg_scale=None, temperature=1.0, top_k=None, top_p=None, use_cache=True)
sample_token_ar = Sampler("sample_token_ar", _token_ar, dict(_TOKENS, cfg_schedule="constant"))
sample_var = Sampler("sample_var", var_sampling.sample, dict(_TOKENS, cfg_schedule="linear"))
