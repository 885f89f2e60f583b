"""Tokens-to-quality of warm starts from the dense MLP beside the paper's init and a TopK
transcoder: for each layer that ``benchmarks/train_layers.py`` saved (and each snapshot), the
splice evaluation (ΔCE and KL with standard errors, dead fraction), paired comparisons with the
paper-init MxD and the transcoder at the same token count and with a longer-trained reference
layer, and the specialisation of each layer's codes (``mxd_saelens.evaluation.specialisation``: probe F1 ±
SE on the bundled corpus's language labels, top-32 share, effective number of codes, Jaccard
overlaps), with paired probe comparisons.

    python benchmarks/warm_start.py \\
        --work_dirs benchmarks/layers/warm_start4m/tiny-gelu benchmarks/layers/warm_start4m/tc-gelu \\
        --reference benchmarks/layers/frontier8m/tiny-gelu/mxd-k32-lr1e-2-const \\
        --out benchmarks/results/warm_start_tiny-gelu.json

Several work dirs of one model are merged by token count (their snapshots must be at the same
counts); the reference is spliced on the same tokens, so every comparison is paired.
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
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.evaluation.evaluate_and_report import evaluate_and_specialise
from mxd_saelens.evaluation.report import format_comparisons, format_specialisation, format_table
from mxd_saelens.reading.probing import compare_probes

PAPER, TRANSCODER, REFERENCE = "mxd-k32", "topk_transcoder-k32", "reference"


def stages(work: Path, manifest: dict[str, Any]) -> dict[int, Path]:
    """Token count → folder holding every layer of ``work`` at that count."""
    found = {
        int(p.name): p for p in (work / "snapshots").glob("*") if p.name.isdigit() and p.is_dir()
    }
    if all((work / name / "cfg.json").exists() for name in manifest["layers"]):
        found[manifest["tokens_per_layer"]] = work
    return dict(sorted(found.items()))


def load_runs(work_dirs: list[Path]) -> tuple[str, list[dict], dict, dict[int, dict[str, Path]]]:
    """The model, each run's manifest (without its layers), every layer's config, and token
    count → layer name → folder."""
    models, runs, layers, by_tokens = set(), [], {}, {}
    for work in work_dirs:
        manifest = json.loads((work / "manifest.json").read_text())
        runs.append({k: v for k, v in manifest.items() if k != "layers"})
        models.add(manifest["model"])
        layers.update(manifest["layers"])
        for tokens, folder in stages(work, manifest).items():
            for name in manifest["layers"]:
                by_tokens.setdefault(tokens, {})[name] = folder / name
    if len(models) != 1:
        raise SystemExit(f"the work dirs hold layers of several models: {sorted(models)}")
    return models.pop(), runs, layers, dict(sorted(by_tokens.items()))


def evaluate_model(opts: argparse.Namespace) -> dict[str, Any]:
    model_name, runs, configs, by_tokens = load_runs([Path(w) for w in opts.work_dirs])
    model = zoo.load(model_name)
    tokens = token_sequences(model, zoo.load_corpus("heldout"), 128, opts.n_sequences)
    layers = {
        f"{t}/{name}": SAE.load_from_disk(folder)
        for t, folders in by_tokens.items()
        for name, folder in folders.items()
    }
    reference = SAE.load_from_disk(opts.reference) if opts.reference else None
    if reference is not None:
        layers[REFERENCE] = reference
    evaluation, found = evaluate_and_specialise(
        model, layers, tokens, opts.batch_size, per_class=opts.per_class, chunk=opts.chunk
    )
    rows_by_name = {row["name"]: row for row in evaluation.rows}
    result: dict[str, Any] = {"model": model_name, "training": runs, "layers": configs}
    if reference is not None:
        result["reference"] = {"path": opts.reference, **rows_by_name[REFERENCE]}
    result["by_tokens"] = {}
    for t, folders in by_tokens.items():
        names = list(folders)
        rows = [{**rows_by_name[f"{t}/{n}"], "name": n, **configs[n]} for n in names]
        against = [b for b in (PAPER, TRANSCODER) if b in names]
        pairs = [(f"{t}/{a}", f"{t}/{b}") for a in names for b in against if a != b]
        pairs += [(f"{t}/{a}", REFERENCE) for a in names if reference is not None]
        comparisons = []
        for a, b in pairs:
            probe = compare_probes(found[a].probe, found[b].probe)
            comparisons.append(
                {
                    **evaluation.compare(a, b),
                    "a": a.split("/", 1)[1],
                    "b": b.split("/", 1)[-1],
                    "probe_f1_diff": probe["difference"],
                    "probe_f1_diff_se": probe["se"],
                }
            )
        result["by_tokens"][str(t)] = {"rows": rows, "comparisons": comparisons}
        print(f"\n== {model_name} after {t:,} tokens")
        print(format_table(rows))
        print(format_specialisation(rows))
        print(format_comparisons(comparisons))
        for c in comparisons:
            print(
                f"{c['a']:>24} − {c['b']:<20} probe F1 {c['probe_f1_diff']:+.3f} ± "
                f"{c['probe_f1_diff_se']:.3f}"
            )
    result["n_sequences"] = int(tokens.shape[0])
    result["n_eval_tokens"] = int(tokens.numel())
    result["probe_per_class"] = opts.per_class
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work_dirs", nargs="+", required=True, help="one model's runs")
    parser.add_argument("--reference", default=None, help="a saved layer to compare against")
    parser.add_argument("--n_sequences", type=int, default=None, help="default: all held-out")
    parser.add_argument("--per_class", type=int, default=100, help="probing texts per class")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=6, help="layers spliced per pass")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    write_result(opts.out, evaluate_model(opts))


if __name__ == "__main__":
    main()
