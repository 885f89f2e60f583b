"""An MLP replacement's config fields, read from a model's config and a block number.

``mlp_fields("gpt2", "mxd", layer=8, match_transcoder_width=24576)`` gives both hooks, ``d_in``,
``d_out``, ``d_hidden``, ``activation``, ``glu`` and the parameter-matched ``n_experts`` without
loading the model's weights: a bundled model's config comes from the package, a hub model's
from TransformerLens (which may fetch the small config file from the hub).
"""

from __future__ import annotations

import difflib
from typing import Any

from mxd_saelens.data.hooks import mlp_in_hook, mlp_out_hook, mlp_shape_of
from mxd_saelens.saes.params import matched_size
from mxd_saelens.saes.traits import PAIRED_ARCHITECTURES, reads_mlp_shape


def check_paired(architecture: str) -> str:
    """``architecture``, if it is one that replaces an MLP; an unknown name is told so, with
    the closest names."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    if architecture not in PAIRED_ARCHITECTURES and architecture not in SAE_TRAINING_CLASS_REGISTRY:
        close = difflib.get_close_matches(architecture, PAIRED_ARCHITECTURES, n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown architecture {architecture!r}{hint}; the architectures that replace an "
            f"MLP are {', '.join(PAIRED_ARCHITECTURES)}."
        )
    if architecture not in PAIRED_ARCHITECTURES:
        raise ValueError(
            f"architecture {architecture!r} does not replace an MLP (it reconstructs its own "
            f"input); choose one of {', '.join(PAIRED_ARCHITECTURES)}."
        )
    return architecture


def model_config(model_name: str) -> Any:
    """The ``HookedTransformerConfig`` of a bundled or TransformerLens model, weights unread."""
    from mxd_saelens import zoo

    if model_name in zoo.list_models():
        return zoo.model_config(model_name)
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    try:
        return get_pretrained_model_config(model_name)
    except Exception as error:  # unknown name, no network, ...: say what to do instead
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ValueError(
            f"cannot read the config of model {model_name!r} ({first_line[:200]}); give the "
            "layer's fields yourself (hook_name, d_in, and for an MxD d_hidden, activation, glu)."
        ) from None


def mlp_fields(
    model_name: str,
    architecture: str,
    layer: int,
    match_transcoder_width: int | None = None,
) -> dict[str, Any]:
    """The fields of a layer replacing block ``layer``'s MLP of ``model_name``."""
    cfg = model_config(model_name)
    return mlp_fields_of(cfg, model_name, architecture, layer, match_transcoder_width)


def mlp_fields_of(
    cfg: Any,
    model_name: str,
    architecture: str,
    layer: int,
    match_transcoder_width: int | None = None,
) -> dict[str, Any]:
    """:func:`mlp_fields` from a ``HookedTransformerConfig`` already at hand."""
    check_paired(architecture)
    if not 0 <= layer < cfg.n_layers:
        raise ValueError(
            f"layer {layer} is out of range: {model_name} has {cfg.n_layers} blocks, numbered "
            f"0 to {cfg.n_layers - 1}."
        )
    normalized = cfg.normalization_type is not None
    d = int(cfg.d_model)
    fields: dict[str, Any] = {
        "hook_name": mlp_in_hook(layer, normalized),
        "hook_name_out": mlp_out_hook(layer),
        "d_in": d,
        "d_out": d,
    }
    shape = mlp_shape_of(cfg)
    if reads_mlp_shape(architecture):
        fields.update(shape)
    if match_transcoder_width is not None:
        if match_transcoder_width <= 0:
            raise ValueError(f"match_transcoder_width={match_transcoder_width} must be positive.")
        fields.update(
            matched_size(
                architecture, d, d, shape["d_hidden"], shape["glu"], match_transcoder_width
            )
        )
    return fields
