"""Ablate remedies against dead MxD experts: layers trained identically but for one choice
(``benchmarks/train_layers.py --extra …``), spliced on the validation half of the held-out split
(the test half is left for the grid's report), probed, and each compared with the unremedied
reference layer with paired standard errors (ΔCE, KL, probe F1).

    python benchmarks/experts_alive.py --work_dir benchmarks/layers/alive --reference mxd \\
        --out benchmarks/results/experts_alive.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from sae_lens import SAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens import zoo
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.evaluation.evaluate_and_report import evaluate_and_specialise
from mxd_saelens.reading.probing.probe import compare_probes

FIELDS = ("delta_ce", "delta_ce_se", "kl", "kl_se", "nmse", "l0", "dead_fraction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work_dir", required=True, help="a train_layers.py work_dir")
    parser.add_argument("--reference", default="mxd", help="the unremedied layer")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    work = Path(opts.work_dir)
    manifest = json.loads((work / "manifest.json").read_text())
    model = zoo.load(manifest["model"])
    folders = {name: work / name for name in manifest["layers"]}
    heldout = token_sequences(model, zoo.load_corpus("heldout"), 128)
    validation = heldout[: heldout.shape[0] // 2]
    layers = {name: SAE.load_from_disk(folder) for name, folder in folders.items()}
    evaluation, probes = evaluate_and_specialise(model, layers, validation, chunk=3)
    rows = []
    for row in evaluation.rows:
        name = row["name"]
        rows.append(
            {
                "name": name,
                "recipe": manifest["layers"][name],
                **{key: row[key] for key in FIELDS},
                **probes[name].row(),
            }
        )
    compared = []
    for name in folders:
        if name == opts.reference or manifest["layers"][name]["architecture"] != "mxd":
            continue
        probe = compare_probes(probes[name].probe, probes[opts.reference].probe)
        compared.append(
            {
                **evaluation.compare(name, opts.reference),
                "probe_f1_diff": probe["difference"],
                "probe_f1_diff_se": probe["se"],
            }
        )
    write_result(
        opts.out,
        {
            "training": manifest,
            "evaluated_on": f"validation: the first {validation.shape[0]} held-out sequences",
            "rows": rows,
            "comparisons": compared,
        },
    )
    header = f"{'layer':18s} {'ΔCE ± SE':>18s} {'KL':>7s} {'dead':>6s} {'L0':>5s} {'eff.':>6s} {'top32':>6s} {'probe F1':>14s}"
    print(header)
    for r in rows:
        print(
            f"{r['name']:18s} {r['delta_ce']:.4f} ± {r['delta_ce_se']:.4f}   {r['kl']:.4f} "
            f"{r['dead_fraction']:6.1%} {r['l0']:5.1f} {r['effective_experts']:6.0f} "
            f"{r['top_share']:6.3f} {r['probe_f1']:.3f} ± {r['probe_f1_se']:.3f}"
        )
    for c in compared:
        print(
            f"{c['a']} − {c['b']}: ΔCE {c['delta_ce_diff']:+.4f} ± {c['delta_ce_diff_se']:.4f}, "
            f"probe F1 {c['probe_f1_diff']:+.3f} ± {c['probe_f1_diff_se']:.3f}"
        )


if __name__ == "__main__":
    main()
