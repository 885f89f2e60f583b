"""The balancing side-by-side (benchmarks/balancing_runs.py): each layer of a budget run read back
from the folder its command names, with its selection bias measured from the saved weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mxd_saelens as mxd
from benchmarks.balancing_runs import run_entry, work_dir_of

TEST = {
    "delta_ce": 0.026,
    "delta_ce_se": 0.001,
    "kl": 0.03,
    "kl_se": 0.0002,
    "nmse": 0.18,
    "l0": 8.0,
    "dead_fraction": 0.0,
}


def test_the_work_dir_is_read_from_the_command_and_its_absence_named() -> None:
    command = "python benchmarks/budget_curve.py --k 8 --work_dir '/tmp/a b/c' --out x.json"
    assert work_dir_of(command) == Path("/tmp/a b/c")
    with pytest.raises(SystemExit, match="no --work_dir"):
        work_dir_of("python benchmarks/budget_curve.py --k 8")


def test_a_run_entry_measures_the_saved_layers_bias(tmp_path: Path) -> None:
    name = "topk_transcoder-k2-balanced-lr0.001"
    cfg = mxd.TopKTranscoderTrainingSAEConfig(
        d_in=6, d_sae=12, k=2, balance_rate=0.01, balance_mode="revive_dead", balance_window=8
    )
    layer = mxd.TopKTranscoderTrainingSAE(cfg)
    with torch.no_grad():
        layer.b_enc.copy_(torch.linspace(-1.0, 2.0, 12))
    layer.save_inference_model(tmp_path / "layers" / "1000" / name)
    row = {
        "architecture": "topk_transcoder",
        "k": 2,
        "start": "balanced",
        "lr": 1e-3,
        "tokens": 1000,
        "balance_rate": 0.01,
        "balance_mode": "revive_dead",
        "balance_window": 8,
        "test": TEST,
        "probe_f1": 0.91,
        "probe_f1_se": 0.01,
        "effective_experts": 10.0,
        "top_share": 0.5,
    }
    run = {
        "command": f"python benchmarks/budget_curve.py --work_dir {tmp_path / 'layers'}",
        "model": "tiny-gated",
        "k": 2,
        "balance": {"rate": 0.01, "mode": "revive_dead", "window": 8},
        "points": [{"tokens": 1000, "layers": {name: row}, "comparisons": []}],
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    entry = run_entry(str(tmp_path / "run.json"))
    (layer_entry,) = entry["layers"]
    assert layer_entry["balance_window"] == 8 and layer_entry["test"] == TEST
    saved = load_file(str(tmp_path / "layers" / "1000" / name / "sae_weights.safetensors"))
    bias = layer_entry["selection_bias"]
    assert bias["bias_mean"] == pytest.approx(saved["b_enc"].double().mean().item())
    assert bias["bias_mean"] == pytest.approx(0.5)  # the mean of linspace(-1, 2)
    assert bias["balance_mode"] == "revive_dead" and bias["balance_window"] == 8
