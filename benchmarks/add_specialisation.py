"""Add the specialisation of each layer's codes (``mxd_saelens.evaluation.specialisation``: probe F1 ± SE,
top-32 share, effective number of codes, Jaccard overlaps) to the rows of evaluation JSONs that
``benchmarks/evaluate_layers.py`` wrote, for the layers still on disk; rows whose layer folder is
gone are left without them. Each file is rewritten in place.

    python benchmarks/add_specialisation.py benchmarks/results/frontier/tiny-gelu-8m.json
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
from mxd_saelens import zoo
from mxd_saelens.evaluation.specialisation import add_specialisation, layer_specialisation


def layer_folder(row: dict[str, Any], final_tokens: int) -> Path:
    run = Path(row["run"])
    if row["training_tokens"] == final_tokens:
        return run / row["name"]
    return run / "snapshots" / str(row["training_tokens"]) / row["name"]


def add_to_file(path: Path, per_class: int) -> None:
    evaluation = json.loads(path.read_text())
    stages = evaluation["by_tokens"]
    final = evaluation["tokens_per_layer"]
    model = zoo.load(evaluation["model"])
    for tokens, stage in stages.items():
        on_disk = {
            row["name"]: folder
            for row in stage["rows"]
            if (folder := layer_folder(row, final) if "run" in row else None) is not None
            and (folder / "cfg.json").exists()
        }
        if not on_disk:
            print(f"{path}: no layers of the {tokens}-token stage are on disk")
            continue
        layers = {name: SAE.load_from_disk(folder) for name, folder in on_disk.items()}
        found = layer_specialisation(model, layers, per_class=per_class)
        add_specialisation(stage["rows"], found)
        if tokens == str(final):
            add_specialisation(evaluation["rows"], found)
        print(f"{path}: {len(found)} layers at {tokens} tokens")
    evaluation["probe_per_class"] = per_class
    path.write_text(json.dumps(evaluation, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("evaluations", nargs="+")
    parser.add_argument("--per_class", type=int, default=100, help="probing texts per class")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    for path in opts.evaluations:
        add_to_file(Path(path), opts.per_class)


if __name__ == "__main__":
    main()
