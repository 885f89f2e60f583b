"""The frontier's balanced transcoders against the same recipes balanced with ``revive_centred``:
a diagnostic of the baselines, outside the grid's procedure.

Under ``revive`` balancing (the grid's) every code silent in a batch has its selection bias raised
and nothing lowers it but the gradient, so over a long run the biases climb together: a top-k
choice does not see a shift shared by every code, but the coefficients do, and the encoder grows
to outweigh the bias. ``revive_centred`` takes the mean nudge back off every code
(:func:`mxd_saelens.saes.paired.balance_selection_bias`). Runs of ``benchmarks/budget_curve.py
--balance_mode revive_centred`` retrain the frontier's recipes so; this script sets each retrained
transcoder beside its frontier row, gives the frontier MxD's ratio to both (paired where the run
spliced that MxD beside it, else the SEs added in quadrature), and measures the selection biases
of saved layers (``--bias_layers``), the drift itself.

    python benchmarks/centred_balance.py --frontier benchmarks/results/frontier.json \\
        --runs benchmarks/results/diagnostic_centred_tiny-gelu_k8_16m.json \\
        --bias_layers topk-revive=benchmarks/layers/.../topk_transcoder-k8-balanced-lr0.003 \\
        --out benchmarks/results/centred_balance.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.balancing_runs import bias_drift
from benchmarks.common import write_result
from benchmarks.tuned_frontier import RATIO_TARGETS, largest_point, unpaired_comparison

FIGURES = ("delta_ce", "delta_ce_se", "kl", "kl_se", "dead_fraction")


def frontier_figures(row: dict[str, Any]) -> dict[str, Any]:
    """A frontier row in a budget row's shape: test figures under ``test``."""
    return {
        "name": row["name"],
        "recipe": row["recipe"],
        "tokens": row["tokens"],
        "test": {key: row[key] for key in FIGURES},
        "probe_f1": row["probe_f1"],
        "probe_f1_se": row["probe_f1_se"],
    }


def run_figures(name: str, row: dict[str, Any]) -> dict[str, Any]:
    recipe = {key: row[key] for key in ("start", "lr")}
    balance = {key: row[key] for key in ("balance_rate", "balance_mode") if key in row}
    return {
        "name": name,
        "recipe": recipe | balance,
        "tokens": row["tokens"],
        "test": {key: row["test"][key] for key in FIGURES},
        "probe_f1": row["probe_f1"],
        "probe_f1_se": row["probe_f1_se"],
    }


def mxd_against(
    k: int, mxd: dict[str, Any], other: dict[str, Any], measured_in: dict[str, Any]
) -> dict[str, Any]:
    """The frontier MxD against ``other``: the comparison that ``measured_in`` (a run's point, or
    a frontier section) made of that very MxD (same name, same test ΔCE), else one from the two
    summaries."""
    for comparison in measured_in.get("comparisons", []):
        same_mxd = math.isclose(
            comparison["delta_ce_a"], mxd["test"]["delta_ce"], rel_tol=0, abs_tol=1e-9
        )
        if comparison["a"] == mxd["name"] and comparison["b"] == other["name"] and same_mxd:
            return {"paired": True, **comparison}  # the frontier's own say whether paired
    return unpaired_comparison(k, mxd["name"], mxd, other["name"], other)


def target_check(architecture: str, comparison: dict[str, Any]) -> dict[str, Any]:
    bound = RATIO_TARGETS[architecture]
    met = comparison["delta_ce_ratio"] <= bound and comparison["delta_ce_z"] < -3
    return {"ratio_at_most": bound, "met": met}


def transcoder_entries(
    frontier: dict[str, Any], path: str, run: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each centred transcoder of one run beside the frontier row of its (model, k, architecture)."""
    section = frontier["results"][run["model"]]
    k = run["k"]
    by_architecture = {row["architecture"]: row for row in section["rows"] if row["k"] == k}
    mxd = frontier_figures(by_architecture["mxd"])
    point = largest_point(run)
    out = []
    for name, row in point["layers"].items():
        if row["architecture"] == "mxd" or row.get("balance_mode") != "revive_centred":
            continue
        centred = run_figures(name, row)
        before = frontier_figures(by_architecture[row["architecture"]])
        with_before = mxd_against(k, mxd, before, section)
        with_centred = mxd_against(k, mxd, centred, point)
        out.append(
            {
                "model": run["model"],
                "k": k,
                "architecture": row["architecture"],
                "source": path,
                "frontier": before,
                "centred": centred,
                # two runs: the SEs add in quadrature
                "centred_minus_frontier": unpaired_comparison(
                    k, centred["name"], centred, before["name"], before
                ),
                "mxd": mxd,
                "mxd_vs_frontier": {
                    **with_before,
                    "target": target_check(row["architecture"], with_before),
                },
                "mxd_vs_centred": {
                    **with_centred,
                    "target": target_check(row["architecture"], with_centred),
                },
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frontier", required=True)
    parser.add_argument("--runs", nargs="+", required=True, help="budget_curve.py results")
    parser.add_argument("--bias_layers", nargs="*", default=[], metavar="NAME=FOLDER")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    layers = dict(item.split("=", 1) for item in opts.bias_layers)
    missing = [folder for folder in layers.values() if not (Path(folder) / "cfg.json").exists()]
    if missing:
        raise SystemExit(f"--bias_layers: no saved layer (cfg.json) in {missing}")
    frontier = json.loads(Path(opts.frontier).read_text())
    entries = []
    for path in opts.runs:
        run = json.loads(Path(path).read_text())
        if run.get("balance", {}).get("mode") != "revive_centred":
            raise SystemExit(f"{path} is not a --balance_mode revive_centred run")
        entries += transcoder_entries(frontier, path, run)
    write_result(
        opts.out,
        {
            "frontier": opts.frontier,
            "runs": {path: json.loads(Path(path).read_text())["command"] for path in opts.runs},
            "transcoders": entries,
            "bias_drift": {name: bias_drift(Path(folder)) for name, folder in layers.items()},
        },
    )
    for entry in entries:
        before, after = entry["mxd_vs_frontier"], entry["mxd_vs_centred"]
        print(
            f"{entry['model']} k={entry['k']} {entry['architecture']}: "
            f"frontier {entry['frontier']['test']['delta_ce']:.4f} → centred "
            f"{entry['centred']['test']['delta_ce']:.4f} "
            f"(dead {entry['centred']['test']['dead_fraction']:.1%}, "
            f"F1 {entry['centred']['probe_f1']:.3f}); MxD ratio {before['delta_ce_ratio']:.2f} → "
            f"{after['delta_ce_ratio']:.2f} ± {after['delta_ce_ratio_se']:.2f} "
            f"({after['delta_ce_z']:.1f} SE, {'paired' if after['paired'] else 'unpaired'})"
        )


if __name__ == "__main__":
    main()
