"""What bfloat16 storage of a paired activation cache does to the layers trained from it: the
demo's MxD and TopK transcoder (k = 32, float32 layers) trained from a float32 cache and from a
bfloat16 cache of the same tokens, same seed and order, then spliced on the whole held-out split;
paired ΔCE and KL differences (bfloat16 − float32) with their standard errors.

    python benchmarks/cache_dtype.py --tokens 1000000 --out benchmarks/results/cache_dtype.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.cache_sweep import write_cache
from benchmarks.common import write_result
from mxd_saelens import zoo
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.demo import DemoOptions, layer_config
from mxd_saelens.evaluation.loss import evaluate_layers
from mxd_saelens.evaluation.report import format_comparisons, format_table
from mxd_saelens.training.runner import MultiPairedTrainingRunner

ARCHITECTURES = ("mxd", "topk_transcoder")
DTYPES = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="cached = trained tokens")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--n_sequences", type=int, default=None, help="default: all held-out")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results/cache_dtype.json")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    model = zoo.load(opts.model)
    layer = zoo.default_layer(opts.model)
    options = DemoOptions(model=opts.model, training_tokens=opts.tokens, batch_tokens=opts.batch)
    trained: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cache_dtype-") as tmp:
        for dtype in DTYPES:
            cache = Path(tmp) / dtype
            write_cache(model, opts, layer, cache, dtype)
            configs = {
                f"{a}-{dtype}": layer_config(
                    model, a, options, layer, None, cached_activations_path=str(cache)
                )
                for a in ARCHITECTURES
            }
            runner = MultiPairedTrainingRunner(configs, override_model=model)
            trained |= {name: sae.eval() for name, sae in runner.run().items()}
    tokens = token_sequences(model, zoo.load_corpus("heldout"), 128, opts.n_sequences)
    evaluation = evaluate_layers(model, trained, tokens)
    comparisons = [
        {**evaluation.compare(f"{a}-bfloat16", f"{a}-float32"), "a": f"{a}-bfloat16",
         "b": f"{a}-float32"}
        for a in ARCHITECTURES
    ]  # fmt: skip
    print(format_table(evaluation.rows))
    print(format_comparisons(comparisons))
    write_result(
        opts.out,
        {
            "model": opts.model,
            "layer": layer,
            "tokens": opts.tokens,
            "batch_tokens": opts.batch,
            "n_eval_sequences": int(tokens.shape[0]),
            "rows": evaluation.rows,
            "comparisons": comparisons,
        },
    )


if __name__ == "__main__":
    main()
