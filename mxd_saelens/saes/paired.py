"""What every layer trained on (MLP input, MLP output) pairs shares.

SAELens's trainer hands a training SAE one tensor per step and assumes it is both input and
target. A paired layer receives packed rows ``[x ‖ y]`` (the MLP's input and output for the same
token, kept together through the store's shuffling) and splits them here. The step output puts
the *target* in ``sae_in``, so the trainer's explained variance is measured against the MLP
output, not the input.

Beyond the MxD paper (which has no dead-feature handling): an opt-in auxiliary loss in the style of
TopK SAEs (Gao et al. 2024, "AuxK") that makes the features flagged dead predict the residual of
the main output (:class:`DeadFeatureAuxFields`, :func:`dead_feature_aux_loss`); and a controller
on the bias that selects the top k, nudged after every step toward balanced usage
(:class:`SelectionBalanceFields`, :func:`balance_selection_bias`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainStepInput, TrainStepOutput
from torch import Tensor

from mxd_saelens.ops.sparse_topk import TopKCodes, subset_topk

LossKind = Literal["normalized_mse", "mse"]
LOSS_KINDS: tuple[str, ...] = ("normalized_mse", "mse")
AUX_LOSS_NAME = "auxiliary_reconstruction_loss"  # the key SAELens's TopK SAEs log AuxK under


# how a layer starts: the paper's cold start, or copies of the MLP it replaces
# (mxd_saelens.training.warm_start)
INITS = ("paper", "mlp_encoder", "mlp")


def check_init(init: str) -> str:
    if init not in INITS:
        raise ValueError(f"init={init!r} is not an initialisation; choose one of {INITS}.")
    return init


@dataclass(kw_only=True)
class PairedTrainingFields:
    """Training options shared by every paired architecture."""

    loss: str = "normalized_mse"
    """``normalized_mse``: squared error divided by the target token's L2 norm, averaged over
    tokens and output dims (the MxD paper's loss). ``mse``: the plain mean squared error."""

    def _validate_loss(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"loss={self.loss!r} is not supported; choose one of {LOSS_KINDS}.")


@dataclass(kw_only=True)
class DeadFeatureAuxFields:
    """An opt-in auxiliary loss against dead features (experts of an MxD, latents of a TopK
    transcoder). Not in the MxD paper, which has no dead-feature handling; off by default, and
    training-only (the inference config does not carry it).

    Each step, among the features SAELens's trainer flags dead (not fired for
    ``dead_feature_window`` steps), every token selects its ``dead_feature_aux_k`` largest ReLU'd
    pre-activations, and those features alone predict the residual ``y − ŷ`` of the main output
    (Gao et al. 2024, "AuxK"). The loss is normalised like the main loss.
    """

    dead_feature_aux_k: int = 0
    """How many dead features each token uses to predict the residual; 0 turns the loss off.
    ``2 * k`` is a reasonable start (64 at k = 32, also Gao et al.'s ``d_out / 2`` at d_out = 128):
    on a 2048-token batch each of ~1000 dead features is then picked a hundred times or more. The
    step's extra cost grows linearly with it (a top-k over the dead features, and gathers and
    scatters of aux_k rows per token)."""
    dead_feature_aux_coefficient: float = 1 / 32
    """The auxiliary loss's weight against the main loss (Gao et al.'s 1/32)."""

    def _validate_dead_feature_aux(self, n_features: int) -> None:
        if not 0 <= self.dead_feature_aux_k <= n_features:
            raise ValueError(
                f"dead_feature_aux_k={self.dead_feature_aux_k} must be between 0 (off) and the "
                f"number of features, {n_features}."
            )
        if self.dead_feature_aux_coefficient < 0:
            raise ValueError(
                "dead_feature_aux_coefficient must be non-negative, got "
                f"{self.dead_feature_aux_coefficient}."
            )


BALANCE_MODES: tuple[str, ...] = ("sign", "revive", "revive_centred", "revive_dead")
BALANCE_SCHEDULES: tuple[str, ...] = ("constant", "lr")
DEFAULT_BALANCE_WINDOW = 8  # steps; see SelectionBalanceFields.balance_window


@dataclass(kw_only=True)
class SelectionBalanceFields:
    """Usage balancing of the codes that compete for the top k (beyond the MxD paper).

    A code whose ReLU'd pre-activation is below zero on every token never fires and gets no
    gradient, so once Adam has pushed its bias down it stays dead. After every optimiser step
    the bias that selects the codes (an MxD's gate bias, a transcoder's encoder bias) is nudged
    by ``balance_rate`` toward balanced usage of the step's batch, outside the gradient (as in
    loss-free balancing of mixture-of-experts routers, Wang et al. 2024). The bias is also part
    of the coefficients (a ReLU'd score is zero where it is not positive, so a bias that entered
    only the choice could select a dead code but never revive it). Training-only: the saved layer
    is an ordinary one with its learned biases.
    """

    balance_rate: float = 0.0
    """How far each step moves a code's selection bias; 0 turns balancing off."""
    balance_mode: str = "sign"
    """``sign``: every code that fired less than the mean count of the batch is raised by the
    rate and every code that fired more is lowered by it; ``revive``: only codes that did not fire
    in the batch are raised; ``revive_centred``: as ``revive``, less the mean nudge over all codes,
    so the biases' mean cannot drift; ``revive_dead``: only codes that have not fired for
    ``balance_window`` steps in a row are raised. A top-k choice does not see a shift of every
    bias, but the coefficients do. Under ``revive`` the nudges only add up where codes are often
    silent (a TopK transcoder at small k): over 16M tokens (7,812 steps) they lifted its encoder
    biases to a mean of +22, where Adam moves a bias by about the learning rate per step
    (``benchmarks/results/centred_balance.json``). ``revive_dead`` asks only that a code fire
    once per window: a code the gradient wants rare settles where it just meets that, instead of
    being pushed toward firing in every batch."""
    balance_window: int = DEFAULT_BALANCE_WINDOW
    """``revive_dead`` only: how many steps in a row a code must be silent before it is raised
    (SAELens's trainer counts them, ``n_forward_passes_since_fired``)."""
    balance_schedule: str = "constant"
    """``constant``: the same rate at every step; ``lr``: the rate scaled by the learning rate's
    schedule (its current value over the configured one), so the nudge warms up and decays with
    the weights' steps. It does not stop the drift above, most of which happens while the
    learning rate is constant."""

    def _validate_balance(self) -> None:
        if not self.balance_rate >= 0:
            raise ValueError(f"balance_rate={self.balance_rate} must be non-negative (0: off).")
        if self.balance_mode not in BALANCE_MODES:
            raise ValueError(
                f"balance_mode={self.balance_mode!r} is not supported; choose one of "
                f"{BALANCE_MODES}."
            )
        if not (isinstance(self.balance_window, int) and self.balance_window >= 1):
            raise ValueError(
                f"balance_window={self.balance_window!r} must be a whole number of steps >= 1."
            )
        if self.balance_schedule not in BALANCE_SCHEDULES:
            raise ValueError(
                f"balance_schedule={self.balance_schedule!r} is not supported; choose one of "
                f"{BALANCE_SCHEDULES}."
            )


@torch.no_grad()
def balance_selection_bias(
    bias: Tensor,
    counts: Tensor,
    rate: float,
    mode: str,
    silent_steps: Tensor | None = None,
    window: int = 1,
) -> None:
    """Nudge ``bias`` [n_codes] in place by ``rate`` from one step's firing ``counts`` [n_codes]
    (summed over every rank, so data-parallel ranks move alike). ``revive_dead`` also needs
    ``silent_steps`` [n_codes], the steps since each code last fired, this one included."""
    if rate == 0:
        return
    counts = counts.to(bias.dtype)
    if mode == "revive_dead":
        if silent_steps is None:
            raise ValueError("balance_mode='revive_dead' needs each code's silent_steps.")
        bias += rate * (silent_steps >= window).to(bias.dtype)
    elif mode.startswith("revive"):
        nudge = rate * (counts == 0).to(bias.dtype)
        bias += nudge - nudge.mean() if mode == "revive_centred" else nudge
    else:
        bias += rate * torch.sign(counts.mean() - counts)


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
    return error_loss(prediction - target.to(prediction.dtype), target, kind)


def error_loss(error: Tensor, target: Tensor, kind: str) -> Tensor:
    """The training loss of an error ``[B, d_out]``, each token weighted as its target's."""
    squared_error = error.pow(2)
    if kind == "normalized_mse":
        target_norm = target.to(error.dtype).norm(dim=-1, keepdim=True).clamp_min(1e-8)
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
    sae_in: Tensor | None = None  # [B, d_in], the processed input, for the auxiliary loss


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
    # logged as losses/<name>: say which loss it is (the default is a normalised MSE)
    main_name = f"{loss_kind}_loss"
    losses = {main_name: recon}
    if extra_losses is not None:
        losses.update(extra_losses(result, step_input))
    total = recon
    for name, value in losses.items():
        if name != main_name:
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


def dead_feature_aux_loss(
    cfg: Any,  # a training config with DeadFeatureAuxFields, d_in and loss
    step_input: TrainStepInput,
    result: LayerOutput,
    gate: tuple[Tensor, Tensor],  # the weight [d_in, d_sae] and bias [d_sae] that select features
    predict: Callable[[TopKCodes], Tensor],  # ê [B, d_out] from the selected dead features
) -> Tensor:
    """``coefficient · min(n_dead / aux_k, 1) · L(ê, y − ŷ)``, with L the main loss and the
    residual ``y − ŷ`` detached; 0 when nothing is dead.

    The selection reuses the main step's dense pre-activations; the gradient reaches only the
    selected features' gate columns and whatever ``predict`` lets through. The factor
    ``min(n_dead / aux_k, 1)`` (as in SAELens's and EleutherAI's TopK SAEs) fades the loss out
    as the last few dead features revive, instead of pushing them all on every token.
    """
    dead = step_input.dead_neuron_mask
    units = None if dead is None else dead.nonzero().squeeze(1)
    if units is None or units.numel() == 0:
        return result.output.new_zeros(())
    if result.sae_in is None:
        raise ValueError("the dead-feature auxiliary loss needs the layer's processed input.")
    aux_k = cfg.dead_feature_aux_k
    n_dead = units.numel()
    codes = subset_topk(result.sae_in, *gate, result.hidden_pre, units, min(aux_k, n_dead))
    target = step_input.sae_in[..., cfg.d_in :]
    residual = (target.to(result.output.dtype) - result.output).detach()
    loss = error_loss(predict(codes) - residual, target, cfg.loss)
    return cfg.dead_feature_aux_coefficient * min(n_dead / aux_k, 1.0) * loss


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
