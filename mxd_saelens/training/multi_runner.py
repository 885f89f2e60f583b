"""Several paired layers trained from one model forward.

``MultiPairedTrainingRunner({"mxd": cfg_a, "tc": cfg_b, ...}).run()`` takes one ordinary
``LanguageModelSAERunnerConfig`` per layer, exactly what :class:`PairedTrainingRunner` takes, and
trains every layer in lockstep on the same batches: one model forward per store batch captures
every hook pair the layers need (one pair when they share an MLP, several when they sit in
different blocks), and the packed rows are shuffled once for all of them. Built on SAELens's
``MultiSAETrainer``, with one :class:`PairedSAETrainer` per layer, so each layer keeps its own
optimiser, learning rate and schedule, sparsity tracking and unit-norm expert projection.

Per layer: the layer's config (architecture, k, width …), its hooks, ``lr`` and the schedule
fields, Adam's betas, the dead-feature window and ``output_path`` (where it is saved). Every
other field describes the shared data and must agree across entries; checkpoints, resumption and
wandb logging follow the first entry. A layer's initial weights depend only on ``seed`` and its
own config, never on the other layers, so a layer trained with others is the layer trained
alone. Resumption is exact and Ctrl-C saves one checkpoint holding every layer, as with the
single runner. With ``cached_activations_path`` (shared by all), each layer reads its own
block of one paired activation cache, every block in the same order, as from one forward.
With ``prefetch_llm_batches`` (shared by all) the shared forward runs in a background thread,
overlapped with the layers' steps, as in the single runner.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import wandb
from sae_lens.config import LanguageModelSAERunnerConfig, SAETrainerConfig
from sae_lens.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from safetensors.torch import save_file
from torch import Tensor
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.cache_format import open_cache_for, uses_cache
from mxd_saelens.data.hooks import MLPHooks, resolve_mlp_hooks
from mxd_saelens.data.paired_store import pair_columns
from mxd_saelens.data.sources import load_dataset_source
from mxd_saelens.evaluation.loss import evaluate_layers, flatten_metrics
from mxd_saelens.evaluation.splice import SplicedLayer
from mxd_saelens.training.distributed import Distributed
from mxd_saelens.training.runner import (
    ModelPaused,
    _check_widths,
    _stop_on_signals,
    build_training_layer,
    check_against_model,
    check_cached_pairs,
    check_checkpoint_folder,
    check_hook_pairs,
    check_runner_config,
    checkpoint_loading,
    evaluation_tokens,
    initial_output_bias,
    load_training_model,
    paired_data,
    set_layer_metadata,
    start_wandb_run,
    wants_hook_check,
    warm_start_from_model,
)
from mxd_saelens.training.trainer import (
    PairedSAETrainer,
    RunEndMixin,
    scheduler_notices_silenced,
    stop_with_checkpoint,
)

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


@dataclass
class MultiSpliceEvaluator:
    """Every layer spliced into the model on a fixed set of sequences (eval steps), sharing
    the clean and ablated forwards."""

    model: HookedRootModule
    hooks: Mapping[str, MLPHooks]
    tokens: Tensor
    batch_size: int

    @torch.no_grad()
    def __call__(
        self, saes: Mapping[str, TrainingSAE[Any]], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        layers = {name: SplicedLayer(sae, self.hooks[name]) for name, sae in saes.items()}
        evaluation = evaluate_layers(
            self.model, layers, self.tokens, batch_size=self.batch_size, progress=False
        )
        out: dict[str, Any] = {}
        for name, metrics in evaluation.metrics.items():
            out.update(flatten_metrics(metrics, prefix=f"{name}/eval/"))
        return out


class MultiPairedTrainer(RunEndMixin, MultiSAETrainer):
    """SAELens's ``MultiSAETrainer`` driving one :class:`PairedSAETrainer` per layer, each with
    its own trainer config (learning rate, schedule …), plus stop requests and snapshots."""

    stop_requested: bool = False

    def __init__(
        self,
        cfg: SAETrainerConfig,
        layer_cfgs: Mapping[str, SAETrainerConfig],
        saes: Mapping[str, TrainingSAE[Any]],
        data_provider: Iterator[dict[str, Tensor]],
        evaluator: Any = None,
        save_checkpoint_fn: Any = None,
        snapshot_tokens: Sequence[int] = (),
        snapshot_fn: Any = None,
    ):
        super().__init__(
            cfg=cfg,
            saes=dict(saes),
            hook_names={name: name for name in saes},
            data_provider=data_provider,  # type: ignore[arg-type]
            evaluator=evaluator,
            save_checkpoint_fn=save_checkpoint_fn,
        )
        for layer_cfg in layer_cfgs.values():
            if layer_cfg.total_training_samples != cfg.total_training_samples:
                raise ValueError("layers trained in lockstep must train on the same tokens.")
        # the coordinator owns checkpointing: the per-layer trainers never checkpoint alone
        self.trainers = {
            name: PairedSAETrainer(
                cfg=replace(
                    layer_cfgs[name],
                    n_checkpoints=0,
                    checkpoint_path=None,
                    save_final_checkpoint=False,
                ),
                sae=sae,
                data_provider=iter(()),
            )
            for name, sae in self.saes.items()
        }
        self.snapshot_tokens = sorted(snapshot_tokens)
        self.snapshot_fn = snapshot_fn

    def _advance_steps(self, by: int) -> None:
        self.n_training_steps += by
        for trainer in self.trainers.values():
            trainer.n_training_steps += by

    def _checkpoint_if_needed(self) -> None:
        # MultiSAETrainer.fit counts the step only after this call; count it now so that what
        # is saved describes the completed steps (as PairedSAETrainer does for one layer)
        self._advance_steps(1)
        try:
            super()._checkpoint_if_needed()
            self._snapshot_if_needed()
            if self.stop_requested:
                stop_with_checkpoint(self)
        finally:
            self._advance_steps(-1)

    def _snapshot_if_needed(self) -> None:
        due = any(t <= self.n_training_samples for t in self.snapshot_tokens)
        if due and self.snapshot_fn is not None:
            self.snapshot_fn(self.n_training_samples, self.saes)
        self.snapshot_tokens = [t for t in self.snapshot_tokens if t > self.n_training_samples]

    def load_checkpoint(self, path: str | Path) -> None:
        super().load_checkpoint(path)
        self.snapshot_tokens = [t for t in self.snapshot_tokens if t > self.n_training_samples]


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
class _ArtifactLogShim:
    """What ``LoggingConfig.log`` reads from a trainer, for one layer's final artifact."""

    sae: TrainingSAE[Any]
    cfg: SAETrainerConfig


class MultiPairedTrainingRunner:
    """Train several MLP-replacing layers from one shared model forward."""

    def __init__(
        self,
        cfgs: Mapping[str, LanguageModelSAERunnerConfig[Any]],
        override_dataset: Any = None,
        override_model: HookedRootModule | None = None,
        hook_names_out: Mapping[str, str] | None = None,
        check_mlp_hooks: bool | None = None,
        snapshot_tokens: Sequence[int] = (),
        snapshot_path: str | Path | None = None,
    ):
        """``snapshot_tokens``: also save every layer, in inference format, to
        ``snapshot_path/<tokens>/<name>`` once that many tokens have been trained on."""
        if not cfgs:
            raise ValueError("give at least one layer config.")
        if snapshot_tokens and snapshot_path is None:
            raise ValueError("snapshot_tokens needs a snapshot_path to save the snapshots to.")
        self.cfgs = dict(cfgs)
        self.cfg = next(iter(self.cfgs.values()))
        for name, cfg in self.cfgs.items():
            check_runner_config(cfg)
            if cfg.sae.normalize_activations != "none":
                raise ValueError(
                    f"layer {name!r}: normalize_activations={cfg.sae.normalize_activations!r} "
                    "is not supported when training several layers from one forward; use "
                    "'none', or train the layer with PairedTrainingRunner."
                )
        check_shared_fields(self.cfgs)
        if Distributed.from_environment().enabled:
            raise ValueError(
                "MultiPairedTrainingRunner runs in one process; under torchrun, train one "
                "layer per run with PairedTrainingRunner (mxd-saelens train)."
            )
        outs = hook_names_out or {}
        # each layer reads its own block of the cache; any mismatch is refused before the
        # model loads
        cache = None
        if uses_cache(self.cfg):
            for name, cfg in self.cfgs.items():
                try:
                    cache = open_cache_for(cfg, outs.get(name))
                except ValueError as error:
                    raise type(error)(f"layer {name!r}: {error}") from None
        if self.cfg.resume_from_checkpoint is not None:
            check_checkpoint_folder(self.cfg.resume_from_checkpoint)
        self.model, self.model_loading = load_training_model(self.cfg, override_model)
        check_against_model(self.model, self.cfg)
        if override_dataset is None:
            override_dataset = load_dataset_source(self.cfg.dataset_path)
        self.hooks = {
            name: resolve_mlp_hooks(
                self.model,
                hook_in=cfg.hook_name,
                hook_out=outs.get(name) or cfg.sae.metadata.hook_name_out,
            )
            for name, cfg in self.cfgs.items()
        }
        for name, cfg in self.cfgs.items():
            _check_widths(cfg.sae, self.hooks[name])
        pairs = list(dict.fromkeys(self.hooks.values()))
        columns = pair_columns(pairs)
        self.columns = {name: columns[pairs.index(h)] for name, h in self.hooks.items()}

        eval_tokens = evaluation_tokens(self.model, self.cfg, override_dataset)
        checked = [
            self.hooks[n] for n, c in self.cfgs.items() if wants_hook_check(c, check_mlp_hooks)
        ]
        if checked and cache is not None:
            check_cached_pairs(self.model, list(dict.fromkeys(checked)), cache)
        elif checked:
            check_hook_pairs(
                self.model, list(dict.fromkeys(checked)), eval_tokens[:4], self.cfg.autocast_lm
            )
        self.activations_store = paired_data(self.model, self.cfg, pairs, override_dataset, cache)
        self.saes = {name: build_training_layer(cfg) for name, cfg in self.cfgs.items()}
        self.evaluator = MultiSpliceEvaluator(
            model=self.model,
            hooks=self.hooks,
            tokens=eval_tokens,
            batch_size=self.cfg.eval_batch_size_prompts or self.cfg.store_batch_size_prompts,
        )
        self.snapshot_tokens = list(snapshot_tokens)
        self.snapshot_path = Path(snapshot_path) if snapshot_path is not None else None

    @torch.no_grad()
    def _initialize_from_data(self, provider: PairSplitter) -> None:
        """Each layer's output bias at the mean of its targets (as the single runner does)."""
        n_batches = max(1, min(8, self.cfg.n_batches_for_norm_estimate))
        batches = [next(provider) for _ in range(n_batches)]
        for name, sae in self.saes.items():
            initialize = getattr(sae, "initialize_output_bias", None)
            if initialize is not None:
                hooks = self.hooks[name]
                targets = (batch[name][:, hooks.d_in :] for batch in batches)
                initialize(initial_output_bias(targets, hooks.d_out, n_batches))
                sample = batches[0][name][:, : hooks.d_in]
                warm_start_from_model(sae, self.model, hooks, sample, self.cfgs[name].seed)

    def _save_checkpoint_files(self, checkpoint_path: Path | None) -> None:
        if checkpoint_path is None:
            return
        self.activations_store.save_to_checkpoint(checkpoint_path)
        configs = {name: cfg.to_dict() for name, cfg in self.cfgs.items()}
        (checkpoint_path / RUNNER_CFG_FILENAME).write_text(json.dumps(configs))

    def _save_snapshot(self, n_tokens: int, saes: Mapping[str, TrainingSAE[Any]]) -> None:
        assert self.snapshot_path is not None
        for name, sae in saes.items():
            save_layer(sae, self.cfgs[name], self.snapshot_path / str(n_tokens) / name)

    def run(self) -> dict[str, TrainingSAE[Any]]:
        for name, sae in self.saes.items():
            set_layer_metadata(sae, self.cfgs[name], self.hooks[name], self.model_loading)
        log_to_wandb = self.cfg.logger.log_to_wandb
        if log_to_wandb:
            start_wandb_run(self.cfg.logger, {n: cfg.to_dict() for n, cfg in self.cfgs.items()})
        try:
            provider = PairSplitter(self.activations_store, self.columns)
            trainer = MultiPairedTrainer(
                cfg=self.cfg.to_sae_trainer_config(),
                layer_cfgs={n: c.to_sae_trainer_config() for n, c in self.cfgs.items()},
                saes=self.saes,
                data_provider=provider,
                evaluator=ModelPaused(self.evaluator, self.activations_store),
                save_checkpoint_fn=self._save_checkpoint_files,
                snapshot_tokens=self.snapshot_tokens,
                snapshot_fn=self._save_snapshot,
            )
            resume = self.cfg.resume_from_checkpoint
            if resume is not None:
                with checkpoint_loading(resume):
                    trainer.load_checkpoint(resume)
                self.activations_store.load_from_checkpoint(resume)
            else:
                self._initialize_from_data(provider)
            with _stop_on_signals(trainer), scheduler_notices_silenced():  # type: ignore[arg-type]
                saes = trainer.fit()
            for name, sae in saes.items():
                self._save_final(name, sae, trainer)
        finally:
            self.activations_store.close()  # a background refill's thread ends with the run
            if log_to_wandb:
                wandb.finish()
        return saes

    def _save_final(self, name: str, sae: TrainingSAE[Any], trainer: MultiPairedTrainer) -> None:
        cfg = self.cfgs[name]
        if cfg.output_path is None:
            return
        sparsity = trainer.trainers[name].log_feature_sparsity
        weights_path, cfg_path, sparsity_path = save_layer(sae, cfg, cfg.output_path, sparsity)
        if self.cfg.logger.log_to_wandb:
            shim = _ArtifactLogShim(sae=sae, cfg=cfg.to_sae_trainer_config())
            self.cfg.logger.log(
                shim,  # type: ignore[arg-type]
                weights_path,
                cfg_path,
                sparsity_path=sparsity_path,
                wandb_aliases=["final_model"],
            )
