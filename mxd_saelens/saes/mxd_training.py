"""The training side of the MxD (``"mxd"``): its config, the unit-sphere constraint on the expert
vectors, and the paired training step. The layer's math is :class:`mxd_saelens.saes.mxd.MxDModule`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAEConfig, TrainStepInput, TrainStepOutput
from torch import Tensor
from typing_extensions import override

from mxd_saelens.ops.sparse_topk import densify, sparse_code_matrix
from mxd_saelens.saes.mxd import MxDFields, MxDModule
from mxd_saelens.saes.paired import (
    AUX_LOSS_NAME,
    DeadFeatureAuxFields,
    LayerOutput,
    PairedTrainingFields,
    PairedTrainingSAE,
    SelectionBalanceFields,
    check_init,
    dead_feature_aux_loss,
    paired_training_forward_pass,
)


@dataclass(kw_only=True)
class MxDTrainingSAEConfig(
    TrainingSAEConfig, MxDFields, PairedTrainingFields, DeadFeatureAuxFields, SelectionBalanceFields
):
    """Training config of an MxD layer (adds the loss and the opt-in dead-expert auxiliary loss;
    saves as ``"mxd"``)."""

    d_sae: int = 0
    apply_b_dec_to_input: bool = False
    decoder_init_norm: float | None = None
    init: str = "paper"
    """``"paper"``: random E, G, C and D = 0 (the paper). Beyond the paper, from the MLP being
    replaced (the runner reads it from the model; see ``mxd_saelens.training.warm_start``):
    ``"mlp_encoder"``, E from the MLP and D = 0; ``"mlp"``, E and D from the MLP and experts
    jittered around one shared direction by ``init_noise``."""
    init_noise: float = 1.0
    """σ of ``init="mlp"``: each expert vector starts as 1 + σ·N(0, I), normalised."""
    balance_rate: float = 1e-2
    """Beyond the paper, on by default: every step, the gate bias of each expert that did not
    fire in the batch rises by this much, so no expert stays dead (at lr 1e-2 and 1M tokens it
    left 1 % of the experts dead instead of 47 %, at the same ΔCE:
    benchmarks/results/experts_alive.json). 0 trains as the paper does."""
    balance_mode: str = "revive"
    """``revive`` (raise silent experts only) or ``sign`` (also lower the busiest); see
    :class:`mxd_saelens.saes.paired.SelectionBalanceFields`."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "mxd"

    def __post_init__(self) -> None:
        self._resolve_mxd_fields()
        self._validate_loss()
        self._validate_dead_feature_aux(self.d_sae)
        self._validate_balance()
        check_init(self.init)
        if not self.init_noise >= 0:
            raise ValueError(f"init_noise={self.init_noise} must be non-negative.")
        super().__post_init__()


class _UnitNormTangentGrad(torch.autograd.Function):
    """Identity forward; the backward removes from each row's gradient its component along
    that row, so a step moves the unit-norm expert vectors c_n along their sphere."""

    @staticmethod
    def forward(ctx: Any, experts: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(experts)
        return experts.view_as(experts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        (experts,) = ctx.saved_tensors
        unit = experts / experts.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return grad - (grad * unit).sum(dim=-1, keepdim=True) * unit


@dataclass(kw_only=True)
class MxDLayerOutput(LayerOutput):
    """One training forward of an MxD, with the shared factor of every expert's output."""

    decoded_hidden: Tensor  # [B, O], Dᵀz


class MxDTrainingSAE(MxDModule, PairedTrainingSAE):
    """Training MxD layer, trained on packed ``[mlp_in ‖ mlp_out]`` rows.

    The expert vectors are kept on the unit sphere: the trainer renormalises them after every
    optimiser step, and a step whose C was written since the last renormalisation (a loop
    without that trainer, loaded weights) renormalises first. The backward removes the gradient
    component parallel to each c_n. The output bias should be set to the mean target before
    training (:meth:`initialize_output_bias`; the runner does this).

    With ``dead_feature_aux_k > 0`` (beyond the paper) the step adds the dead-expert auxiliary
    loss ``coefficient · min(n_dead / aux_k, 1) · L((C_deadᵀ a_dead) ⊙ Dᵀz, y − ŷ)``. Dᵀz and the
    residual are detached, so it trains only the dead experts' gate columns, gate biases and
    expert vectors: D and E are shared by every expert, and moving them for the dead ones would
    pull the live layer away from its own loss.
    """

    _unit_experts_key: tuple[int, int] | None = None  # C's (id, version) when last renormalised

    def __init__(self, cfg: MxDTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    @override
    def _expert_vectors(self) -> Tensor:
        if self.training and torch.is_grad_enabled():
            return _UnitNormTangentGrad.apply(self.W_experts)
        return self.W_experts

    @torch.no_grad()
    def normalize_experts(self) -> None:
        """Put every expert vector c_n back on the unit sphere."""
        self.W_experts.div_(self.W_experts.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        self._unit_experts_key = self._experts_key()

    def selection_bias(self) -> Tensor:
        """The bias that decides which experts enter the top k: the gate's."""
        return self.b_gate

    def _experts_key(self) -> tuple[int, int]:
        # an in-place write (optimiser step, load_state_dict) bumps the version counter
        return id(self.W_experts), self.W_experts._version

    @override
    def load_weights_from_checkpoint(self, checkpoint_path: Path | str) -> None:
        super().load_weights_from_checkpoint(checkpoint_path)
        # a training checkpoint holds C as renormalised after its last step; renormalising it
        # again would move it by rounding, and a resumed run would drift from the straight one
        with torch.no_grad():
            norms = self.W_experts.norm(dim=-1)
        if bool(((norms - 1).abs() <= 1e-5).all()):
            self._unit_experts_key = self._experts_key()

    def training_layer_output(self, x: Tensor) -> MxDLayerOutput:
        x = self.process_sae_in(x)
        codes, pre = self.gate(x)
        mixture = self.expert_mixture(codes)
        decoded_hidden = self.hidden(x) @ self.W_dec
        return MxDLayerOutput(
            output=mixture * decoded_hidden + self.b_dec,
            feature_acts=sparse_code_matrix(codes, self.cfg.n_experts),
            hidden_pre=pre,
            sae_in=x,
            decoded_hidden=decoded_hidden,
        )

    def dead_expert_losses(
        self, result: LayerOutput, step_input: TrainStepInput
    ) -> dict[str, Tensor]:
        """The dead-expert auxiliary loss (see the class docstring)."""
        assert isinstance(result, MxDLayerOutput)
        shared = result.decoded_hidden.detach()
        loss = dead_feature_aux_loss(
            self.cfg,
            step_input,
            result,
            (self.W_gate, self.b_gate),
            lambda codes: self.expert_mixture(codes) * shared,
        )
        return {AUX_LOSS_NAME: loss}

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if self._unit_experts_key != self._experts_key():
            self.normalize_experts()
        return paired_training_forward_pass(
            step_input,
            self.cfg.d_in,
            self.cfg.d_out,
            self.cfg.loss,
            self.training_layer_output,
            self.dead_expert_losses if self.cfg.dead_feature_aux_k > 0 else None,
        )

    @override
    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.process_sae_in(x)
        codes, pre = self.gate(x)
        return densify(codes, self.cfg.n_experts), pre
