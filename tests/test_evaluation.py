"""Splice evaluation on the bundled model: shared forwards change no number, the short spliced
forward is the full one, the error bars are the per-sequence ones, and the report holds them."""

from __future__ import annotations

import json
import math
import platform
import re
from pathlib import Path

import numpy as np
import pytest
import sae_lens
import torch
from datasets import Dataset

import mxd_saelens as mxd
from mxd_saelens import zoo
from mxd_saelens.cli.main import main
from mxd_saelens.data.hooks import resolve_mlp_hooks
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.evaluation.forwards import BatchForwards
from mxd_saelens.evaluation.loss import (
    compare,
    evaluate_layers,
    evaluate_splice,
)
from mxd_saelens.evaluation.report import format_comparisons, format_table, write_report
from mxd_saelens.evaluation.splice import SplicedLayer, hooks_of, spliced_forward
from tests.helpers import randomize_


class OwnMLP(torch.nn.Module):
    """A 'layer' that is the model's own MLP."""

    def __init__(self, mlp: torch.nn.Module):
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


@pytest.fixture(scope="module")
def model():
    model = zoo.load("tiny-gelu")
    if model.cfg.normalization_type == "LN":  # make ln2.hook_normalized the MLP's input
        model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    return model


@pytest.fixture(scope="module")
def tokens(model) -> torch.Tensor:
    return token_sequences(model, "zoo:heldout", 32, 12)


def make_layer(architecture: str, block: int, seed: int = 0, exclude_special: bool = False):
    if architecture == "mxd":
        layer = mxd.MxD(
            mxd.MxDConfig(d_in=128, n_experts=64, k=4, d_hidden=128, activation="gelu_tanh")
        )
    else:
        layer = mxd.TopKTranscoder(mxd.TopKTranscoderConfig(d_in=128, d_out=128, d_sae=64, k=4))
    randomize_(layer, seed=seed, scale=0.1)
    layer.cfg.metadata.hook_name = f"blocks.{block}.ln2.hook_normalized"
    layer.cfg.metadata.hook_name_out = f"blocks.{block}.hook_mlp_out"
    layer.cfg.metadata.model_name = "tiny-gelu"
    layer.cfg.metadata.exclude_special_tokens = exclude_special
    return layer.eval()


@pytest.fixture(scope="module")
def layers():
    return {
        "mxd-b2": make_layer("mxd", 2, seed=0),
        "topk-b2": make_layer("topk", 2, seed=1),
        "mxd-b1": make_layer("mxd", 1, seed=2),
    }


@pytest.fixture(scope="module")
def evaluation(model, layers, tokens):
    return evaluate_layers(model, layers, tokens, batch_size=5, progress=False)


def test_shared_forwards_give_each_layers_own_numbers(model, layers, tokens, evaluation):
    assert [row["name"] for row in evaluation.rows] == list(layers)
    for row in evaluation.rows:
        layer = layers[row["name"]]
        alone = evaluate_splice(
            model, SplicedLayer(layer, hooks_of(model, layer)), tokens, batch_size=3
        )
        for key, value in alone.to_dict().items():
            assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), key
        for key, values in alone.per_sequence.items():
            np.testing.assert_allclose(
                evaluation.metrics[row["name"]].per_sequence[key], values, rtol=1e-5, atol=1e-7
            )
    b1, b2 = evaluation.rows[2], evaluation.rows[0]
    assert b1["ce_clean"] == b2["ce_clean"] and b1["ce_zero_ablation"] != b2["ce_zero_ablation"]


@pytest.mark.parametrize("name", ["mxd-b2", "mxd-b1"])
def test_forward_from_the_spliced_block_is_the_full_spliced_forward(model, layers, tokens, name):
    layer = layers[name]
    hooks = hooks_of(model, layer)
    forwards = BatchForwards(model, tokens, [hooks.hook_in, hooks.hook_out])
    short = forwards.logits_with(hooks.hook_out, layer(forwards.cache[hooks.hook_in]))
    torch.testing.assert_close(short, spliced_forward(model, layer, tokens), rtol=1e-5, atol=1e-5)

    zeroed = model.run_with_hooks(tokens, fwd_hooks=[(hooks.hook_out, lambda acts, hook: acts * 0)])
    torch.testing.assert_close(
        forwards.logits_with(hooks.hook_out, 0.0), zeroed, rtol=1e-5, atol=1e-5
    )
    clean_log_probs = model(tokens)[:, :-1].float().log_softmax(-1)
    torch.testing.assert_close(forwards.clean_log_probs, clean_log_probs, rtol=0, atol=0)


def test_forward_from_a_block_holds_for_rotary_rms_models(tiny_gated_model, heldout_tokens):
    model, hook = tiny_gated_model, "blocks.1.hook_mlp_out"
    forwards = BatchForwards(model, heldout_tokens, [hook])
    zeroed = model.run_with_hooks(heldout_tokens, fwd_hooks=[(hook, lambda acts, hook: acts * 0)])
    torch.testing.assert_close(forwards.logits_with(hook, 0.0), zeroed, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_losses_match_an_independent_computation(model, layers, tokens, evaluation):
    metrics = evaluation.metrics["topk-b2"]
    assert metrics.ce_clean == pytest.approx(model(tokens, return_type="loss").item(), abs=1e-5)
    logits = spliced_forward(model, layers["topk-b2"], tokens)
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    logp_clean = torch.log_softmax(model(tokens)[:, :-1].double(), -1)
    ce = -logp.gather(-1, tokens[:, 1:, None])[..., 0]  # [n, pos − 1]
    kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
    np.testing.assert_allclose(metrics.per_sequence["ce_spliced"], ce.mean(1), rtol=1e-5)
    np.testing.assert_allclose(metrics.per_sequence["kl"], kl.mean(1), rtol=1e-4, atol=1e-5)
    assert metrics.n_tokens == tokens.numel() - tokens.shape[0]
    assert metrics.n_sequences == tokens.shape[0] and metrics.l0 == pytest.approx(4.0)


def test_standard_errors_are_those_of_the_per_sequence_values(evaluation, tokens):
    n = tokens.shape[0]
    for metrics in evaluation.metrics.values():
        seq = metrics.per_sequence
        delta = seq["ce_spliced"] - seq["ce_clean"]
        assert metrics.delta_ce == pytest.approx(delta.mean())
        assert metrics.delta_ce_se == pytest.approx(delta.std(ddof=1) / math.sqrt(n))
        assert metrics.kl_se == pytest.approx(seq["kl"].std(ddof=1) / math.sqrt(n))
        # ce_recovered = mean(x) / mean(y): the textbook delta method for a ratio of means
        x = seq["ce_zero_ablation"] - seq["ce_spliced"]
        y = seq["ce_zero_ablation"] - seq["ce_clean"]
        (vx, cxy), (_, vy) = np.cov(x, y, ddof=1)
        mx, my = x.mean(), y.mean()
        expected = math.sqrt((vx / my**2 - 2 * mx * cxy / my**3 + mx**2 * vy / my**4) / n)
        assert metrics.ce_recovered == pytest.approx(mx / my)
        assert metrics.ce_recovered_se == pytest.approx(expected)
        assert 0 < metrics.nmse_se < metrics.nmse


def test_paired_comparisons_are_antisymmetric_and_zero_against_themselves(evaluation, tokens):
    a, b = evaluation.metrics["mxd-b2"], evaluation.metrics["topk-b2"]
    same = compare(a, a)
    assert same["delta_ce_diff"] == 0 and same["delta_ce_diff_se"] == 0
    assert same["kl_diff_se"] == 0 and same["delta_ce_ratio"] == pytest.approx(1.0)

    ab, ba = evaluation.compare("mxd-b2", "topk-b2"), evaluation.compare("topk-b2", "mxd-b2")
    for metric in ("delta_ce", "kl"):
        assert ab[f"{metric}_diff"] == pytest.approx(-ba[f"{metric}_diff"])
        assert ab[f"{metric}_diff_se"] == pytest.approx(ba[f"{metric}_diff_se"])
        assert ab[f"{metric}_z"] == pytest.approx(-ba[f"{metric}_z"])
        assert ab[f"{metric}_ratio"] == pytest.approx(1 / ba[f"{metric}_ratio"])
    paired = a.per_sequence["ce_spliced"] - b.per_sequence["ce_spliced"]
    assert ab["delta_ce_diff"] == pytest.approx(a.delta_ce - b.delta_ce)
    assert ab["delta_ce_diff_se"] == pytest.approx(paired.std(ddof=1) / math.sqrt(len(paired)))
    assert ab["delta_ce_ratio"] == pytest.approx(a.delta_ce / b.delta_ce)

    assert [(c["a"], c["b"]) for c in evaluation.comparisons()] == [
        ("mxd-b2", "topk-b2"),
        ("mxd-b2", "mxd-b1"),
        ("topk-b2", "mxd-b1"),
    ]
    assert [(c["a"], c["b"]) for c in evaluation.comparisons("topk-b2")] == [
        ("mxd-b2", "topk-b2"),
        ("mxd-b1", "topk-b2"),
    ]


def test_comparing_layers_evaluated_on_different_tokens_fails(model, layers, tokens, evaluation):
    hooks = resolve_mlp_hooks(model, layer=2)
    other = evaluate_splice(model, SplicedLayer(layers["mxd-b2"], hooks), tokens[:6])
    with pytest.raises(ValueError, match="same tokens"):
        compare(evaluation.metrics["mxd-b2"], other)


def test_the_models_own_mlp_loses_nothing(model, tokens):
    own = SplicedLayer(OwnMLP(model.blocks[2].mlp), resolve_mlp_hooks(model, layer=2))
    metrics = evaluate_splice(model, own, tokens)
    assert abs(metrics.delta_ce) < 1e-5 and abs(metrics.kl) < 1e-5
    assert metrics.delta_ce_se < 1e-5 and metrics.nmse < 1e-10
    assert metrics.ce_recovered == pytest.approx(1.0, abs=1e-4)
    assert math.isnan(metrics.l0) and math.isnan(metrics.dead_fraction)


@pytest.mark.parametrize("exclude", [False, True])
@torch.no_grad()
def test_activation_metrics_skip_special_tokens_only_when_trained_without(model, tokens, exclude):
    layer = make_layer("topk", 2, seed=1, exclude_special=exclude)
    hooks = hooks_of(model, layer)
    metrics = evaluate_splice(model, SplicedLayer(layer, hooks), tokens)
    _, cache = model.run_with_cache(tokens, names_filter=[hooks.hook_in, hooks.hook_out])
    x, y = cache[hooks.hook_in], cache[hooks.hook_out]
    keep = tokens != model.tokenizer.bos_token_id if exclude else torch.ones_like(tokens).bool()
    assert keep.sum() < tokens.numel() or not exclude
    y_hat = layer(x)
    error = (y_hat - y).double().pow(2).sum(-1)[keep].sum()
    assert metrics.nmse == pytest.approx(float(error / y.double().pow(2).sum(-1)[keep].sum()))
    fired = (layer.encode(x) != 0)[keep].any(0)
    assert metrics.dead_fraction == pytest.approx(1 - fired.double().mean().item())
    # the loss counts every position either way
    assert metrics.n_tokens == tokens.numel() - tokens.shape[0]


def test_report_holds_error_bars_and_comparisons(evaluation, tmp_path: Path):
    comparisons = evaluation.comparisons()
    table = format_table(evaluation.rows)
    assert "ΔCE ± SE" in table and "±" in table.splitlines()[2] and "%" in table
    assert "z" in format_comparisons(comparisons)

    json_path, html_path = write_report(evaluation.rows, tmp_path, comparisons=comparisons)
    results = json.loads(json_path.read_text())
    assert [r["name"] for r in results["rows"]] == list(evaluation.metrics)
    assert results["rows"][0]["delta_ce_se"] == pytest.approx(evaluation.rows[0]["delta_ce_se"])
    assert len(results["comparisons"]) == 3
    assert {"delta_ce_diff", "delta_ce_diff_se", "delta_ce_ratio", "kl_z"} <= set(
        results["comparisons"][0]
    )
    environment = results["environment"]
    assert environment["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert environment["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert environment["versions"]["sae-lens"] == sae_lens.__version__
    assert environment["python"] == platform.python_version()

    traces, layout = plot_payload(html_path.read_text())
    errors = sorted(e for t in traces for e in t["error_y"]["array"])
    assert errors == pytest.approx(sorted(r["delta_ce_se"] for r in evaluation.rows))
    lowest = min(r["delta_ce"] - r["delta_ce_se"] for r in evaluation.rows)
    assert layout["yaxis"]["range"][0] == pytest.approx(min(0.0, lowest))
    assert "lower is better" in layout["yaxis"]["title"]["text"]
    assert layout["xaxis"]["range"][0] == 0  # L0 from zero: no auto-zoom on a tiny spread
    assert layout["xaxis"]["range"][1] >= max(r["l0"] for r in evaluation.rows)
    html = html_path.read_text()
    assert "MLP zero-ablated" in html and "Paired comparisons" in html


def plot_payload(html: str) -> tuple[list, dict]:
    """The traces and layout passed to ``Plotly.newPlot`` in a written report."""
    start = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*', html)
    assert start is not None
    decoder = json.JSONDecoder()
    traces, end = decoder.raw_decode(html, start.end())
    layout, _ = decoder.raw_decode(html, re.compile(r"\s*,\s*").match(html, end).end())
    return traces, layout


def test_all_full_sequences_by_default(model):
    dataset = Dataset.from_dict({"text": [" ".join(["the cat sat on the mat."] * 40)] * 5})
    every = token_sequences(model, dataset, 32)
    n = every.shape[0]
    assert n > 3 and torch.equal(token_sequences(model, dataset, 32, n), every)
    with pytest.raises(ValueError, match="fewer than"):
        token_sequences(model, dataset, 32, n + 1)


def test_command_line_evaluates_saved_layers(layers, tmp_path: Path, capsys):
    paths = []
    for name in ("mxd-b2", "topk-b2"):
        layers[name].save_model(tmp_path / name)
        paths.append(str(tmp_path / name))
    out = tmp_path / "eval"
    args = ["eval", *paths, "--n_sequences", "6", "--context_size", "32", "--out_dir", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "ΔCE ± SE" in printed and "ΔCE A−B ± SE" in printed
    results = json.loads((out / "results.json").read_text())
    assert [r["n_sequences"] for r in results["rows"]] == [6, 6]
    assert [(c["a"], c["b"]) for c in results["comparisons"]] == [tuple(paths)]
    assert re.search(r"^peak resident memory: \d+\.\d\d GiB$", printed, re.M)
