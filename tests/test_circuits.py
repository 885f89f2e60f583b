"""Attribution graphs through layers built here, computed by the real circuit-tracer on the
bundled models (the circuits environment: make test-circuits; skipped where circuit-tracer is
not installed). Every edge check compares the graph with interventions computed here, and the
transcoder ones also with circuit-tracer's own ``feature_intervention``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("circuit_tracer")

import mxd_saelens as mxd
from mxd_saelens import zoo
from mxd_saelens.circuits import (
    attribution_graph,
    check_strongest_edges,
    direct_effects,
    graph_scores,
    replacement_model,
)
from mxd_saelens.data.hooks import MLPHookMismatch, mlp_shape, resolve_mlp_hooks
from mxd_saelens.training.warm_start import mlp_weights
from tests.helpers import randomize_

N_CODES, K = 256, 8


def with_hooks(layer: torch.nn.Module, model, block: int) -> torch.nn.Module:
    hooks = resolve_mlp_hooks(model, layer=block)
    layer.cfg.metadata.hook_name = hooks.hook_in
    layer.cfg.metadata.hook_name_out = hooks.hook_out
    return layer.eval()


def random_layer(model, architecture: str, block: int) -> torch.nn.Module:
    d = model.cfg.d_model
    shape = mlp_shape(model)
    if architecture == "mxd":
        layer = mxd.MxD(
            mxd.MxDConfig(
                d_in=d,
                n_experts=N_CODES,
                k=K,
                d_hidden=model.cfg.d_mlp,
                activation=shape["activation"],
                glu=shape["glu"],
            )
        )
    elif architecture == "topk_skip_transcoder":
        layer = mxd.TopKSkipTranscoder(
            mxd.TopKSkipTranscoderConfig(d_in=d, d_out=d, d_sae=N_CODES, k=K)
        )
    else:
        layer = mxd.TopKTranscoder(mxd.TopKTranscoderConfig(d_in=d, d_out=d, d_sae=N_CODES, k=K))
    with torch.no_grad():
        randomize_(layer, seed=block, scale=0.1)
    return with_hooks(layer, model, block)


def layer_set(model, architecture: str) -> dict[int, torch.nn.Module]:
    return {b: random_layer(model, architecture, b) for b in range(model.cfg.n_layers)}


@pytest.fixture(scope="module")
def gelu():
    return zoo.load("tiny-gelu")


@pytest.fixture(scope="module")
def gated():
    return zoo.load("tiny-gated")


def prompt(model, n: int = 14) -> torch.Tensor:
    text = zoo.load_corpus("heldout")[3]["text"]
    return model.to_tokens(text, prepend_bos=True)[0, :n]


ARCHITECTURES = ["mxd", "topk_transcoder", "topk_skip_transcoder"]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_nodes_add_up_to_the_layers_own_output(gelu, architecture):
    layers = layer_set(gelu, architecture)
    tokens = prompt(gelu)
    replacement = replacement_model(gelu, layers, tokens)
    assert torch.allclose(replacement(tokens[None]), gelu(tokens[None]), atol=1e-5)
    _, cache = gelu.run_with_cache(tokens[None])
    inputs = torch.stack([cache[layers[b].cfg.metadata.hook_name][0] for b in layers])
    parts = replacement.transcoders.compute_attribution_components(inputs, slice(0, 0))
    for block, layer in layers.items():
        with torch.no_grad():
            own = layer(inputs[block])
        assert torch.allclose(parts["reconstruction"][block], own, atol=1e-5, rtol=1e-5)
    # one scaled decoder vector per active node, k per token and block
    assert parts["decoder_vecs"].shape == (len(layers) * len(tokens) * K, gelu.cfg.d_model)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_strongest_edges_are_the_direct_effects_of_interventions(gelu, architecture):
    layers = layer_set(gelu, architecture)
    tokens = prompt(gelu)
    replacement = replacement_model(gelu, layers, tokens)
    graph = attribution_graph(replacement, tokens, batch_size=128)
    edges = check_strongest_edges(replacement, graph, tokens, n_edges=8)
    assert len(edges) == 8
    for edge in edges:
        assert edge.source[0] < edge.target[0] or edge.source[1] < edge.target[1]
        assert edge.relative_error < 1e-3, edge
    scores = graph_scores(graph)
    assert 0 < scores["replacement"] < 1 and 0 < scores["completeness"] < 1


def test_mxd_experts_of_a_gated_mlp_are_nodes_too(gated):
    layers = layer_set(gated, "mxd")
    tokens = prompt(gated)
    replacement = replacement_model(gated, layers, tokens)
    graph = attribution_graph(replacement, tokens, batch_size=128)
    for edge in check_strongest_edges(replacement, graph, tokens, n_edges=6):
        assert edge.relative_error < 1e-3, edge


def test_direct_effects_agree_with_circuit_tracers_own_intervention(gelu):
    layers = layer_set(gelu, "topk_skip_transcoder")
    tokens = prompt(gelu)
    replacement = replacement_model(gelu, layers, tokens)
    clean = replacement.get_activations(tokens, apply_activation_function=False)[1]
    # an active node of block 1, after BOS (circuit-tracer puts no nodes on position 0)
    acts = replacement.transcoders[1].activation_function(clean[1])
    position, code = [int(i) for i in acts[1:].nonzero()[5]]
    source = (1, position + 1, code)
    ours = direct_effects(replacement, tokens, source)
    _, theirs = replacement.feature_intervention(
        tokens,
        [(*source, 0.0)],
        constrained_layers=range(gelu.cfg.n_layers),
        apply_activation_function=False,
    )
    assert ours[2:].abs().max() > 1e-2  # the source reaches later blocks' nodes
    assert ours[0].abs().max() == 0  # and none before its own
    assert torch.allclose(ours, clean - theirs, atol=1e-5)


def test_a_layer_that_is_the_mlp_leaves_no_error(gelu):
    """An MxD with one always-on expert of all-ones weights and the MLP's own encoder and
    decoder is the MLP exactly: the graph has no error, so both scores are 1."""
    layers = {}
    for block in range(gelu.cfg.n_layers):
        layer = random_layer(gelu, "mxd", block)
        weights = mlp_weights(gelu, block)
        with torch.no_grad():
            layer.W_enc.copy_(weights.E)
            layer.b_enc.copy_(weights.b_E)
            layer.W_dec.copy_(weights.D)
            layer.b_dec.copy_(weights.b_out)
            layer.W_gate.zero_()
            layer.b_gate.zero_()
            layer.b_gate[0] = 1.0
            layer.W_experts[0] = 1.0
        layers[block] = layer
    for layer in layers.values():
        layer.cfg.k = 1
    tokens = prompt(gelu)
    replacement = replacement_model(gelu, layers, tokens)
    scores = graph_scores(attribution_graph(replacement, tokens, batch_size=128))
    assert scores["replacement"] == pytest.approx(1.0, abs=1e-4)
    assert scores["completeness"] == pytest.approx(1.0, abs=1e-4)


def test_an_mxd_tells_circuit_tracers_intervention_where_to_go(gelu):
    tokens = prompt(gelu)
    replacement = replacement_model(gelu, layer_set(gelu, "mxd"), tokens)
    with pytest.raises(TypeError, match="direct_effects"):
        replacement.feature_intervention(tokens, [(0, 3, 0, 1.0)])


def test_bad_layer_sets_are_refused_before_any_graph(gelu):
    tokens = prompt(gelu)
    layers = layer_set(gelu, "topk_transcoder")
    with pytest.raises(ValueError, match="one layer for every block"):
        replacement_model(gelu, {b: layers[b] for b in (0, 1, 3)}, tokens)
    shifted = dict(layers)
    shifted[2] = with_hooks(random_layer(gelu, "topk_transcoder", 1), gelu, 1)
    with pytest.raises(ValueError, match=r"block 2's layer reads 'blocks\.1"):
        replacement_model(gelu, shifted, tokens)
    mixed = dict(layers)
    mixed[1] = with_hooks(
        mxd.TopKTranscoder(mxd.TopKTranscoderConfig(d_in=128, d_out=128, d_sae=64, k=K)), gelu, 1
    )
    with pytest.raises(ValueError, match="one width"):
        replacement_model(gelu, mixed, tokens)
    with pytest.raises(MLPHookMismatch, match="fold_ln=True"):
        replacement_model(zoo.load("tiny-gelu", fold_ln=False), layers, tokens)
    with pytest.raises(ValueError, match="shape \\[n_pos\\]"):
        attribution_graph(replacement_model(gelu, layers, tokens), tokens[None])


def test_the_readmes_circuits_block_runs_as_written(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"^```python circuits\n(.*?)^```", readme, flags=re.S | re.M)
    assert len(blocks) == 1
    script = tmp_path / "readme_circuits.py"
    script.write_text(blocks[0])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'replacement':" in done.stdout
    assert done.stdout.count("intervention") == 3
