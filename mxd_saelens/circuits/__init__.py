"""Attribution graphs through layers trained here, with circuit-tracer (the ``circuits`` extra,
in its own environment: see the README for the versions that go together).

- :func:`replacement_model`: circuit-tracer's replacement model of a TransformerLens model with
  one trained layer per block (TopK or skip transcoders, or MxDs, whose active experts become
  the graph's nodes);
- :func:`attribution_graph`, :func:`graph_scores`: a graph and its replacement and completeness
  scores;
- :func:`direct_effects`, :func:`check_strongest_edges`: the graph's edges against
  interventions computed here.
"""

from mxd_saelens.circuits.checks import CheckedEdge, check_strongest_edges, direct_effects
from mxd_saelens.circuits.graphs import attribution_graph, graph_scores
from mxd_saelens.circuits.nodes import MxDExpertNodes, TopKReLU, as_nodes, transcoder_nodes
from mxd_saelens.circuits.replacement import replacement_model

__all__ = [
    "CheckedEdge",
    "MxDExpertNodes",
    "TopKReLU",
    "as_nodes",
    "attribution_graph",
    "check_strongest_edges",
    "direct_effects",
    "graph_scores",
    "replacement_model",
    "transcoder_nodes",
]
