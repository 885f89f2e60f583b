"""The splice evaluation a run logs at its eval steps (SAELens's own eval would reconstruct the
input hook, which is wrong for a layer that predicts another hook)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.training.activation_scaler import ActivationScaler
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.cache_reader import CachedPairedActivations
from mxd_saelens.data.hooks import MLPHooks
from mxd_saelens.data.paired_store import PairedActivationsStore
from mxd_saelens.evaluation.loss import evaluate_layers
from mxd_saelens.evaluation.metrics import SpliceMetrics, flatten_metrics
from mxd_saelens.evaluation.splice import SplicedLayer


class ScaledLayer(nn.Module):
    """A layer trained on activations scaled by s, seen from raw activations: y = f(s·x)/s."""

    def __init__(self, layer: nn.Module, scale: float):
        super().__init__()
        self.layer = layer
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x * self.scale) / self.scale

    def encode(self, x: Tensor) -> Tensor:
        return self.layer.encode(x * self.scale)  # type: ignore[operator]


@dataclass
class SpliceEvaluator:
    """Every layer spliced into the model on a fixed set of sequences, sharing the clean and
    ablated forwards. :meth:`one` is SAELens's single-layer evaluator (metrics under ``eval/``),
    :meth:`many` its multi-layer one (under ``<name>/eval/``)."""

    model: HookedRootModule
    hooks: Mapping[str, MLPHooks]
    tokens: Tensor  # [n_sequences, context]
    batch_size: int

    @torch.no_grad()
    def evaluate(
        self, saes: Mapping[str, nn.Module], scalers: Mapping[str, ActivationScaler]
    ) -> dict[str, SpliceMetrics]:
        layers = {}
        for name, sae in saes.items():
            scale = scalers[name].scaling_factor if name in scalers else None
            layer = sae if scale is None else ScaledLayer(sae, scale)
            layers[name] = SplicedLayer(layer, self.hooks[name])
        evaluation = evaluate_layers(
            self.model, layers, self.tokens, batch_size=self.batch_size, progress=False
        )
        return evaluation.metrics

    def one(
        self, sae: nn.Module, data_provider: Any, activation_scaler: ActivationScaler
    ) -> dict[str, Any]:
        (name,) = self.hooks
        return flatten_metrics(self.evaluate({name: sae}, {name: activation_scaler})[name])

    def many(
        self,
        saes: Mapping[str, nn.Module],
        data_provider: Any = None,
        activation_scalers: Mapping[str, ActivationScaler] | None = None,
        hook_names: Any = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, metrics in self.evaluate(saes, activation_scalers or {}).items():
            out.update(flatten_metrics(metrics, prefix=f"{name}/eval/"))
        return out


@dataclass
class ModelPaused:
    """An evaluator run with the store's background forwards paused: the evaluation runs the
    model too, with hooks of its own."""

    evaluator: Any
    store: PairedActivationsStore | CachedPairedActivations

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.store.model_paused():
            return self.evaluator(*args, **kwargs)
