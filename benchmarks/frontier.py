"""The sparsity–accuracy frontier of the bundled models, assembled from the evaluations that
``benchmarks/evaluate_layers.py`` wrote for the layers ``benchmarks/train_layers.py`` trained
(see benchmarks/README.md for the commands), into ``benchmarks/results/frontier.json``: per model,
each layer's ΔCE, KL, NMSE and dead fraction with standard errors, and for each k the MxD
against the TopK and skip transcoders with paired standard errors.

    python benchmarks/frontier.py --evaluations benchmarks/results/frontier/tiny-gelu.json \\
        benchmarks/results/frontier/tiny-gated.json
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
        f"**{model}** (layer {result['layer']}, {result['n_eval_tokens']:,} held-out tokens)",
        "",
        "| k | MxD ΔCE | TopK TC ΔCE | skip TC ΔCE | MxD / TopK | paired diff / SE "
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
            f"| {k} | {m['delta_ce']:.4f} ± {m['delta_ce_se']:.4f} "
            f"| {t['delta_ce']:.4f} ± {t['delta_ce_se']:.4f} "
            f"| {s['delta_ce']:.4f} ± {s['delta_ce_se']:.4f} "
            f"| {mt.get('delta_ce_ratio', float('nan')):.2f} "
            f"| {-mt.get('delta_ce_z', float('nan')):.1f} "
            f"| {ms.get('delta_ce_ratio', float('nan')):.2f} "
            f"| {m['dead_fraction']:.0%}, {t['dead_fraction']:.0%}, {s['dead_fraction']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evaluations", nargs="+", required=True)
    parser.add_argument("--out", default="benchmarks/results/frontier.json")
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


if __name__ == "__main__":
    main()
