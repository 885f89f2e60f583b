"""Trained layers as circuit-tracer's per-layer transcoders: the nodes of an attribution graph.

circuit-tracer reads a node's *encoder vector* (the direction whose dot product with the MLP's
input is the node's pre-activation) and its *scaled decoder vector* (what the node adds to the
MLP's output at its token). For a TopK (skip) transcoder both are rows of its matrices.

For an MxD the node is an expert n active at token t. Its pre-activation is the gate's,
``g_nᵀx + b_n``; its output is ``a_n (c_n ⊙ Dᵀz_t)``, where z_t are the hidden units at that
token. z is held at the token's values, as circuit-tracer holds attention patterns and norm
scales, so an expert's output is linear in its coefficient and the graph is exact on the
replacement: each node's decoder vector depends on its token, which circuit-tracer's attribution
core takes as given (one scaled decoder vector per active node).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

try:
    from circuit_tracer.transcoder import SingleLayerTranscoder
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mxd_saelens.circuits needs circuit-tracer: install the 'circuits' extra in its own "
        "environment (make test-circuits, or pip install -c constraints/circuits.txt "
        "-e '.[circuits]'); the README says which versions go together."
    ) from error


TRANSCODERS = ("topk_transcoder", "topk_skip_transcoder")


class TopKReLU(nn.Module):
    """The k largest pre-activations of each token, through a ReLU; the rest zero (the gate of
    every TopK layer here)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, pre: Tensor) -> Tensor:  # [..., n_codes] -> [..., n_codes]
        values, indices = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def _parameter(tensor: Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone().float(), requires_grad=False)


def _check_plain_input(layer: nn.Module) -> None:
    cfg: Any = layer.cfg
    if getattr(cfg, "normalize_activations", "none") != "none":
        raise ValueError(
            f"the layer normalises its input ({cfg.normalize_activations!r}): fold the scaling "
            "into its weights first (layer.fold_activation_norm_scaling_factor(s), as SAELens "
            "does on save), so that its pre-activations are a linear map of the MLP's input."
        )
    if getattr(cfg, "apply_b_dec_to_input", False):
        raise ValueError(
            "the layer subtracts its output bias from its input (apply_b_dec_to_input); a "
            "transcoder's input and output live in different places, so this is not supported."
        )


def transcoder_nodes(layer: nn.Module, block: int) -> SingleLayerTranscoder:
    """A TopK (skip) transcoder trained here as circuit-tracer's ``SingleLayerTranscoder``."""
    _check_plain_input(layer)
    cfg: Any = layer.cfg
    skip = getattr(layer, "W_skip", None)
    nodes = SingleLayerTranscoder(
        d_model=cfg.d_in,
        d_transcoder=cfg.d_sae,
        activation_function=TopKReLU(cfg.k),
        layer_idx=block,
        skip_connection=skip is not None,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )
    with torch.no_grad():
        nodes.W_enc = _parameter(layer.W_enc.T)  # [d_sae, d_in]
        nodes.W_dec = _parameter(layer.W_dec)  # [d_sae, d_out]
        nodes.b_enc = _parameter(layer.b_enc)
        nodes.b_dec = _parameter(layer.b_dec)
        if skip is not None:
            nodes.W_skip = _parameter(skip)  # [d_out, d_in]: circuit-tracer's layout too
    return nodes


class MxDExpertNodes(SingleLayerTranscoder):
    """An MxD's experts as graph nodes: encoder vectors are the gate's columns, each active
    expert's decoder vector is ``c_n ⊙ Dᵀz_t`` at its token (z held at the token's values)."""

    def __init__(self, layer: nn.Module, block: int) -> None:
        _check_plain_input(layer)
        cfg: Any = layer.cfg
        super().__init__(
            d_model=cfg.d_in,
            d_transcoder=cfg.n_experts,
            activation_function=TopKReLU(cfg.k),
            layer_idx=block,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
        del self.W_dec  # an expert has no fixed decoder vector
        # the MxD itself computes z and Dᵀz; a copy, since circuit-tracer moves its nodes'
        # parameters to the model's device and dtype in place
        self.mxd = copy.deepcopy(layer).float().requires_grad_(False)
        with torch.no_grad():
            self.W_enc = _parameter(layer.W_gate.T)  # [N, I]: expert n's gate direction
            self.b_enc = _parameter(layer.b_gate)
            self.b_dec = _parameter(layer.b_dec)

    def _shared_output(self, input_acts: Tensor) -> Tensor:
        """Dᵀz at every token, [n_pos, O]: what each expert scales elementwise by its c_n."""
        return self.mxd.hidden(input_acts.to(self.mxd.W_dec.dtype)) @ self.mxd.W_dec

    def decode(self, acts: Tensor, input_acts: Tensor | None = None) -> Tensor:
        if input_acts is None:
            raise ValueError(
                "an MxD expert's output depends on the token's hidden units: decode(acts, "
                "input_acts) needs the MLP's input."
            )
        return (acts @ self.mxd.W_experts) * self._shared_output(input_acts) + self.b_dec

    def decode_sparse(
        self, sparse_acts: Tensor, input_acts: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The layer's output, and each active expert's output at its token (scaled)."""
        if input_acts is None:
            raise ValueError("decode_sparse of an MxD needs the MLP's input (input_acts).")
        positions, experts = sparse_acts.indices()
        shared = self._shared_output(input_acts)  # [n_pos, O]
        scaled = sparse_acts.values()[:, None] * self.mxd.W_experts[experts] * shared[positions]
        out = torch.zeros(
            sparse_acts.shape[0], self.d_model, dtype=scaled.dtype, device=scaled.device
        )
        return out.index_add_(0, positions, scaled) + self.b_dec, scaled

    def _get_decoder_vectors(self, feat_ids: Any = None) -> Tensor:
        raise TypeError(
            "an MxD expert has no decoder vector of its own: its output c_n ⊙ Dᵀz depends on "
            "the token, so circuit-tracer's feature_intervention cannot place it. Use "
            "mxd_saelens.circuits.direct_effects, which computes it at the token."
        )

    def to_safetensors(self, save_path: str) -> None:
        raise TypeError(
            "save the MxD itself (save_inference_model); these nodes are built from it."
        )


def as_nodes(layer: nn.Module, block: int) -> SingleLayerTranscoder:
    """The graph nodes of a layer trained here: an MxD's experts or a transcoder's latents."""
    architecture = layer.cfg.architecture()  # type: ignore[union-attr, operator]
    if architecture == "mxd":
        return MxDExpertNodes(layer, block)
    if architecture in TRANSCODERS:
        return transcoder_nodes(layer, block)
    raise ValueError(
        f"block {block}'s layer is a {architecture!r}; attribution graphs take 'mxd', "
        + ", ".join(repr(name) for name in TRANSCODERS)
        + " (their gates are TopK, which circuit-tracer's file loader cannot build)."
    )
