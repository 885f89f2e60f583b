"""Attribution graphs and their scores for a replacement model built here."""

from __future__ import annotations

from typing import Any

import torch
from circuit_tracer import attribute
from circuit_tracer.graph import compute_graph_scores


def attribution_graph(
    replacement: Any, tokens: torch.Tensor, max_feature_nodes: int | None = None, **kwargs: Any
) -> Any:
    """circuit-tracer's graph of ``tokens`` (``[n_pos]`` token ids, BOS first).

    Token ids, not text: circuit-tracer's own tokenisation drops a BOS whose id is 0, as the
    bundled tokenizer's is.
    """
    if tokens.ndim != 1:
        raise ValueError(
            f"one prompt at a time: tokens of shape [n_pos], got {tuple(tokens.shape)}."
        )
    return attribute(tokens, replacement, max_feature_nodes=max_feature_nodes, **kwargs)


def graph_scores(graph: Any) -> dict[str, float]:
    """circuit-tracer's replacement and completeness scores, and the graph's size."""
    replacement_score, completeness_score = compute_graph_scores(graph)
    return {
        "replacement": replacement_score,
        "completeness": completeness_score,
        "active_nodes": int(graph.active_features.shape[0]),
        "feature_nodes": len(graph.selected_features),
    }
