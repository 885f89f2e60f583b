"""Small helpers shared by the architectures."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mxd_saelens.ops.sparse_topk import TopKCodes


def has_hooks(hook_point: nn.Module) -> bool:
    """Whether anything (a cache, a steering hook) is attached to this hook point."""
    return bool(getattr(hook_point, "_forward_hooks", None)) or bool(
        getattr(hook_point, "_backward_hooks", None)
    )


def linear_init_(weight: Tensor, fan_in: int) -> Tensor:
    """The default ``nn.Linear`` initialisation, U(−1/√fan_in, 1/√fan_in), in place."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def check_state_dict_shapes(module: nn.Module, state_dict: dict[str, Any]) -> None:
    """Fail with a readable message when saved weights do not fit the layer's config."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state_dict.items()}
    problems = [f"missing tensor {name!r}" for name in expected if name not in found]
    problems += [f"unexpected tensor {name!r}" for name in found if name not in expected]
    problems += [
        f"{name!r} has shape {found[name]}, the config implies {shape}"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    ]
    if problems:
        raise ValueError(
            f"the weights do not match the {type(module).__name__} config: "
            + "; ".join(problems)
            + ". Check that cfg.json and sae_weights.safetensors come from the same training run."
        )


@dataclass
class EncodingMemo:
    """What ``encode`` leaves for ``decode``: the dense codes it returned and their sparse form.

    SAELens calls ``decode(encode(x))`` (``HookedSAETransformer`` does); when ``decode`` gets
    back the very tensor ``encode`` returned, unmodified, it can decode from the k selected
    units instead of multiplying the dense code matrix.
    """

    dense: Tensor
    version: int
    codes: TopKCodes | None
    hidden: Tensor | None = None

    @classmethod
    def of(cls, dense: Tensor, codes: TopKCodes | None) -> EncodingMemo:
        # inference-mode tensors keep no version counter: without one an in-place edit could
        # not be told apart, so such codes are always decoded densely
        if dense.is_inference():
            return cls(dense, -1, None)
        return cls(dense, dense._version, codes)

    def codes_for(self, feature_acts: Tensor) -> TopKCodes | None:
        if self.codes is None or feature_acts is not self.dense:
            return None
        return self.codes if feature_acts._version == self.version else None


def forget_encoding(layer: nn.Module) -> None:
    """Drop the :class:`EncodingMemo` that ``encode`` left on ``layer`` (and on any module
    inside it). The memo holds a batch's dense codes, ``[batch, pos, n_codes]``, until the next
    call: an evaluation of many layers that keeps it alive holds one such tensor per layer."""
    for module in layer.modules():
        if getattr(module, "_last_encoding", None) is not None:
            module._last_encoding = None
