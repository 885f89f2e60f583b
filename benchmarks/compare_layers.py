"""Splice named saved layers into one bundled model on the whole held-out split and compare them
pairwise with paired standard errors: an ablation of one training choice (the shuffle buffer, a
dead-expert loss) against layers trained identically otherwise.

    python benchmarks/compare_layers.py --model tiny-gelu \\
        --layers big=benchmarks/layers/lr_sweep/snapshots/1001472/mxd-k32-lr0.01 \\
                 small=benchmarks/layers/mixing_16k/mxd-k32 \\
        --pairs small:big --out benchmarks/results/mixing.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from sae_lens import SAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens import zoo
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.evaluation.loss import evaluate_layers
from mxd_saelens.evaluation.report import format_comparisons, format_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--layers", nargs="+", required=True, help="name=folder")
    parser.add_argument("--pairs", nargs="+", required=True, help="a:b (a against b)")
    parser.add_argument("--n_sequences", type=int, default=None, help="default: all held-out")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--note", default="", help="what differs between the layers")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    folders = dict(item.split("=", 1) for item in opts.layers)
    model = zoo.load(opts.model)
    tokens = token_sequences(model, zoo.load_corpus("heldout"), 128, opts.n_sequences)
    layers = {name: SAE.load_from_disk(folder) for name, folder in folders.items()}
    evaluation = evaluate_layers(model, layers, tokens)
    comparisons = [evaluation.compare(*pair.split(":", 1)) for pair in opts.pairs]
    print(format_table(evaluation.rows))
    print(format_comparisons(comparisons))
    write_result(
        opts.out,
        {
            "model": opts.model,
            "note": opts.note,
            "layers": folders,
            "n_sequences": int(tokens.shape[0]),
            "n_eval_tokens": int(tokens.numel()),
            "rows": evaluation.rows,
            "comparisons": comparisons,
        },
    )


if __name__ == "__main__":
    main()
