"""The centred-balancing diagnostic (benchmarks/centred_balance.py): each centred transcoder set
beside its frontier row, the MxD's ratio paired only where the run spliced that very MxD, and the
selection-bias drift read from a real saved layer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import mxd_saelens as mxd
from benchmarks.balancing_runs import bias_drift
from benchmarks.centred_balance import transcoder_entries

FIGURES = {"kl": 0.01, "kl_se": 0.001, "dead_fraction": 0.0}


def frontier_row(name: str, architecture: str, delta_ce: float, se: float) -> dict:
    return {
        "name": name,
        "architecture": architecture,
        "k": 8,
        "recipe": {"start": "balanced", "lr": 1e-3},
        "tokens": 16_000_000,
        "delta_ce": delta_ce,
        "delta_ce_se": se,
        **FIGURES,
        "probe_f1": 0.90,
        "probe_f1_se": 0.02,
    }


FRONTIER = {
    "results": {
        "tiny-gated": {
            "rows": [
                frontier_row("mxd-a", "mxd", 0.009, 0.0004),
                frontier_row("tc-a", "topk_transcoder", 0.027, 0.0010),
            ],
            "comparisons": [
                {
                    "k": 8,
                    "a": "mxd-a",
                    "b": "tc-a",
                    "delta_ce_a": 0.009,
                    "delta_ce_ratio": 0.33,
                    "delta_ce_z": -20.0,
                    "paired": True,
                }
            ],
        }
    }
}


def run_row(architecture: str, delta_ce: float, se: float, mode: str | None) -> dict:
    return {
        "architecture": architecture,
        "start": "balanced",
        "lr": 1e-3,
        "tokens": 16_000_000,
        "balance_rate": 0.01 if mode else 0.0,
        "balance_mode": mode,
        "test": {"delta_ce": delta_ce, "delta_ce_se": se, **FIGURES},
        "probe_f1": 0.92,
        "probe_f1_se": 0.02,
    }


def run(with_mxd_comparison: bool) -> dict:
    layers = {"tc-a": run_row("topk_transcoder", 0.018, 0.0008, "revive_centred")}
    comparisons = []
    if with_mxd_comparison:
        layers["mxd-a"] = run_row("mxd", 0.009, 0.0004, "revive")  # kept, not retrained
        comparisons.append(
            {
                "a": "mxd-a",
                "b": "tc-a",
                "delta_ce_a": 0.009,
                "delta_ce_ratio": 0.5,
                "delta_ce_ratio_se": 0.02,
                "delta_ce_z": -15.0,
            }
        )
    point = {"tokens": 16_000_000, "layers": layers, "comparisons": comparisons}
    return {"model": "tiny-gated", "k": 8, "points": [point]}


def test_a_centred_transcoder_is_set_beside_its_frontier_row_unpaired_across_runs():
    (entry,) = transcoder_entries(FRONTIER, "r.json", run(with_mxd_comparison=False))
    assert entry["frontier"]["name"] == "tc-a" and entry["centred"]["recipe"]["lr"] == 1e-3
    assert entry["mxd_vs_frontier"]["paired"] is True  # the frontier's own comparison
    after = entry["mxd_vs_centred"]
    assert after["paired"] is False
    assert after["delta_ce_ratio"] == pytest.approx(0.009 / 0.018)
    assert after["delta_ce_diff_se"] == pytest.approx(math.hypot(0.0004, 0.0008))
    assert after["target"] == {"ratio_at_most": 0.4, "met": False}  # 0.5 > 0.4
    change = entry["centred_minus_frontier"]
    assert change["delta_ce_diff"] == pytest.approx(0.018 - 0.027)
    assert change["delta_ce_diff_se"] == pytest.approx(math.hypot(0.0008, 0.0010))


def test_the_runs_own_comparison_is_used_when_it_spliced_the_frontier_mxd():
    (entry,) = transcoder_entries(FRONTIER, "r.json", run(with_mxd_comparison=True))
    assert entry["mxd_vs_centred"]["paired"] is True
    assert entry["mxd_vs_centred"]["delta_ce_z"] == -15.0
    # another MxD under the same name (a different test ΔCE) is not paired with the frontier's
    other = run(with_mxd_comparison=True)
    other["points"][0]["comparisons"][0]["delta_ce_a"] = 0.0085
    (entry,) = transcoder_entries(FRONTIER, "r.json", other)
    assert entry["mxd_vs_centred"]["paired"] is False


def test_the_bias_drift_is_read_from_a_saved_layer(tmp_path: Path):
    cfg = mxd.TopKTranscoderTrainingSAEConfig(
        d_in=6, d_sae=12, k=2, balance_rate=0.01, balance_mode="revive_centred"
    )
    layer = mxd.TopKTranscoderTrainingSAE(cfg)
    with torch.no_grad():
        layer.b_enc.copy_(torch.arange(12, dtype=torch.float32))
    layer.save_inference_model(tmp_path / "layer")
    drift = bias_drift(tmp_path / "layer")
    assert drift["bias"] == "b_enc" and drift["balance_mode"] == "revive_centred"
    assert drift["bias_mean"] == pytest.approx(5.5)
    assert drift["bias_q05_median_q95"][1] == pytest.approx(5.5)
    expected_norm = layer.W_enc.detach().double().norm(dim=0).median().item()
    assert drift["selection_weight_column_norm_median"] == pytest.approx(expected_norm)
