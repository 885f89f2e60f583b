"""Every use of SAELens's private API, in one place.

Read from SAELens 6.54.12; the suite passes on 6.50.0 and later 6.x (``make test-lowest``).
SAELens has no public extension points for paired (input, target) training, so the paired
store, runner and trainer subclass its classes and rely on the members listed in
:data:`PRIVATE_MEMBERS`. :func:`check_private_api` runs when the package is imported and names
whatever an installed SAELens lacks, so an upgrade that moves one of them fails here, at import,
rather than in the middle of a run.

What each reliance is for:

- ``ActivationsStore``: the paired store reuses SAELens's tokenised-sequence iterator and
  dataloader (``_iterate_tokenized_sequences``, ``iterable_sequences``, ``_dataloader``,
  ``get_data_loader``, ``_iterate_filtered_activations``), its mixing settings
  (``activations_mixing_fraction``) and the device its model expects tokens on
  (``_get_input_token_device``); the cache writer (:mod:`mxd_saelens.data.cache_writer`) reads the same
  filtered activations, so a cache holds exactly the rows a streaming run trains on.
- ``LanguageModelSAETrainingRunner``: the paired runner does not call its ``__init__`` (which
  builds a single-hook store and evaluator) but reuses its saving and compiling methods
  (``save_final_sae``, ``save_checkpoint``, ``_compile_llm_if_needed``,
  ``_compile_sae_if_needed``).
- ``SAETrainer``: the paired trainer overrides ``_train_step`` (firing statistics from sparse
  codes), ``_checkpoint_if_needed`` (steps counted when saved; stop requests),
  ``_run_and_log_evals`` (an evaluation at the last step) and ``_update_pbar``, and reads its
  running statistics (``act_freq_scores``, ``n_forward_passes_since_fired``,
  ``n_frac_active_samples``) and ``_is_logging_step``.
- ``MultiSAETrainer``: the same overrides for several layers, plus its ``trainers``.
- ``SAE``: the splice's error term runs the layer with its hooks off (``_disable_hooks``).
- ``load_model``: SAELens's runners load models by name through it; :func:`accept_bundled_models`
  wraps it (in ``sae_lens.load_model`` and the runner modules that imported it) so that the
  bundled models' names load from the package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import torch
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.saes import sae as _sae_module
from sae_lens.training import activations_store as _store_module
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from sae_lens.training.sae_trainer import SAETrainer

READ_FROM = "6.54.12"
LOWEST = "6.50.0"

# class (or module) → members this package relies on; attributes set in __init__ are checked on
# the class's source instead (see _missing)
PRIVATE_MEMBERS: Mapping[Any, tuple[str, ...]] = {
    ActivationsStore: (
        "_iterate_tokenized_sequences",
        "_iterate_filtered_activations",
        "get_data_loader",
        "get_batch_tokens",
        "save_to_checkpoint",
    ),
    LanguageModelSAETrainingRunner: (
        "save_final_sae",
        "save_checkpoint",
        "_compile_llm_if_needed",
        "_compile_sae_if_needed",
    ),
    SAETrainer: (
        "_train_step",
        "_checkpoint_if_needed",
        "_run_and_log_evals",
        "_update_pbar",
        "_is_logging_step",
        "build_train_step_log_dict",
    ),
    MultiSAETrainer: ("_checkpoint_if_needed", "_run_and_log_evals", "_update_pbar"),
    _store_module: ("_get_input_token_device",),
    _sae_module: ("_disable_hooks",),
}

# attributes SAELens sets in __init__ that this package reads or replaces
PRIVATE_ATTRIBUTES: Mapping[type, tuple[str, ...]] = {
    ActivationsStore: ("iterable_sequences", "_dataloader", "activations_mixing_fraction"),
    SAETrainer: ("act_freq_scores", "n_forward_passes_since_fired", "n_frac_active_samples"),
    MultiSAETrainer: ("trainers",),
}


class SAELensIncompatible(ImportError):
    """The installed SAELens lacks something this package relies on."""


def _source(owner: Any) -> str:
    import inspect

    try:
        return inspect.getsource(owner)
    except (OSError, TypeError):  # no source shipped: cannot check attributes, assume present
        return ""


def missing_members(
    members: Mapping[Any, tuple[str, ...]] = PRIVATE_MEMBERS,
    attributes: Mapping[type, tuple[str, ...]] = PRIVATE_ATTRIBUTES,
) -> list[str]:
    """``Owner.name`` for every relied-on member the installed SAELens does not have."""
    missing = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, names in members.items()
        for name in names
        if not hasattr(owner, name)
    ]
    for owner, names in attributes.items():
        source = _source(owner)
        missing += [f"{owner.__name__}.{n}" for n in names if source and f"self.{n}" not in source]
    return missing


def check_private_api() -> None:
    missing = missing_members()
    if missing:
        raise SAELensIncompatible(
            f"sae-lens {version('sae-lens')} lacks what mxd_saelens relies on: "
            f"{', '.join(missing)}. mxd_saelens was read from sae-lens {READ_FROM} and runs on "
            f">= {LOWEST}; install a version in that range (pip install 'sae-lens>={LOWEST},<7')."
        )


def input_token_device(model: Any) -> torch.device:
    """The device the model's forward expects its tokens on."""
    return _store_module._get_input_token_device(model)


@contextmanager
def sae_hooks_disabled(sae: Any) -> Iterator[None]:
    """Run an SAE with its hook points inactive (for the splice's error term)."""
    with _sae_module._disable_hooks(sae):
        yield


_RUNNER_MODULES = (
    "sae_lens.load_model",
    "sae_lens.llm_sae_training_runner",
    "sae_lens.multi_sae_training_runner",
    "sae_lens.cache_activations_runner",
)


def accept_bundled_models() -> None:
    """Make SAELens's ``load_model`` (and so its runners) load ``tiny-gelu`` and ``tiny-gated``
    from this package; every other name goes to SAELens's own code. Idempotent."""
    import importlib

    from sae_lens.load_model import load_model as sae_lens_load_model

    if getattr(sae_lens_load_model, "loads_bundled_models", False):
        return

    def load_model(
        model_class_name: str,
        model_name: str,
        device: Any = None,
        model_from_pretrained_kwargs: dict[str, Any] | None = None,
        hook_names: list[str] | None = None,
    ) -> Any:
        from mxd_saelens import zoo

        if model_name not in zoo.list_models():
            return sae_lens_load_model(
                model_class_name, model_name, device, model_from_pretrained_kwargs, hook_names
            )
        from sae_lens import HookedSAETransformer
        from transformer_lens import HookedTransformer

        cls = (
            HookedSAETransformer
            if model_class_name == "HookedSAETransformer"
            else HookedTransformer
        )
        fold_ln = (model_from_pretrained_kwargs or {}).get("fold_ln", True)
        return zoo.load(model_name, device=str(device or "cpu"), fold_ln=fold_ln, cls=cls)

    load_model.loads_bundled_models = True  # type: ignore[attr-defined]
    for name in _RUNNER_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "load_model"):
            module.load_model = load_model  # type: ignore[attr-defined]
