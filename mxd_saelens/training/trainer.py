"""SAELens's ``SAETrainer`` with what paired training adds.

- Checkpoints record the number of *completed* steps, so a resumed run continues its logging
  and evaluation schedule exactly where the interrupted one stopped.
- A stop request (Ctrl-C, SIGTERM) is honoured at the next step boundary: the trainer saves a
  checkpoint and raises :class:`TrainingInterrupted`, so no step is half-applied.
- An MxD's expert vectors go back to unit norm after every optimiser step, and a layer with
  ``balance_rate > 0`` has its selection bias nudged toward balanced usage
  (:func:`mxd_saelens.saes.paired.balance_selection_bias`).
- Logged: the dead fraction of experts or latents beside SAELens's dead count.
- The firing statistics of a layer with sparse codes are counted from the codes' indices: the
  same numbers as SAELens's reductions over a ``[tokens, d_sae]`` sparse tensor, which would
  otherwise cost about as much as the layer's whole step.
- With wandb on, the splice evaluation also runs at the last step, so a run shorter than the
  evaluation interval still logs ``eval/*``; the progress bar advances every step and ends at
  100 %.

``_train_step`` mirrors ``SAETrainer._train_step`` of SAELens 6.x step for step (forward,
firing statistics, backward, gradient clipping at norm 1, Adam, schedulers). The private members
of SAELens this module overrides or reads are listed, and checked at import, in
:mod:`mxd_saelens.sae_lens_internals`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer
from torch import Tensor

from mxd_saelens.distributed import Distributed, data_parallel
from mxd_saelens.saes.paired import balance_selection_bias


@contextmanager
def scheduler_notices_silenced() -> Iterator[None]:
    """torch 2.6's ``SequentialLR`` steps its sub-schedulers with an epoch argument at each
    milestone and then warns about its own call (SAELens's warm-up → constant schedule crosses
    one): nothing a user can act on, so it is silenced while training."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=re.escape("The epoch parameter in `scheduler.step()`"),
            category=UserWarning,
        )
        yield


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request; ``checkpoint`` is where it can resume from (or None)."""

    def __init__(self, checkpoint: Path | None):
        super().__init__(
            f"training interrupted; resume with resume_from_checkpoint={str(checkpoint)!r}"
            if checkpoint is not None
            else "training interrupted; no checkpoint_path was configured, so nothing was saved"
        )
        self.checkpoint = checkpoint


def stop_with_checkpoint(trainer: Any) -> None:
    """Save a checkpoint named after the samples seen and raise :class:`TrainingInterrupted`:
    what a stop request does at a step boundary, for one trainer or a coordinator of several."""
    name = str(trainer.n_training_samples)
    trainer.save_checkpoint(checkpoint_name=name)
    base = trainer.cfg.checkpoint_path
    raise TrainingInterrupted(Path(base) / name if base is not None else None)


@dataclass
class Snapshots:
    """Every layer saved (by ``save``, given the tokens trained on) once the run has trained on
    each of ``tokens`` tokens; a resumed run skips those already passed."""

    tokens: Sequence[int] = ()
    save: Callable[[int], None] | None = None
    due: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.due = sorted(self.tokens)

    def take_due(self, n_training_samples: int) -> None:
        if self.due and self.due[0] <= n_training_samples:  # sorted: the first is the next
            if self.save is not None:
                self.save(n_training_samples)
            self.skip_to(n_training_samples)

    def skip_to(self, n_training_samples: int) -> None:
        self.due = [t for t in self.due if t > n_training_samples]


def end_of_step(trainer: Any) -> None:
    """After a step's checkpoint, for one trainer or a coordinator of several: the snapshots
    now due, then a stop request, honoured on every rank when any of them was asked."""
    trainer.snapshots.take_due(trainer.n_training_samples)
    if trainer.distributed.any(trainer.stop_requested):
        stop_with_checkpoint(trainer)


class RunEndMixin:
    """Evaluation at the last step and a progress bar that counts every step, for SAELens's
    single and multi-layer trainers (which evaluate every ``wandb_log_frequency ·
    eval_every_n_wandb_logs`` steps and advance the bar in strides of 100 steps)."""

    cfg: Any
    n_training_steps: int
    n_training_samples: int

    def _run_and_log_evals(self) -> None:
        logger = self.cfg.logger
        interval = logger.wandb_log_frequency * logger.eval_every_n_wandb_logs
        on_schedule = (self.n_training_steps + 1) % interval == 0
        if on_schedule or self.n_training_samples < self.cfg.total_training_samples:
            super()._run_and_log_evals()  # type: ignore[misc]
            return
        # the last step: evaluate now, through SAELens's own logging of the metrics
        self.cfg.logger = replace(logger, wandb_log_frequency=1, eval_every_n_wandb_logs=1)
        try:
            super()._run_and_log_evals()  # type: ignore[misc]
        finally:
            self.cfg.logger = logger

    @torch.no_grad()
    def _update_pbar(self, step_output: Any, pbar: Any, update_interval: int = 100) -> None:
        last = self.n_training_samples >= self.cfg.total_training_samples
        if self.n_training_steps % update_interval == 0 or last:
            pbar.set_description(f"{self.n_training_steps}| {_loss_text(step_output)}")
        # the last batch may overshoot the budget: the bar stops at its total
        pbar.update(min(self.n_training_samples, self.cfg.total_training_samples) - pbar.n)


def _loss_text(step_output: Any) -> str:
    """``name: value`` of every loss of one step (or of each layer's total, for several)."""
    if isinstance(step_output, dict):
        return " | ".join(f"{name}: {out.loss.item():.4f}" for name, out in step_output.items())
    return " | ".join(f"{name}: {float(value):.5f}" for name, value in step_output.losses.items())


class PairedSAETrainer(RunEndMixin, SAETrainer[Any, Any]):
    """``distributed``: this process's rank in a data-parallel run; each step's batch is this
    rank's share, gradients and firing counts are summed over ranks, and only rank 0 writes
    checkpoints (see :mod:`mxd_saelens.distributed`)."""

    stop_requested: bool = False

    def __init__(
        self,
        *args: Any,
        distributed: Distributed | None = None,
        snapshots: Snapshots | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.distributed = distributed or Distributed()
        self.snapshots = snapshots or Snapshots()
        self._forward = (
            data_parallel(self.sae, self.distributed) if self.distributed.enabled else None
        )
        normalize = getattr(self.sae, "normalize_experts", None)
        if normalize is not None:
            self.optimizer.register_step_post_hook(lambda *_: normalize())

    def step(self, batch: Tensor) -> TrainStepOutput:
        output = super().step(batch)
        # samples count every rank's share, so budgets and checkpoint names are the run's
        self.n_training_samples += batch.shape[0] * (self.distributed.world_size - 1)
        return output

    def _checkpoint_if_needed(self) -> None:
        # SAETrainer.fit counts the step only after this call; count it now so that what is
        # saved describes the completed steps
        self.n_training_steps += 1
        try:
            super()._checkpoint_if_needed()
            end_of_step(self)
        finally:
            self.n_training_steps -= 1

    def load_trainer_state(self, checkpoint_path: str | Path) -> None:
        super().load_trainer_state(checkpoint_path)
        self.snapshots.skip_to(self.n_training_samples)

    def save_checkpoint(self, checkpoint_name: str, *args: Any, **kwargs: Any) -> None:
        if self.distributed.is_main:  # the ranks hold the same state: one writes it
            super().save_checkpoint(checkpoint_name, *args, **kwargs)
        self.distributed.barrier()

    def _train_step(self, sae: TrainingSAE[Any], sae_in: Tensor) -> TrainStepOutput:
        sae.train()
        forward = self._forward or sae.training_forward_pass
        with self.autocast_if_enabled:
            output = forward(
                step_input=TrainStepInput(
                    sae_in=sae_in,
                    dead_neuron_mask=self.dead_neurons,
                    coefficients=self.get_coefficients(),
                    n_training_steps=self.n_training_steps,
                    is_logging_step=self._is_logging_step(),
                )
            )
            counts = self._count_firing(output.feature_acts)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._balance_selection(sae, counts)
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        return output

    def _balance_selection(self, sae: TrainingSAE[Any], counts: Tensor) -> None:
        rate = getattr(sae.cfg, "balance_rate", 0.0)
        if not rate:
            return
        if sae.cfg.balance_schedule == "lr":  # type: ignore[attr-defined]
            # the rate of the step just taken, before the scheduler moves on
            rate *= self.optimizer.param_groups[0]["lr"] / self.cfg.lr
        balance_selection_bias(
            sae.selection_bias(),
            counts,
            rate,
            sae.cfg.balance_mode,  # type: ignore[attr-defined]
            silent_steps=self.n_forward_passes_since_fired,  # counted by _count_firing this step
            window=getattr(sae.cfg, "balance_window", 1),
        )

    @torch.no_grad()
    def _count_firing(self, feature_acts: Tensor) -> Tensor:
        """How often each feature fired in this batch (``[tokens, d_sae]`` codes, dense or
        sparse COO), into SAELens's running statistics; returns the counts over every rank."""
        if feature_acts.is_sparse:
            fired = feature_acts._values() != 0  # uncoalesced: each (token, unit) entry once
            units = feature_acts._indices()[-1][fired]
            counts = torch.bincount(units, minlength=feature_acts.shape[-1])
        else:
            counts = (feature_acts != 0).reshape(-1, feature_acts.shape[-1]).sum(0)
        counts = self.distributed.sum_(counts)  # every rank's share of the batch
        self.n_forward_passes_since_fired += 1
        self.n_forward_passes_since_fired[counts > 0] = 0
        self.act_freq_scores += counts.to(self.act_freq_scores.dtype)
        self.n_frac_active_samples += self.cfg.train_batch_size_samples
        return counts

    def build_train_step_log_dict(
        self, output: TrainStepOutput, n_training_samples: int
    ) -> dict[str, Any]:
        log = super().build_train_step_log_dict(output, n_training_samples)
        log["sparsity/dead_fraction"] = self.dead_neurons.float().mean().item()
        return log
