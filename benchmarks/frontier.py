"""The sparsity–accuracy frontier on the bundled models: for each k, an MxD, a TopK transcoder
and a TopK skip transcoder at matched parameter counts, each trained on the same token budget,
spliced into the model and evaluated on held-out text.

    python benchmarks/frontier.py                       # both bundled models, k = 8 16 32 64
    python benchmarks/frontier.py --models tiny-gelu --ks 16 32 --tokens 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens import zoo
from mxd_saelens.demo import DemoOptions, train_layer
from mxd_saelens.evaluation import evaluate_layers
from mxd_saelens.report import format_table, write_report
from mxd_saelens.tokens import token_sequences

ARCHITECTURES = ("mxd", "topk_transcoder", "topk_skip_transcoder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["tiny-gelu", "tiny-gated"])
    parser.add_argument("--ks", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per layer")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch_tokens", type=int, default=2048)
    parser.add_argument("--eval_sequences", type=int, default=64)
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--work_dir", default="benchmarks/results/frontier_layers")
    parser.add_argument("--out", default="benchmarks/results/frontier.json")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    results = {}
    for model_name in opts.models:
        model = zoo.load(model_name)
        layer = zoo.default_layer(model_name)
        heldout = token_sequences(model, zoo.load_corpus("heldout"), 128, opts.eval_sequences)
        rows = []
        for k in opts.ks:
            trained = {}
            for architecture in opts.architectures:
                options = DemoOptions(
                    model=model_name,
                    layer=layer,
                    training_tokens=opts.tokens,
                    k=k,
                    batch_tokens=opts.batch_tokens,
                    lr=opts.lr,
                )
                started = time.perf_counter()
                out_dir = Path(opts.work_dir) / model_name / f"k{k}"
                trained[f"{architecture}-k{k}"] = train_layer(
                    model, architecture, options, layer, out_dir
                )
                print(f"{model_name} k={k} {architecture}: {time.perf_counter() - started:.0f} s")
            rows += [{"k": k, **row} for row in evaluate_layers(model, trained, heldout)]
        print(format_table(rows))
        write_report(
            rows, Path(opts.out).with_suffix("") / model_name, title=f"{model_name} layer {layer}"
        )
        results[model_name] = {"layer": layer, "rows": rows}
    write_result(
        opts.out,
        {
            "tokens_per_layer": opts.tokens,
            "lr": opts.lr,
            "batch_tokens": opts.batch_tokens,
            "eval_sequences": opts.eval_sequences,
            "ks": opts.ks,
            "results": results,
        },
    )


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
