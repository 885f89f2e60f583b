"""Mixture of Decoders (Oldfield et al., NeurIPS 2025) as a SAELens architecture, ``"mxd"``.

With input x ∈ R^I (the MLP's input) the layer computes

    z = φ(Eᵀx + b_E)                              hidden units, R^H      (W_enc, b_enc)
    z = φ(Eᵀx + b_E) ⊙ (E_gluᵀx + b_glu)          the Swish-GLU variant  (W_glu, b_glu)
    a = TopK_k(ReLU(Gᵀx + b_G))                   expert coefficients, R^N (W_gate, b_gate)
    y = (Cᵀa) ⊙ (Dᵀz) + b_out                     output, R^O  (W_experts = C, W_dec = D, b_dec)

which equals a mixture of N full-rank linear experts ``y = Σ_n a_n W_nᵀ z`` with
``W_n = D·diag(c_n)`` (see :meth:`MxD.expert_weights`). The coefficients ``a`` are the SAE's
features (``d_sae == n_experts``) and pass through ``hook_sae_acts_post``.

Only k coefficients are non-zero, so ``Cᵀa`` gathers k rows of C (forward and backward), and the
gate's backward touches only the k selected rows of G. ``forward_dense`` keeps the plain
formulation (dense ``a @ C``) that the tests hold the fast path equal to.

encode/decode: the output needs the hidden units z as well as a. ``encode(x)`` remembers the z
(and the sparse form of a) of its last call, so ``decode(encode(x))`` works as for any SAELens
SAE, including inside ``HookedSAETransformer``; ``decode(a, hidden=z)`` takes z explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sae_lens.saes.sae import SAE, SAEConfig
from torch import Tensor, nn
from typing_extensions import override

from mxd_saelens.ops.sparse_topk import (
    TopKCodes,
    dense_decode,
    dense_topk,
    densify,
    sparse_decode,
    sparse_topk,
)
from mxd_saelens.saes.common import (
    EncodingMemo,
    check_state_dict_shapes,
    has_hooks,
    linear_init_,
)

HIDDEN_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass(kw_only=True)
class MxDFields:
    """The shape of an MxD layer; shared by the inference and training configs."""

    d_out: int = 0
    """O, the MLP output width; 0 means ``d_in``."""
    d_hidden: int = 0
    """H, the number of hidden units (the base MLP's width); 0 means ``4 * d_in``."""
    n_experts: int = 0
    """N, the number of experts; the same number as ``d_sae`` (give either)."""
    k: int = 32
    """How many experts fire per token."""
    activation: str = "gelu"
    """The hidden units' nonlinearity φ: gelu, gelu_tanh, relu or silu."""
    glu: bool = False
    """Use the Swish-GLU hidden units of gated (Llama-style) MLPs."""

    def _resolve_mxd_fields(self) -> None:
        """Check the SAELens fields an MxD constrains, then fill and check its own."""
        cfg: Any = self  # an SAEConfig or TrainingSAEConfig beside these fields
        if cfg.apply_b_dec_to_input:
            raise ValueError(
                "apply_b_dec_to_input must be False for an MxD: its output bias lives in the "
                "output space, not the input space."
            )
        cfg.d_sae = self._resolve_mxd_shape(cfg.d_in, cfg.d_sae)

    def _resolve_mxd_shape(self, d_in: int, d_sae: int) -> int:
        """Fill defaults, check every field, and return N."""
        if d_in <= 0:
            raise ValueError(f"d_in must be positive, got {d_in}.")
        if self.n_experts and d_sae and self.n_experts != d_sae:
            raise ValueError(
                f"n_experts={self.n_experts} and d_sae={d_sae} disagree: an MxD's features are its "
                "experts, so give one of them (or the same number twice)."
            )
        n_experts = self.n_experts or d_sae
        if n_experts <= 0:
            raise ValueError("set n_experts (or d_sae), the number of experts, to a positive int.")
        self.n_experts = n_experts
        self.d_out = self.d_out or d_in
        self.d_hidden = self.d_hidden or 4 * d_in
        if self.d_out <= 0 or self.d_hidden <= 0:
            raise ValueError(
                f"d_out and d_hidden must be positive, got d_out={self.d_out}, "
                f"d_hidden={self.d_hidden}."
            )
        if not 1 <= self.k <= n_experts:
            raise ValueError(
                f"k={self.k} must be between 1 and n_experts={n_experts}: k experts fire per "
                "token. Lower k or raise n_experts."
            )
        if self.activation not in HIDDEN_ACTIVATIONS:
            raise ValueError(
                f"activation={self.activation!r} is not supported; choose one of "
                f"{sorted(HIDDEN_ACTIVATIONS)} (GPT-2's gelu_new is gelu_tanh; Llama's MLP is "
                "silu with glu=True)."
            )
        return n_experts


@dataclass
class MxDConfig(SAEConfig, MxDFields):
    """Inference config of an MxD layer."""

    d_sae: int = 0
    apply_b_dec_to_input: bool = False

    @override
    @classmethod
    def architecture(cls) -> str:
        return "mxd"

    def __post_init__(self) -> None:
        self._resolve_mxd_fields()
        super().__post_init__()


class MxDModule:
    """The MxD math, shared by the inference and training classes (a plain mixin)."""

    cfg: Any
    dtype: torch.dtype
    device: torch.device
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_glu: nn.Parameter | None
    b_glu: nn.Parameter | None
    W_gate: nn.Parameter
    b_gate: nn.Parameter
    W_experts: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    hook_sae_input: Any
    hook_sae_acts_pre: Any
    hook_sae_acts_post: Any
    hook_sae_recons: Any
    hook_sae_error: Any
    hook_sae_output: Any
    _last_encoding: EncodingMemo | None
    run_time_activation_norm_fn_in: Callable[[Tensor], Tensor]
    use_error_term: bool

    def initialize_weights(self) -> None:
        cfg = self.cfg
        i, h, n, o = cfg.d_in, cfg.d_hidden, cfg.n_experts, cfg.d_out
        kw = {"dtype": self.dtype, "device": self.device}
        # encoder and gate: the default linear-layer init, zero biases
        self.W_enc = nn.Parameter(linear_init_(torch.empty(i, h, **kw), fan_in=i))
        self.b_enc = nn.Parameter(torch.zeros(h, **kw))
        if cfg.glu:
            self.W_glu = nn.Parameter(linear_init_(torch.empty(i, h, **kw), fan_in=i))
            self.b_glu = nn.Parameter(torch.zeros(h, **kw))
        else:
            self.W_glu = None
            self.b_glu = None
        self.W_gate = nn.Parameter(linear_init_(torch.empty(i, n, **kw), fan_in=i))
        self.b_gate = nn.Parameter(torch.zeros(n, **kw))
        # expert vectors c_n: uniform directions at unit norm; D starts at zero, as in skip
        # transcoders, so the layer starts as its output bias
        experts = torch.empty(n, o, **kw)
        if experts.device.type != "meta":
            nn.init.uniform_(experts, -1.0, 1.0)
            experts /= experts.norm(dim=-1, keepdim=True)
        self.W_experts = nn.Parameter(experts)
        self.W_dec = nn.Parameter(torch.zeros(h, o, **kw))
        self.b_dec = nn.Parameter(torch.zeros(o, **kw))
        self._last_encoding = None

    def get_activation_fn(self) -> Callable[[Tensor], Tensor]:
        return HIDDEN_ACTIVATIONS[self.cfg.activation]

    def process_sae_in(self, sae_in: Tensor) -> Tensor:
        # no input-side bias: the output bias lives in the output space
        sae_in = self.hook_sae_input(sae_in.to(self.dtype))
        return self.run_time_activation_norm_fn_in(sae_in)

    # --- the pieces of the forward -------------------------------------------------------

    def hidden(self, x: Tensor) -> Tensor:
        """z = φ(Eᵀx + b_E) [⊙ (E_gluᵀx + b_glu)], shape [..., H]."""
        z = HIDDEN_ACTIVATIONS[self.cfg.activation](x @ self.W_enc + self.b_enc)
        if self.W_glu is not None and self.b_glu is not None:
            z = z * (x @ self.W_glu + self.b_glu)
        return z

    def gate(self, x: Tensor) -> tuple[TopKCodes, Tensor]:
        """The k non-zero expert coefficients (fast path) and the dense gate pre-activations."""
        return sparse_topk(x, self.W_gate, self.b_gate, self.cfg.k)

    def expert_mixture(self, codes: TopKCodes) -> Tensor:
        """Cᵀa from the k gathered rows of C, shape [..., O]."""
        return sparse_decode(codes, self._expert_vectors())

    def _expert_vectors(self) -> Tensor:
        """C as the forward sees it; the training class constrains its gradient."""
        return self.W_experts

    def _combine(self, mixture: Tensor, z: Tensor) -> Tensor:
        return mixture * (z @ self.W_dec) + self.b_dec

    def expert_weights(self, n: int) -> Tensor:
        """Expert n's H×O matrix ``W_n = D·diag(c_n)``, so that expert n maps z to ``W_nᵀz``."""
        if not 0 <= n < self.cfg.n_experts:
            raise IndexError(
                f"expert {n} is out of range: this MxD has {self.cfg.n_experts} experts."
            )
        return self.W_dec * self.W_experts[n]

    # --- SAELens's encode / decode / forward ---------------------------------------------

    def _codes_through_hooks(self, codes: TopKCodes, pre: Tensor) -> EncodingMemo:
        """Run the coefficient hook points; the memo keeps the sparse form only when no hook
        can have changed the coefficients."""
        if has_hooks(self.hook_sae_acts_pre):
            self.hook_sae_acts_pre(pre)
        hooked = has_hooks(self.hook_sae_acts_post)
        dense = self.hook_sae_acts_post(densify(codes, self.cfg.n_experts))
        return EncodingMemo.of(dense, None if hooked else codes)

    def encode(self, x: Tensor) -> Tensor:
        """The expert coefficients a, dense ``[..., N]`` with k non-zeros per token."""
        x = self.process_sae_in(x)
        codes, pre = self.gate(x)
        memo = self._codes_through_hooks(codes, pre)
        memo.hidden = self.hidden(x)
        self._last_encoding = memo
        return memo.dense

    def decode(self, feature_acts: Tensor, hidden: Tensor | None = None) -> Tensor:
        """y = (Cᵀa) ⊙ (Dᵀz) + b_out. z comes from ``hidden`` or from the last ``encode`` call."""
        memo = self._last_encoding
        if hidden is None:
            if (
                memo is None
                or memo.hidden is None
                or memo.hidden.shape[:-1] != feature_acts.shape[:-1]
            ):
                raise ValueError(
                    "an MxD's output depends on its input through the hidden units z, not only "
                    "on the coefficients: call decode(a, hidden=mxd.hidden(x)), decode the "
                    "result of the most recent encode(x), or call forward(x)."
                )
            hidden = memo.hidden
        codes = memo.codes_for(feature_acts) if memo is not None else None
        if codes is not None:
            mixture = sparse_decode(codes, self._expert_vectors())
        else:
            mixture = dense_decode(feature_acts, self._expert_vectors())
        return self.hook_sae_recons(self._combine(mixture, hidden))

    def _forward_output(self, x: Tensor) -> Tensor:
        """The layer's output on processed input, through the coefficient hooks."""
        codes, pre = self.gate(x)
        z = self.hidden(x)
        if has_hooks(self.hook_sae_acts_pre) or has_hooks(self.hook_sae_acts_post):
            dense = self._codes_through_hooks(codes, pre).dense
            mixture = dense_decode(dense, self._expert_vectors())
        else:
            mixture = self.expert_mixture(codes)
        return self.hook_sae_recons(self._combine(mixture, z))

    def forward(self, x: Tensor) -> Tensor:
        if self.use_error_term:
            raise ValueError(
                "an MxD replaces an MLP, so its error term is (MLP output − MxD output); use "
                "mxd_saelens.evaluation.splice(..., use_error_term=True) or HookedSAETransformer.add_sae("
                "..., use_error_term=True), which know the MLP's output."
            )
        return self.hook_sae_output(self._forward_output(self.process_sae_in(x)))

    def forward_dense(self, x: Tensor) -> Tensor:
        """The plain formulation: dense gate, top-k scattered into a dense a, dense ``a @ C``."""
        x = self.process_sae_in(x)
        a, _ = dense_topk(x, self.W_gate, self.b_gate, self.cfg.k)
        mixture = dense_decode(a, self._expert_vectors())
        return self._combine(mixture, self.hidden(x))

    # --- SAELens maintenance hooks -------------------------------------------------------

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        # trained on (s·x, s·y): pre-activations take s·x, the output is divided by s
        for weight in (self.W_enc, self.W_glu, self.W_gate):
            if weight is not None:
                weight.mul_(scaling_factor)
        self.W_dec.div_(scaling_factor)
        self.b_dec.div_(scaling_factor)
        self.cfg.normalize_activations = "none"

    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "an MxD keeps its expert vectors at unit norm during training; there is no decoder "
            "norm to fold."
        )

    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        check_state_dict_shapes(self, state_dict)  # type: ignore[arg-type]


class MxD(MxDModule, SAE[MxDConfig]):
    """Inference MxD layer. The math lives in :class:`MxDModule`."""

    def __init__(self, cfg: MxDConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
