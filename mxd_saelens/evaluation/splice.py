"""Replace an MLP's output by a trained layer's output during a TransformerLens forward.

``with splice(model, layer): model(tokens)`` runs the model with block L's ``hook_mlp_out``
replaced by ``layer(mlp_in)``, where ``mlp_in`` is captured at the layer's input hook in the same
forward. Works for every layer whose config names its hooks (``cfg.metadata.hook_name`` and
``hook_name_out``), which is how this package and SAELens save transcoders; several layers
splice at once. With ``use_error_term=True`` the model's output stays exact (the layer's
error is added back) while the layer's codes, and edits to them, flow through its hook points.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import SAE
from torch import nn
from transformer_lens.hook_points import HookedRootModule, HookPoint

from mxd_saelens.data.hooks import MLPHooks, resolve_mlp_hooks
from mxd_saelens.sae_lens_internals import sae_hooks_disabled


@dataclass
class SplicedLayer:
    """One replacement: the layer and the hooks it reads from and writes to."""

    layer: nn.Module
    hooks: MLPHooks

    def __post_init__(self) -> None:
        # a layer trained on another model or block: refuse before any forward
        cfg = getattr(self.layer, "cfg", None)
        d_in = getattr(cfg, "d_in", None)
        d_out = getattr(cfg, "d_out", d_in)
        if d_in is None:
            return
        if (d_in, d_out) != (self.hooks.d_in, self.hooks.d_out):
            raise ValueError(
                f"the layer maps width {d_in} → {d_out}, but {self.hooks.hook_in!r} → "
                f"{self.hooks.hook_out!r} of this model is {self.hooks.d_in} → "
                f"{self.hooks.d_out}: the layer was trained on another model."
            )


def hooks_of(model: HookedRootModule, layer: nn.Module) -> MLPHooks:
    """The input and output hooks a saved layer was trained on."""
    metadata = getattr(getattr(layer, "cfg", None), "metadata", None)
    hook_in = getattr(metadata, "hook_name", None)
    hook_out = getattr(metadata, "hook_name_out", None)
    if not hook_in:
        raise ValueError(
            "the layer's config does not say which hook it reads (cfg.metadata.hook_name); "
            "pass SplicedLayer(layer, resolve_mlp_hooks(model, layer=L)) instead."
        )
    return resolve_mlp_hooks(model, hook_in=hook_in, hook_out=hook_out)


def _as_spliced(model: HookedRootModule, layers: Any) -> list[SplicedLayer]:
    if isinstance(layers, SplicedLayer):
        return [layers]
    if isinstance(layers, nn.Module):
        return [SplicedLayer(layers, hooks_of(model, layers))]
    if isinstance(layers, dict):
        return [
            SplicedLayer(layer, resolve_mlp_hooks(model, layer=int(index)))
            for index, layer in layers.items()
        ]
    return [item for entry in layers for item in _as_spliced(model, entry)]


def run_layer(layer: nn.Module, mlp_in: torch.Tensor) -> torch.Tensor:
    """The layer's output on the MLP's input, in the model's dtype."""
    return layer(mlp_in).to(mlp_in.dtype)


@torch.no_grad()
def _clean_output(layer: nn.Module, mlp_in: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, SAE):
        with sae_hooks_disabled(layer):
            return run_layer(layer, mlp_in)
    return run_layer(layer, mlp_in)


@contextmanager
def splice(
    model: HookedRootModule,
    layers: nn.Module | SplicedLayer | dict[int, nn.Module] | Sequence[Any],
    use_error_term: bool = False,
) -> Iterator[list[SplicedLayer]]:
    """Replace the MLP output of each given layer's block by the layer's output.

    The hooks are TransformerLens context hooks (``model.hooks``): leaving the block removes
    exactly them, and a ``model.reset_hooks()`` inside it removes them early without error.
    """
    spliced = _as_spliced(model, layers)
    captured: dict[int, torch.Tensor] = {}
    fwd_hooks: list[tuple[str, Any]] = []

    for index, item in enumerate(spliced):

        def capture(acts: torch.Tensor, hook: HookPoint, index: int = index) -> None:
            captured[index] = acts

        def replace(
            acts: torch.Tensor, hook: HookPoint, index: int = index, item: SplicedLayer = item
        ) -> torch.Tensor:
            mlp_in = captured.pop(index)
            out = run_layer(item.layer, mlp_in)
            if use_error_term:
                out = out + (acts - _clean_output(item.layer, mlp_in))
            return out

        fwd_hooks += [(item.hooks.hook_in, capture), (item.hooks.hook_out, replace)]
    try:
        with model.hooks(fwd_hooks=fwd_hooks):
            yield spliced
    finally:
        captured.clear()


def spliced_forward(
    model: HookedRootModule,
    layers: Any,
    tokens: torch.Tensor,
    use_error_term: bool = False,
    **forward_kwargs: Any,
) -> Any:
    """``model(tokens, **forward_kwargs)`` with the layers spliced in."""
    with splice(model, layers, use_error_term=use_error_term):
        return model(tokens, **forward_kwargs)
