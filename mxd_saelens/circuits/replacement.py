"""A circuit-tracer replacement model from a TransformerLens model and one trained layer per
block.

circuit-tracer builds its ``ReplacementModel`` from a config, not from a model object, so the
model is rebuilt from its (folded) config and given the same weights: the logits are the
model's own. Its MLPs stay in place: circuit-tracer computes each node's activation from the
MLP's input and accounts for what the layer misses with an error node per block and token.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from circuit_tracer.replacement_model.replacement_model_transformerlens import (
    TransformerLensReplacementModel,
)
from circuit_tracer.transcoder import TranscoderSet
from torch import nn
from transformer_lens import HookedTransformer

from mxd_saelens.circuits.nodes import as_nodes
from mxd_saelens.data.hooks import check_hook_pairs, resolve_mlp_hooks

# where circuit-tracer's wrapped MLPs read and write, relative to a block
NODE_INPUT_HOOK = "mlp.hook_in"
NODE_OUTPUT_HOOK = "mlp.hook_out"


def _check_layers(model: HookedTransformer, layers: Mapping[int, nn.Module]) -> None:
    blocks = sorted(layers)
    if blocks != list(range(model.cfg.n_layers)):
        raise ValueError(
            f"an attribution graph needs one layer for every block 0…{model.cfg.n_layers - 1}; "
            f"got blocks {blocks}."
        )
    widths = {layer.cfg.d_sae for layer in layers.values()}  # type: ignore[union-attr]
    if len(widths) > 1:
        raise ValueError(
            f"circuit-tracer takes layers of one width; these have {sorted(widths)} codes."
        )
    for block, layer in layers.items():
        metadata = getattr(layer.cfg, "metadata", None)
        hook_in = getattr(metadata, "hook_name", None)
        hook_out = getattr(metadata, "hook_name_out", None)
        mlp = resolve_mlp_hooks(model, layer=block)
        expected = (mlp.hook_in, mlp.hook_out)
        if (hook_in, hook_out) != expected:
            raise ValueError(
                f"block {block}'s layer reads {hook_in!r} → {hook_out!r}; graph nodes replace "
                f"the MLP, {expected[0]!r} → {expected[1]!r}."
            )


def replacement_model(
    model: HookedTransformer,
    layers: Mapping[int, nn.Module],
    tokens: torch.Tensor,
    scan: str = "mxd-saelens",
) -> TransformerLensReplacementModel:
    """circuit-tracer's replacement model of ``model`` with ``layers[L]`` as block L's nodes.

    ``tokens`` (``[n_pos]`` or ``[batch, n_pos]``, any text) check that every input hook is the
    MLP's input in this model (a folded model; see :mod:`mxd_saelens.data.hooks`).
    """
    _check_layers(model, layers)
    sample = tokens.reshape(-1, tokens.shape[-1])[:4]
    check_hook_pairs(model, [resolve_mlp_hooks(model, layer=block) for block in layers], sample)
    nodes = TranscoderSet(
        {block: as_nodes(layer, block) for block, layer in layers.items()},
        feature_input_hook=NODE_INPUT_HOOK,
        feature_output_hook=NODE_OUTPUT_HOOK,
        scan=scan,
    )
    replacement = TransformerLensReplacementModel.from_config(
        model.cfg, nodes, tokenizer=model.tokenizer
    )
    replacement.load_state_dict(_as_wrapped(model.state_dict()), strict=False)
    _check_same_weights(model, replacement)
    return replacement.eval()


def _as_wrapped(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights under the names of circuit-tracer's wrapped MLP and unembedding."""
    wrapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "blocks" and parts[2] == "mlp":
            key = ".".join([*parts[:3], "old_mlp", *parts[3:]])
        elif parts[0] == "unembed":
            key = ".".join(["unembed", "old_unembed", *parts[1:]])
        wrapped[key] = value
    return wrapped


def _check_same_weights(model: HookedTransformer, replacement: nn.Module) -> None:
    """Every weight of the model arrived (a renamed key would otherwise be silently skipped)."""
    theirs = replacement.state_dict()
    missing = [key for key in _as_wrapped(model.state_dict()) if key not in theirs]
    if missing:
        raise RuntimeError(
            f"circuit-tracer's replacement model has no place for {missing[:3]}: this "
            "circuit-tracer version wraps the model differently from the one this was built for."
        )
