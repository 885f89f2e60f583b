"""The frontier from the tuning grid: one row per (model, k, architecture), each the recipe that
``benchmarks/grid.py`` selected on validation, reported on test, with the issue's targets
checked row by row.

    python benchmarks/tuned_frontier.py --grids benchmarks/results/grid.json \\
        benchmarks/results/grid_tiny-gated_k64.json --out benchmarks/results/frontier_tuned.json

Each grid result must be a stage-2 result (or a single-stage one): the rows are its selected
candidates. The targets, per (model, k): the MxD's test ΔCE at most 0.4× the TopK
transcoder's and 0.5× the skip transcoder's, each difference more than 3 paired SE; the MxD's
dead fraction at most 25 %; its probe F1 at least the TopK transcoder's − 0.03. Every
(model, k) of ``--models`` × ``--ks`` that no grid covers is listed under ``missing``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result

RATIO_TARGETS = {"topk_transcoder": 0.4, "topk_skip_transcoder": 0.5}
ROW_FIELDS = ("l0", "nmse", "kl", "kl_se", "dead_fraction")
SPECIALISATION = ("probe_f1", "probe_f1_se", "top_share", "effective_experts")


def frontier_rows(grid: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for choice in grid["selected"].values():
        row = grid["candidates"][choice["name"]]
        test = row["test"]
        rows.append(
            {
                "model": grid["model"],
                "layer": grid["layer"],
                "architecture": row["architecture"],
                "k": row["k"],
                "recipe": {"start": row["start"], "lr": row["lr"], "schedule": row["schedule"]},
                "tokens": row["tokens"],
                "train_device": grid.get("train_device", "cpu"),
                "lr_grid": grid["lr_grid"],
                "starts": grid["starts"],
                "selected_on": grid["selected_on"],
                "reported_on": grid["reported_on"],
                "met_floor": choice["met_floor"],
                "delta_ce": test["delta_ce"],
                "delta_ce_se": test["delta_ce_se"],
                **{key: test[key] for key in ROW_FIELDS},
                **{key: row[key] for key in SPECIALISATION},
            }
        )
    return rows


def targets(grid: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets for each k of one grid, each with what was measured."""
    out = {}
    for k in sorted({row["k"] for row in rows}):
        by_architecture = {row["architecture"]: row for row in rows if row["k"] == k}
        mxd = by_architecture["mxd"]
        checks: dict[str, Any] = {
            "mxd_dead_fraction_at_most_0.25": {
                "value": mxd["dead_fraction"],
                "met": mxd["dead_fraction"] <= 0.25,
            }
        }
        for comparison in grid["comparisons"]:
            if comparison["k"] != k:
                continue
            other = grid["candidates"][comparison["b"]]["architecture"]
            bound = RATIO_TARGETS[other]
            checks[f"ratio_to_{other}_at_most_{bound}"] = {
                "ratio": comparison["delta_ce_ratio"],
                "ratio_se": comparison["delta_ce_ratio_se"],
                "difference": comparison["delta_ce_diff"],
                "difference_se": comparison["delta_ce_diff_se"],
                "z": comparison["delta_ce_z"],
                "met": comparison["delta_ce_ratio"] <= bound and comparison["delta_ce_z"] < -3,
            }
            if other == "topk_transcoder":
                checks["probe_f1_at_least_topk_minus_0.03"] = {
                    "difference": comparison["probe_f1_diff"],
                    "difference_se": comparison["probe_f1_diff_se"],
                    "met": comparison["probe_f1_diff"] >= -0.03,
                }
        checks["all_met"] = all(check["met"] for check in checks.values())
        out[f"{grid['model']}-k{k}"] = checks
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grids", nargs="+", required=True, help="stage-2 grid results")
    parser.add_argument("--models", nargs="+", default=["tiny-gelu", "tiny-gated"])
    parser.add_argument("--ks", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    rows, checked, sources = [], {}, {}
    for path in opts.grids:
        grid = json.loads(Path(path).read_text())
        grid_rows = frontier_rows(grid)
        rows += grid_rows
        checked.update(targets(grid, grid_rows))
        for key in targets(grid, grid_rows):
            sources[key] = {
                "file": path,
                "command": grid["command"],
                "train_device": grid.get("train_device", "cpu"),
                "torch": grid["torch"],
            }
    covered = {(row["model"], row["k"]) for row in rows}
    missing = [f"{m}-k{k}" for m in opts.models for k in opts.ks if (m, k) not in covered]
    write_result(
        opts.out,
        {"rows": rows, "targets": checked, "sources": sources, "missing": missing},
    )
    for key, checks in checked.items():
        print(f"{key}: {'all targets met' if checks['all_met'] else 'missed'}")
        for name, check in checks.items():
            if name != "all_met":
                print(f"  {name}: {'met' if check['met'] else 'MISSED'} {check}")
    print("not run:", ", ".join(missing) or "none")


if __name__ == "__main__":
    main()
