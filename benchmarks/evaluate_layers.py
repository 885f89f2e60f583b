"""Splice every layer that ``benchmarks/train_layers.py`` saved (and, with ``--snapshots``, every
snapshot) into its model on the bundled held-out split and write one JSON: each layer's ΔCE, KL,
NMSE, L0 and dead fraction with standard errors, the specialisation of its codes (probe F1 ± SE,
top-32 share, effective codes, Jaccard overlaps; ``--no_specialisation`` to skip), and paired
comparisons of each MxD against the transcoders trained beside it at the same k and learning
rate.

    python benchmarks/evaluate_layers.py --work_dir benchmarks/layers/lr_sweep \\
        --snapshots --out benchmarks/results/lr_sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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

SPLITS = ("heldout", "validation", "test", "train")


def split_sequences(model: Any, split: str, n_sequences: int | None) -> torch.Tensor:
    """``[n, 128]`` tokens of ``split``: the grid's validation and test are the first and the
    second half of the held-out split's sequences; train (``n_sequences`` default: as many as
    test) is the start of the training split."""
    if split == "train":
        heldout = token_sequences(model, zoo.load_corpus("heldout"), 128)
        n = n_sequences or heldout.shape[0] - heldout.shape[0] // 2
        return token_sequences(model, zoo.load_corpus("train"), 128, n)
    tokens = token_sequences(model, zoo.load_corpus("heldout"), 128)
    half = tokens.shape[0] // 2
    tokens = {"heldout": tokens, "validation": tokens[:half], "test": tokens[half:]}[split]
    return tokens[:n_sequences] if n_sequences else tokens


def paired_names(
    specs: dict[str, dict[str, Any]], extra: list[str], by_k: bool = False
) -> list[tuple[str, str]]:
    """Each MxD against every non-MxD layer of the same k and lr (with ``by_k``: of the same k,
    whatever their recipes), then ``a:b`` extras."""
    pairs = []
    for a, spec_a in specs.items():
        if spec_a["architecture"] != "mxd":
            continue
        for b, spec_b in specs.items():
            if spec_b["architecture"] == "mxd" or spec_a["k"] != spec_b["k"]:
                continue
            plain = set(spec_a) == {"architecture", "k", "lr"} and spec_a["lr"] == spec_b["lr"]
            if by_k or plain:
                pairs.append((a, b))
    pairs += [tuple(item.split(":", 1)) for item in extra]  # type: ignore[misc]
    return pairs


def folder_is_final(work: Path, specs: dict[str, Any]) -> bool:
    """Whether the run finished: every layer saved under its name."""
    return all((work / name / "cfg.json").exists() for name in specs)


def stages_of(work: Path, specs: dict[str, Any], opts: argparse.Namespace) -> dict[int, Path]:
    """Token count → folder holding the run's layers then: the finished run and its snapshots."""
    manifest = json.loads((work / "manifest.json").read_text())
    stages: dict[int, Path] = {}
    if folder_is_final(work, specs):
        stages[manifest["tokens_per_layer"]] = work
    if opts.snapshots and (work / "snapshots").is_dir():
        # a snapshot is taken at the first step boundary at or past the asked-for count
        stages |= {
            int(p.name): p
            for p in (work / "snapshots").iterdir()
            if p.name.isdigit()
            and (opts.snapshot_tokens is None or int(p.name) in opts.snapshot_tokens)
        }
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--work_dir", nargs="+", required=True, help="runs of one model (names must differ)"
    )
    parser.add_argument("--snapshots", action="store_true", help="evaluate the snapshots too")
    parser.add_argument(
        "--snapshot_tokens", nargs="*", type=int, default=None, help="only these snapshots"
    )
    parser.add_argument(
        "--snapshot_layers", nargs="*", default=None, help="only these layers' snapshots"
    )
    parser.add_argument("--only", nargs="*", default=None, help="evaluate only these layers")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="heldout",
        help="heldout: the whole held-out split; validation / test: its first / second half (the "
        "grid's); train: the training split's first sequences, seen in training (to tell "
        "overfitting: train against test)",
    )
    parser.add_argument("--n_sequences", type=int, default=None, help="default: the whole split")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--pairs", nargs="*", default=[], help="extra comparisons a:b")
    parser.add_argument(
        "--pair_by_k",
        action="store_true",
        help="compare each MxD with every transcoder of its k, whatever their learning rates",
    )
    parser.add_argument(
        "--no_specialisation", action="store_true", help="skip probing and usage metrics"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    works = [Path(w) for w in opts.work_dir]
    manifests = [json.loads((w / "manifest.json").read_text()) for w in works]
    if len({m["model"] for m in manifests}) != 1:
        raise SystemExit("the runs are of different models; evaluate them separately")
    specs: dict[str, dict[str, Any]] = {}
    for work, manifest in zip(works, manifests, strict=True):
        clash = set(specs) & set(manifest["layers"])
        if clash:
            raise SystemExit(f"layer names {sorted(clash)} appear in two runs; rename one")
        if opts.only is not None:
            manifest["layers"] = {n: s for n, s in manifest["layers"].items() if n in opts.only}
        specs |= {name: {**spec, "run": str(work)} for name, spec in manifest["layers"].items()}
    model = zoo.load(manifests[0]["model"])
    tokens = split_sequences(model, opts.split, opts.n_sequences)
    print(
        f"{manifests[0]['model']}: {tokens.shape[0]} {opts.split} sequences, {tokens.numel():,} tokens"
    )

    layers: dict[str, Any] = {}
    stage_tokens: set[int] = set()
    for work, manifest in zip(works, manifests, strict=True):
        names = manifest["layers"]
        final_tokens = manifest["tokens_per_layer"] if folder_is_final(work, names) else None
        for tokens_seen, folder in sorted(stages_of(work, names, opts).items()):
            for name in names:
                snapshot_wanted = not opts.snapshot_layers or name in opts.snapshot_layers
                if tokens_seen == final_tokens or snapshot_wanted:
                    layers[f"{tokens_seen}/{name}"] = SAE.load_from_disk(folder / name)
                    stage_tokens.add(tokens_seen)
    if not layers:
        raise SystemExit(f"no trained layers under {', '.join(map(str, works))} (did it finish?)")
    started = time.perf_counter()
    evaluation, _ = evaluate_and_specialise(
        model, layers, tokens, opts.batch_size, specialisation=not opts.no_specialisation
    )
    seconds = time.perf_counter() - started  # the splice and the specialisation

    pairs = paired_names(specs, opts.pairs, by_k=opts.pair_by_k)
    by_stage: dict[str, Any] = {}
    for tokens_seen in sorted(stage_tokens):
        rows = [
            {**row, "name": row["name"].split("/", 1)[1], **specs[row["name"].split("/", 1)[1]]}
            for row in evaluation.rows
            if row["name"].startswith(f"{tokens_seen}/")
        ]
        for row in rows:
            row["training_tokens"] = tokens_seen
        present = {row["name"] for row in rows}
        comparisons = []
        for a, b in pairs:
            if a in present and b in present:
                result = evaluation.compare(f"{tokens_seen}/{a}", f"{tokens_seen}/{b}")
                comparisons.append({**result, "a": a, "b": b})
        by_stage[str(tokens_seen)] = {"rows": rows, "comparisons": comparisons}
        print(f"\n== after {tokens_seen:,} tokens")
        print(format_table(rows))
        if not opts.no_specialisation:
            print(format_specialisation(rows))
        if comparisons:
            print(format_comparisons(comparisons))
    final = by_stage[str(max(stage_tokens))]
    trainings = [{k: v for k, v in m.items() if k != "layers"} for m in manifests]
    write_result(
        opts.out,
        {
            "model": manifests[0]["model"],
            "layer": manifests[0]["layer"],
            "training": trainings[0],
            "trainings": trainings,
            "tokens_per_layer": max(stage_tokens),
            "split": opts.split,
            "n_sequences": int(tokens.shape[0]),
            "n_eval_tokens": int(tokens.numel()),
            "eval_seconds": round(seconds, 1),
            "rows": final["rows"],
            "comparisons": final["comparisons"],
            "by_tokens": by_stage,
        },
    )


if __name__ == "__main__":
    main()
