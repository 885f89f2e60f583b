"""What a run records: the layer's metadata, the wandb run, and the saved layer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wandb
from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig, SAETrainerConfig
from sae_lens.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
from sae_lens.saes.sae import TrainingSAE
from safetensors.torch import save_file
from torch import Tensor

from mxd_saelens import zoo
from mxd_saelens.data.hooks import MLPHooks


def set_layer_metadata(
    sae: TrainingSAE[Any],
    cfg: LanguageModelSAERunnerConfig[Any],
    hooks: MLPHooks,
    model_loading: dict[str, Any] | None = None,
) -> None:
    """What SAELens records about the data a layer was trained on, plus the output hook and
    the options the model was loaded with (``model_loading``; default the config's), so that
    the layer's model is loaded again as it was trained."""
    metadata = sae.cfg.metadata
    metadata.dataset_path = cfg.dataset_path
    metadata.hook_name = hooks.hook_in
    metadata.hook_name_out = hooks.hook_out
    metadata.model_name = cfg.model_name
    metadata.model_class_name = cfg.model_class_name
    metadata.hook_head_index = cfg.hook_head_index
    metadata.context_size = cfg.context_size
    metadata.seqpos_slice = cfg.seqpos_slice
    # a bundled model takes no loading options; recording SAELens's default would make every
    # load of the layer warn about them
    bundled = cfg.model_name in zoo.list_models()
    if model_loading is None:
        model_loading = cfg.model_from_pretrained_kwargs
    metadata.model_from_pretrained_kwargs = {} if bundled else model_loading
    metadata.prepend_bos = cfg.prepend_bos
    metadata.exclude_special_tokens = cfg.exclude_special_tokens
    metadata.sequence_separator_token = cfg.sequence_separator_token
    metadata.disable_concat_sequences = cfg.disable_concat_sequences


class WandbNotConfigured(ValueError):
    """wandb logging is on (SAELens's default) but wandb cannot start a run."""


def start_wandb_run(logging: LoggingConfig, config: dict[str, Any]) -> None:
    """``wandb.init`` from SAELens's logging config, with the ways out named when wandb has no
    account to log to."""
    try:
        wandb.init(
            project=logging.wandb_project,
            entity=logging.wandb_entity,
            config=config,
            name=logging.run_name,
            id=logging.wandb_id,
        )
    except wandb.errors.UsageError as error:
        raise WandbNotConfigured(
            f"wandb could not start a run ({error}). Log in with `wandb login`, log offline "
            "with WANDB_MODE=offline, or turn logging off with log_to_wandb=False "
            "(--log_to_wandb False)."
        ) from error


def save_layer(
    sae: TrainingSAE[Any],
    cfg: LanguageModelSAERunnerConfig[Any],
    path: str | Path,
    log_feature_sparsity: Tensor | None = None,
) -> tuple[Path, Path, Path | None]:
    """The layer in SAELens's inference format, its feature sparsity and its runner config."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    weights_path, cfg_path = sae.save_inference_model(str(out))
    sparsity_path = None
    if log_feature_sparsity is not None:
        sparsity_path = out / SPARSITY_FILENAME
        save_file({"sparsity": log_feature_sparsity}, sparsity_path)
    (out / RUNNER_CFG_FILENAME).write_text(json.dumps(cfg.to_dict()))
    return weights_path, cfg_path, sparsity_path


@dataclass
class ArtifactLogShim:
    """What ``LoggingConfig.log`` reads from a trainer, for one layer's final artifact."""

    sae: TrainingSAE[Any]
    cfg: SAETrainerConfig
