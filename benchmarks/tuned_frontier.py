"""The tuned frontier: one row per (model, k, architecture), each the recipe that
``benchmarks/grid.py`` selected on validation, reported on test, with the targets checked row by
row; and every candidate the grids trained, both stages, in one list.

    python benchmarks/tuned_frontier.py --grids benchmarks/results/grid_tiny-gelu_k32.json \\
        benchmarks/results/grid_tiny-gated_k64.json \\
        --retrained benchmarks/results/budget_16m.json \\
        --out benchmarks/results/frontier.json --candidates_out benchmarks/results/grid.json

``--out`` has the shape of ``frontier_lr_only.json`` (per model: its layer, rows and paired
comparisons), each row also with its ``tokens``, ``lr_grid``, ``selected_on`` ("validation"),
``reported_on`` ("test"), ``probe_f1`` and ``probe_f1_se``. Each grid must be a stage-2 result
(or a single-stage one): the rows are its selected candidates. ``--retrained`` takes results of
``benchmarks/budget_curve.py`` (matched to a grid by model and k) whose largest budget
retrained every architecture the grid selected, with the grid's recipes: that budget's rows
replace the grid's for that (model, k) (the third stage of the same procedure: the selected
recipes retrained at a larger budget, reported on the same test half), unless a selected recipe
measures worse on test there than at the grid's budget by more than 2 SE (``degraded_layers``):
that recipe is then no longer a tuned one, the grid's rows stay, and the source records the
figures.

The targets, per (model, k): the MxD's test ΔCE at most 0.4× the TopK transcoder's and 0.5×
the skip transcoder's, each difference more than 3 paired SE; the MxD's dead fraction at most
25 %; its probe F1 at least the TopK transcoder's − 0.03; every layer trained on at least 16M
tokens. Every (model, k) of ``--models`` × ``--ks`` that no grid covers is listed under
``missing``.

``--candidates_out`` lists every candidate of every grid and of the stage 1 it came from
(architecture, k, start, lr, schedule, tokens, validation and test ΔCE ± SE, dead fraction,
probe F1 ± SE, whether it was selected, the file that measured it) and each file's command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result

RATIO_TARGETS = {"topk_transcoder": 0.4, "topk_skip_transcoder": 0.5}
BUDGET_TARGET = 16_000_000  # tokens per layer
DEGRADED_Z = 2.0  # a retrained recipe this many SE worse than at the grid's budget is not used
ROW_FIELDS = ("l0", "nmse", "kl", "kl_se", "dead_fraction")
SPECIALISATION = ("probe_f1", "probe_f1_se", "top_share", "effective_experts")
RECIPE = ("architecture", "k", "start", "lr")


def frontier_row(name: str, row: dict[str, Any], grid: dict[str, Any], choice: dict) -> dict:
    """One selected candidate as a frontier row, measured on test."""
    test = row["test"]
    return {
        "name": name,
        "model": grid["model"],
        "layer": grid["layer"],
        "architecture": row["architecture"],
        "k": row["k"],
        "lr": row["lr"],
        "recipe": {"start": row["start"], "lr": row["lr"], "schedule": row["schedule"]},
        "tokens": row["tokens"],
        "training_tokens": row["tokens"],
        "train_device": grid.get("train_device", "cpu"),
        "lr_grid": grid["lr_grid"],
        "starts": grid["starts"],
        "selected_on": grid["selected_on"],
        "reported_on": grid["reported_on"],
        "selected_at_tokens": choice.get("selected_at_tokens", row["tokens"]),
        "met_floor": choice["met_floor"],
        "floor": choice["floor"],
        "validation_delta_ce": row["validation"]["delta_ce"],
        "validation_delta_ce_se": row["validation"]["delta_ce_se"],
        "delta_ce": test["delta_ce"],
        "delta_ce_se": test["delta_ce_se"],
        "n_eval_sequences": row["n_sequences"]["test"],
        **{key: test[key] for key in ROW_FIELDS},
        **{key: row[key] for key in SPECIALISATION},
    }


def grid_section(grid: dict[str, Any]) -> dict[str, Any]:
    """The grid's selected rows and their paired comparisons on test."""
    rows = [
        frontier_row(choice["name"], grid["candidates"][choice["name"]], grid, choice)
        for choice in grid["selected"].values()
    ]
    return {"rows": rows, "comparisons": grid["comparisons"]}


def largest_point(budget: dict[str, Any]) -> dict[str, Any]:
    """A budget curve's point with the most tokens: the one that may stand in for the grid's."""
    return max(budget["points"], key=lambda p: p["tokens"])


def retrained_section(grid: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """The grid's selected recipes at the budget curve's largest budget, in the grid's place.
    Refused unless that budget retrained exactly the recipes the grid selected."""
    point = largest_point(budget)
    layers = point["layers"]
    selected = {choice["name"]: choice for choice in grid["selected"].values()}
    if set(layers) != set(selected):
        raise SystemExit(
            f"{grid['model']} k = {budget['k']} at {point['tokens']:,} tokens retrained {sorted(layers)}, "
            f"but the grid selected {sorted(selected)}: retrain every selected recipe"
        )
    for name, row in layers.items():
        if any(row[key] != grid["candidates"][name][key] for key in RECIPE):
            raise SystemExit(f"{name}: the retrained recipe differs from the grid's")
    stage2_tokens = grid["tokens"]
    rows = [
        frontier_row(name, row, grid, {**selected[name], "selected_at_tokens": stage2_tokens})
        for name, row in layers.items()
    ]
    k = rows[0]["k"]
    return {"rows": rows, "comparisons": [{"k": k, **c} for c in point["comparisons"]]}


def degraded_layers(grid: dict[str, Any], budget: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The selected recipes whose test ΔCE at the budget's largest point is worse than at the
    grid's budget by more than ``DEGRADED_Z`` SE: there the recipe chosen at the grid's budget is
    no longer tuned, and a comparison against it would measure an untuned layer. The two runs
    are separate, so their SEs add in quadrature (same test sequences: conservative)."""
    point = largest_point(budget)
    out = {}
    for name, row in point["layers"].items():
        before, after = grid["candidates"][name]["test"], row["test"]
        z = (after["delta_ce"] - before["delta_ce"]) / math.hypot(
            after["delta_ce_se"], before["delta_ce_se"]
        )
        if z > DEGRADED_Z:
            out[name] = {
                f"delta_ce_at_{grid['tokens']}": before["delta_ce"],
                f"delta_ce_at_{point['tokens']}": after["delta_ce"],
                "z": z,
            }
    return out


def targets(section: dict[str, Any]) -> dict[str, Any]:
    """The targets at each k of one section, each with what was measured."""
    architecture_of = {row["name"]: row["architecture"] for row in section["rows"]}
    out = {}
    for k in sorted({row["k"] for row in section["rows"]}):
        mxd = next(r for r in section["rows"] if r["k"] == k and r["architecture"] == "mxd")
        checks: dict[str, Any] = {
            "mxd_dead_fraction_at_most_0.25": {
                "value": mxd["dead_fraction"],
                "met": mxd["dead_fraction"] <= 0.25,
            }
        }
        at_k = [row["tokens"] for row in section["rows"] if row["k"] == k]
        checks[f"tokens_at_least_{BUDGET_TARGET}"] = {
            "tokens": min(at_k),
            "met": min(at_k) >= BUDGET_TARGET,
        }
        for comparison in section["comparisons"]:
            if comparison["k"] != k:
                continue
            other = architecture_of[comparison["b"]]
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
        out[f"{mxd['model']}-k{k}"] = checks
    return out


def candidate_rows(grid: dict[str, Any], path: str) -> list[dict[str, Any]]:
    """Every candidate of a grid and of its stage 1, one flat row each."""
    stages = [(2 if "stage1" in grid else 1, grid, path)]
    if "stage1" in grid:
        stages.insert(0, (1, grid["stage1"], grid["stage1"]["from"]))
    out = []
    for stage, result, source in stages:
        chosen = {choice["name"] for choice in result["selected"].values()}
        for name, row in result["candidates"].items():
            out.append(
                {
                    "model": grid["model"],
                    "layer": grid["layer"],
                    "stage": stage,
                    "name": name,
                    **{key: row[key] for key in RECIPE},
                    "init": row["start"],
                    "schedule": row["schedule"],
                    "tokens": row["tokens"],
                    "balance_rate": row["balance_rate"],
                    **{
                        f"{split}_{key}": row[split][key]
                        for split in ("validation", "test")
                        for key in ("delta_ce", "delta_ce_se", "dead_fraction")
                    },
                    "probe_f1": row["probe_f1"],
                    "probe_f1_se": row["probe_f1_se"],
                    "selected": name in chosen,
                    "source": source,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grids", nargs="+", required=True, help="stage-2 grid results")
    parser.add_argument(
        "--retrained", nargs="*", default=[], help="budget-curve results (their largest budget)"
    )
    parser.add_argument("--models", nargs="+", default=["tiny-gelu", "tiny-gated"])
    parser.add_argument("--ks", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--out", required=True)
    parser.add_argument("--candidates_out", default=None)
    opts = parser.parse_args()
    grids = {path: json.loads(Path(path).read_text()) for path in opts.grids}
    budgets = {}
    for path in opts.retrained:
        budget = json.loads(Path(path).read_text())
        budgets[(budget["model"], budget["k"])] = (path, budget)

    results: dict[str, Any] = {}
    checked, sources = {}, {}
    for path, grid in grids.items():
        source = {"file": path, "command": grid["command"], "torch": grid["torch"]}
        section = grid_section(grid)
        ks = {row["k"] for row in section["rows"]}
        if len(ks) == 1 and (grid["model"], *ks) in budgets:
            budget_path, budget = budgets[(grid["model"], *ks)]
            retrained = retrained_section(grid, budget)  # refuses other recipes first
            degraded = degraded_layers(grid, budget)
            source |= {"retrained_command": budget["command"]}
            if degraded:
                source |= {"retrained_not_used": budget_path, "degraded": degraded}
            else:
                section = retrained
                source |= {"retrained": budget_path}
        per_model = results.setdefault(
            grid["model"],
            {"layer": grid["layer"], "tokens_per_k": {}, "rows": [], "comparisons": []},
        )
        per_model["rows"] += section["rows"]
        per_model["comparisons"] += section["comparisons"]
        for k in {row["k"] for row in section["rows"]}:
            per_model["tokens_per_k"][str(k)] = max(
                row["tokens"] for row in section["rows"] if row["k"] == k
            )
        for key, checks in targets(section).items():
            checked[key] = checks
            sources[key] = source | {"train_device": grid.get("train_device", "cpu")}
    for per_model in results.values():
        per_model["rows"].sort(key=lambda r: (r["k"], r["architecture"]))
        per_model["selection"] = (
            "per (architecture, k): the lowest validation ΔCE among the candidates that meet the "
            "readability floor (benchmarks/grid.py), reported on test"
        )
    covered = {(model, row["k"]) for model, r in results.items() for row in r["rows"]}
    missing = [f"{m}-k{k}" for m in opts.models for k in opts.ks if (m, k) not in covered]
    write_result(
        opts.out, {"results": results, "targets": checked, "sources": sources, "missing": missing}
    )
    if opts.candidates_out:
        every = [row for path, grid in grids.items() for row in candidate_rows(grid, path)]
        commands = {path: grid["command"] for path, grid in grids.items()}
        commands |= {
            g["stage1"]["from"]: g["stage1"]["command"] for g in grids.values() if "stage1" in g
        }
        write_result(opts.candidates_out, {"commands": commands, "candidates": every})
    for key, checks in checked.items():
        print(f"{key}: {'all targets met' if checks['all_met'] else 'missed'}")
        for name, check in checks.items():
            if name != "all_met":
                print(f"  {name}: {'met' if check['met'] else 'MISSED'} {check}")
    print("not run:", ", ".join(missing) or "none")


if __name__ == "__main__":
    main()
