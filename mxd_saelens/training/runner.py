"""Training layers that replace a TransformerLens model's MLP, through SAELens's runner and trainer.

``PairedTrainingRunner(cfg).run()`` takes the same ``LanguageModelSAERunnerConfig`` a SAELens
user already writes, and returns the trained layer. ``PairedTrainingRunner({"mxd": cfg_a, "tc":
cfg_b, …}).run()`` (or :class:`MultiPairedTrainingRunner`) trains several layers in lockstep from
one model forward per store batch, and returns them by name: each keeps its own optimiser,
learning rate and schedule; every other field describes the shared data and must agree
(:func:`~mxd_saelens.training.checks.check_shared_fields`). A layer's initial weights depend
only on its own config and seed, so a layer trained with others is the layer trained alone. One
layer is the case N = 1: the same build, the same checks, torchrun data parallelism, caches,
prefetch, warm starts, snapshots, exact resume and Ctrl-C for any N. One layer keeps SAELens's
single-layer formats (its checkpoint folder and metric names); several use SAELens's
multi-layer ones (a subfolder per layer, metrics under ``<name>/``).

For each layer, ``cfg.hook_name`` is the MLP's input hook and the output hook is block L's
``hook_mlp_out`` unless ``hook_name_out`` (or ``cfg.sae.metadata.hook_name_out``) says
otherwise. What differs from SAELens's runner: a paired activation store, the output bias
started at the mean target, splicing metrics on eval steps (SAELens's own eval reconstructs
the input hook, which is wrong for a layer that predicts another hook), exact resumption, and
Ctrl-C saving a checkpoint at a step boundary. Before any training, the model's own MLP is run on
a few captured inputs and must reproduce the captured outputs (``check_mlp_hooks=False`` opts out
for a pair of hooks that is meant not to be the MLP's).

With ``cfg.cached_activations_path`` set, the batches come from a paired activation cache
(:mod:`mxd_saelens.data.cache_writer`) instead of the model's forward; the cache is checked against the
layer's model, block, widths and dtype before the model loads, and the MLP check runs on cached
rows. The model is still loaded for the splice evaluation (and an MxD's warm start).

``cfg.prefetch_llm_batches`` (SAELens's field; ``--prefetch_llm_batches True``) runs the
streaming store's model forwards in a background thread, overlapped with the training steps,
with the same batches and exact resumption (:class:`~mxd_saelens.data.buffers.BackgroundRefill`);
evaluations pause it. Off by default, as in SAELens: it holds up to one refill of the buffer
in memory beside the buffer, and on a CPU the forward and the step share the same cores.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import wandb
from sae_lens import logger
from sae_lens.config import LanguageModelSAERunnerConfig, SAETrainerConfig
from sae_lens.constants import RUNNER_CFG_FILENAME
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.cache_format import (
    PairedCache,
    check_cached_pairs,
)
from mxd_saelens.data.cache_reader import CachedPairedActivations
from mxd_saelens.data.hooks import MLPHooks, check_hook_pairs, resolve_mlp_hooks
from mxd_saelens.data.paired_store import PairedActivationsStore, pair_columns
from mxd_saelens.data.sources import load_dataset_source
from mxd_saelens.distributed import Distributed
from mxd_saelens.training.building import (
    PairSplitter,
    build_training_layer,
    evaluation_tokens,
    initial_output_bias,
    load_training_model,
    paired_data,
    warm_start_from_model,
)
from mxd_saelens.training.checks import (
    check_against_model,
    check_before_loading,
    check_layer_configs,
    checkpoint_loading,
    wants_hook_check,
)
from mxd_saelens.training.eval_steps import ModelPaused, SpliceEvaluator
from mxd_saelens.training.multi_trainer import MultiPairedTrainer
from mxd_saelens.training.recording import (
    ArtifactLogShim,
    save_layer,
    set_layer_metadata,
    start_wandb_run,
)
from mxd_saelens.training.trainer import PairedSAETrainer, Snapshots, scheduler_notices_silenced

RunnerConfig = LanguageModelSAERunnerConfig[Any]
ONE = "layer"  # the name of the layer of a one-config run


class PairedTrainingRunner(LanguageModelSAETrainingRunner):
    """SAELens's language-model runner for one or several layers that replace an MLP.

    Its ``__init__`` replaces SAELens's (which would build a single-hook store and evaluator);
    the saving and compiling methods are SAELens's own (see
    :mod:`mxd_saelens.sae_lens_internals`). ``hook_name_out`` (one config) or
    ``hook_names_out`` (by name) override the output hooks; ``snapshot_tokens`` also saves every
    layer, in inference format, to ``snapshot_path/<tokens>/<name>`` (``<name>`` is ``layer``
    for one config) once that many tokens have been trained on.
    """

    activations_store: PairedActivationsStore | CachedPairedActivations  # type: ignore[assignment]

    def __init__(
        self,
        cfg: RunnerConfig | Mapping[str, RunnerConfig],
        override_dataset: Any = None,
        override_model: HookedRootModule | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        hook_name_out: str | None = None,
        check_mlp_hooks: bool | None = None,
        hook_names_out: Mapping[str, str] | None = None,
        snapshot_tokens: Sequence[int] = (),
        snapshot_path: str | Path | None = None,
    ):
        self.single = isinstance(cfg, LanguageModelSAERunnerConfig)
        self.cfgs: dict[str, RunnerConfig] = {ONE: cfg} if self.single else dict(cfg)  # type: ignore[dict-item,arg-type]
        _check_arguments(
            self.cfgs, self.single, override_sae, hook_name_out, snapshot_tokens, snapshot_path
        )
        outs = {ONE: hook_name_out} if self.single else dict(hook_names_out or {})
        self.cfg = next(iter(self.cfgs.values()))  # the shared data, checkpoints and logging
        check_layer_configs(self.cfgs)  # devices among them, before torch.distributed starts
        self.distributed = Distributed.from_environment(self.cfg.device)
        cache = check_before_loading(self.cfgs, outs, self.distributed)
        torch.manual_seed(self.cfg.seed)
        self.model, self.model_loading = load_training_model(self.cfg, override_model)
        pairs = self._resolve_hooks(outs)
        check_against_model(self.model, self.cfgs, self.layer_hooks)
        if override_dataset is None:
            override_dataset = load_dataset_source(self.cfg.dataset_path)
        eval_tokens = evaluation_tokens(self.model, self.cfg, override_dataset)
        self._check_hooks(check_mlp_hooks, cache, eval_tokens)
        self._compile_llm_if_needed()
        self.activations_store = paired_data(  # type: ignore[assignment]
            self.model, self.cfg, pairs, override_dataset, cache, self.distributed
        )
        self.saes = {name: build_training_layer(c) for name, c in self.cfgs.items()}
        if override_sae is not None:
            self.saes[ONE] = override_sae.to(self.cfg.device)
        self.evaluator = SpliceEvaluator(  # type: ignore[assignment]
            model=self.model,
            hooks=self.layer_hooks,
            tokens=eval_tokens,
            batch_size=self.cfg.eval_batch_size_prompts or self.cfg.store_batch_size_prompts,
        )
        self.snapshots = Snapshots(snapshot_tokens, self._save_snapshot)
        self.snapshot_path = Path(snapshot_path) if snapshot_path is not None else None
        if self.single:  # SAELens's runner's names for its one layer
            self.sae = self.saes[ONE]
            self.hooks: MLPHooks = self.layer_hooks[ONE]

    def _resolve_hooks(self, outs: Mapping[str, str | None]) -> list[MLPHooks]:
        """Each layer's hooks, and the distinct hook pairs one forward captures (each layer
        reads its pair's columns of the packed rows)."""
        self.layer_hooks = {
            name: resolve_mlp_hooks(
                self.model,
                hook_in=c.hook_name,
                hook_out=outs.get(name) or c.sae.metadata.hook_name_out,
            )
            for name, c in self.cfgs.items()
        }
        pairs = list(dict.fromkeys(self.layer_hooks.values()))
        columns = pair_columns(pairs)
        self.columns = {name: columns[pairs.index(h)] for name, h in self.layer_hooks.items()}
        return pairs

    def _check_hooks(
        self, check_mlp_hooks: bool | None, cache: PairedCache | None, eval_tokens: torch.Tensor
    ) -> None:
        """Each block's own MLP must reproduce its hooks, on cached rows or a few sequences."""
        wanted = [
            self.layer_hooks[n]
            for n, c in self.cfgs.items()
            if wants_hook_check(c, check_mlp_hooks)
        ]
        checked = list(dict.fromkeys(wanted))
        if checked and cache is not None:
            check_cached_pairs(self.model, checked, cache)
        elif checked:
            check_hook_pairs(self.model, checked, eval_tokens[:4], self.cfg.autocast_lm)

    def _set_sae_metadata(self) -> None:
        for name, sae in self.saes.items():
            set_layer_metadata(sae, self.cfgs[name], self.layer_hooks[name], self.model_loading)

    @torch.no_grad()
    def _initialize_from_data(self, trainers: Mapping[str, PairedSAETrainer]) -> None:
        """Activation scale (if enabled, one layer only), each output bias at the mean of its
        targets and each warm start, from the first store batches, before step 0."""
        provider = PairSplitter(self.activations_store, self.columns)
        for name, trainer in trainers.items():
            if self.saes[name].cfg.normalize_activations == "expected_average_only_in":
                trainer.activation_scaler.estimate_scaling_factor(
                    d_in=self.layer_hooks[name].d_in,
                    data_provider=(batch[name] for batch in provider),
                    n_batches_for_norm_estimate=self.cfg.n_batches_for_norm_estimate,
                )
        n_batches = max(1, min(8, self.cfg.n_batches_for_norm_estimate))
        batches = [next(provider) for _ in range(n_batches)]
        for name, sae in self.saes.items():
            initialize = getattr(sae, "initialize_output_bias", None)
            if initialize is None:
                continue
            hooks, scaler = self.layer_hooks[name], trainers[name].activation_scaler
            targets = (scaler(batch[name])[:, hooks.d_in :] for batch in batches)
            initialize(initial_output_bias(targets, hooks.d_out, n_batches, self.distributed))
            sample = batches[0][name][:, : hooks.d_in]
            warm_start_from_model(sae, self.model, hooks, sample, self.cfgs[name].seed)

    def run(self) -> Any:
        """The trained layer (one config) or the trained layers by name (several)."""
        try:
            saes = self._run()
        finally:  # a background refill's thread ends with the run, however it ends
            self.activations_store.close()
        return saes[ONE] if self.single else saes

    def _run(self) -> dict[str, TrainingSAE[Any]]:
        self._set_sae_metadata()
        main = self.distributed.is_main  # the one process that logs, evaluates and writes
        log_to_wandb = self.cfg.logger.log_to_wandb and main
        if log_to_wandb:
            config = (
                self.cfg.to_dict()
                if self.single
                else {n: c.to_dict() for n, c in self.cfgs.items()}
            )
            start_wandb_run(self.cfg.logger, config)
        try:
            trainer, per_layer = self._trainer(main)
            resume = self.cfg.resume_from_checkpoint
            if resume is not None:
                logger.info(f"Resuming from checkpoint: {resume}")
                self._resume(trainer, resume)
            else:
                self._initialize_from_data(per_layer)
                for sae in self.saes.values():
                    self.distributed.copy_from_main_(sae)
            if self.single:
                self._compile_sae_if_needed()
            same_signal_s = 2.0 if self.distributed.enabled else 0.0
            with stop_on_signals(trainer, same_signal_s), scheduler_notices_silenced():
                saes = trainer.fit()
            saes = {ONE: saes} if self.single else saes
            if main:  # the final save logs a wandb artifact: before the run is finished
                for name, sae in saes.items():
                    self._save_final(name, sae, per_layer[name])
            self.distributed.barrier()
        finally:
            if log_to_wandb:
                wandb.finish()
        return saes

    def _trainer(self, main: bool) -> tuple[Any, dict[str, PairedSAETrainer]]:
        """One layer: SAELens's single-layer trainer; several: its multi-layer coordinator."""
        cfgs = {
            name: _quiet_unless(main, c.to_sae_trainer_config()) for name, c in self.cfgs.items()
        }
        if self.single:
            trainer = PairedSAETrainer(
                cfg=cfgs[ONE],
                sae=self.sae,
                data_provider=self.activations_store,
                evaluator=ModelPaused(self.evaluator.one, self.activations_store),  # type: ignore[attr-defined,arg-type]
                save_checkpoint_fn=self.save_checkpoint,
                distributed=self.distributed,
                snapshots=self.snapshots,
            )
            return trainer, {ONE: trainer}
        coordinator = MultiPairedTrainer(
            cfg=cfgs[next(iter(cfgs))],
            layer_cfgs=cfgs,
            saes=self.saes,
            data_provider=PairSplitter(self.activations_store, self.columns),
            evaluator=ModelPaused(self.evaluator.many, self.activations_store),  # type: ignore[attr-defined]
            save_checkpoint_fn=self._save_checkpoint_files,
            snapshots=self.snapshots,
            distributed=self.distributed,
        )
        return coordinator, coordinator.trainers

    def _resume(self, trainer: Any, path: str) -> None:
        with checkpoint_loading(path):
            if self.single:
                trainer.load_trainer_state(path)
                self.sae.load_weights_from_checkpoint(path)
            else:
                trainer.load_checkpoint(path)
        self.activations_store.load_from_checkpoint(path)

    def _save_checkpoint_files(self, checkpoint_path: Path | None) -> None:
        """What several layers' checkpoint holds beside each layer's: the stream position and
        every layer's runner config."""
        if checkpoint_path is None or not self.distributed.is_main:
            return
        self.activations_store.save_to_checkpoint(checkpoint_path)
        configs = {name: c.to_dict() for name, c in self.cfgs.items()}
        (checkpoint_path / RUNNER_CFG_FILENAME).write_text(json.dumps(configs))

    def _save_snapshot(self, n_tokens: int) -> None:
        if self.snapshot_path is None or not self.distributed.is_main:
            return
        for name, sae in self.saes.items():
            save_layer(sae, self.cfgs[name], self.snapshot_path / str(n_tokens) / name)

    def _save_final(self, name: str, sae: TrainingSAE[Any], trainer: PairedSAETrainer) -> None:
        cfg = self.cfgs[name]
        if cfg.output_path is None:
            return
        if self.single:  # SAELens's own final save (and its wandb artifact)
            self.save_final_sae(sae, cfg.output_path, trainer.log_feature_sparsity)
            return
        weights_path, cfg_path, sparsity_path = save_layer(
            sae, cfg, cfg.output_path, trainer.log_feature_sparsity
        )
        if self.cfg.logger.log_to_wandb:
            shim = ArtifactLogShim(sae=sae, cfg=cfg.to_sae_trainer_config())
            self.cfg.logger.log(
                shim,  # type: ignore[arg-type]
                weights_path,
                cfg_path,
                sparsity_path=sparsity_path,
                wandb_aliases=["final_model"],
            )


class MultiPairedTrainingRunner(PairedTrainingRunner):
    """:class:`PairedTrainingRunner` given layer configs by name; ``run()`` returns the layers
    by name, even for one."""

    def __init__(self, cfgs: Mapping[str, RunnerConfig], *args: Any, **kwargs: Any):
        if isinstance(cfgs, LanguageModelSAERunnerConfig):
            raise TypeError("MultiPairedTrainingRunner takes layer configs by name: {name: cfg}.")
        super().__init__(cfgs, *args, **kwargs)


def _check_arguments(
    cfgs: Mapping[str, RunnerConfig],
    single: bool,
    override_sae: Any,
    hook_name_out: str | None,
    snapshot_tokens: Sequence[int],
    snapshot_path: str | Path | None,
) -> None:
    if not cfgs:
        raise ValueError("give at least one layer config.")
    if not single and (override_sae is not None or hook_name_out is not None):
        raise ValueError(
            "override_sae and hook_name_out are for one config; for layers by name, pass "
            "hook_names_out={name: hook}."
        )
    if snapshot_tokens and snapshot_path is None:
        raise ValueError("snapshot_tokens needs a snapshot_path to save the snapshots to.")


def _quiet_unless(main: bool, cfg: SAETrainerConfig) -> SAETrainerConfig:
    """A trainer config that logs to wandb only in the main process."""
    if main:
        return cfg
    return dataclasses.replace(cfg, logger=dataclasses.replace(cfg.logger, log_to_wandb=False))


@contextmanager
def stop_on_signals(trainer: Any, same_signal_s: float = 0.0) -> Iterator[None]:
    """First Ctrl-C / SIGTERM: finish the step, save a checkpoint, stop. Second: stop now.

    A second signal within ``same_signal_s`` seconds of the first counts as the same request:
    under torchrun one Ctrl-C reaches a worker twice (from the terminal, and forwarded by
    torchrun)."""
    first: list[float] = []

    def request_stop(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            if time.monotonic() - first[0] <= same_signal_s:
                return
            raise KeyboardInterrupt
        logger.warning("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")
        first.append(time.monotonic())
        trainer.stop_requested = True

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    installed = False
    try:
        for sig in previous:
            signal.signal(sig, request_stop)
        installed = True
    except ValueError:  # not the main thread: signals cannot be caught here
        pass
    try:
        yield
    finally:
        if installed:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
