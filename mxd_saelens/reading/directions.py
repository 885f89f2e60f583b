"""Per-feature input and output directions in the shapes SAELens's tooling reads.

SAELens tools take feature i's encoder direction from ``W_enc[:, i]`` (``[d_in, d_sae]``) and
its decoder direction from ``W_dec[i]`` (``[d_sae, d_out]``). That holds for the transcoders.
In an MxD the names keep the paper's factorisation instead: ``W_enc`` is E (``[d_in, H]``, the
hidden units' encoder), ``W_dec`` is D (``[H, d_out]``), and the features, the experts, are
selected by ``W_gate`` (``[d_in, N]``) and scaled by ``W_experts`` (C, ``[N, d_out]``). So
``mxd.W_dec[i]`` is hidden unit i's row of D, not expert i's direction; use these functions.

- input direction of expert n: ``W_gate[:, n]``, its gate's pre-activation is ``x · W_gate[:, n]
  + b_gate[n]`` exactly, as a transcoder latent's is ``x · W_enc[:, n] + b_enc[n]``;
- output direction of expert n: what one unit of its coefficient adds to the output. Expert n
  is the full-rank map ``z ↦ W_nᵀz`` with ``W_n = D·diag(c_n)``, so the direction depends on the
  hidden units z; at given z it is ``c_n ⊙ (Dᵀz)``, and its mean over tokens is that at the mean
  z̄ (it is linear in z). A transcoder latent's is ``W_dec[n]`` in every context.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mxd_saelens.saes.mxd import MxDModule


def is_mxd(layer: nn.Module) -> bool:
    return isinstance(layer, MxDModule)


@torch.no_grad()
def input_directions(layer: nn.Module) -> Tensor:
    """``[d_in, d_sae]``: column n is the direction feature n's pre-activation reads."""
    weight = layer.W_gate if is_mxd(layer) else layer.W_enc
    return weight.detach().clone()  # type: ignore[union-attr]


@torch.no_grad()
def output_directions(layer: nn.Module, hidden: Tensor | None = None) -> Tensor:
    """``[d_sae, d_out]``: row n is what one unit of feature n adds to the layer's output.

    An MxD needs ``hidden``, the hidden units z ``[H]`` to read its experts at (typically their
    mean over a reference set of tokens, :func:`mxd_saelens.reading.analysis.mean_hidden`).
    """
    if not is_mxd(layer):
        return layer.W_dec.detach().clone()  # type: ignore[union-attr]
    if hidden is None:
        raise ValueError(
            "an MxD expert's output direction depends on the hidden units z: pass hidden= "
            "(for example mxd_saelens.reading.analysis.mean_hidden(model, layer, tokens))."
        )
    d_hidden = layer.W_dec.shape[0]  # type: ignore[union-attr]
    if hidden.shape != (d_hidden,):
        raise ValueError(f"hidden must have shape ({d_hidden},), got {tuple(hidden.shape)}.")
    readout = hidden.to(layer.W_dec) @ layer.W_dec  # Dᵀz, [d_out]
    return layer.W_experts * readout  # type: ignore[operator]
