"""The sparsity–accuracy frontier of the bundled models, assembled from the evaluations that
``benchmarks/evaluate_layers.py`` wrote for the layers ``benchmarks/train_layers.py`` trained
(see benchmarks/README.md for the commands), into ``benchmarks/results/frontier_lr_only.json``: per model,
each layer's ΔCE, KL, NMSE and dead fraction with standard errors, and for each k the MxD
against the TopK and skip transcoders with paired standard errors.

    python benchmarks/frontier.py --evaluations benchmarks/results/frontier/tiny-gelu.json \\
        benchmarks/results/frontier/tiny-gated.json --budget_from tiny-gelu

``--budget_from MODEL`` also writes ``benchmarks/results/budget.json``: the k = 32 MxD and TopK
transcoder of that model's run after each snapshot's token count and at the end (the learning
rate is constant after warm-up, so a snapshot is the layer a shorter run would have ended with).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens.evaluation.specialisation import SPECIALISATION_FIELDS

KEEP = (
    "name",
    "architecture",
    "k",
    "lr",
    "parameters",
    "l0",
    "delta_ce",
    "delta_ce_se",
    "kl",
    "kl_se",
    "nmse",
    "nmse_se",
    "ce_recovered",
    "dead_fraction",
    "ce_clean",
    "ce_zero_ablation",
    "n_tokens",
    "training_tokens",
    "lr_decay_steps",
    *SPECIALISATION_FIELDS,
)
SHORT = {"mxd": "MxD", "topk_transcoder": "TopK TC", "topk_skip_transcoder": "skip TC"}


def frontier_rows(rows: list[dict[str, Any]], best_lr: bool) -> list[dict[str, Any]]:
    """One row per (architecture, k): the grid's plain ``<architecture>-k<k>`` layer, or with
    ``best_lr`` the lowest-ΔCE layer of that architecture and k among every recipe trained."""
    if not best_lr:
        return [r for r in rows if r["name"].count("-") == 1]
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        key = (row["architecture"], row["k"])
        if key not in best or row["delta_ce"] < best[key]["delta_ce"]:
            best[key] = row
    return sorted(best.values(), key=lambda r: (r["k"], r["architecture"]))


def _kept_rows(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{key: row.get(key) for key in KEEP} for row in evaluation["rows"]]
    for row, full in zip(rows, evaluation["rows"], strict=True):
        row.update({k: v for k, v in full.items() if k.startswith("dead_feature_aux")})
        row["training_tokens"] = full.get("training_tokens", evaluation["tokens_per_layer"])
    return rows


def model_result(evaluations: list[dict[str, Any]], best_lr: bool = False) -> dict[str, Any]:
    """One model's frontier from one or more evaluations of it on the same held-out tokens.
    Each k comes from the longest-trained evaluation holding all three architectures at that k,
    so that the layers compared at a k share a budget and their paired standard errors."""
    rows: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    sources: dict[int, int] = {}  # k → training tokens of the evaluation it came from
    ranked = sorted(evaluations, key=lambda e: e["tokens_per_layer"], reverse=True)
    for evaluation in ranked:
        kept = frontier_rows(_kept_rows(evaluation), best_lr)
        for k in sorted({r["k"] for r in kept} - set(sources)):
            at_k = [r for r in kept if r["k"] == k]
            if {r["architecture"] for r in at_k} < set(SHORT):
                continue
            sources[k] = evaluation["tokens_per_layer"]
            names = {r["name"] for r in at_k}
            rows += at_k
            comparisons += [
                c for c in evaluation["comparisons"] if c["a"] in names and c["b"] in names
            ]
        if best_lr:
            candidates += _kept_rows(evaluation)
    first = evaluations[0]
    trainings = [t for e in evaluations for t in e.get("trainings", [e["training"]])]
    return {
        "layer": first["layer"],
        "tokens_per_layer": min(sources.values()),
        "tokens_per_k": {str(k): sources[k] for k in sorted(sources)},
        "n_eval_sequences": first["n_sequences"],
        "n_eval_tokens": first["n_eval_tokens"],
        "training_seconds": sum(t["seconds"] or 0 for t in trainings) or None,
        "selection": "lowest ΔCE per architecture and k" if best_lr else "the grid's layers",
        "rows": sorted(rows, key=lambda r: (r["k"], r["architecture"])),
        "comparisons": comparisons,
        "candidates": candidates or None,
    }


def markdown(model: str, result: dict[str, Any]) -> str:
    """The README table: per k, ΔCE ± SE of each architecture, the MxD/TopK ratio and the paired
    difference in standard errors, and dead fractions."""
    by = {(r["architecture"], r["k"]): r for r in result["rows"]}
    pairs = {(c["a"], c["b"]): c for c in result["comparisons"]}
    lines = [
        f"**{model}**, layer {result['layer']}; training tokens per layer by k: "
        + ", ".join(f"k = {k}: {t:,}" for k, t in result["tokens_per_k"].items()),
        "",
        "| k | MxD ΔCE (L0) | TopK TC ΔCE | skip TC ΔCE | MxD / TopK | (TopK − MxD) / paired SE "
        "| MxD / skip | dead: MxD, TopK, skip | lr: MxD, TopK, skip |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted({key[1] for key in by}):
        m, t, s = (by.get((a, k)) for a in SHORT)
        if m is None or t is None or s is None:
            continue
        mt = pairs.get((m["name"], t["name"]), {})
        ms = pairs.get((m["name"], s["name"]), {})
        lines.append(
            f"| {k} | {m['delta_ce']:.4f} ± {m['delta_ce_se']:.4f} ({m['l0']:.1f}) "
            f"| {t['delta_ce']:.4f} ± {t['delta_ce_se']:.4f} "
            f"| {s['delta_ce']:.4f} ± {s['delta_ce_se']:.4f} "
            f"| {mt.get('delta_ce_ratio', float('nan')):.2f} "
            f"| {-mt.get('delta_ce_z', float('nan')):.1f} "
            f"| {ms.get('delta_ce_ratio', float('nan')):.2f} "
            f"| {m['dead_fraction']:.0%}, {t['dead_fraction']:.0%}, {s['dead_fraction']:.0%} "
            f"| {_recipe(m)}, {_recipe(t)}, {_recipe(s)} |"
        )
    return "\n".join(lines)


def _specialisation_cell(row: dict[str, Any]) -> str:
    if row.get("probe_f1") is None:
        return "-"
    return (
        f"{row['probe_f1']:.3f} ± {row['probe_f1_se']:.3f}, {row['top_share']:.2f}, "
        f"{row['effective_experts']:.0f}"
    )


def specialisation_markdown(result: dict[str, Any]) -> str:
    """Per k and architecture: probe F1 ± SE, top-32 share and effective number of codes, for
    the frontier's layers still on disk when they were measured (``-`` otherwise)."""
    by = {(r["architecture"], r["k"]): r for r in result["rows"]}
    lines = [
        "| k | MxD: probe F1, top-32 share, effective | TopK TC | skip TC |",
        "|---|---|---|---|",
    ]
    for k in sorted({key[1] for key in by}):
        cells = [_specialisation_cell(by[(a, k)]) if (a, k) in by else "-" for a in SHORT]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _recipe(row: dict[str, Any]) -> str:
    """The learning rate, with "↘" when it decays over the last steps."""
    return f"{row['lr']:g}" + (" ↘" if row.get("lr_decay_steps") else "")


def _budget_recipe(row: dict[str, Any], k: int) -> bool:
    """The budget curve's recipe: the frontier grid's constant learning rate of 1e-2 at k."""
    return (
        row["k"] == k
        and row["lr"] == 1e-2
        and not row.get("lr_decay_steps")
        and not any(key in row for key in ("init", "dead_feature_aux_k"))
    )


def budget(evaluation: dict[str, Any], k: int = 32) -> list[dict[str, Any]]:
    """MxD and TopK transcoder at k after each evaluated token count, with their comparison."""
    points = []
    for tokens_seen, stage in sorted(evaluation["by_tokens"].items(), key=lambda t: int(t[0])):
        rows = {r["architecture"]: r for r in stage["rows"] if _budget_recipe(r, k)}
        if "mxd" not in rows or "topk_transcoder" not in rows:
            continue
        pair = next(
            (
                c
                for c in stage["comparisons"]
                if (c["a"], c["b"]) == (rows["mxd"]["name"], rows["topk_transcoder"]["name"])
            ),
            None,
        )
        points.append(
            {
                "tokens": int(tokens_seen),
                **{
                    f"{SHORT_KEY[a]}_{m}": rows[a].get(m)
                    for a in ("mxd", "topk_transcoder")
                    for m in (
                        "delta_ce",
                        "delta_ce_se",
                        "kl",
                        "kl_se",
                        "nmse",
                        "nmse_se",
                        "dead_fraction",
                    )
                },
                "comparison": pair,
            }
        )
    return points


SHORT_KEY = {"mxd": "mxd", "topk_transcoder": "topk_tc"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evaluations", nargs="+", required=True)
    parser.add_argument("--out", default="benchmarks/results/frontier_lr_only.json")
    parser.add_argument(
        "--best_lr",
        action="store_true",
        help="per architecture and k, the lowest-ΔCE layer among the recipes trained",
    )
    parser.add_argument("--budget_from", default=None, help="model whose snapshots give the budget")
    parser.add_argument("--budget_out", default="benchmarks/results/budget.json")
    parser.add_argument(
        "--budget_extra", nargs="*", default=[], help="more evaluations of the same run's snapshots"
    )
    opts = parser.parse_args()
    evaluations = [json.loads(Path(p).read_text()) for p in opts.evaluations]
    by_model: dict[str, list[dict[str, Any]]] = {}
    for evaluation in evaluations:
        by_model.setdefault(evaluation["model"], []).append(evaluation)
    results = {model: model_result(group, opts.best_lr) for model, group in by_model.items()}
    tokens = {r["tokens_per_layer"] for r in results.values()}
    training = evaluations[0]["training"]
    write_result(
        opts.out,
        {
            "tokens_per_layer": min(tokens),
            "batch_tokens": training["batch_tokens"],
            "shuffle_tokens": training["shuffle_tokens"],
            "evaluations": opts.evaluations,
            "training_commands": {
                model: [t["command"] for e in group for t in e.get("trainings", [e["training"]])]
                for model, group in by_model.items()
            },
            "evaluation_commands": {
                model: [e["command"] for e in group] for model, group in by_model.items()
            },
            "results": results,
        },
    )
    for model, result in results.items():
        print()
        print(markdown(model, result))
        print()
        print(specialisation_markdown(result))
    if opts.budget_from is not None:
        group = by_model[opts.budget_from]
        evaluation = group[0]
        by_tokens: dict[str, Any] = {}
        for other in group:
            by_tokens |= other["by_tokens"]
        for path in opts.budget_extra:
            by_tokens |= json.loads(Path(path).read_text())["by_tokens"]
        points = budget({**evaluation, "by_tokens": by_tokens})
        write_result(
            opts.budget_out,
            {
                "model": opts.budget_from,
                "k": 32,
                "training_commands": [
                    t["command"] for e in group for t in e.get("trainings", [e["training"]])
                ],
                "evaluation_commands": [e["command"] for e in group],
                "extra_evaluations": opts.budget_extra,
                "n_eval_tokens": evaluation["n_eval_tokens"],
                "points": points,
            },
        )
        print(
            "\n| tokens | MxD ΔCE | TopK TC ΔCE | MxD / TopK | MxD NMSE | TopK NMSE | dead MxD, TopK |"
        )
        print("|---|---|---|---|---|---|---|")
        for p in points:
            ratio = (p["comparison"] or {}).get("delta_ce_ratio", float("nan"))
            print(
                f"| {p['tokens']:,} | {p['mxd_delta_ce']:.4f} ± {p['mxd_delta_ce_se']:.4f} "
                f"| {p['topk_tc_delta_ce']:.4f} ± {p['topk_tc_delta_ce_se']:.4f} | {ratio:.2f} "
                f"| {p['mxd_nmse']:.4f} | {p['topk_tc_nmse']:.4f} "
                f"| {p['mxd_dead_fraction']:.0%}, {p['topk_tc_dead_fraction']:.0%} |"
            )


if __name__ == "__main__":
    main()
