"""Parameter counting and matching (DESIGN §2: an MxD matched to a TopK transcoder)."""

from __future__ import annotations

from torch import nn


def transcoder_parameter_count(d_in: int, d_sae: int, d_out: int) -> int:
    """P = d_sae·O + I·d_sae + d_sae + O for a TopK transcoder (encoder, its bias, decoder,
    output bias)."""
    return d_sae * d_out + d_in * d_sae + d_sae + d_out


def matched_n_experts(d_in: int, d_out: int, d_hidden: int, d_sae: int) -> int:
    """The number of experts N that gives an MxD the TopK transcoder's parameter count.

    The MxD keeps the base MLP's H hidden units: ``N = round((P − (H·O + I·H + d_sae + O)) /
    (I + O + 1))``, following the paper's accounting. For GPT-2 (I = O = 768, H = 3072,
    d_sae = 24576) this is 21490.
    """
    budget = transcoder_parameter_count(d_in, d_sae, d_out)
    fixed = d_hidden * d_out + d_in * d_hidden + d_sae + d_out
    n_experts = round((budget - fixed) / (d_in + d_out + 1))
    if n_experts <= 0:
        raise ValueError(
            f"a transcoder with d_sae={d_sae} has too few parameters to match an MxD with "
            f"H={d_hidden} hidden units; raise d_sae or lower d_hidden."
        )
    return n_experts


def parameter_count(layer: nn.Module) -> int:
    """Trainable parameters of any layer (an MxD, a transcoder, a model's MLP)."""
    return sum(p.numel() for p in layer.parameters() if p.requires_grad)
