"""TopK transcoder, ``"topk_transcoder"``: ``y = W_decᵀ TopK_k(ReLU(W_encᵀx + b_enc)) + b_dec``.

The baseline the MxD paper compares against. SAELens can load ReLU and JumpReLU transcoders but
has no TopK one; this one extends SAELens's ``Transcoder`` (same parameter names and shapes) and
adds the same fast path as the MxD: a top-k selection whose backward touches only the selected
encoder columns, and a decode that gathers k decoder rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.sae import (
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.topk_sae import TopK
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig
from torch import Tensor, nn
from typing_extensions import override

from mxd_saelens.ops.sparse_topk import densify, sparse_code_matrix, sparse_decode, sparse_topk
from mxd_saelens.saes.common import (
    EncodingMemo,
    check_state_dict_shapes,
    has_hooks,
    linear_init_,
)
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


def check_topk(k: int, d_sae: int) -> None:
    if not 1 <= k <= d_sae:
        raise ValueError(
            f"k={k} must be between 1 and d_sae={d_sae}: k latents fire per token. Lower k or "
            "raise d_sae."
        )


def check_dims(d_in: int, d_sae: int, d_out: int) -> None:
    if min(d_in, d_sae, d_out) <= 0:
        raise ValueError(
            f"d_in, d_sae and d_out must be positive, got d_in={d_in}, d_sae={d_sae}, "
            f"d_out={d_out}."
        )


@dataclass
class TopKTranscoderConfig(TranscoderConfig):
    """Inference config: SAELens's transcoder fields plus k."""

    k: int = 32
    apply_b_dec_to_input: bool = False

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_transcoder"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> TopKTranscoderConfig:
        return super().from_dict(config_dict)  # type: ignore[return-value]

    def __post_init__(self) -> None:
        check_dims(self.d_in, self.d_sae, self.d_out)
        check_topk(self.k, self.d_sae)
        super().__post_init__()


class TopKTranscoderForward:
    """The TopK transcoder's forward, shared by the inference and training classes."""

    cfg: Any
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    hook_sae_acts_pre: Any
    hook_sae_acts_post: Any
    hook_sae_recons: Any
    process_sae_in: Callable[[Tensor], Tensor]

    _last_encoding: EncodingMemo | None = None

    def get_activation_fn(self) -> Callable[[Tensor], Tensor]:
        return TopK(self.cfg.k)

    def encode(self, x: Tensor) -> Tensor:
        """Dense codes with k non-zeros per token (the top k of ReLU(W_encᵀx + b_enc))."""
        codes, pre = sparse_topk(self.process_sae_in(x), self.W_enc, self.b_enc, self.cfg.k)
        if has_hooks(self.hook_sae_acts_pre):
            self.hook_sae_acts_pre(pre)
        hooked = has_hooks(self.hook_sae_acts_post)
        dense = self.hook_sae_acts_post(densify(codes, self.cfg.d_sae))
        self._last_encoding = EncodingMemo.of(dense, None if hooked else codes)
        return dense

    def decode(self, feature_acts: Tensor) -> Tensor:
        memo = self._last_encoding
        codes = memo.codes_for(feature_acts) if memo is not None else None
        if codes is not None:
            out = sparse_decode(codes, self.W_dec)
        else:
            out = feature_acts.to(self.W_dec.dtype) @ self.W_dec
        return self.hook_sae_recons(out + self.b_dec)

    def skip_output(self, x: Tensor) -> Tensor | None:
        """The skip path's contribution (None without one)."""
        return None

    def transcode(self, x: Tensor) -> Tensor:
        """The layer's output, on the fast path unless a hook watches the codes."""
        if has_hooks(self.hook_sae_acts_pre) or has_hooks(self.hook_sae_acts_post):
            dense = self.encode(x)
            out = self.hook_sae_recons(dense.to(self.W_dec.dtype) @ self.W_dec + self.b_dec)
        else:
            codes, _ = sparse_topk(self.process_sae_in(x), self.W_enc, self.b_enc, self.cfg.k)
            out = self.hook_sae_recons(sparse_decode(codes, self.W_dec) + self.b_dec)
        skip = self.skip_output(x)
        return out if skip is None else out + skip

    def training_layer_output(self, x: Tensor) -> LayerOutput:
        sae_in = self.process_sae_in(x)
        codes, pre = sparse_topk(sae_in, self.W_enc, self.b_enc, self.cfg.k)
        out = sparse_decode(codes, self.W_dec) + self.b_dec
        skip = self.skip_output(x)
        if skip is not None:
            out = out + skip
        feature_acts = sparse_code_matrix(codes, self.cfg.d_sae)
        return LayerOutput(output=out, feature_acts=feature_acts, hidden_pre=pre, sae_in=sae_in)

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        check_state_dict_shapes(self, state_dict)  # type: ignore[arg-type]


class TopKTranscoder(TopKTranscoderForward, Transcoder):
    """Inference TopK transcoder."""

    cfg: TopKTranscoderConfig  # type: ignore[assignment]

    def __init__(self, cfg: TopKTranscoderConfig):
        super().__init__(cfg)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.transcode(x)

    @override
    def forward_with_activations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feature_acts = self.encode(x)
        out = self.decode(feature_acts)
        skip = self.skip_output(x)
        return (out if skip is None else out + skip), feature_acts

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "folding decoder norms into the encoder would change which latents a TopK layer "
            "selects; it is not supported."
        )


# --- training ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TopKTranscoderTrainingSAEConfig(
    TrainingSAEConfig, PairedTrainingFields, DeadFeatureAuxFields, SelectionBalanceFields
):
    """Training config of a TopK transcoder (saves as ``"topk_transcoder"``); the opt-in
    dead-latent auxiliary loss is the MxD's, so the two compare on equal terms."""

    d_out: int = 0
    """The output width; 0 means ``d_in``."""
    k: int = 32
    """How many latents fire per token."""
    apply_b_dec_to_input: bool = False
    decoder_init_norm: float | None = None
    init: str = "paper"
    """``"paper"``: the linear-layer init. Beyond it, the analogue of the MxD's warm starts (the
    runner reads the MLP from the model; see ``mxd_saelens.training.warm_start.warm_start_transcoder_``):
    ``"mlp_encoder"``, the first d_mlp latents' encoder from the MLP; ``"mlp"``, their decoder
    rows and the output bias too."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return "topk_transcoder"

    def __post_init__(self) -> None:
        if self.apply_b_dec_to_input:
            raise ValueError("apply_b_dec_to_input is not supported for transcoders.")
        self.d_out = self.d_out or self.d_in
        check_dims(self.d_in, self.d_sae, self.d_out)
        check_topk(self.k, self.d_sae)
        check_init(self.init)
        self._validate_loss()
        self._validate_dead_feature_aux(self.d_sae)
        self._validate_balance()
        super().__post_init__()


def init_transcoder_weights(sae: Any, zero_decoder: bool) -> None:
    """Linear-layer init for encoder and decoder, zero biases (optionally a zero decoder)."""
    cfg = sae.cfg
    kw = {"dtype": sae.dtype, "device": sae.device}
    sae.W_enc = nn.Parameter(linear_init_(torch.empty(cfg.d_in, cfg.d_sae, **kw), cfg.d_in))
    sae.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
    w_dec = torch.zeros(cfg.d_sae, cfg.d_out, **kw)
    if not zero_decoder:
        linear_init_(w_dec, cfg.d_sae)
    sae.W_dec = nn.Parameter(w_dec)
    sae.b_dec = nn.Parameter(torch.zeros(cfg.d_out, **kw))


class PairedTrainingTranscoder(PairedTrainingSAE):
    """What the training transcoders share: packed-row training, output-bias init, no input bias."""

    @override
    def process_sae_in(self, sae_in: Tensor) -> Tensor:
        return self.run_time_activation_norm_fn_in(self.hook_sae_input(sae_in.to(self.dtype)))

    @override
    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = self.hook_sae_acts_pre(self.process_sae_in(x) @ self.W_enc + self.b_enc)
        return self.hook_sae_acts_post(self.activation_fn(pre)), pre

    @override
    def decode(self, feature_acts: Tensor) -> Tensor:
        return self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)

    def training_layer_output(self, x: Tensor) -> LayerOutput:
        raise NotImplementedError

    def extra_losses(self, result: LayerOutput, step_input: TrainStepInput) -> dict[str, Tensor]:
        return {}

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        return paired_training_forward_pass(
            step_input,
            self.cfg.d_in,
            self.cfg.d_out,
            self.cfg.loss,
            self.training_layer_output,
            self.extra_losses,
        )

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("decoder-norm folding is not supported for transcoders.")


class TopKTranscoderTrainingSAE(TopKTranscoderForward, PairedTrainingTranscoder):
    """Training TopK transcoder, trained on packed ``[mlp_in ‖ mlp_out]`` rows.

    With ``dead_feature_aux_k > 0`` (Gao et al.'s AuxK) the step adds
    ``coefficient · min(n_dead / aux_k, 1) · L(W_dec,deadᵀ a_dead, y − ŷ)``, which trains only the
    dead latents' encoder columns, encoder biases and decoder rows (the skip path and the output
    bias stay in ŷ).
    """

    cfg: TopKTranscoderTrainingSAEConfig  # type: ignore[assignment]
    zero_decoder_init: bool = False

    def __init__(self, cfg: TopKTranscoderTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)

    @override
    def initialize_weights(self) -> None:
        init_transcoder_weights(self, zero_decoder=self.zero_decoder_init)

    def selection_bias(self) -> Tensor:
        """The bias that decides which latents enter the top k: the encoder's."""
        return self.b_enc

    @override
    def extra_losses(self, result: LayerOutput, step_input: TrainStepInput) -> dict[str, Tensor]:
        if self.cfg.dead_feature_aux_k == 0:
            return {}
        loss = dead_feature_aux_loss(
            self.cfg,
            step_input,
            result,
            (self.W_enc, self.b_enc),
            lambda codes: sparse_decode(codes, self.W_dec),
        )
        return {AUX_LOSS_NAME: loss}

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.transcode(x)
