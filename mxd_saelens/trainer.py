"""SAELens's ``SAETrainer`` with what paired training adds.

- Checkpoints record the number of *completed* steps, so a resumed run continues its logging
  and evaluation schedule exactly where the interrupted one stopped.
- A stop request (Ctrl-C, SIGTERM) is honoured at the next step boundary: the trainer saves a
  checkpoint and raises :class:`TrainingInterrupted`, so no step is half-applied.
- An MxD's expert vectors go back to unit norm after every optimiser step.
- Logged: the dead fraction of experts or latents beside SAELens's dead count.
- The firing statistics of a layer with sparse codes are counted from the codes' indices: the
  same numbers as SAELens's reductions over a ``[tokens, d_sae]`` sparse tensor, which would
  otherwise cost about as much as the layer's whole step.

``_train_step`` mirrors ``SAETrainer._train_step`` of SAELens 6.x step for step (forward,
firing statistics, backward, gradient clipping at norm 1, Adam, schedulers); it is the one
place where this package depends on that private method.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer
from torch import Tensor


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


class PairedSAETrainer(SAETrainer[Any, Any]):
    stop_requested: bool = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        normalize = getattr(self.sae, "normalize_experts", None)
        if normalize is not None:
            self.optimizer.register_step_post_hook(lambda *_: normalize())

    def _checkpoint_if_needed(self) -> None:
        # SAETrainer.fit counts the step only after this call; count it now so that what is
        # saved describes the completed steps
        self.n_training_steps += 1
        try:
            super()._checkpoint_if_needed()
            if self.stop_requested:
                stop_with_checkpoint(self)
        finally:
            self.n_training_steps -= 1

    def _train_step(self, sae: TrainingSAE[Any], sae_in: Tensor) -> TrainStepOutput:
        sae.train()
        with self.autocast_if_enabled:
            output = sae.training_forward_pass(
                step_input=TrainStepInput(
                    sae_in=sae_in,
                    dead_neuron_mask=self.dead_neurons,
                    coefficients=self.get_coefficients(),
                    n_training_steps=self.n_training_steps,
                    is_logging_step=self._is_logging_step(),
                )
            )
            self._count_firing(output.feature_acts)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        return output

    @torch.no_grad()
    def _count_firing(self, feature_acts: Tensor) -> None:
        """How often each feature fired in this batch (``[tokens, d_sae]`` codes, dense or
        sparse COO), into SAELens's running statistics."""
        if feature_acts.is_sparse:
            fired = feature_acts._values() != 0  # uncoalesced: each (token, unit) entry once
            units = feature_acts._indices()[-1][fired]
            counts = torch.bincount(units, minlength=feature_acts.shape[-1])
        else:
            counts = (feature_acts != 0).reshape(-1, feature_acts.shape[-1]).sum(0)
        self.n_forward_passes_since_fired += 1
        self.n_forward_passes_since_fired[counts > 0] = 0
        self.act_freq_scores += counts.to(self.act_freq_scores.dtype)
        self.n_frac_active_samples += self.cfg.train_batch_size_samples

    def build_train_step_log_dict(
        self, output: TrainStepOutput, n_training_samples: int
    ) -> dict[str, Any]:
        log = super().build_train_step_log_dict(output, n_training_samples)
        log["sparsity/dead_fraction"] = self.dead_neurons.float().mean().item()
        return log
