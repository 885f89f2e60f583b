"""TopK skip transcoder, ``"topk_skip_transcoder"``: a TopK transcoder plus an affine skip path,
``y = W_decᵀ TopK_k(ReLU(W_encᵀx + b_enc)) + W_skip x + b_dec``.

Training starts with a zero skip matrix and a zero decoder, so the layer starts as its output
bias. ``W_skip`` has SAELens's ``SkipTranscoder`` shape, ``[d_out, d_in]``.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class TopKSkipTranscoderConfig(TopKTranscoderConfig):
    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_skip_transcoder"


class TopKSkipTranscoder(TopKTranscoder):
    """Inference TopK skip transcoder."""

    W_skip: nn.Parameter

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        add_skip_matrix(self, self.cfg.d_in, self.cfg.d_out)

    @override
    def skip_output(self, x: Tensor) -> Tensor:
        return x.to(self.dtype) @ self.W_skip.T


@dataclass(kw_only=True)
class TopKSkipTranscoderTrainingSAEConfig(TopKTranscoderTrainingSAEConfig):
    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_skip_transcoder"


class TopKSkipTranscoderTrainingSAE(TopKTranscoderTrainingSAE):
    """Training TopK skip transcoder."""

    W_skip: nn.Parameter
    zero_decoder_init = True

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        add_skip_matrix(self, self.cfg.d_in, self.cfg.d_out)

    @override
    def skip_output(self, x: Tensor) -> Tensor:
        return x.to(self.dtype) @ self.W_skip.T
