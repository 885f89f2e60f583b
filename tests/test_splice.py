"""Splicing: the machinery adds nothing, agrees with SAELens, and its metrics are right."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sae_lens import HookedSAETransformer

import mxd_saelens as mxd
from mxd_saelens.data.hooks import resolve_mlp_hooks
from mxd_saelens.evaluation.loss import evaluate_splice
from mxd_saelens.evaluation.report import write_report
from mxd_saelens.evaluation.splice import SplicedLayer, splice
from tests.helpers import randomize_

LAYER = 1


class OwnMLP(torch.nn.Module):
    """A 'layer' that is the model's own MLP: splicing it in must change nothing."""

    def __init__(self, mlp: torch.nn.Module):
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def random_layer(architecture: str, d: int = 32, seed: int = 0):
    if architecture == "mxd":
        layer = mxd.MxD(
            mxd.MxDConfig(d_in=d, n_experts=96, k=6, d_hidden=128, activation="gelu_tanh")
        )
    else:
        layer = mxd.TopKTranscoder(mxd.TopKTranscoderConfig(d_in=d, d_out=d, d_sae=128, k=6))
    randomize_(layer, seed=seed, scale=0.2)
    layer.cfg.metadata.hook_name = f"blocks.{LAYER}.ln2.hook_normalized"
    layer.cfg.metadata.hook_name_out = f"blocks.{LAYER}.hook_mlp_out"
    return layer.eval()


def test_splicing_the_models_own_mlp_changes_nothing(tiny_model, heldout_tokens):
    spliced = [
        SplicedLayer(OwnMLP(tiny_model.blocks[i].mlp), resolve_mlp_hooks(tiny_model, layer=i))
        for i in range(2)
    ]
    metrics = evaluate_splice(tiny_model, spliced[LAYER], heldout_tokens)
    assert abs(metrics.delta_ce) < 1e-5 and abs(metrics.kl) < 1e-5
    assert metrics.nmse < 1e-10
    with splice(tiny_model, spliced):  # both blocks at once
        both = tiny_model(heldout_tokens)
    torch.testing.assert_close(both, tiny_model(heldout_tokens), rtol=1e-5, atol=1e-5)


def test_clean_and_ablated_losses_match_independent_computations(tiny_model, heldout_tokens):
    hooks = resolve_mlp_hooks(tiny_model, layer=LAYER)
    metrics = evaluate_splice(tiny_model, SplicedLayer(random_layer("mxd"), hooks), heldout_tokens)
    expected_clean = tiny_model(heldout_tokens, return_type="loss").item()
    assert metrics.ce_clean == pytest.approx(expected_clean, abs=1e-5)

    zeroed = tiny_model.run_with_hooks(
        heldout_tokens, fwd_hooks=[(hooks.hook_out, lambda acts, hook: acts * 0)]
    )
    expected_zero = F.cross_entropy(
        zeroed[:, :-1].reshape(-1, zeroed.shape[-1]), heldout_tokens[:, 1:].reshape(-1)
    ).item()
    assert metrics.ce_zero_ablation == pytest.approx(expected_zero, abs=1e-5)
    assert metrics.delta_ce == pytest.approx(metrics.ce_spliced - metrics.ce_clean)
    assert metrics.l0 == pytest.approx(6.0)
    assert metrics.kl > 0 and metrics.n_tokens == heldout_tokens.numel() - heldout_tokens.shape[0]


@pytest.mark.parametrize(
    "architecture",
    ["mxd", "topk_transcoder", "transcoder", "skip_transcoder", "jumprelu_transcoder"],
)
def test_splice_agrees_with_hooked_sae_transformer_to_the_last_digit(
    architecture, tiny_model, heldout_tokens
):
    layer = random_layer(architecture)
    with splice(tiny_model, layer):
        ours = tiny_model(heldout_tokens)
    hooked = HookedSAETransformer(tiny_model.cfg, tokenizer=tiny_model.tokenizer)
    hooked.load_state_dict(tiny_model.state_dict())
    hooked.eval()
    hooked.add_sae(layer)
    theirs = hooked(heldout_tokens)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.allclose(ours, tiny_model(heldout_tokens))


def test_error_term_keeps_the_output_exact_and_lets_edits_through(tiny_model, heldout_tokens):
    layer = random_layer("mxd")
    clean = tiny_model(heldout_tokens)
    seen = []
    layer.hook_sae_acts_post.add_hook(lambda acts, hook: seen.append(acts.detach().clone()))
    with splice(tiny_model, layer, use_error_term=True):
        exact = tiny_model(heldout_tokens)
    layer.reset_hooks()
    torch.testing.assert_close(exact, clean, rtol=1e-5, atol=1e-5)
    assert seen and (seen[0] != 0).sum(-1).eq(6).all()  # the codes are visible

    def steer(acts, hook):
        acts[..., 3] += 5.0
        return acts

    layer.hook_sae_acts_post.add_hook(steer)
    try:
        with splice(tiny_model, layer, use_error_term=True):
            steered = tiny_model(heldout_tokens)
    finally:
        layer.reset_hooks()
    assert (steered - clean).abs().max() > 1e-3


def test_reset_hooks_inside_a_splice_and_errors_escaping_it_are_handled(tiny_model, heldout_tokens):
    layer = random_layer("mxd")
    clean = tiny_model(heldout_tokens)
    mlp_out = tiny_model.hook_dict[f"blocks.{LAYER}.hook_mlp_out"]
    # the user's own hook outlives the splice
    mlp_out.add_hook(lambda acts, hook: None)
    with splice(tiny_model, layer):
        assert len(mlp_out.fwd_hooks) == 2
        tiny_model.reset_hooks()  # removes the splice's hooks (and the user's) early
        torch.testing.assert_close(tiny_model(heldout_tokens), clean)
    assert not mlp_out.fwd_hooks

    mlp_out.add_hook(lambda acts, hook: None)
    with pytest.raises(RuntimeError, match="raised inside"), splice(tiny_model, layer):
        raise RuntimeError("raised inside the splice")
    assert len(mlp_out.fwd_hooks) == 1  # only the user's hook is left
    tiny_model.reset_hooks()


def test_html_report_holds_the_plotted_points(tmp_path: Path):
    rows = [
        {
            "name": f"{arch}-k{k}",
            "architecture": arch,
            "parameters": p,
            "l0": float(k),
            "delta_ce": d,
            "nmse": 0.1,
            "ce_recovered": 0.9,
            "kl": 0.01,
        }
        for arch, p, points in [
            ("mxd", 1000, [(8, 0.05), (16, 0.03)]),
            ("topk_transcoder", 1010, [(8, 0.09), (16, 0.06)]),
        ]
        for k, d in points
    ]
    json_path, html_path = write_report(rows, tmp_path)
    saved = json.loads(json_path.read_text())
    assert {key: saved[key] for key in ("rows", "comparisons")} == {"rows": rows, "comparisons": []}
    html = html_path.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html)  # plotly.js is embedded: works offline
    assert len(html) > 1_000_000
    payload = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', html, re.S)
    assert payload is not None
    traces = json.loads(payload.group(1))
    plotted = {t["name"]: list(zip(t["x"], t["y"], strict=True)) for t in traces}
    assert plotted == {
        "mxd (1,000 params)": [(8.0, 0.05), (16.0, 0.03)],
        "topk_transcoder (1,010 params)": [(8.0, 0.09), (16.0, 0.06)],
    }
    assert html.count("Plotly.newPlot(") == 1  # no probe F1: no readability panel


def test_html_report_plots_probe_f1_against_delta_ce(tmp_path: Path):
    rows = [
        {
            "name": name,
            "architecture": name,
            "parameters": 1000,
            "l0": 32.0,
            "delta_ce": d,
            "delta_ce_se": 0.001,
            "probe_f1": f1,
            "probe_f1_se": 0.01,
            "nmse": 0.1,
            "ce_recovered": 0.9,
            "kl": 0.01,
        }
        for name, d, f1 in [("mxd", 0.002, 0.91), ("topk_transcoder", 0.009, 0.93)]
    ]
    html = write_report(rows, tmp_path)[1].read_text()
    calls = list(re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', html, re.S))
    assert len(calls) == 2
    panel = json.loads(calls[1].group(1))
    points = {t["name"]: (t["x"][0], t["y"][0], t["error_y"]["array"][0]) for t in panel}
    assert points == {"mxd": (0.002, 0.91, 0.01), "topk_transcoder": (0.009, 0.93, 0.01)}
