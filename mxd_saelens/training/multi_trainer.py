"""SAELens's ``MultiSAETrainer`` for several paired layers trained in lockstep: one
:class:`~mxd_saelens.training.trainer.PairedSAETrainer` per layer, each with its own trainer
config (learning rate, schedule …), plus what the single trainer adds: steps counted when saved,
stop requests at a step boundary, snapshots and data parallelism."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from torch import Tensor

from mxd_saelens.distributed import Distributed
from mxd_saelens.training.trainer import (
    PairedSAETrainer,
    RunEndMixin,
    Snapshots,
    end_of_step,
)


class MultiPairedTrainer(RunEndMixin, MultiSAETrainer):
    stop_requested: bool = False

    def __init__(
        self,
        cfg: SAETrainerConfig,
        layer_cfgs: Mapping[str, SAETrainerConfig],
        saes: Mapping[str, TrainingSAE[Any]],
        data_provider: Iterator[dict[str, Tensor]],
        evaluator: Any = None,
        save_checkpoint_fn: Any = None,
        snapshots: Snapshots | None = None,
        distributed: Distributed | None = None,
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
        self.distributed = distributed or Distributed()
        self.snapshots = snapshots or Snapshots()
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
                distributed=self.distributed,
            )
            for name, sae in self.saes.items()
        }

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
            end_of_step(self)
        finally:
            self._advance_steps(-1)

    def load_checkpoint(self, path: str | Path) -> None:
        super().load_checkpoint(path)
        self.snapshots.skip_to(self.n_training_samples)
