"""Analysis views hold the numbers an independent computation gives."""

from __future__ import annotations

import copy
import math

import plotly.graph_objects as go
import pytest
import torch

from mxd_saelens.reading.analysis import (
    code_frequencies,
    contexts_figure,
    expert_matrix,
    expert_ranks,
    expert_spectrum_figure,
    expert_weights_figure,
    frequency_histogram,
    logit_direction,
    mean_hidden,
    output_direction,
    token_effects,
    token_effects_figure,
    top_activating_contexts,
)
from mxd_saelens.reading.probing import NeuronCodes
from tests.test_steering import FIELDS, LAYER, train_small_layer

torch.set_num_threads(1)

HOOK_IN = f"blocks.{LAYER}.ln2.hook_normalized"


@pytest.fixture(scope="module")
def layers(tiny_model, text_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis_layers")
    return {a: train_small_layer(tiny_model, text_dataset, a, root / a) for a in FIELDS}


@pytest.fixture(scope="module")
def codes(tiny_model, layers, heldout_tokens):
    _, cache = tiny_model.run_with_cache(heldout_tokens, names_filter=[HOOK_IN])
    with torch.no_grad():
        return {a: layer.encode(cache[HOOK_IN]) for a, layer in layers.items()}


def test_expert_matrix_and_rank(layers):
    mxd = layers["mxd"]
    w = expert_matrix(mxd, 7)
    torch.testing.assert_close(w, mxd.W_dec.detach() * mxd.W_experts[7].detach())
    assert expert_ranks(mxd, [7, 9]) == [
        int(torch.linalg.matrix_rank(mxd.W_dec.detach() * mxd.W_experts[n].detach()))
        for n in (7, 9)
    ]
    assert expert_ranks(mxd, [7])[0] == min(mxd.cfg.d_hidden, mxd.cfg.d_out)  # full rank

    figure = expert_spectrum_figure(mxd, [7, 9])
    assert isinstance(figure, go.Figure) and len(figure.data) == 2
    svals = torch.linalg.svdvals(w.double())
    assert figure.data[0].y == pytest.approx(svals.tolist())
    assert figure.data[0].name == f"expert 7 (rank {expert_ranks(mxd, [7])[0]})"
    heatmap = expert_weights_figure(mxd, 7)
    assert torch.tensor(heatmap.data[0].z).shape == (mxd.cfg.d_hidden, mxd.cfg.d_out)


def test_expert_views_reject_bad_input(layers):
    with pytest.raises(IndexError, match="expert 128 is out of range"):
        expert_matrix(layers["mxd"], 128)
    with pytest.raises(TypeError, match="not an MxD"):
        expert_matrix(layers["topk_transcoder"], 0)
    with pytest.raises(ValueError, match="pass hidden="):
        output_direction(layers["mxd"], 0)


def manual_logits(model, direction: torch.Tensor) -> torch.Tensor:
    centred = direction - direction.mean()  # the test model uses LayerNorm
    return (centred * model.ln_final.w) @ model.W_U


def test_mxd_promoted_tokens(tiny_model, layers, heldout_tokens):
    mxd, n = layers["mxd"], 11
    _, cache = tiny_model.run_with_cache(heldout_tokens, names_filter=[HOOK_IN])
    with torch.no_grad():
        z = mxd.hidden(cache[HOOK_IN][:, 1:])  # position 0 is BOS
        z_mean = z.reshape(-1, z.shape[-1]).mean(0)
        torch.testing.assert_close(mean_hidden(tiny_model, mxd, heldout_tokens), z_mean)
        # the mean of expert n's output W_nᵀz over tokens is W_nᵀz̄
        mean_output = (z @ mxd.expert_weights(n)).reshape(-1, mxd.cfg.d_out).mean(0)
        direction = output_direction(mxd, n, z_mean)
        torch.testing.assert_close(direction, mean_output, atol=1e-5, rtol=1e-4)
        logits = manual_logits(tiny_model, mean_output)
    torch.testing.assert_close(logit_direction(tiny_model, direction), logits, atol=1e-5, rtol=1e-4)
    effects = token_effects(tiny_model, mxd, n, k=5, hidden=z_mean)
    assert effects.promoted_ids == logits.topk(5).indices.tolist()
    assert [i for _, i, _ in effects.suppressed] == (-logits).topk(5).indices.tolist()
    figure = token_effects_figure(effects)
    assert sorted(figure.data[0].x) == pytest.approx(
        sorted(logits.topk(5).values.tolist() + (-(-logits).topk(5).values).tolist()), rel=1e-4
    )


def test_transcoder_promoted_tokens(tiny_model, layers):
    tc = layers["topk_transcoder"]
    effects = token_effects(tiny_model, tc, 4, k=3)
    logits = manual_logits(tiny_model, tc.W_dec[4].detach())
    assert effects.promoted_ids == logits.topk(3).indices.tolist()
    assert effects.promoted[0][0] == tiny_model.to_string(logits.topk(1).indices)


@pytest.mark.parametrize("architecture", list(FIELDS))
def test_frequencies_and_histogram(architecture, tiny_model, layers, codes, heldout_tokens):
    freqs = code_frequencies(tiny_model, layers[architecture], heldout_tokens, batch_size=5)
    expected = (codes[architecture][:, 1:] != 0).float().mean((0, 1))
    torch.testing.assert_close(freqs, expected)
    assert freqs.sum() == pytest.approx(8.0, rel=1e-5)  # k = 8 codes fire on every token
    figure = frequency_histogram(freqs)
    alive = expected[expected > 0]
    assert sorted(figure.data[0].x) == pytest.approx(sorted(alive.log10().tolist()), rel=1e-5)
    assert f"({int((expected == 0).sum())} never fire)" in figure.layout.title.text


def test_top_activating_contexts(tiny_model, layers, codes, heldout_tokens):
    mxd = layers["mxd"]
    per_code = codes["mxd"][:, 1:]
    code = int((per_code != 0).sum((0, 1)).argmax())
    contexts = top_activating_contexts(tiny_model, mxd, code, heldout_tokens, k=4, batch_size=7)
    top = per_code[..., code].flatten().topk(4).values
    assert [c.activation for c in contexts] == pytest.approx(top.tolist(), rel=1e-5)
    for c in contexts:
        assert c.position > 0  # never the BOS position
        assert codes["mxd"][c.sequence, c.position, code] == pytest.approx(c.activation)
        assert c.token == tiny_model.to_string(
            heldout_tokens[c.sequence, c.position : c.position + 1]
        )
    table = contexts_figure(contexts)
    assert list(table.data[0].cells.values[0]) == [f"{c.activation:.3f}" for c in contexts]
    labels = [f"text {i}" for i in range(len(heldout_tokens))]
    labelled = contexts_figure(contexts, sequence_labels=labels).data[0]
    assert labelled.header.values[1] == "label"
    assert list(labelled.cells.values[1]) == [f"text {c.sequence}" for c in contexts]
    # neurons work as a code source too
    neurons = NeuronCodes.of(tiny_model, LAYER)
    assert len(top_activating_contexts(tiny_model, neurons, 0, heldout_tokens, k=3)) == 3


def test_dead_code_has_no_contexts(tiny_model, layers, heldout_tokens):
    layer = copy.deepcopy(layers["mxd"])
    code = 5
    with torch.no_grad():
        layer.b_gate[code] = -1e6  # this expert's gate can never win a top-k slot
    assert top_activating_contexts(tiny_model, layer, code, heldout_tokens) == []
    frequencies = code_frequencies(tiny_model, layer, heldout_tokens)
    assert frequencies[code] == 0 and math.isfinite(frequencies[code])
