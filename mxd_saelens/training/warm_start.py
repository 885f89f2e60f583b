"""Warm starts of an MxD from the dense MLP it replaces (beyond the paper).

The paper starts an MxD from random E, G, C and D = 0, so it must first learn the dense MLP
before it can beat a transcoder. The MLP is right there:

- ``"mlp_encoder"``: E (and the GLU's second encoder) and their biases from the MLP, so the
  hidden units z equal the MLP's from step 0; D = 0 as in the paper. The layer starts as its
  output bias and has only to learn the read-out.
- ``"mlp"``: E and D from the MLP, and expert vectors c_n drawn around the all-ones direction,
  ``c_n ∝ 1 + σ·ε_n`` with ε_n ~ N(0, I). Then ``Cᵀa`` is near a constant vector, and D is
  the MLP's decoder divided by the mean entry of ``Cᵀa`` on sample inputs, so the layer starts
  near the MLP. σ (``init_noise``) breaks the symmetry between experts: with σ = 0 every expert is
  the same copy of the MLP, and a few always-on experts end up carrying it (the degenerate
  experts reported for this init); a larger σ keeps experts distinct at the price of a
  start further from the MLP.

The input hook is the MLP's input in a model with folded norms (how ``zoo.load`` and
``from_pretrained`` return models). When the block's norm still has a weight (and bias), it is
folded into E here: ``E ← diag(w)·W_in``, ``b_E ← b_in + b·W_in``.

TransformerLens's ``GatedMLP`` adds ``b_in`` after the gating product; an MxD's GLU cannot, so
with D from the MLP that constant's contribution ``b_in·W_out`` goes into the output bias.

TopK transcoders get the analogue (:func:`warm_start_transcoder_`), so that warm-started layers
compare on equal terms: their first H latents become the MLP's H neurons.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.saes.paired import check_init


@dataclass
class MLPWeights:
    """An MLP written in the MxD's terms: z = φ(x·E + b_E) [⊙ (x·E_glu + b_glu)] (+ z_shift),
    y = z·D + b_out."""

    E: Tensor  # [d_in, H]
    b_E: Tensor  # [H]
    E_glu: Tensor | None  # [d_in, H]
    b_glu: Tensor | None  # [H]
    D: Tensor  # [H, d_out]
    b_out: Tensor  # [d_out], with a GatedMLP's post-product b_in folded in


@torch.no_grad()
def mlp_weights(model: HookedRootModule, layer: int) -> MLPWeights:
    """Block ``layer``'s MLP as MxD weights, with the block's norm weight and bias folded into
    the encoder when the model still has them."""
    block = model.blocks[layer]  # type: ignore[index]
    mlp = block.mlp
    gated = hasattr(mlp, "W_gate")
    # a GatedMLP's activation reads W_gate; its linear branch reads W_in
    E, E_glu = (mlp.W_gate, mlp.W_in) if gated else (mlp.W_in, None)
    b_E = torch.zeros_like(mlp.b_in) if gated else mlp.b_in
    b_glu = torch.zeros_like(mlp.b_in) if gated else None
    b_out = mlp.b_out + (mlp.b_in @ mlp.W_out if gated else 0.0)
    norm_w = getattr(getattr(block, "ln2", None), "w", None)
    norm_b = getattr(getattr(block, "ln2", None), "b", None)
    if isinstance(norm_b, Tensor):
        b_E = b_E + norm_b @ E
        if E_glu is not None and b_glu is not None:
            b_glu = b_glu + norm_b @ E_glu
    if isinstance(norm_w, Tensor):
        E = norm_w[:, None] * E
        E_glu = norm_w[:, None] * E_glu if E_glu is not None else None
    return MLPWeights(
        E=E.clone(),
        b_E=b_E.clone(),
        E_glu=None if E_glu is None else E_glu.clone(),
        b_glu=None if b_glu is None else b_glu.clone(),
        D=mlp.W_out.clone(),
        b_out=b_out.clone(),
    )


def _check_shapes(layer: nn.Module, weights: MLPWeights) -> None:
    want = (tuple(layer.W_enc.shape), tuple(layer.W_dec.shape))  # type: ignore[union-attr]
    have = (tuple(weights.E.shape), tuple(weights.D.shape))
    if want != have:
        raise ValueError(
            f"the MxD's E and D have shapes {want}, the MLP's {have}: a warm start needs the "
            "MLP's own d_hidden (and d_in, d_out)."
        )
    if (weights.E_glu is not None) != (layer.W_glu is not None):  # type: ignore[union-attr]
        raise ValueError("glu must match the MLP: True for a gated MLP, False otherwise.")


@torch.no_grad()
def warm_start_(
    layer: nn.Module,
    weights: MLPWeights,
    init: str,
    sample_inputs: Tensor | None = None,
    noise: float = 1.0,
    seed: int = 0,
) -> nn.Module:
    """Initialise an MxD in place from the MLP's weights (``init`` as in the module docstring;
    ``"paper"`` leaves it as built). ``"mlp"`` needs ``sample_inputs`` ``[B, d_in]`` (as the
    layer sees them) to set the decoder's scale."""
    check_init(init)
    if init == "paper":
        return layer
    _check_shapes(layer, weights)
    dtype = layer.W_enc.dtype  # type: ignore[union-attr]
    layer.W_enc.copy_(weights.E.to(dtype))  # type: ignore[union-attr]
    layer.b_enc.copy_(weights.b_E.to(dtype))  # type: ignore[union-attr]
    if weights.E_glu is not None and weights.b_glu is not None:
        layer.W_glu.copy_(weights.E_glu.to(dtype))  # type: ignore[union-attr]
        layer.b_glu.copy_(weights.b_glu.to(dtype))  # type: ignore[union-attr]
    if init == "mlp_encoder":
        return layer
    if sample_inputs is None:
        raise ValueError("init='mlp' needs sample inputs to scale the decoder.")
    n_experts, d_out = layer.W_experts.shape  # type: ignore[union-attr]
    generator = torch.Generator().manual_seed(seed)
    jitter = torch.randn(n_experts, d_out, generator=generator, dtype=torch.float64)
    experts = 1.0 + noise * jitter
    experts /= experts.norm(dim=-1, keepdim=True)
    layer.W_experts.copy_(experts.to(dtype))  # type: ignore[union-attr]
    codes = layer.encode(sample_inputs.to(dtype))  # type: ignore[operator]
    # the output is (Cᵀa) ⊙ (Dᵀz): divide D by the mean entry of Cᵀa on the samples, so the
    # layer's output is the MLP's on average over tokens and output dimensions
    scale = float((codes @ layer.W_experts).mean())  # type: ignore[union-attr]
    if not scale > 0:
        raise ValueError("no expert fires on the sample inputs; cannot scale the decoder.")
    layer.W_dec.copy_((weights.D / scale).to(dtype))  # type: ignore[union-attr]
    layer.b_dec.copy_(weights.b_out.to(dtype))  # type: ignore[union-attr]
    return layer


@torch.no_grad()
def warm_start_transcoder_(layer: nn.Module, weights: MLPWeights, init: str) -> nn.Module:
    """A TopK transcoder's analogue of the MxD warm starts: latents ``0..H-1`` become the MLP's
    neurons.

    - ``"mlp_encoder"``: their encoder columns and biases are the MLP's, so their
      pre-activations equal the MLP's; the decoder stays as built.
    - ``"mlp"``: also their decoder rows are the MLP's ``W_out`` and the output bias its
      ``b_out``; the other latents keep their random encoders and start with zero decoder rows.
      A token's output then starts as the MLP's read-out of its selected neurons: the MLP with
      its activation replaced by TopK(ReLU(·)).

    A gated MLP's hidden unit is the product of two projections, which no single transcoder
    latent can copy, so gated MLPs are refused.
    """
    check_init(init)
    if init == "paper":
        return layer
    if weights.E_glu is not None:
        raise ValueError(
            "a transcoder latent is one ReLU unit, and a gated MLP's hidden unit is the product "
            "of two projections: there is no transcoder copy of it. Use init='paper' for a "
            "transcoder on a gated MLP."
        )
    d_in, d_sae = layer.W_enc.shape  # type: ignore[union-attr]
    hidden = weights.E.shape[1]
    if d_in != weights.E.shape[0] or d_sae < hidden:
        raise ValueError(
            f"the transcoder's W_enc is {(d_in, d_sae)} and the MLP's W_in "
            f"{tuple(weights.E.shape)}: a warm start needs the same d_in and d_sae >= the "
            f"MLP's d_mlp ({hidden})."
        )
    dtype = layer.W_enc.dtype  # type: ignore[union-attr]
    layer.W_enc[:, :hidden] = weights.E.to(dtype)  # type: ignore[index]
    layer.b_enc[:hidden] = weights.b_E.to(dtype)  # type: ignore[index]
    if init == "mlp":
        layer.W_dec.zero_()  # type: ignore[union-attr]
        layer.W_dec[:hidden] = weights.D.to(dtype)  # type: ignore[index]
        layer.b_dec.copy_(weights.b_out.to(dtype))  # type: ignore[union-attr]
    return layer
