"""What splicing costs: the spliced forward against the clean forward and the layer alone.

The splice runs the model's MLP as usual and replaces its output, so a spliced forward should
cost the clean forward plus the layer's own forward and nothing more.

    python benchmarks/splice_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens import MxD, MxDConfig, TopKTranscoder, TopKTranscoderConfig, zoo
from mxd_saelens.data.hooks import resolve_mlp_hooks
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.demo import matched_layer_fields
from mxd_saelens.evaluation.splice import SplicedLayer, splice


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/splice_cost.json")
    opts = parser.parse_args()

    model = zoo.load(opts.model)
    hooks = resolve_mlp_hooks(model, layer=zoo.default_layer(opts.model))
    tokens = token_sequences(model, zoo.load_corpus("heldout"), 128, opts.sequences)
    _, cache = model.run_with_cache(tokens, names_filter=[hooks.hook_in])
    mlp_in = cache[hooks.hook_in]
    d = hooks.d_in
    results: dict[str, dict[str, float]] = {}
    layers = {
        "mxd": MxD(MxDConfig(d_in=d, **matched_layer_fields(model, "mxd", opts.k, 32))),
        "topk_transcoder": TopKTranscoder(
            TopKTranscoderConfig(
                d_in=d, d_out=d, **matched_layer_fields(model, "topk_transcoder", opts.k, 32)
            )
        ),
    }
    for name, layer in layers.items():
        layer.eval()

        def spliced(layer=layer) -> None:
            with splice(model, SplicedLayer(layer, hooks)):
                model(tokens)

        # clean and spliced forwards alternate, so drift in the machine's speed hits both alike
        clean_ms, spliced_ms = [], []
        for _ in range(3):
            model(tokens)
            spliced()
        for _ in range(opts.repeats):
            clean_ms.append(median_ms(lambda: model(tokens), 1))
            spliced_ms.append(median_ms(spliced, 1))
        clean, total = statistics.median(clean_ms), statistics.median(spliced_ms)
        alone = median_ms(lambda layer=layer: layer(mlp_in), opts.repeats)
        results[name] = {
            "clean_forward_ms": round(clean, 2),
            "spliced_forward_ms": round(total, 2),
            "layer_alone_ms": round(alone, 2),
            "splice_overhead_ms": round(total - clean, 2),
            "overhead_over_layer_cost": round((total - clean) / alone, 3),
        }
        print(name, results[name])
    write_result(
        opts.out,
        {
            "model": opts.model,
            "layer": hooks.layer,
            "tokens": int(tokens.numel()),
            "k": opts.k,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
