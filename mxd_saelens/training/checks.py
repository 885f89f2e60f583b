"""What a paired training run refuses before it spends anything: the configs, the devices, a
checkpoint to resume from, the cache, the context window and the widths (the hooks against the
block's own MLP are checked in :mod:`mxd_saelens.data.hooks`)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.constants import DTYPE_MAP, TRAINER_STATE_FILENAME
from sae_lens.saes.sae import TrainingSAEConfig
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.cache_format import PairedCache, open_cache_for, uses_cache
from mxd_saelens.data.hooks import MLPHooks
from mxd_saelens.distributed import Distributed, check_distributed_config

SUPPORTED_NORMALIZATIONS = ("none", "expected_average_only_in")


# fields each layer may set for itself; the rest describe the shared data or the run
PER_LAYER_FIELDS = frozenset(
    {
        "sae",
        "hook_name",
        "lr",
        "lr_scheduler_name",
        "lr_warm_up_steps",
        "lr_end",
        "lr_decay_steps",
        "n_restart_cycles",
        "adam_beta1",
        "adam_beta2",
        "dead_feature_window",
        "dead_feature_threshold",
        "output_path",
        "from_pretrained_path",
    }
)


RUN_FIELDS = frozenset(
    {
        "checkpoint_path",
        "n_checkpoints",
        "save_final_checkpoint",
        "resume_from_checkpoint",
        "logger",
        "verbose",
        "n_eval_batches",
        "eval_batch_size_prompts",
    }
)


def check_runner_config(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    """Reject the SAELens options that paired training cannot honour, saying why."""
    norm = cfg.sae.normalize_activations
    if norm not in SUPPORTED_NORMALIZATIONS:
        raise ValueError(
            f"normalize_activations={norm!r} is not supported for MLP replacement: it would "
            "normalise the input and the target with the input's statistics. Use one of "
            f"{SUPPORTED_NORMALIZATIONS} (the scale is applied to both and folded into the "
            "saved layer)."
        )
    _check_prefetch(cfg)
    if cfg.hook_head_index is not None:
        raise ValueError("hook_head_index does not apply to MLP hooks; leave it as None.")
    init = getattr(cfg.sae, "init", "paper")
    if init != "paper" and norm != "none":
        raise ValueError(
            f"init={init!r} copies the MLP's weights, which read unscaled activations: use "
            "normalize_activations='none' with it."
        )
    _check_numbers(cfg)
    for field, dtype in (("dtype", cfg.dtype), ("sae.dtype", cfg.sae.dtype)):
        if dtype not in DTYPE_MAP:
            raise ValueError(
                f"{field}={dtype!r} is not a dtype; choose one of {sorted(DTYPE_MAP)}."
            )
    for field, device in (("device", cfg.device), ("llm_device", cfg.llm_device)):
        if device is not None:
            _check_device(field, device)


def _check_prefetch(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    prefetch = getattr(cfg, "prefetch_llm_batches", False)
    if not isinstance(prefetch, int) or prefetch < 0:  # bool is an int
        raise ValueError(
            f"prefetch_llm_batches={prefetch!r} must be True, False or a number of store "
            "batches to compute ahead (0 is off)."
        )
    if prefetch and uses_cache(cfg):
        raise ValueError(
            "prefetch_llm_batches overlaps the model's forward with training, but with "
            "cached_activations_path there is no forward: set it to False."
        )


def _check_numbers(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    for field in ("training_tokens", "context_size", "train_batch_size_tokens", "lr"):
        value = getattr(cfg, field)
        if not value > 0:  # also catches NaN
            raise ValueError(f"{field}={value!r} must be positive.")


def _check_device(field: str, device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"{field}={device!r} is not a torch device ({error}).") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field}={device!r}, but torch sees no CUDA device here; use 'cpu'.")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ValueError(
            f"{field}={device!r}, but torch sees only {n} CUDA device(s) here: use cuda:0 to "
            f"cuda:{n - 1}."
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{field}={device!r}, but MPS is not available here; use 'cpu'.")


def check_before_loading(
    cfgs: Mapping[str, LanguageModelSAERunnerConfig[Any]],
    hook_names_out: Mapping[str, str | None],
    distributed: Distributed,
) -> PairedCache | None:
    """What a run refuses before the model loads, once the configs passed
    :func:`check_layer_configs`: the cache (for another model, block, width or dtype), what data
    parallelism needs, and the checkpoint folder to resume from. Returns the layers' cache, if
    any."""
    first = next(iter(cfgs.values()))
    cache = open_layer_cache(cfgs, hook_names_out) if uses_cache(first) else None
    check_distributed_config(first, distributed)
    if first.resume_from_checkpoint is not None:
        check_checkpoint_folder(first.resume_from_checkpoint)
    return cache


def open_layer_cache(
    cfgs: Mapping[str, LanguageModelSAERunnerConfig[Any]], hook_names_out: Mapping[str, str | None]
) -> PairedCache:
    """The cache every layer reads its own block of, checked for each layer."""
    cache = None
    for name, cfg in cfgs.items():
        try:
            cache = open_cache_for(cfg, hook_names_out.get(name))
        except ValueError as error:
            if len(cfgs) == 1:
                raise
            raise type(error)(f"layer {name!r}: {error}") from None
    assert cache is not None
    return cache


def check_against_model(
    model: HookedRootModule,
    cfgs: Mapping[str, LanguageModelSAERunnerConfig[Any]],
    layer_hooks: Mapping[str, MLPHooks],
) -> None:
    """What the configs ask of the model, checked before any data is read: the context window
    and each layer's widths against its hooks."""
    first = next(iter(cfgs.values()))
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and first.context_size > n_ctx:
        raise ValueError(
            f"context_size={first.context_size} is longer than {first.model_name}'s context "
            f"window (n_ctx={n_ctx}); set context_size to at most {n_ctx}."
        )
    for name, cfg in cfgs.items():
        check_widths(cfg.sae, layer_hooks[name])


def check_layer_configs(cfgs: Mapping[str, LanguageModelSAERunnerConfig[Any]]) -> None:
    """Each layer's config on its own, then what layers trained from one forward must share."""
    for name, cfg in cfgs.items():
        check_runner_config(cfg)
        if len(cfgs) > 1 and cfg.sae.normalize_activations != "none":
            raise ValueError(
                f"layer {name!r}: normalize_activations={cfg.sae.normalize_activations!r} "
                "is supported for one layer per run only (its scale is estimated on the "
                "layer's own batches); use 'none', or train the layer on its own."
            )
    check_shared_fields(cfgs)


def check_shared_fields(cfgs: Mapping[str, LanguageModelSAERunnerConfig[Any]]) -> None:
    """Every data field must agree across the layers' configs; name the first that does not."""
    names = list(cfgs)
    first = cfgs[names[0]]
    for f in fields(LanguageModelSAERunnerConfig):
        if f.name in PER_LAYER_FIELDS or f.name in RUN_FIELDS or f.name.startswith("_"):
            continue
        for name in names[1:]:
            if getattr(cfgs[name], f.name) != getattr(first, f.name):
                raise ValueError(
                    f"layers trained from one forward share their data, but {f.name} is "
                    f"{getattr(first, f.name)!r} for {names[0]!r} and "
                    f"{getattr(cfgs[name], f.name)!r} for {name!r}: make them equal, or train "
                    "the layers in separate runs."
                )


def check_checkpoint_folder(path: str | Path) -> Path:
    """A folder to resume from: it exists and holds a trainer state (checked before the model
    runs, so a typo does not cost a model load and a data pass)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint={str(path)!r} is not a folder; give a checkpoint folder "
            "written by an interrupted run (named after its token count, under checkpoint_path)."
        )
    if not any(folder.rglob(TRAINER_STATE_FILENAME)):
        raise FileNotFoundError(
            f"{folder} holds no {TRAINER_STATE_FILENAME}: it is not a training checkpoint, or "
            "was only partly copied."
        )
    return folder


@contextmanager
def checkpoint_loading(path: str | Path) -> Iterator[None]:
    """Turn a checkpoint that would need unpickling (``torch.load`` with ``weights_only``, the
    default since torch 2.6) into an error that names the file."""
    try:
        yield
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"the trainer state under {path} holds objects other than tensors and plain "
            "values; it was not written by this package's runner, and is not unpickled. "
            f"({str(error).splitlines()[0]})"
        ) from error


def check_widths(sae_cfg: TrainingSAEConfig, hooks: MLPHooks) -> None:
    d_out = getattr(sae_cfg, "d_out", sae_cfg.d_in)
    if sae_cfg.d_in != hooks.d_in or d_out != hooks.d_out:
        raise ValueError(
            f"the layer maps d_in={sae_cfg.d_in} → d_out={d_out}, but {hooks.hook_in} has width "
            f"{hooks.d_in} and {hooks.hook_out} has width {hooks.d_out}: set d_in={hooks.d_in} "
            f"and d_out={hooks.d_out}."
        )


def wants_hook_check(cfg: LanguageModelSAERunnerConfig[Any], check: bool | None) -> bool:
    """An explicit argument wins, then ``cfg.sae.metadata.check_mlp_hooks``; default on."""
    if check is not None:
        return check
    recorded = getattr(cfg.sae.metadata, "check_mlp_hooks", None)  # unset metadata reads None
    return True if recorded is None else bool(recorded)
