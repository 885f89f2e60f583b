"""Training batches from a paired activation cache instead of the model.

The rows of every epoch are a fresh permutation of the whole cache, seeded by ``(seed, epoch)``;
batches are consecutive slices of the epochs laid end to end, so each epoch serves every row
exactly once and a run longer than the cache simply reads it again, reshuffled. The state is two
integers (epoch, position), saved with each checkpoint with the cache's id, so a resumed run
serves exactly the batches the uninterrupted run would have. Several blocks are read with the
same permutation and packed side by side, as one shared forward packs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mxd_saelens.data.cache_format import PairedCache, as_tensor

CACHE_STATE_FILENAME = "paired_cache_state.safetensors"


class CachedPairedActivations:
    """An iterator of ``[batch_rows, Σ (d_in + d_out)]`` packed rows of ``blocks`` (in that
    order), drawn from ``cache`` without replacement within each epoch."""

    def __init__(
        self,
        cache: PairedCache,
        blocks: Sequence[int],
        batch_rows: int,
        seed: int,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype | None = None,
    ):
        """Rows are served as ``dtype`` (default: the cache's). With ``world_size`` > 1, every
        batch of ``batch_rows`` is split in ``world_size`` consecutive shares and this iterator
        serves share ``rank``: together the ranks read exactly the batches one process would."""
        if cache.n_tokens < batch_rows:
            raise ValueError(
                f"the activation cache {cache.path} holds {cache.n_tokens} tokens, fewer than "
                f"one batch (train_batch_size_tokens={batch_rows}): cache more tokens, or use "
                "smaller batches."
            )
        self.cache = cache
        self.blocks = list(blocks)
        self.files = [cache.rows(block) for block in self.blocks]
        self.d_in = sum(cache.blocks[b].width for b in self.blocks)  # the packed width
        self.batch_rows = batch_rows
        self.seed = seed
        self.device = torch.device(device)
        self.dtype = dtype
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0  # rows of this epoch already served, by all ranks together
        self._order: np.ndarray | None = None

    @property
    def n_tokens(self) -> int:
        return self.cache.n_tokens

    def order(self, epoch: int) -> np.ndarray:
        """The permutation of the cache's rows that epoch ``epoch`` serves."""
        seed = self.seed % 2**64  # numpy's seeds are non-negative; torch's may not be
        return np.random.default_rng([seed, epoch]).permutation(self.n_tokens)

    def __iter__(self) -> CachedPairedActivations:
        return self

    def __next__(self) -> torch.Tensor:
        parts, needed = [], self.batch_rows
        while needed:
            if self._order is None:
                self._order = self.order(self.epoch)
            take = self._order[self.position : self.position + needed]
            parts.append(take)
            needed -= take.shape[0]
            self.position += take.shape[0]
            if self.position == self.n_tokens:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        index = np.concatenate(parts)
        share = self.batch_rows // self.world_size
        index = index[self.rank * share : (self.rank + 1) * share]
        rows = [as_tensor(file[index], self.cache.dtype) for file in self.files]
        return torch.cat(rows, dim=1).to(self.device, self.dtype)

    def model_paused(self) -> AbstractContextManager[None]:
        """Nothing runs in the background here (the interface of the streaming store)."""
        return nullcontext()

    def close(self) -> None:
        """Nothing to stop (the interface of the streaming store)."""

    # --- checkpoints: the epoch and the position in it --------------------------------------

    def save_to_checkpoint(self, checkpoint_path: str | Path) -> None:
        state = {
            "epoch": torch.tensor(self.epoch),
            "position": torch.tensor(self.position),
            "world_size": torch.tensor(self.world_size),
        }
        save_file(
            state,
            str(Path(checkpoint_path) / CACHE_STATE_FILENAME),
            metadata={"cache_id": self.cache.cache_id},
        )

    def load_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        path = Path(checkpoint_path) / CACHE_STATE_FILENAME
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint is not of a run trained from an activation "
                "cache (resume it without cached_activations_path), or was only partly copied."
            )
        with safe_open(str(path), framework="pt") as f:
            cache_id = (f.metadata() or {}).get("cache_id")
        if cache_id != self.cache.cache_id:
            raise ValueError(
                f"the checkpoint {checkpoint_path} was trained from another activation cache "
                f"than {self.cache.path} (cache_id {cache_id} against {self.cache.cache_id}): "
                "resume with the cache it was trained from."
            )
        state = load_file(str(path))
        saved_world = int(state.get("world_size", torch.tensor(1)))
        if saved_world != self.world_size:
            raise ValueError(
                f"the checkpoint {checkpoint_path} was written by {saved_world} process(es); "
                f"resume it with the same number (torchrun --nproc_per_node {saved_world}), not "
                f"{self.world_size}."
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = None
