"""The pieces a paired run is built from: the model, the evaluation sequences, the training
batches, the layers and their start from the data."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from sae_lens import logger
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.constants import DTYPE_MAP
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training.activations_store import ActivationsStore
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.cache_format import PairedCache
from mxd_saelens.data.cache_reader import CachedPairedActivations
from mxd_saelens.data.hooks import MLPHooks, mlp_out_hook
from mxd_saelens.data.paired_store import (
    PairedActivationsStore,
    is_bundled_corpus,
    store_notices_silenced,
)
from mxd_saelens.data.sources import load_language_model, paired_loading_options
from mxd_saelens.distributed import Distributed
from mxd_saelens.training.warm_start import mlp_weights, warm_start_, warm_start_transcoder_


def load_training_model(
    cfg: LanguageModelSAERunnerConfig[Any], override_model: HookedRootModule | None = None
) -> tuple[HookedRootModule, dict[str, Any] | None]:
    """The model to train on, and the loading options to record in the layer: a model by name
    loads with its norms folded (:func:`~mxd_saelens.data.sources.paired_loading_options`); a model
    given as an object is used as it is (the MLP check refuses one with affine norms)."""
    if override_model is not None:
        return override_model, cfg.model_from_pretrained_kwargs
    options = paired_loading_options(cfg.model_class_name, cfg.model_from_pretrained_kwargs)
    model = load_language_model(
        cfg.model_name,
        cfg.model_class_name,
        device=cfg.llm_device or cfg.device,
        model_from_pretrained_kwargs=options,
    )
    return model, options


def evaluation_tokens(
    model: HookedRootModule, cfg: LanguageModelSAERunnerConfig[Any], dataset: Any
) -> Tensor:
    """A fixed set of sequences for eval steps and the hook check, read by a store of its own
    so that evaluating never moves the training stream."""
    streaming_cfg = copy.copy(cfg)  # a paired cache is not SAELens's: read text, not a cache
    streaming_cfg.use_cached_activations = False
    with store_notices_silenced(is_bundled_corpus(cfg.dataset_path)):
        store = ActivationsStore.from_config(model, streaming_cfg, override_dataset=dataset)
    batch = cfg.eval_batch_size_prompts or cfg.store_batch_size_prompts
    return torch.cat([store.get_batch_tokens(batch) for _ in range(cfg.n_eval_batches)])


def paired_data(
    model: HookedRootModule,
    cfg: LanguageModelSAERunnerConfig[Any],
    pairs: Sequence[MLPHooks],
    dataset: Any,
    cache: PairedCache | None,
    distributed: Distributed | None = None,
) -> PairedActivationsStore | CachedPairedActivations:
    """The training batches: from the cache when there is one, else from the model."""
    if cache is None:
        return PairedActivationsStore.from_runner_config(
            model, cfg, list(pairs), override_dataset=dataset, distributed=distributed
        )
    epochs = cfg.training_tokens / cache.n_tokens
    logger.info(f"training from {cache.path}: {cache.n_tokens} tokens, {epochs:.2f} epochs")
    distributed = distributed or Distributed()
    return CachedPairedActivations(
        cache,
        [p.layer for p in pairs],
        cfg.train_batch_size_tokens,
        cfg.seed,
        cfg.device,
        rank=distributed.rank,
        world_size=distributed.world_size,
        dtype=DTYPE_MAP[cfg.dtype],
    )


def build_training_layer(cfg: LanguageModelSAERunnerConfig[Any]) -> TrainingSAE[Any]:
    """The training layer of ``cfg``, initialised from ``cfg.seed`` alone (so a layer's start
    does not depend on what was built before it), on ``cfg.device``."""
    if cfg.from_pretrained_path is not None:
        sae = TrainingSAE.load_from_disk(cfg.from_pretrained_path, cfg.device)
    else:
        torch.manual_seed(cfg.seed)
        sae_cfg = TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict())
        sae = TrainingSAE.from_dict(sae_cfg.to_dict())
    return sae.to(cfg.device)


@torch.no_grad()
def warm_start_from_model(
    sae: nn.Module, model: HookedRootModule, hooks: MLPHooks, sample_inputs: Tensor, seed: int
) -> None:
    """A layer's ``init`` from the MLP it replaces (after the output bias is set, which
    ``init="mlp"`` replaces by the MLP's own): an MxD's, or a TopK transcoder's analogue;
    nothing for the paper's init."""
    init = getattr(sae.cfg, "init", "paper")
    if init == "paper":
        return
    if hooks.hook_out != mlp_out_hook(hooks.layer):
        raise ValueError(
            f"init={init!r} copies block {hooks.layer}'s MLP, but the layer's output hook is "
            f"{hooks.hook_out!r}, not that MLP's output; use init='paper' for this pair."
        )
    weights = mlp_weights(model, hooks.layer)
    if hasattr(sae, "W_experts"):
        warm_start_(sae, weights, init, sample_inputs, sae.cfg.init_noise, seed)  # type: ignore[union-attr]
    else:
        warm_start_transcoder_(sae, weights, init)


@torch.no_grad()
def initial_output_bias(
    targets: Iterator[Tensor],
    d_out: int,
    n_batches: int,
    distributed: Distributed | None = None,
) -> Tensor:
    """The mean target over ``n_batches`` batches of ``[batch, d_out]`` targets (over every
    rank's share of them, in a data-parallel run)."""
    total = torch.zeros(d_out + 1, dtype=torch.float64)  # Σ targets, and the count
    for _ in range(n_batches):
        batch = next(targets)
        total[:d_out] += batch.double().sum(0).cpu()
        total[d_out] += batch.shape[0]
    if distributed is not None:
        distributed.sum_(total)
    return (total[:d_out] / total[d_out]).float()


class PairSplitter:
    """Serves each layer its ``[x ‖ y]`` columns of the store's packed rows."""

    def __init__(self, store: Iterator[Tensor], columns: Mapping[str, slice]):
        self.store = store
        self.columns = dict(columns)

    def __iter__(self) -> PairSplitter:
        return self

    def __next__(self) -> dict[str, Tensor]:
        batch = next(self.store)  # [batch, Σ (d_in + d_out)]
        return {name: batch[:, cols] for name, cols in self.columns.items()}
