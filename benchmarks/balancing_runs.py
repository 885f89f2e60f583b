"""Runs of ``benchmarks/budget_curve.py`` under different selection-bias balancings, side by side:
each layer's test figures and readability, the selection bias it ended with (the drift that
``revive`` balancing causes, :class:`mxd_saelens.saes.paired.SelectionBalanceFields`), and the
paired comparisons each run made among its own layers. A diagnostic of the balancing, outside the
grid's procedure.

    python benchmarks/balancing_runs.py \\
        --runs benchmarks/results/balancing_short_tiny-gated_k8_{revive,revive_centred}.json \\
        --out benchmarks/results/balancing_short.json

Each run's layers are read from the ``--work_dir`` its command names (``<work_dir>/<tokens>/
<name>``), so run this where the runs wrote them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from benchmarks.grid import trained_balance
from benchmarks.tuned_frontier import largest_point

TEST_FIGURES = ("delta_ce", "delta_ce_se", "kl", "kl_se", "nmse", "l0", "dead_fraction")
READABILITY = ("probe_f1", "probe_f1_se", "effective_experts", "top_share")
SELECTION_BIAS = ("b_enc", "b_gate")  # a transcoder's encoder bias; an MxD's gate bias


def work_dir_of(command: str) -> Path:
    """The ``--work_dir`` a budget_curve.py command wrote its layers to."""
    words = shlex.split(command)
    if "--work_dir" not in words:
        raise SystemExit(f"no --work_dir in the run's command: {command}")
    return Path(words[words.index("--work_dir") + 1])


def bias_drift(folder: Path) -> dict[str, Any]:
    """A saved layer's selection bias and the norms of the weights it is added to."""
    config = json.loads((folder / "cfg.json").read_text())
    weights = load_file(str(folder / "sae_weights.safetensors"))
    bias_name = next(name for name in SELECTION_BIAS if name in weights)
    bias = weights[bias_name].double()
    selection_weight = weights["W_enc" if bias_name == "b_enc" else "W_gate"].double()
    quantiles = torch.quantile(bias, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {
        "folder": str(folder),
        "architecture": config["architecture"],
        **trained_balance(folder),
        "bias": bias_name,
        "bias_mean": bias.mean().item(),
        "bias_q05_median_q95": quantiles.tolist(),
        "selection_weight_column_norm_median": selection_weight.norm(dim=0).median().item(),
    }


def layer_entry(name: str, row: dict[str, Any], folder: Path) -> dict[str, Any]:
    recipe = {key: row[key] for key in ("architecture", "k", "start", "lr", "tokens")}
    balance = {key: value for key, value in row.items() if key.startswith("balance_")}
    return {
        "name": name,
        **recipe,
        **balance,
        "test": {key: row["test"][key] for key in TEST_FIGURES},
        **{key: row[key] for key in READABILITY},
        "selection_bias": bias_drift(folder) if (folder / "cfg.json").exists() else None,
    }


def run_entry(path: str) -> dict[str, Any]:
    run = json.loads(Path(path).read_text())
    point = largest_point(run)
    folder = work_dir_of(run["command"]) / str(point["tokens"])
    return {
        "source": path,
        "command": run["command"],
        "model": run["model"],
        "k": run["k"],
        "balance": run["balance"],
        "tokens": point["tokens"],
        "layers": [layer_entry(n, r, folder / n) for n, r in point["layers"].items()],
        "comparisons": point["comparisons"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", required=True, help="budget_curve.py results")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    missing = [path for path in opts.runs if not Path(path).exists()]
    if missing:
        raise SystemExit(f"--runs: no such file {missing}")
    runs = [run_entry(path) for path in opts.runs]
    write_result(opts.out, {"runs": runs})
    for run in runs:
        for layer in run["layers"]:
            bias = layer["selection_bias"] or {}
            test = layer["test"]
            print(
                f"{run['model']} k={run['k']} {run['tokens']:,} {layer['name']:38s} "
                f"{layer.get('balance_mode')!s:15s} w={layer.get('balance_window', '-')!s:3s} "
                f"ΔCE {test['delta_ce']:.4f} ± {test['delta_ce_se']:.4f} "
                f"dead {test['dead_fraction']:.1%} F1 {layer['probe_f1']:.3f} "
                f"bias mean {bias.get('bias_mean', float('nan')):+.2f} "
                f"q05..q95 {[round(q, 1) for q in bias.get('bias_q05_median_q95', [])]}"
            )
        for c in run["comparisons"]:
            print(
                f"  {c['a']} / {c['b']}: {c['delta_ce_ratio']:.3f} ± {c['delta_ce_ratio_se']:.3f}"
            )


if __name__ == "__main__":
    main()
