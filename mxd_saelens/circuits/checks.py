"""Graph edges checked against interventions, computed here independently of circuit-tracer.

An edge s → t of an attribution graph is s's direct effect on t's pre-activation: what s adds
to t's input through the residual stream, with attention patterns, norm scales and every MLP's
output held at their values on the prompt (and a skip path's input change passed on, as the
graph's linear part). :func:`direct_effects` removes s's output from its block and runs the
model with exactly those quantities held, which for a linear path gives the edge itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mxd_saelens.circuits.replacement import NODE_INPUT_HOOK, NODE_OUTPUT_HOOK

# circuit-tracer's holds: attention patterns and norm scales (as its freeze hooks)
_HELD_SUFFIXES = ("attn.hook_pattern", "hook_scale")


@dataclass(frozen=True)
class CheckedEdge:
    source: tuple[int, int, int]  # (block, token, code) of the source node
    target: tuple[int, int, int]
    graph: float  # the graph's edge weight
    intervention: float  # the direct effect measured by intervening

    @property
    def relative_error(self) -> float:
        return abs(self.graph - self.intervention) / max(abs(self.intervention), 1e-12)


def _hook(block: int, relative: str) -> str:
    return f"blocks.{block}.{relative}"


@torch.no_grad()
def direct_effects(replacement: Any, tokens: Tensor, source: tuple[int, int, int]) -> Tensor:
    """Every node's pre-activation on ``tokens`` (``[n_pos]``) less its value with ``source``'s
    output removed from its block, ``[n_blocks, n_pos, n_codes]``: the source's direct effects.
    """
    block, position, code = source
    n_blocks = replacement.cfg.n_layers
    inputs = [_hook(b, NODE_INPUT_HOOK) for b in range(n_blocks)]
    outputs = [_hook(b, NODE_OUTPUT_HOOK) for b in range(n_blocks)]
    held = [name for name in replacement.hook_dict if name.endswith(_HELD_SUFFIXES)]
    _, clean = replacement.run_with_cache(tokens[None], names_filter=held + inputs + outputs)
    nodes = replacement.transcoders
    x = clean[inputs[block]][0]
    acts = nodes[block].encode(x)
    if acts[position, code] == 0:
        raise ValueError(f"node {source} is not active on these tokens.")
    without = acts.clone()
    without[position, code] = 0
    removed = nodes[block].decode(without, x) - nodes[block].decode(acts, x)  # [n_pos, d]

    seen: dict[int, Tensor] = {}

    def hold(value: Tensor, hook: Any) -> Tensor:
        return clean[hook.name]

    def record_input(value: Tensor, hook: Any, b: int) -> None:
        seen[b] = value[0]

    def output(value: Tensor, hook: Any, b: int) -> Tensor:
        out = clean[hook.name].clone()
        if nodes.skip_connection:  # the skip path is linear: its input change passes on
            out[0] += nodes.compute_skip(b, seen[b]) - nodes.compute_skip(b, clean[inputs[b]][0])
        if b == block:
            out[0] += removed
        return out

    hooks = [(name, hold) for name in held]
    for b in range(n_blocks):
        hooks.append((inputs[b], lambda v, hook, b=b: record_input(v, hook, b)))
        hooks.append((outputs[b], lambda v, hook, b=b: output(v, hook, b)))
    replacement.run_with_hooks(tokens[None], fwd_hooks=hooks)
    return torch.stack(
        [
            nodes[b].encode(clean[inputs[b]][0], apply_activation_function=False)
            - nodes[b].encode(seen[b], apply_activation_function=False)
            for b in range(n_blocks)
        ]
    )


def feature_node(graph: Any, index: int) -> tuple[int, int, int]:
    """(block, token, code) of the graph's ``index``-th feature node."""
    layer, position, code = graph.active_features[graph.selected_features[index]].tolist()
    return int(layer), int(position), int(code)


def check_strongest_edges(
    replacement: Any, graph: Any, tokens: Tensor, n_edges: int = 10
) -> list[CheckedEdge]:
    """The ``n_edges`` strongest feature → feature edges of ``graph``, each beside the direct
    effect :func:`direct_effects` measures for it."""
    n_features = len(graph.selected_features)
    weights = graph.adjacency_matrix[:n_features, :n_features]
    order = weights.abs().flatten().argsort(descending=True)[:n_edges]
    checked, effects = [], {}
    for flat in order.tolist():
        target, source = divmod(flat, n_features)
        if weights[target, source] == 0:
            break
        source_node = feature_node(graph, source)
        if source not in effects:
            effects[source] = direct_effects(replacement, tokens, source_node)
        target_node = feature_node(graph, target)
        measured = effects[source][target_node]
        checked.append(
            CheckedEdge(source_node, target_node, float(weights[target, source]), float(measured))
        )
    return checked
