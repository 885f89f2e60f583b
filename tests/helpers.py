"""Small builders shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Give every parameter random values (the default init leaves some at zero)."""
    generator = torch.Generator().manual_seed(seed)
    for param in module.parameters():
        param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
    if hasattr(module, "normalize_experts"):
        module.normalize_experts()
    return module


def grads_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def zero_grads(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = None
