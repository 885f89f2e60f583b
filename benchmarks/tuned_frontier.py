"""The tuned frontier: one row per (model, k, architecture), each the recipe that
``benchmarks/grid.py`` selected on validation, reported on test, with the targets checked row by
row; and every candidate the grids and the retrained budgets trained, in one list.

    python benchmarks/tuned_frontier.py --grids benchmarks/results/grid_tiny-gelu_k32.json \\
        benchmarks/results/grid_tiny-gated_k64.json \\
        --retrained benchmarks/results/budget_16m.json \\
        benchmarks/results/budget_tiny-gelu_k32_16m_lr_down.json \\
        --out benchmarks/results/frontier.json --candidates_out benchmarks/results/grid.json

``--out`` has the shape of ``frontier_lr_only.json`` (per model: its layer, rows and paired
comparisons), each row also with its ``tokens``, ``lr_grid``, ``selected_on`` ("validation"),
``reported_on`` ("test"), ``probe_f1`` and ``probe_f1_se``. Each grid must be a stage-2 result
(or a single-stage one): the rows are its selected candidates. ``--retrained`` takes results of
``benchmarks/budget_curve.py`` (matched to a grid by model and k; several for one (model, k) are
pooled at their largest budget; a result that ends at a smaller one is superseded and only
listed under ``sources`` and in ``--candidates_out``). They must retrain every recipe the grid
selected, and may add any other recipe of the grid's space (a start of its ``starts`` at a rate
of its ``lr_grid``, balanced as the grid balanced): each selected start one rate lower
(``budget_curve.py --lr_step_down``, or ``--with_lr_step_down`` for both in one run), the
selections of an earlier stage 2, or named candidates (``--also``). Every such run at the
budget joins the pool, whichever architecture it strengthens: a baseline is never weaker for
it. A recipe trained in two results counts once, as the later-listed result measured it.
That budget's rows replace the grid's for that (model, k), reported on the same test half: the
selected recipes themselves, or, where more were trained, each architecture selected again
among its recipes at this budget by the grid's own rule (a recipe chosen at 2M tokens may be
too fast for a run eight times longer, and a balancing that drifts over a long run may leave a
cold start ahead). A comparison of two layers from different runs adds their SEs in quadrature
(``paired``: false). The grid's rows stay instead if a retrained row measures worse on test
than its architecture's selected row at the grid's budget by more than 2 SE
(``degraded_layers``): the longer run then gave no tuned layer, and the source records the
figures.

The targets, per (model, k): the MxD's test ΔCE at most 0.4× the TopK transcoder's and 0.5×
the skip transcoder's, each difference more than 3 paired SE; the MxD's dead fraction at most
25 %; its probe F1 at least the TopK transcoder's − 0.03; every layer trained on at least 16M
tokens. Every (model, k) of ``--models`` × ``--ks`` that no grid covers is listed under
``missing``.

``--candidates_out`` lists every candidate of every grid, of the stage 1 it came from and of its
retrained budget (stage 3, ``selected`` where chosen at that budget): architecture, k, start,
lr, schedule, tokens, validation and test ΔCE ± SE, dead fraction, probe F1 ± SE, whether it was
selected and the file that measured it; and each file's command.
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
from benchmarks.grid import balance_of, best_live_reference_f1, is_balanced, select

RATIO_TARGETS = {"topk_transcoder": 0.4, "topk_skip_transcoder": 0.5}
BUDGET_TARGET = 16_000_000  # tokens per layer
DEGRADED_Z = 2.0  # a retrained recipe this many SE worse than at the grid's budget is not used
ROW_FIELDS = ("l0", "nmse", "kl", "kl_se", "dead_fraction")
SPECIALISATION = ("probe_f1", "probe_f1_se", "top_share", "effective_experts")
RECIPE = ("architecture", "k", "start", "lr")


def frontier_row(
    name: str,
    row: dict[str, Any],
    grid: dict[str, Any],
    choice: dict,
    train_device: str | None = None,
) -> dict:
    """One selected candidate as a frontier row, measured on test; ``train_device`` where it was
    trained by another run than the grid (a retrained budget)."""
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
        "train_device": train_device or grid.get("train_device", "cpu"),
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


def at_largest_budget(
    runs: list[tuple[str, dict[str, Any]]],
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    """One (model, k)'s budget-curve results (path, result) split into those that end at the
    largest budget among them, which stand in for the grid's rows, and the earlier ones, which
    are only listed (a shorter run superseded by a longer one). A diagnostic run that balanced
    its layers otherwise than the grid (``--balance_mode``, ``--balance_schedule``) is refused:
    the grid selected its recipes with its own balancing."""
    for path, budget in runs:
        # results written before balance_as_grid was recorded still record their schedule
        schedule = budget.get("balance", {}).get("schedule", "constant")
        if not budget.get("balance_as_grid", True) or schedule != "constant":
            raise SystemExit(
                f"{path} balanced its layers otherwise than the grid ({budget['balance']}; "
                "budget_curve.py --balance_mode/--balance_schedule): a diagnostic, not part of "
                "the procedure; leave it out of --retrained"
            )
    top = max(largest_point(budget)["tokens"] for _, budget in runs)
    latest, earlier = [], []
    for run in runs:
        (latest if largest_point(run[1])["tokens"] == top else earlier).append(run)
    return latest, earlier


def merged_point(budgets: list[dict[str, Any]], paths: list[str] | None = None) -> dict[str, Any]:
    """The largest points of one (model, k)'s budget curves, which must share their budget, as
    one pool. A recipe trained in two of them counts once, as the later one measured it (the
    earlier measurement is kept under ``repeats``); a run's paired comparisons are kept where
    both of its layers are the ones the pool uses."""
    paths = paths or [f"run {i + 1}" for i in range(len(budgets))]
    points = [largest_point(budget) for budget in budgets]
    if len({point["tokens"] for point in points}) != 1:
        raise SystemExit(
            f"the retrained results of {budgets[0]['model']} k = {budgets[0]['k']} end at "
            f"{sorted(p['tokens'] for p in points)} tokens: give runs of one budget"
        )
    layers: dict[str, Any] = {}
    source_of: dict[str, str] = {}
    device_of: dict[str, str] = {}
    repeats: list[dict[str, Any]] = []
    for path, point, budget in zip(paths, points, budgets, strict=True):
        for name, row in point["layers"].items():
            if name in layers:
                repeats.append({"name": name, "source": source_of[name], "row": layers[name]})
            layers[name], source_of[name] = row, path
            device_of[name] = budget.get("device", "cpu")
    comparisons = [
        {**c, "paired": True}
        for path, point in zip(paths, points, strict=True)
        for c in point["comparisons"]
        if source_of.get(c["a"]) == path and source_of.get(c["b"]) == path
    ]
    return {
        "tokens": points[0]["tokens"],
        "layers": layers,
        "source_of": source_of,
        "device_of": device_of,
        "repeats": repeats,
        "comparisons": comparisons,
    }


def floor_of(grid: dict[str, Any]) -> tuple[float, float]:
    """The grid's readability floor as (max dead fraction, probe margin): as recorded, or, in
    results written before the floor recorded its margin (and followed the best live TopK
    transcoder), recovered from that best probe F1."""
    floor = next(iter(grid["selected"].values()))["floor"]
    if "probe_margin" in floor:
        return floor["max_dead"], floor["probe_margin"]
    best = best_live_reference_f1(grid["candidates"], floor["max_dead"])
    return floor["max_dead"], best - floor["min_probe_f1"]


def unpaired_comparison(k: int, a: str, row_a: dict, b: str, row_b: dict) -> dict[str, Any]:
    """a against b from two runs' summaries: the SEs add in quadrature. Both were spliced on
    the same test sequences, whose losses they share, so this is wider than the paired SE."""
    out: dict[str, Any] = {"k": k, "a": a, "b": b, "paired": False}
    for metric in ("delta_ce", "kl"):
        value_a, value_b = row_a["test"][metric], row_b["test"][metric]
        se_a, se_b = row_a["test"][f"{metric}_se"], row_b["test"][f"{metric}_se"]
        diff_se = math.hypot(se_a, se_b)
        ratio = value_a / value_b
        out |= {
            f"{metric}_a": value_a,
            f"{metric}_b": value_b,
            f"{metric}_diff": value_a - value_b,
            f"{metric}_diff_se": diff_se,
            f"{metric}_z": (value_a - value_b) / diff_se,
            f"{metric}_ratio": ratio,
            f"{metric}_ratio_se": abs(ratio) * math.hypot(se_a / value_a, se_b / value_b),
        }
    out["probe_f1_diff"] = row_a["probe_f1"] - row_b["probe_f1"]
    out["probe_f1_diff_se"] = math.hypot(row_a["probe_f1_se"], row_b["probe_f1_se"])
    return out


def retrained_section(grid: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The grid's selection at a retrained (merged) point's budget, in the grid's place.

    The point must hold every recipe the grid selected, and may hold any other recipe of the
    grid's space (one of its architectures, a start of its ``starts`` at a rate of its
    ``lr_grid``, balanced as the grid balanced). With only the selected recipes, they are the
    rows. With more, each architecture is selected again among its recipes at this budget by the
    grid's own rule (lowest validation ΔCE under the readability floor, the floor recomputed from
    this budget's TopK transcoders, or the candidate nearest the floor where none meets it):
    tuned at the budget it is reported at."""
    layers = point["layers"]
    selected = {choice["name"]: choice for choice in grid["selected"].values()}
    if not set(selected) <= set(layers):
        raise SystemExit(
            f"{grid['model']} at {point['tokens']:,} tokens retrained {sorted(layers)}, but the "
            f"grid selected {sorted(selected)}: retrain every selected recipe"
        )
    for name in selected:
        if any(layers[name][key] != grid["candidates"][name][key] for key in RECIPE):
            raise SystemExit(f"{name}: the retrained recipe differs from the grid's")
    k = grid["candidates"][next(iter(selected))]["k"]
    architectures = {grid["candidates"][name]["architecture"] for name in selected}
    rate, mode = balance_of(grid)
    for name, row in layers.items():
        in_space = (
            row["architecture"] in architectures
            and row["k"] == k
            and row["start"] in grid["starts"]
            and row["lr"] in grid["lr_grid"]
        )
        if name not in selected and not in_space:
            raise SystemExit(
                f"{name}: not a recipe of the grid's space ({sorted(architectures)} at k = {k}, "
                f"a start of {grid['starts']} at a rate of its lr_grid {grid['lr_grid']})"
            )
        if is_balanced(row["start"]) and (row["balance_mode"], row["balance_rate"]) != (mode, rate):
            raise SystemExit(
                f"{name}: balanced with {row['balance_mode']} at {row['balance_rate']}, the grid "
                f"with {mode} at {rate}: a diagnostic, not part of the procedure"
            )
    if set(layers) == set(selected):
        choices = {
            name: {**selected[name], "selected_at_tokens": grid["tokens"]} for name in layers
        }
    else:
        max_dead, margin = floor_of(grid)
        choices = {
            choice["name"]: {**choice, "selected_at_tokens": point["tokens"]}
            for choice in select(layers, max_dead, margin).values()
        }
    rows = [
        frontier_row(name, layers[name], grid, choice, point["device_of"][name])
        for name, choice in choices.items()
    ]
    mxd = next(row["name"] for row in rows if row["architecture"] == "mxd")
    paired = {(c["a"], c["b"]): c for c in point["comparisons"]}
    comparisons = [
        {"k": k, **paired[(mxd, row["name"])]}
        if (mxd, row["name"]) in paired
        else unpaired_comparison(k, mxd, layers[mxd], row["name"], layers[row["name"]])
        for row in rows
        if row["name"] != mxd
    ]
    return {"rows": rows, "comparisons": comparisons}


def degraded_layers(grid: dict[str, Any], section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The retrained rows whose test ΔCE is worse than their architecture's selected row at the
    grid's budget by more than ``DEGRADED_Z`` SE: the longer run then did not produce a tuned
    layer, and a comparison against it would measure an untuned one. The two runs are separate,
    so their SEs add in quadrature (same test sequences: conservative)."""
    before_of = {
        grid["candidates"][choice["name"]]["architecture"]: choice["name"]
        for choice in grid["selected"].values()
    }
    out = {}
    for row in section["rows"]:
        before_name = before_of[row["architecture"]]
        before = grid["candidates"][before_name]["test"]
        z = (row["delta_ce"] - before["delta_ce"]) / math.hypot(
            row["delta_ce_se"], before["delta_ce_se"]
        )
        if z > DEGRADED_Z:
            out[row["name"]] = {
                "compared_with": before_name,
                f"delta_ce_at_{grid['tokens']}": before["delta_ce"],
                f"delta_ce_at_{row['tokens']}": row["delta_ce"],
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


def candidate_rows(
    grid: dict[str, Any],
    path: str,
    retrained: tuple[dict, dict] | None = None,
    earlier: list[tuple[str, dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Every candidate of a grid and of its stage 1, one flat row each; the layers of the
    ``earlier`` (path, result) runs at smaller budgets, as stage 3, never selected; and with
    ``retrained`` (a merged point, the section made from it) each layer retrained at the larger
    budget, as stage 3, selected where the section chose it, with the file that measured it (and
    a recipe's other measurement, never selected, where it was trained twice)."""
    stages = [(2 if "stage1" in grid else 1, grid, path)]
    if "stage1" in grid:
        stages.insert(0, (1, grid["stage1"], grid["stage1"]["from"]))
    for earlier_path, budget in earlier or []:
        layers = largest_point(budget)["layers"]
        stages.append((3, {"candidates": layers, "selected": {}}, earlier_path))
    out = []
    for stage, result, source in stages:
        chosen = {choice["name"] for choice in result["selected"].values()}
        for name, row in result["candidates"].items():
            out.append(flat_candidate(grid, stage, name, row, name in chosen, source))
    if retrained is not None:
        point, section = retrained
        chosen = {row["name"] for row in section["rows"]}
        for name, row in point["layers"].items():
            source = point["source_of"][name]
            out.append(flat_candidate(grid, 3, name, row, name in chosen, source))
        for again in point["repeats"]:  # a recipe measured twice: the measurement not used
            out.append(flat_candidate(grid, 3, again["name"], again["row"], False, again["source"]))
    return out


def flat_candidate(
    grid: dict[str, Any], stage: int, name: str, row: dict[str, Any], selected: bool, source: str
) -> dict[str, Any]:
    """One candidate of one stage as a flat row of ``--candidates_out``."""
    return {
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
        "selected": selected,
        "source": source,
    }


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
    budgets: dict[tuple[str, int], list[tuple[str, dict[str, Any]]]] = {}
    for path in opts.retrained:
        budget = json.loads(Path(path).read_text())
        budgets.setdefault((budget["model"], budget["k"]), []).append((path, budget))

    results: dict[str, Any] = {}
    checked, sources = {}, {}
    retrained_of: dict[str, tuple[dict, dict]] = {}
    earlier_of: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path, grid in grids.items():
        source = {"file": path, "command": grid["command"], "torch": grid["torch"]}
        section = grid_section(grid)
        ks = {row["k"] for row in section["rows"]}
        if len(ks) == 1 and (grid["model"], *ks) in budgets:
            runs, earlier = at_largest_budget(budgets[(grid["model"], *ks)])
            earlier_of[path] = earlier
            point = merged_point([budget for _, budget in runs], [p for p, _ in runs])
            retrained = retrained_section(grid, point)  # refuses other recipes first
            retrained_of[path] = (point, retrained)
            degraded = degraded_layers(grid, retrained)
            source |= {"retrained_commands": [budget["command"] for _, budget in runs]}
            if earlier:
                source |= {"superseded_by_the_larger_budget": [p for p, _ in earlier]}
            if len(point["layers"]) > len(retrained["rows"]):
                source |= {"reselected_among": point["source_of"]}
            if point["repeats"]:
                source |= {
                    "repeated_recipes": [
                        {
                            "name": again["name"],
                            "measured_in": again["source"],
                            "used_from": point["source_of"][again["name"]],
                        }
                        for again in point["repeats"]
                    ]
                }
            if degraded:
                source |= {"retrained_not_used": [p for p, _ in runs], "degraded": degraded}
            else:
                section = retrained
                source |= {"retrained": [p for p, _ in runs]}
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
            devices = sorted({row["train_device"] for row in section["rows"]})
            sources[key] = source | {"train_device": "+".join(devices)}
    for per_model in results.values():
        per_model["rows"].sort(key=lambda r: (r["k"], r["architecture"]))
        per_model["selection"] = (
            "per (architecture, k): the lowest validation ΔCE among the candidates that meet the "
            "readability floor, or where none does the one nearest it, flagged (met_floor: "
            "false; benchmarks/grid.py), reported on test"
        )
    covered = {(model, row["k"]) for model, r in results.items() for row in r["rows"]}
    missing = [f"{m}-k{k}" for m in opts.models for k in opts.ks if (m, k) not in covered]
    write_result(
        opts.out, {"results": results, "targets": checked, "sources": sources, "missing": missing}
    )
    if opts.candidates_out:
        every = [
            row
            for path, grid in grids.items()
            for row in candidate_rows(grid, path, retrained_of.get(path), earlier_of.get(path))
        ]
        commands = {path: grid["command"] for path, grid in grids.items()}
        commands |= {path: budget["command"] for runs in budgets.values() for path, budget in runs}
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
