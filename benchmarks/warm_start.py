"""Tokens-to-quality of MxD warm starts beside the paper's init and a TopK transcoder: for each
layer that ``benchmarks/train_layers.py`` saved (and each snapshot), the splice evaluation (ΔCE
and KL with standard errors, dead fraction), paired comparisons with the paper-init MxD and the
transcoder at the same token count, the specialisation metrics and the sparse-probing score on
the bundled corpus's language labels.

    python benchmarks/warm_start.py --work_dirs benchmarks/layers/warm_start/tiny-gelu \\
        benchmarks/layers/warm_start/tiny-gated --out benchmarks/results/warm_start.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens import zoo
from mxd_saelens.evaluation import evaluate_layers
from mxd_saelens.probing import LayerCodes, corpus_labelled_set, sparse_probe
from mxd_saelens.report import format_comparisons, format_table
from mxd_saelens.specialisation import specialisation
from mxd_saelens.tokens import token_sequences

PAPER, TRANSCODER = "mxd-k32", "topk_transcoder-k32"


def stages(work: Path, manifest: dict[str, Any]) -> dict[int, Path]:
    """Token count → folder holding every layer at that count."""
    found = {
        int(p.name): p for p in (work / "snapshots").glob("*") if p.name.isdigit() and p.is_dir()
    }
    if all((work / name / "cfg.json").exists() for name in manifest["layers"]):
        found[manifest["tokens_per_layer"]] = work
    return dict(sorted(found.items()))


def evaluate_model(work: Path, opts: argparse.Namespace) -> dict[str, Any]:
    manifest = json.loads((work / "manifest.json").read_text())
    names = list(manifest["layers"])
    model = zoo.load(manifest["model"])
    tokens = token_sequences(model, zoo.load_corpus("heldout"), 128, opts.n_sequences)
    probe_set = corpus_labelled_set("natural_language", per_class=opts.per_class)
    held_out_texts = corpus_labelled_set("natural_language", splits=("heldout",))
    found = stages(work, manifest)
    layers = {
        f"{t}/{n}": SAE.load_from_disk(folder / n) for t, folder in found.items() for n in names
    }
    evaluation = evaluate_layers(model, layers, tokens, batch_size=opts.batch_size)
    by_tokens: dict[str, Any] = {}
    for t in found:
        rows = []
        for row in evaluation.rows:
            seen, name = row["name"].split("/", 1)
            if int(seen) != t:
                continue
            layer = layers[row["name"]]
            spec = specialisation(model, layer, held_out_texts)
            probe = sparse_probe(model, LayerCodes(layer), probe_set)
            rows.append(
                {
                    **row,
                    "name": name,
                    **manifest["layers"][name],
                    "specialisation": spec.to_dict(),
                    "probe_mean_f1": probe.mean_f1,
                    "probe_f1": probe.f1_by_class(),
                }
            )
        comparisons = [
            {**evaluation.compare(f"{t}/{a}", f"{t}/{b}"), "a": a, "b": b}
            for a in names
            for b in (PAPER, TRANSCODER)
            if a != b and a.startswith("mxd") and b in names
        ]
        by_tokens[str(t)] = {"rows": rows, "comparisons": comparisons}
        print(f"\n== {manifest['model']} after {t:,} tokens")
        print(format_table(rows))
        print(format_comparisons(comparisons))
        for row in rows:
            s = row["specialisation"]
            print(
                f"{row['name']:>20}: top-32 share {s['top_share']:.3f}, effective experts "
                f"{s['effective_experts']:.0f}, Jaccard random {s['jaccard_random']:.3f} / "
                f"same class {s['jaccard_same_class']:.3f}, probe F1 {row['probe_mean_f1']:.3f}"
            )
    return {
        "model": manifest["model"],
        "layer": manifest["layer"],
        "training": {k: v for k, v in manifest.items() if k != "layers"},
        "layers": manifest["layers"],
        "n_sequences": int(tokens.shape[0]),
        "n_eval_tokens": int(tokens.numel()),
        "by_tokens": by_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work_dirs", nargs="+", required=True)
    parser.add_argument("--n_sequences", type=int, default=None, help="default: all held-out")
    parser.add_argument("--per_class", type=int, default=100, help="probing texts per class")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    results = {}
    for work in opts.work_dirs:
        result = evaluate_model(Path(work), opts)
        results[result["model"]] = result
    write_result(opts.out, {"results": results})


if __name__ == "__main__":
    main()
