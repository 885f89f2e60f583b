"""Where codes come from: an MxD's expert coefficients or a transcoder's latents
(:class:`LayerCodes`), or the base MLP's neurons (:class:`NeuronCodes`), the reference a
replacement layer's codes should match or beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.hooks import layer_of, mlp_post_hook
from mxd_saelens.saes.common import forget_encoding


class CodeSource(Protocol):
    """Anything that turns token sequences into per-token codes."""

    name: str
    n_codes: int

    def codes(self, model: HookedRootModule, tokens: Tensor) -> Tensor:
        """``[batch, pos]`` token ids to ``[batch, pos, n_codes]`` codes."""
        ...


@torch.no_grad()
def hook_activations(model: HookedRootModule, hook_name: str, tokens: Tensor) -> Tensor:
    """The activations at one hook, running the model only as far as that hook's block."""
    block = layer_of(hook_name)
    kwargs: dict[str, Any] = {"names_filter": [hook_name]}
    if block is not None:
        kwargs["stop_at_layer"] = block + 1
    _, cache = model.run_with_cache(tokens, **kwargs)
    return cache[hook_name]


@dataclass
class LayerCodes:
    """A trained layer's codes: an MxD's expert coefficients, a transcoder's latents."""

    layer: nn.Module
    name: str = ""
    hook_name: str = ""

    def __post_init__(self) -> None:
        cfg = getattr(self.layer, "cfg", None)
        self.hook_name = self.hook_name or getattr(getattr(cfg, "metadata", None), "hook_name", "")
        if not self.hook_name:
            raise ValueError(
                "the layer's config does not name its input hook (cfg.metadata.hook_name); "
                "pass LayerCodes(layer, hook_name=...)."
            )
        if not hasattr(self.layer, "encode"):
            raise TypeError(f"{type(self.layer).__name__} has no encode(): it has no codes.")
        self.name = self.name or (cfg.architecture() if cfg is not None else "layer")

    @property
    def n_codes(self) -> int:
        return int(self.layer.cfg.d_sae)  # type: ignore[union-attr]

    @torch.no_grad()
    def codes(self, model: HookedRootModule, tokens: Tensor) -> Tensor:
        acts = hook_activations(model, self.hook_name, tokens)
        codes = self.layer.encode(acts).float()  # type: ignore[operator]
        forget_encoding(self.layer)  # else each probed layer keeps its last batch's codes
        return codes


@dataclass
class NeuronCodes:
    """The base MLP's own neurons (``blocks.L.mlp.hook_post``), the probing reference."""

    layer: int
    n_codes: int
    name: str = "base MLP neurons"

    @classmethod
    def of(cls, model: HookedRootModule, layer: int) -> NeuronCodes:
        hook = mlp_post_hook(layer)
        if hook not in model.hook_dict:
            raise ValueError(f"the model has no hook {hook!r}: is layer {layer} an MLP block?")
        return cls(layer=layer, n_codes=int(model.cfg.d_mlp))  # type: ignore[attr-defined]

    @property
    def hook_name(self) -> str:
        return mlp_post_hook(self.layer)

    @torch.no_grad()
    def codes(self, model: HookedRootModule, tokens: Tensor) -> Tensor:
        return hook_activations(model, self.hook_name, tokens).float()
