"""The sparsity–accuracy frontier of the bundled models, assembled from the evaluations that
``benchmarks/evaluate_layers.py`` wrote for the layers ``benchmarks/train_layers.py`` trained
(see benchmarks/README.md for the commands), into ``benchmarks/results/frontier.json``: per model,
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
)
SHORT = {"mxd": "MxD", "topk_transcoder": "TopK TC", "topk_skip_transcoder": "skip TC"}


def model_result(evaluation: dict[str, Any]) -> dict[str, Any]:
    rows = [{key: row.get(key) for key in KEEP} for row in evaluation["rows"]]
    for row, full in zip(rows, evaluation["rows"], strict=True):
        row.update({k: v for k, v in full.items() if k.startswith("dead_feature_aux")})
    return {
        "layer": evaluation["layer"],
        "tokens_per_layer": evaluation["tokens_per_layer"],
        "n_eval_sequences": evaluation["n_sequences"],
        "n_eval_tokens": evaluation["n_eval_tokens"],
        "training_seconds": evaluation["training"]["seconds"],
        "rows": rows,
        "comparisons": evaluation["comparisons"],
    }


def markdown(model: str, result: dict[str, Any]) -> str:
    """The README table: per k, ΔCE ± SE of each architecture, the MxD/TopK ratio and the paired
    difference in standard errors, and dead fractions."""
    by = {(r["architecture"], r["k"]): r for r in result["rows"] if r["name"].count("-") == 1}
    pairs = {(c["a"], c["b"]): c for c in result["comparisons"]}
    lines = [
        f"**{model}**, layer {result['layer']}, {result['tokens_per_layer']:,} training tokens "
        "per layer:",
        "",
        "| k | MxD ΔCE (L0) | TopK TC ΔCE | skip TC ΔCE | MxD / TopK | (TopK − MxD) / paired SE "
        "| MxD / skip | dead: MxD, TopK, skip |",
        "|---|---|---|---|---|---|---|---|",
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
            f"| {m['dead_fraction']:.0%}, {t['dead_fraction']:.0%}, {s['dead_fraction']:.0%} |"
        )
    return "\n".join(lines)


def budget(evaluation: dict[str, Any], k: int = 32) -> list[dict[str, Any]]:
    """MxD and TopK transcoder at k after each evaluated token count, with their comparison."""
    points = []
    for tokens_seen, stage in sorted(evaluation["by_tokens"].items(), key=lambda t: int(t[0])):
        rows = {
            r["architecture"]: r for r in stage["rows"] if r["k"] == k and r["name"].count("-") == 1
        }
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
    parser.add_argument("--out", default="benchmarks/results/frontier.json")
    parser.add_argument("--budget_from", default=None, help="model whose snapshots give the budget")
    parser.add_argument("--budget_out", default="benchmarks/results/budget.json")
    parser.add_argument(
        "--budget_extra", nargs="*", default=[], help="more evaluations of the same run's snapshots"
    )
    opts = parser.parse_args()
    evaluations = [json.loads(Path(p).read_text()) for p in opts.evaluations]
    results = {e["model"]: model_result(e) for e in evaluations}
    tokens = {e["tokens_per_layer"] for e in evaluations}
    training = evaluations[0]["training"]
    write_result(
        opts.out,
        {
            "tokens_per_layer": min(tokens),
            "batch_tokens": training["batch_tokens"],
            "shuffle_tokens": training["shuffle_tokens"],
            "evaluations": opts.evaluations,
            "training_commands": {e["model"]: e["training"]["command"] for e in evaluations},
            "evaluation_commands": {e["model"]: e["command"] for e in evaluations},
            "results": results,
        },
    )
    for model, result in results.items():
        print()
        print(markdown(model, result))
    if opts.budget_from is not None:
        (evaluation,) = [e for e in evaluations if e["model"] == opts.budget_from]
        by_tokens = dict(evaluation["by_tokens"])
        for path in opts.budget_extra:
            by_tokens |= json.loads(Path(path).read_text())["by_tokens"]
        points = budget({**evaluation, "by_tokens": by_tokens})
        write_result(
            opts.budget_out,
            {
                "model": opts.budget_from,
                "k": 32,
                "training_command": evaluation["training"]["command"],
                "evaluation_command": evaluation["command"],
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
