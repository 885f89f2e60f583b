"""Sparse probing on the bundled corpus: the best single MxD expert's F1 per class beside the
parameter-matched TopK transcoder's best latent and the base MLP's best neuron.

Trains both layers on the bundled model's default MLP (transcoder d_sae = 32·d_model, MxD
N = matched_n_experts(d, d, d_mlp, 32·d), k = 32), or takes saved ones with ``--layers``, then
probes each corpus label (docs/design.md §2.4: mean-pooled codes, 100 candidates by class-mean
difference, 1-D class-balanced logistic regressions, best test F1, 80/20 split, seed 42).

    python benchmarks/probing.py                      # trains both, minutes on 2 CPU cores
    python benchmarks/probing.py --layers out/mxd out/topk_transcoder
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs as a script too

from benchmarks.common import write_result
from mxd_saelens import zoo
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.demo import DemoOptions, train_matched
from mxd_saelens.evaluation.loss import evaluate_layers
from mxd_saelens.reading.probing import (
    LayerCodes,
    NeuronCodes,
    corpus_labelled_set,
    format_probe_table,
    sparse_probe,
)
from mxd_saelens.saes.loading import load_layer
from mxd_saelens.saes.params import parameter_count

ARCHITECTURES = ("mxd", "topk_transcoder")


def trained_layers(opts: argparse.Namespace, model: Any, layer: int) -> tuple[list[str], dict]:
    """Folders of the layers to probe, training them first (both from one shared forward)
    unless ``--layers`` names them."""
    if opts.layers:
        return opts.layers, {}
    out = Path(opts.save_dir or tempfile.mkdtemp(prefix="probing_layers_"))
    options = DemoOptions(
        model=opts.model,
        layer=layer,
        training_tokens=opts.training_tokens,
        k=opts.k,
        architectures=ARCHITECTURES,
    )
    start = time.perf_counter()
    train_matched(options, model, out)
    seconds = {"+".join(ARCHITECTURES): round(time.perf_counter() - start, 1)}
    print(f"trained {', '.join(ARCHITECTURES)} in {sum(seconds.values())} s", flush=True)
    return [str(out / a) for a in ARCHITECTURES], seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--layers", nargs="*", help="saved layers to probe instead of training")
    parser.add_argument("--training_tokens", type=int, default=1_500_000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--labels", nargs="+", default=["natural_language", "programming_language"])
    parser.add_argument("--n_candidates", type=int, default=100)
    parser.add_argument("--save_dir", help="where trained layers go (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: small tensors)")
    parser.add_argument("--out", default="benchmarks/results/probing.json")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    torch.manual_seed(42)

    model = zoo.load(opts.model)
    block = zoo.default_layer(opts.model)
    folders, train_seconds = trained_layers(opts, model, block)
    layers = {Path(f).name: load_layer(f) for f in folders}
    heldout = token_sequences(model, zoo.load_corpus("heldout"), 128, 32)
    splice_rows = evaluate_layers(model, layers, heldout).rows

    sources: list[Any] = [LayerCodes(layer, name=name) for name, layer in layers.items()]
    sources.append(NeuronCodes.of(model, block))
    probes: dict[str, Any] = {}
    for label in opts.labels:
        data = corpus_labelled_set(label)
        start = time.perf_counter()
        results = [
            sparse_probe(
                model, s, data, drop_short=True, n_candidates=opts.n_candidates, batch_size=32
            )
            for s in sources
        ]
        table = format_probe_table(results)
        print(f"\n{data.name}: {results[0].n_samples} texts ({time.perf_counter() - start:.0f} s)")
        print(table)
        probes[label] = {
            "n_samples": results[0].n_samples,
            "classes": sorted({s.label for r in results for s in r.scores}),
            "results": [r.to_dict() for r in results],
            "table": table.splitlines(),
        }

    write_result(
        opts.out,
        {
            "benchmark": "sparse probing on the bundled corpus labels",
            "model": opts.model,
            "layer": block,
            "protocol": "mean-pooled codes over the first 127 tokens after BOS (last 127 for "
            "code files); per class one-vs-rest: 100 codes by class-mean difference on the "
            "train split, class-balanced L2 logistic regression on each, best test F1; 80/20 "
            "stratified split, seed 42",
            "training_tokens": None if opts.layers else opts.training_tokens,
            "training_seconds": train_seconds,
            "layers": [
                {
                    "name": row["name"],
                    "architecture": row["architecture"],
                    "parameters": row["parameters"],
                    "n_codes": int(layers[row["name"]].cfg.d_sae),
                    "k": int(layers[row["name"]].cfg.k),
                    "nmse": row["nmse"],
                    "delta_ce": row["delta_ce"],
                }
                for row in splice_rows
            ],
            "base_mlp_parameters": parameter_count(model.blocks[block].mlp),
            "probes": probes,
        },
    )


if __name__ == "__main__":
    main()
