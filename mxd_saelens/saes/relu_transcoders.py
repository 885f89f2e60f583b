"""Training classes for SAELens's own ReLU ``transcoder`` and ``skip_transcoder``.

``y = W_decᵀ ReLU(W_encᵀx + b_enc) + b_dec`` (plus ``W_skip x`` for the skip variant), trained
with an L1 penalty on the codes weighted by decoder-row norms. They save in SAELens's stock
inference formats, so the result loads with plain SAELens (``Transcoder`` / ``SkipTranscoder``)
without this package.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAEConfig, TrainStepInput
from torch import Tensor
from typing_extensions import override

from mxd_saelens.saes.paired import LayerOutput, PairedTrainingFields
from mxd_saelens.saes.topk_skip_transcoder import SkipPath
from mxd_saelens.saes.topk_transcoder import (
    PairedTrainingTranscoder,
    check_dims,
    init_transcoder_weights,
)


@dataclass(kw_only=True)
class TranscoderTrainingSAEConfig(TrainingSAEConfig, PairedTrainingFields):
    """Training config of SAELens's ReLU transcoder (saves as ``"transcoder"``)."""

    d_out: int = 0
    """The output width; 0 means ``d_in``."""
    l1_coefficient: float = 1e-3
    """Weight of the L1 penalty Σᵢ fᵢ‖W_dec,ᵢ‖ (averaged over tokens)."""
    l1_warm_up_steps: int = 0
    """Steps over which the L1 coefficient ramps up from zero."""
    apply_b_dec_to_input: bool = False
    decoder_init_norm: float | None = None

    @override
    @classmethod
    def architecture(cls) -> str:
        return "transcoder"

    def __post_init__(self) -> None:
        if self.apply_b_dec_to_input:
            raise ValueError("apply_b_dec_to_input is not supported for transcoders.")
        self.d_out = self.d_out or self.d_in
        check_dims(self.d_in, self.d_sae, self.d_out)
        if self.l1_coefficient < 0:
            raise ValueError(f"l1_coefficient must be non-negative, got {self.l1_coefficient}.")
        self._validate_loss()
        super().__post_init__()


@dataclass(kw_only=True)
class SkipTranscoderTrainingSAEConfig(TranscoderTrainingSAEConfig):
    """Training config of SAELens's ReLU skip transcoder (saves as ``"skip_transcoder"``)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "skip_transcoder"


class TranscoderTrainingSAE(PairedTrainingTranscoder):
    """Training ReLU transcoder with an L1 penalty."""

    cfg: TranscoderTrainingSAEConfig  # type: ignore[assignment]
    zero_decoder_init: bool = False

    def __init__(self, cfg: TranscoderTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    @override
    def initialize_weights(self) -> None:
        init_transcoder_weights(self, zero_decoder=self.zero_decoder_init)

    def skip_output(self, x: Tensor) -> Tensor | None:
        return None

    @override
    def training_layer_output(self, x: Tensor) -> LayerOutput:
        pre = self.process_sae_in(x) @ self.W_enc + self.b_enc
        codes = pre.relu()
        out = codes @ self.W_dec + self.b_dec
        skip = self.skip_output(x)
        if skip is not None:
            out = out + skip
        return LayerOutput(output=out, feature_acts=codes, hidden_pre=pre.detach())

    @override
    def extra_losses(self, result: LayerOutput, step_input: TrainStepInput) -> dict[str, Tensor]:
        weighted = result.feature_acts * self.W_dec.norm(dim=-1)
        return {"l1_loss": step_input.coefficients["l1"] * weighted.sum(dim=-1).mean()}

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            "l1": TrainCoefficientConfig(
                value=self.cfg.l1_coefficient, warm_up_steps=self.cfg.l1_warm_up_steps
            )
        }

    @override
    def forward(self, x: Tensor) -> Tensor:
        out = self.decode(self.encode(x))
        skip = self.skip_output(x)
        return out if skip is None else out + skip


class SkipTranscoderTrainingSAE(SkipPath, TranscoderTrainingSAE):
    """Training ReLU skip transcoder; skip matrix and decoder start at zero."""

    zero_decoder_init = True
