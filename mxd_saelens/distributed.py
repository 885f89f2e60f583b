"""Data-parallel training with ``torch.distributed`` (``torchrun --nproc_per_node N -m
mxd_saelens train ...``, from a paired activation cache or streaming from the model).

Every rank holds the whole layer and trains on its own ``1/N`` of every batch: read from a
paired activation cache, or, when streaming, cut from the activations of one store batch whose
forward the ranks share (each runs the model on ``1/N`` of its sequences and the activations
are all-gathered: see :mod:`mxd_saelens.data.paired_store`). ``DistributedDataParallel`` averages
the gradients; the loss is a mean over tokens,
so N ranks at ``B/N`` tokens each take the step one process takes at ``B``. Firing statistics
and the output bias's initial mean are summed over ranks, so every rank holds the same trainer
state. Rank 0 alone logs, evaluates and writes (checkpoints, the final layer); a stop request
seen by any rank stops every rank after the same step, with one checkpoint. Backend: gloo on
CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "cpu") -> Distributed:
        """The run torchrun started this process in (``WORLD_SIZE``, ``RANK``), joined once;
        one process when there is none."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size())

    def _reduce(self, tensor: Tensor, op: Any, group: Any = None) -> None:
        if dist.get_backend(group) == "nccl" and tensor.device.type != "cuda":  # NCCL: CUDA only
            on_device = tensor.cuda()
            dist.all_reduce(on_device, op=op, group=group)
            tensor.copy_(on_device)
        else:
            dist.all_reduce(tensor, op=op, group=group)

    def sum_(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over ranks, in place."""
        if self.enabled:
            self._reduce(tensor, dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, group: Any = None) -> bool:
        """Whether any rank's ``flag`` is set (every rank must call it at the same point)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)])
        self._reduce(value, dist.ReduceOp.MAX, group)
        return bool(value.item())

    def new_group(self) -> Any:
        """A process group of every rank beside the default one: collectives on it may run in
        another thread (a background refill's) while the training step uses the default group.
        Every rank must call it at the same point."""
        return dist.new_group() if self.enabled else None

    def gather(self, tensor: Tensor, group: Any = None) -> Tensor:
        """Every rank's ``tensor`` (the same shape on all), concatenated along dim 0 in rank
        order, on ``tensor``'s device."""
        if not self.enabled:
            return tensor
        nccl = dist.get_backend(group) == "nccl"
        local = tensor.contiguous()
        local = local.cuda() if nccl else local.cpu()  # NCCL: CUDA tensors; gloo: CPU
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local, group=group)
        return torch.cat(parts).to(tensor.device)

    @torch.no_grad()
    def copy_from_main_(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters (after an initialisation from each rank's own
        share of the data, such as a warm start)."""
        if self.enabled:
            for param in module.parameters():
                dist.broadcast(param.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


class TrainingForward(nn.Module):
    """``sae.training_forward_pass`` as a module's ``forward``: what DistributedDataParallel
    wraps, so that the backward of its loss averages the gradients over ranks."""

    def __init__(self, sae: nn.Module):
        super().__init__()
        self.sae = sae

    def forward(self, step_input: Any) -> Any:
        return self.sae.training_forward_pass(step_input=step_input)  # type: ignore[operator]


def data_parallel(sae: nn.Module, distributed: Distributed) -> nn.Module:
    """The layer's training forward, its gradients averaged over ranks. DDP's constructor also
    copies rank 0's weights to every rank."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(TrainingForward(sae), find_unused_parameters=True)


def check_distributed_config(cfg: Any, distributed: Distributed) -> None:
    """What data-parallel training needs, said before the model loads."""
    if not distributed.enabled:
        return
    if cfg.cached_activations_path is None:
        check_shardable(cfg.store_batch_size_prompts, distributed.world_size)
    if cfg.train_batch_size_tokens % distributed.world_size:
        raise ValueError(
            f"train_batch_size_tokens={cfg.train_batch_size_tokens} does not split evenly over "
            f"{distributed.world_size} processes; make it a multiple of {distributed.world_size}."
        )
    if cfg.sae.normalize_activations != "none":
        raise ValueError(
            f"normalize_activations={cfg.sae.normalize_activations!r} is not supported with "
            "several processes (each would estimate its own scale); use 'none'."
        )


def check_shardable(store_batch_size_prompts: int, world_size: int) -> None:
    """A store batch's sequences must split evenly over the ranks that run the model on them."""
    if store_batch_size_prompts % world_size:
        raise ValueError(
            f"store_batch_size_prompts={store_batch_size_prompts} does not split evenly over "
            f"{world_size} processes (each runs the model on its share of every store batch); "
            f"make it a multiple of {world_size}."
        )
