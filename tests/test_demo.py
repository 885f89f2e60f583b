"""The demo end to end on the bundled model (shortened), and the command line on it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

from sae_lens import SAE

from mxd_saelens.demo import DemoOptions, run_demo


def test_shortened_demo_trains_splices_reports_and_round_trips(tmp_path: Path, capsys) -> None:
    options = DemoOptions(
        training_tokens=61_440,
        batch_tokens=2048,
        lr=3e-3,
        eval_sequences=12,
        architectures=("mxd", "topk_transcoder"),
        out_dir=str(tmp_path),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluation = run_demo(options)
    # the demo prints no warning a user cannot act on (SAELens's raw-text and epoch notices
    # are noise for the bundled corpus)
    assert [str(w.message)[:80] for w in caught if issubclass(w.category, UserWarning)] == []
    rows = evaluation.rows
    printed = capsys.readouterr().out
    assert "ΔCE" in printed and "CE rec." in printed and "probe F1 ± SE" in printed

    by_arch = {row["architecture"]: row for row in rows}
    assert set(by_arch) == {"mxd", "topk_transcoder"}
    for row in rows:
        for key in ("ce_clean", "ce_spliced", "ce_zero_ablation", "nmse", "kl"):
            assert math.isfinite(row[key]), (row["name"], key)
        # a trained layer sits between the clean model and the model without this MLP
        assert row["ce_clean"] < row["ce_spliced"] < row["ce_zero_ablation"], row
        assert row["l0"] == 32.0
        # specialisation beside ΔCE: a probe score with its error, and usage between the
        # uniform floor (32 of d_sae codes) and one code doing everything
        d_sae = SAE.load_from_disk(tmp_path / row["name"]).cfg.d_sae
        assert 0 < row["probe_f1"] <= 1 and row["probe_f1_se"] > 0
        assert 32 / d_sae <= row["top_share"] <= 1
        assert 1 <= row["effective_experts"] <= d_sae
    # parameter matched by the paper's accounting: equal to within 0.5%
    gap = by_arch["topk_transcoder"]["parameters"] - by_arch["mxd"]["parameters"]
    assert 0 <= gap < 0.005 * by_arch["topk_transcoder"]["parameters"]

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows
    (comparison,) = saved["comparisons"]
    assert {comparison["a"], comparison["b"]} == {"mxd", "topk_transcoder"}
    assert comparison["delta_ce_diff_se"] > 0
    assert "paired SE" in printed
    assert (tmp_path / "report.html").stat().st_size > 1_000_000
    for architecture in ("mxd", "topk_transcoder"):
        layer = SAE.load_from_disk(tmp_path / architecture)
        assert layer.cfg.metadata.hook_name_out == "blocks.2.hook_mlp_out"
        assert layer.cfg.metadata.dataset_path == "zoo"


def test_command_line_trains_from_flags_and_evaluates(tmp_path: Path) -> None:
    train = [
        sys.executable,
        "-m",
        "mxd_saelens",
        "train",
        "--architecture",
        "mxd",
        "--model_name",
        "tiny-gelu",
        "--dataset_path",
        "zoo",
        "--hook_name",
        "blocks.1.ln2.hook_normalized",
        "--d_in",
        "128",
        "--n_experts",
        "512",
        "--k",
        "8",
        "--d_hidden",
        "512",
        "--activation",
        "gelu_tanh",
        "--context_size",
        "64",
        "--training_tokens",
        "8192",
        "--train_batch_size_tokens",
        "1024",
        "--store_batch_size_prompts",
        "16",
        "--log_to_wandb",
        "False",
        "--checkpoint_path",
        str(tmp_path / "ckpt"),
        "--output_path",
        str(tmp_path / "layer"),
    ]
    done = subprocess.run(train, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    layer = SAE.load_from_disk(tmp_path / "layer")
    assert type(layer).__name__ == "MxD" and layer.cfg.k == 8
    assert layer.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"

    evaluate = [
        sys.executable,
        "-m",
        "mxd_saelens",
        "eval",
        str(tmp_path / "layer"),
        "--n_sequences",
        "4",
        "--context_size",
        "64",
        "--out_dir",
        str(tmp_path / "eval"),
    ]
    done = subprocess.run(evaluate, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ΔCE" in done.stdout
    (row,) = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
    assert row["architecture"] == "mxd" and row["n_tokens"] == 4 * 63
    assert "probe F1 ± SE" in done.stdout and 0 < row["probe_f1"] <= 1
