"""Parameter counting and matching (docs/design.md §2.3: an MxD matched to a TopK
transcoder)."""

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


def matched_size(
    architecture: str, d_in: int, d_out: int, d_hidden: int, glu: bool, d_sae: int
) -> dict[str, int]:
    """The size field of ``architecture`` (``n_experts`` or ``d_sae``) at the parameter count
    of a TopK transcoder of width ``d_sae``.

    An MxD keeps the MLP's hidden units (:func:`matched_n_experts`); a GLU's second encoder
    (``E_glu``, ``b_glu``) is paid for with experts, and a skip transcoder's ``d_in × d_out``
    skip matrix with latents, each costing ``d_in + d_out + 1``.
    """
    from mxd_saelens.saes.traits import ARCHITECTURES  # the table imports the architectures

    row = ARCHITECTURES[architecture]
    per_unit = d_in + d_out + 1
    if row.reads_mlp_shape:  # experts beside the MLP's hidden units
        n_experts = matched_n_experts(d_in, d_out, d_hidden, d_sae)
        if glu:
            n_experts -= round((d_in * d_hidden + d_hidden) / per_unit)
        return {row.size_field: n_experts}
    if row.skip_path:
        return {row.size_field: d_sae - round(d_in * d_out / per_unit)}
    return {row.size_field: d_sae}
