"""What every layer trained on (MLP input, MLP output) pairs shares.

SAELens's trainer hands a training SAE one tensor per step and assumes it is both input and
target. A paired layer receives packed rows ``[x ‖ y]`` (the MLP's input and output for the same
token, kept together through the store's shuffling) and splits them here. The step output puts
the *target* in ``sae_in``, so the trainer's explained variance is measured against the MLP
output, not the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainStepInput, TrainStepOutput
from torch import Tensor

LossKind = Literal["normalized_mse", "mse"]
LOSS_KINDS: tuple[str, ...] = ("normalized_mse", "mse")


@dataclass(kw_only=True)
class PairedTrainingFields:
    """Training options shared by every paired architecture."""

    loss: str = "normalized_mse"
    """``normalized_mse``: squared error divided by the target token's L2 norm, averaged over
    tokens and output dims (the MxD paper's loss). ``mse``: the plain mean squared error."""

    def _validate_loss(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"loss={self.loss!r} is not supported; choose one of {LOSS_KINDS}.")


def split_pair(batch: Tensor, d_in: int, d_out: int) -> tuple[Tensor, Tensor]:
    """Split packed ``[x ‖ y]`` rows into the layer's input and its target."""
    if batch.shape[-1] != d_in + d_out:
        raise ValueError(
            f"expected packed [mlp_in ‖ mlp_out] rows of width d_in + d_out = {d_in} + {d_out} = "
            f"{d_in + d_out}, got width {batch.shape[-1]}. Train through "
            "mxd_saelens.PairedTrainingRunner (its store packs the pairs), or pass "
            "torch.cat([x, y], dim=-1) yourself."
        )
    # one reduction first (cheap); the elementwise check only if the sum is not finite
    if not torch.isfinite(batch.sum()) and not torch.isfinite(batch).all():
        raise ValueError(
            "the training batch contains NaN or infinite activations; check the model's dtype "
            "(float16 overflow is the usual cause) or the activation normalisation settings."
        )
    return batch[..., :d_in], batch[..., d_in:]


def reconstruction_loss(prediction: Tensor, target: Tensor, kind: str) -> Tensor:
    """The training loss between the layer's output and the MLP's output."""
    squared_error = (prediction - target.to(prediction.dtype)).pow(2)
    if kind == "normalized_mse":
        target_norm = target.to(prediction.dtype).norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return (squared_error / target_norm).mean()
    if kind == "mse":
        return squared_error.mean()
    raise ValueError(f"loss={kind!r} is not supported; choose one of {LOSS_KINDS}.")


@torch.no_grad()
def normalized_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Σ‖ŷ − y‖² / Σ‖y‖² over the batch: 0 is perfect, 1 is as bad as predicting zero."""
    target = target.to(prediction.dtype)
    return (prediction - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


@dataclass
class LayerOutput:
    """One training forward of a paired layer."""

    output: Tensor  # [B, d_out]
    feature_acts: Tensor  # [B, d_sae], dense, for the trainer's firing statistics
    hidden_pre: Tensor  # [B, d_sae], pre-activations of the sparse codes (detached)


def paired_training_forward_pass(
    step_input: TrainStepInput,
    d_in: int,
    d_out: int,
    loss_kind: str,
    forward: Callable[[Tensor], LayerOutput],
    extra_losses: Callable[[LayerOutput, TrainStepInput], dict[str, Tensor]] | None = None,
) -> TrainStepOutput:
    """SAELens's ``training_forward_pass`` for a layer trained on (input, target) pairs."""
    x, y = split_pair(step_input.sae_in, d_in, d_out)
    result = forward(x)
    recon = reconstruction_loss(result.output, y, loss_kind)
    losses = {"mse_loss": recon}
    if extra_losses is not None:
        losses.update(extra_losses(result, step_input))
    total = recon
    for name, value in losses.items():
        if name != "mse_loss":
            total = total + value
    return TrainStepOutput(
        sae_in=y,
        sae_out=result.output,
        feature_acts=result.feature_acts,
        hidden_pre=result.hidden_pre,
        loss=total,
        losses=losses,
        metrics={"normalized_mse": lambda: normalized_mse(result.output.detach(), y)},
    )


class PairedTrainingSAE(TrainingSAE[Any]):
    """What every paired training class shares with SAELens's ``TrainingSAE`` contract: no
    auxiliary loss or coefficients unless a subclass adds them, and the output bias started at
    the mean target. The math lives in each architecture's own class."""

    @torch.no_grad()
    def initialize_output_bias(self, target_mean: Tensor) -> None:
        """Start the output bias at the mean of the training targets."""
        if target_mean.shape != self.b_dec.shape:
            raise ValueError(
                f"target mean has shape {tuple(target_mean.shape)}, expected ({self.cfg.d_out},)."
            )
        self.b_dec.copy_(target_mean.to(self.b_dec))

    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: Tensor,
        hidden_pre: Tensor,
        sae_out: Tensor,
    ) -> dict[str, Tensor]:
        return {}

    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}
