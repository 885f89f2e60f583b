"""TopK skip transcoder, ``"topk_skip_transcoder"``: a TopK transcoder plus an affine skip path,
``y = W_decᵀ TopK_k(ReLU(W_encᵀx + b_enc)) + W_skip x + b_dec``.

Training starts with a zero skip matrix and a zero decoder, so the layer starts as its output
bias. ``W_skip`` has SAELens's ``SkipTranscoder`` shape, ``[d_out, d_in]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from mxd_saelens.saes.topk_transcoder import (
    TopKTranscoder,
    TopKTranscoderConfig,
    TopKTranscoderTrainingSAE,
    TopKTranscoderTrainingSAEConfig,
)


def add_skip_matrix(sae: nn.Module, d_in: int, d_out: int) -> None:
    sae.W_skip = nn.Parameter(
        torch.zeros(d_out, d_in, dtype=sae.dtype, device=sae.device)  # type: ignore[arg-type]
    )


class SkipPath:
    """The skip path ``x ↦ W_skip x`` (``W_skip`` ``[d_out, d_in]``, SAELens's
    ``SkipTranscoder`` layout, starting at zero), the one place every skip transcoder here
    gets it from. Put it before the transcoder class in the bases."""

    W_skip: nn.Parameter
    cfg: Any
    dtype: torch.dtype

    def initialize_weights(self) -> None:
        super().initialize_weights()  # type: ignore[misc]
        add_skip_matrix(self, self.cfg.d_in, self.cfg.d_out)  # type: ignore[arg-type]

    def skip_output(self, x: Tensor) -> Tensor:
        return x.to(self.dtype) @ self.W_skip.T


@dataclass
class TopKSkipTranscoderConfig(TopKTranscoderConfig):
    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_skip_transcoder"


class TopKSkipTranscoder(SkipPath, TopKTranscoder):
    """Inference TopK skip transcoder."""


@dataclass(kw_only=True)
class TopKSkipTranscoderTrainingSAEConfig(TopKTranscoderTrainingSAEConfig):
    """Training config of a TopK skip transcoder (saves as ``"topk_skip_transcoder"``): the
    TopK transcoder's fields, and a linear skip path from input to output."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_skip_transcoder"


class TopKSkipTranscoderTrainingSAE(SkipPath, TopKTranscoderTrainingSAE):
    """Training TopK skip transcoder."""

    zero_decoder_init = True
