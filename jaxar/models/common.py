"""What every model family's config shares: one preset table, checked field names.

``Config.preset(name, **overrides)`` is ``Config(**{**PRESETS[name], **overrides})`` with
errors that name the bad preset or field and list the accepted ones (nanodo's
``DoConfig(**c.model, V=vocab)``: unknown keys fail at the config, by name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["field_names", "check_fields", "from_preset"]


def field_names(cls) -> tuple[str, ...]:
    """The init fields of a config dataclass, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def check_fields(cls, kw: Mapping[str, Any], *, where: str | None = None) -> None:
    """ValueError naming every key of ``kw`` that is not a field of ``cls``, and all of
    ``cls``'s fields."""
    accepted = field_names(cls)
    bad = [k for k in kw if k not in accepted]
    if bad:
        raise ValueError(
            f"{where or cls.__name__} has no field(s) {bad}; accepted: {list(accepted)}"
        )


def from_preset(cls, presets: Mapping[str, Mapping[str, Any]], name: str, overrides: Mapping):
    """``cls(**{**presets[name], **overrides})``, with errors naming the preset or field."""
    if name not in presets:
        raise ValueError(
            f"{cls.__name__}.preset name={name!r} is not supported; accepted: {list(presets)}"
        )
    check_fields(cls, overrides)
    return cls(**{**presets[name], **overrides})
