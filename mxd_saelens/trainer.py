"""SAELens's ``SAETrainer`` with what paired training adds.

- Checkpoints record the number of *completed* steps, so a resumed run continues its logging
  and evaluation schedule exactly where the interrupted one stopped.
- A stop request (Ctrl-C, SIGTERM) is honoured at the next step boundary: the trainer saves a
  checkpoint and raises :class:`TrainingInterrupted`, so no step is half-applied.
- An MxD's expert vectors go back to unit norm after every optimiser step.
- Logged: the dead fraction of experts or latents beside SAELens's dead count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_lens.saes.sae import TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request; ``checkpoint`` is where it can resume from (or None)."""

    def __init__(self, checkpoint: Path | None):
        super().__init__(
            f"training interrupted; resume with resume_from_checkpoint={str(checkpoint)!r}"
            if checkpoint is not None
            else "training interrupted; no checkpoint_path was configured, so nothing was saved"
        )
        self.checkpoint = checkpoint


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
                name = str(self.n_training_samples)
                self.save_checkpoint(checkpoint_name=name)
                base = self.cfg.checkpoint_path
                raise TrainingInterrupted(Path(base) / name if base is not None else None)
        finally:
            self.n_training_steps -= 1

    def build_train_step_log_dict(
        self, output: TrainStepOutput, n_training_samples: int
    ) -> dict[str, Any]:
        log = super().build_train_step_log_dict(output, n_training_samples)
        log["sparsity/dead_fraction"] = self.dead_neurons.float().mean().item()
        return log
