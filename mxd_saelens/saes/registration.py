"""Idempotent registration of the architectures in SAELens's two registries."""

from __future__ import annotations

import warnings
from typing import Any

from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

from mxd_saelens.saes.traits import ARCHITECTURES

# SAELens already owns the inference side of "transcoder" and "skip_transcoder", so only their
# training classes are added
INFERENCE_CLASSES: dict[str, tuple[type, type]] = {
    name: row.inference for name, row in ARCHITECTURES.items() if row.inference is not None
}
TRAINING_CLASSES: dict[str, tuple[type, type]] = {
    name: row.training for name, row in ARCHITECTURES.items()
}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _register(registry: dict[str, Any], name: str, classes: tuple[type, type]) -> None:
    existing = registry.get(name)
    if existing is None or _qualname(existing[0]) == _qualname(classes[0]):
        # new, or ours from an earlier import (e.g. after a module reload): (re)bind it
        registry[name] = classes
        return
    warnings.warn(
        f"SAELens already has a {name!r} architecture ({_qualname(existing[0])}); "
        "mxd_saelens leaves it in place.",
        stacklevel=3,
    )


def register_architectures() -> None:
    """Register every architecture; safe to call any number of times."""
    for name, classes in INFERENCE_CLASSES.items():
        _register(SAE_CLASS_REGISTRY, name, classes)
    for name, classes in TRAINING_CLASSES.items():
        _register(SAE_TRAINING_CLASS_REGISTRY, name, classes)
