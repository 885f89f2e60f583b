"""Attribution graphs through an MxD set and a TopK transcoder set of equal parameter count,
one layer per block of a bundled model, computed by circuit-tracer on the same prompts.

    make circuits ARGS="--out benchmarks/results/circuits.json"
    # or, in the circuits environment:
    python benchmarks/circuits.py --model tiny-gelu --tokens 2000000 \\
        --work_dir benchmarks/layers/circuits --out benchmarks/results/circuits.json

Every set is trained from one shared forward over the bundled training split, each
architecture with its recipe selected on block 2 (``mxd_saelens.demo.RECIPES``). Prompts are
the first ``--prompts`` held-out sequences of the test half (the second half of the held-out
split, as in benchmarks/grid.py), cut to ``--prompt_tokens`` tokens. For each prompt and set:
circuit-tracer's replacement and completeness scores (``compute_graph_scores``), and the
``--edges`` strongest feature → feature edges checked against interventions computed here
(:func:`mxd_saelens.circuits.direct_effects`). Scores are reported as means ± standard errors
over prompts, and the MxD − transcoder difference as a paired mean ± SE.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens import zoo
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.demo import RECIPES, DemoOptions, layer_config, train_layers
from mxd_saelens.saes.loading import load_layer

SCORES = ("replacement", "completeness")


def layer_sets(model: Any, opts: argparse.Namespace) -> dict[str, dict[int, Any]]:
    """{architecture: {block: layer}}, trained once into ``--work_dir`` and loaded after."""
    work = Path(opts.work_dir)
    blocks = range(model.cfg.n_layers)
    names = {(a, b): f"{a}-block{b}" for a in opts.architectures for b in blocks}
    if not all((work / name / "cfg.json").is_file() for name in names.values()):
        options = DemoOptions(model=opts.model, training_tokens=opts.tokens, k=opts.k)
        configs = {
            name: layer_config(model, a, options, b, str(work / name))
            for (a, b), name in names.items()
        }
        started = time.perf_counter()
        train_layers(model, configs)
        print(f"trained {len(configs)} layers in {time.perf_counter() - started:.0f} s")
    return {
        a: {b: load_layer(work / names[a, b]).eval() for b in blocks} for a in opts.architectures
    }


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--architectures", nargs="+", default=["mxd", "topk_transcoder"])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=2_000_000, help="training tokens per layer")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt_tokens", type=int, default=24)
    parser.add_argument("--edges", type=int, default=5, help="edges checked per graph")
    parser.add_argument("--batch_size", type=int, default=256, help="circuit-tracer's")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work_dir", default="benchmarks/layers/circuits")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    # the circuits environment only (circuit-tracer); the rest of this script runs anywhere
    from mxd_saelens.circuits import (
        attribution_graph,
        check_strongest_edges,
        graph_scores,
        replacement_model,
    )

    model = zoo.load(opts.model)
    sets = layer_sets(model, opts)
    heldout = token_sequences(model, zoo.load_corpus("heldout"), 128)
    test_half = heldout[len(heldout) // 2 :]
    prompts = test_half[: opts.prompts, : opts.prompt_tokens]

    per_prompt: dict[str, list[dict[str, float]]] = {a: [] for a in sets}
    edge_errors: dict[str, list[float]] = {a: [] for a in sets}
    seconds: dict[str, float] = {a: 0.0 for a in sets}
    for architecture, layers in sets.items():
        replacement = replacement_model(model, layers, prompts)
        for tokens in prompts:
            started = time.perf_counter()
            graph = attribution_graph(replacement, tokens, batch_size=opts.batch_size)
            seconds[architecture] += time.perf_counter() - started
            per_prompt[architecture].append(graph_scores(graph))
            edges = check_strongest_edges(replacement, graph, tokens, n_edges=opts.edges)
            edge_errors[architecture] += [edge.relative_error for edge in edges]
        del replacement

    sets_summary = {}
    for architecture, rows in per_prompt.items():
        summary: dict[str, Any] = {
            "parameters": sum(
                p.numel() for layer in sets[architecture].values() for p in layer.parameters()
            ),
            "recipe": RECIPES[architecture],
            "seconds_per_graph": round(seconds[architecture] / len(rows), 3),
            "mean_active_nodes": sum(r["active_nodes"] for r in rows) / len(rows),
            "edges_checked": len(edge_errors[architecture]),
            "edge_max_relative_error": max(edge_errors[architecture]),
        }
        for score in SCORES:
            summary[score], summary[f"{score}_se"] = mean_se([r[score] for r in rows])
        sets_summary[architecture] = summary

    comparisons = {}
    first, *others = list(sets)
    for other in others:
        for score in SCORES:
            diffs = [
                a[score] - b[score]
                for a, b in zip(per_prompt[first], per_prompt[other], strict=True)
            ]
            mean, se = mean_se(diffs)
            comparisons[f"{first}-vs-{other}/{score}"] = {
                "difference": mean,
                "se": se,
                "z": mean / se if se > 0 else None,
            }

    write_result(
        opts.out,
        {
            "model": opts.model,
            "k": opts.k,
            "training_tokens": opts.tokens,
            "prompts": len(prompts),
            "prompt_tokens": opts.prompt_tokens,
            "prompts_from": "the test half of the held-out split (its first sequences)",
            "sets": sets_summary,
            "comparisons": comparisons,
            "per_prompt": per_prompt,
        },
    )
    for architecture, summary in sets_summary.items():
        print(
            f"{architecture:18s} replacement {summary['replacement']:.3f} ± "
            f"{summary['replacement_se']:.3f}  completeness {summary['completeness']:.3f} ± "
            f"{summary['completeness_se']:.3f}  edges ≤ {summary['edge_max_relative_error']:.1e}"
        )
    for key, row in comparisons.items():
        print(f"{key}: {row['difference']:+.4f} ± {row['se']:.4f}")


if __name__ == "__main__":
    main()
