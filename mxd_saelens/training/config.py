"""A flat, SAELens-5-style constructor for the runner config.

``runner_config(architecture="mxd", model_name="gpt2", hook_name=..., k=32, lr=1e-4, ...)``
sorts each keyword into the layer's config, the runner's config or its logging config and
returns the same ``LanguageModelSAERunnerConfig`` one would build by hand. Unknown fields are
rejected by name, with the closest valid names.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import fields
from typing import Any

from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

from mxd_saelens.data.hooks import mlp_in_hook, mlp_out_hook
from mxd_saelens.saes.traits import MLP_SHAPE_FIELDS, reads_mlp_shape
from mxd_saelens.training.config_from_model import check_paired, mlp_fields_of, model_config

# fields that both the runner and the layer have: the value goes to both
_SHARED = {"dtype", "device"}
_EXTRA = {"layer", "hook_name_out", "check_mlp_hooks", "match_transcoder_width"}


def training_config_class(architecture: str) -> type:
    check_paired(architecture)
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        raise ValueError(
            f"unknown architecture {architecture!r}; registered: "
            f"{', '.join(sorted(SAE_TRAINING_CLASS_REGISTRY))}."
        )
    return SAE_TRAINING_CLASS_REGISTRY[architecture][1]


def fields_from_model(
    architecture: str, layer: int, width: int | None, given: dict[str, Any]
) -> dict[str, Any]:
    """What ``layer=`` fills in: read from the model's config unless every such field is given
    (so a fully specified config never touches the hub)."""
    shape = set(MLP_SHAPE_FIELDS) if reads_mlp_shape(architecture) else set()
    block_hooks = {
        "hook_name": mlp_in_hook(layer),
        "hook_name_out": mlp_out_hook(layer),
    }
    if width is None and {"d_in", *shape} <= set(given):
        return block_hooks
    if "model_name" not in given:
        raise ValueError("layer= reads the MLP's shape from the model: give model_name too.")
    try:
        model_cfg = model_config(given["model_name"])
    except ValueError as error:
        if width is not None:
            raise
        # a model this package cannot read the config of (a custom one, or the hub offline):
        # the hooks follow from the block, the shape from the fields given or their defaults
        warnings.warn(f"{error} Using the given fields.", stacklevel=3)
        return block_hooks
    fields = mlp_fields_of(model_cfg, given["model_name"], architecture, layer, width)
    for key in ("d_in", "d_out"):
        if key in given and str(given[key]) != str(fields[key]):  # flags arrive as text
            raise ValueError(
                f"{key}={given[key]} but block {layer} of {given['model_name']} has width "
                f"{fields[key]}; leave {key} out to take it from the model."
            )
    return fields


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls) if f.init}


def _refuse_unknown(architecture: str, values: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hints.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(f"unknown field(s) for architecture {architecture!r}: {'; '.join(hints)}.")


def runner_config(architecture: str, **values: Any) -> LanguageModelSAERunnerConfig[Any]:
    """Build a ``LanguageModelSAERunnerConfig`` from one flat set of keywords.

    ``layer=L`` fills what is not given from the model's config (not its weights): both hooks
    (``blocks.L.ln2.hook_normalized`` → ``blocks.L.hook_mlp_out``), ``d_in``, ``d_out`` and, for
    an MxD, ``d_hidden``, ``activation`` and ``glu``; ``match_transcoder_width=W`` also sets the
    size (``n_experts``, or a transcoder's ``d_sae``) at a width-W TopK transcoder's parameter
    count. ``hook_name_out`` records the target hook in the layer's metadata;
    ``check_mlp_hooks=False`` lets the runner train on a pair of hooks that the model's own MLP
    does not connect (recorded in the metadata too).
    """
    sae_cls = training_config_class(architecture)
    sae_names = _field_names(sae_cls) - {"metadata"}
    runner_names = _field_names(LanguageModelSAERunnerConfig) - {"sae", "logger"}
    logger_names = _field_names(LoggingConfig)
    _refuse_unknown(architecture, values, sae_names | runner_names | logger_names | _EXTRA)
    layer = values.pop("layer", None)
    width = values.pop("match_transcoder_width", None)
    hook_name_out = values.pop("hook_name_out", None)
    check_mlp_hooks = values.pop("check_mlp_hooks", None)
    if width is not None and layer is None:
        raise ValueError("match_transcoder_width needs layer= (the MLP whose shape is matched).")
    if layer is not None:
        from_model = fields_from_model(architecture, layer, width, values)
        hook_name_out = hook_name_out or from_model.pop("hook_name_out")
        for key, value in from_model.items():
            values.setdefault(key, value)

    sae_values = {k: v for k, v in values.items() if k in sae_names}
    runner_values = {
        k: v
        for k, v in values.items()
        if k in runner_names and (k not in sae_names or k in _SHARED)
    }
    logger_values = {
        k: v for k, v in values.items() if k in logger_names and k not in runner_values
    }
    sae_cfg = sae_cls(**sae_values)
    if hook_name_out is not None:
        sae_cfg.metadata.hook_name_out = hook_name_out
    if check_mlp_hooks is not None:
        sae_cfg.metadata.check_mlp_hooks = bool(check_mlp_hooks)
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg, logger=LoggingConfig(**logger_values), **runner_values
    )
