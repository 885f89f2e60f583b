"""One tuning procedure for every architecture: a grid of recipes, selected on validation under a
readability floor, reported on test.

    python benchmarks/grid.py --model tiny-gelu --ks 32 --lrs 1e-3 3e-3 1e-2 \\
        --tokens 2000000 --work_dir benchmarks/layers/grid/tiny-gelu \\
        --out benchmarks/results/grid_tiny-gelu_k32.json

Every (architecture, k) is offered the same candidates: each learning rate of ``--lrs`` with the
same schedule (warm-up over the first 5 % of the steps, constant, then linear decay over the
last 20 %) and each start of ``--starts``:

- ``paper``: the architecture's own cold start (for the MxD the paper's: random gate and
  encoder, D = 0, unit expert vectors);
- ``mlp_encoder``: the encoder (an MxD's E, a transcoder's first d_mlp latents) copied from the
  MLP being replaced (:mod:`mxd_saelens.training.warm_start`);
- ``balanced``: the cold start with the selection bias nudged toward balanced usage after every
  step (``balance_rate``, :class:`mxd_saelens.saes.paired.SelectionBalanceFields`);
- ``mlp_encoder_balanced``: the encoder copied from the MLP, and balanced as above.

On a gated MLP a transcoder has no copy of the MLP's hidden units, so the two encoder-copy
starts are offered to the MxD alone there; the transcoders keep every other candidate.

All candidates train in lockstep from one model pass over the bundled training split. The
held-out split is cut into two disjoint halves of whole sequences: validation (the first) and
test (the second). Each candidate is spliced into the model on both and its codes are probed
(:mod:`mxd_saelens.evaluation.specialisation`). Selection, per (architecture, k): among the candidates that
meet the readability floor (dead fraction on validation ≤ ``--max_dead`` and probe F1 ≥ the
probe F1 of the TopK transcoder the row compares against minus ``--probe_margin``: readable as
the baseline is, the probe target the row is judged by), the lowest validation ΔCE; if none
meets it, the candidate nearest the floor, flagged: the best probe F1 among those with at most
``--max_dead`` dead (the fewest dead, where none has so few). That TopK transcoder is chosen
first, by the dead-fraction floor alone: its most faithful candidate with at most ``--max_dead``
dead. Faithfulness never decides a candidate that is not readable: a layer as exact as the MLP
but with its experts dead is the dense MLP again. The selected MxD is compared with each selected transcoder on test with paired
standard errors (ΔCE, KL and probe F1).
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
from mxd_saelens.data.hooks import mlp_shape
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.demo import DemoOptions, layer_config, train_layers
from mxd_saelens.evaluation.evaluate_and_report import evaluate_and_specialise
from mxd_saelens.evaluation.loss import Evaluation
from mxd_saelens.evaluation.specialisation import LayerSpecialisation, layer_specialisation
from mxd_saelens.reading.probing.probe import compare_probes
from mxd_saelens.saes.paired import DEFAULT_BALANCE_WINDOW

STARTS = ("paper", "mlp_encoder", "balanced", "mlp_encoder_balanced")
ROW_FIELDS = ("delta_ce", "delta_ce_se", "kl", "kl_se", "nmse", "l0", "dead_fraction")


def admits(architecture: str, start: str, gated_mlp: bool) -> bool:
    """A transcoder latent is one ReLU unit: a gated MLP's hidden unit (the product of two
    projections) has no transcoder copy, so the encoder-copy starts are the MxD's alone there."""
    return not (gated_mlp and start.startswith("mlp_encoder") and architecture != "mxd")


def candidate_name(architecture: str, k: int, start: str, lr: float) -> str:
    """How the grid names a recipe (the budget curve names its lowered rates the same way)."""
    return f"{architecture}-k{k}-{start}-lr{lr:g}"


def candidates(opts: argparse.Namespace, gated_mlp: bool = False) -> dict[str, dict[str, Any]]:
    """name → recipe: every architecture × k × start it admits × learning rate."""
    out = {}
    for architecture in opts.architectures:
        for k in opts.ks:
            for start in (s for s in opts.starts if admits(architecture, s, gated_mlp)):
                for lr in opts.lrs:
                    out[candidate_name(architecture, k, start, lr)] = {
                        "architecture": architecture,
                        "k": k,
                        "start": start,
                        "lr": lr,
                    }
    return out


def recipe_fields(
    recipe: dict[str, Any],
    steps: int,
    balance_rate: float,
    balance_mode: str,
    balance_schedule: str = "constant",
    balance_window: int = DEFAULT_BALANCE_WINDOW,
) -> dict[str, Any]:
    """The config fields of one recipe (besides the architecture and its size)."""
    fields: dict[str, Any] = {
        "k": recipe["k"],
        "lr": recipe["lr"],
        "lr_warm_up_steps": max(1, steps // 20),
        "lr_decay_steps": max(1, steps // 5),
        "init": "mlp_encoder" if recipe["start"].startswith("mlp_encoder") else "paper",
    }
    # set for every start: an architecture's own default must not decide a candidate
    balanced = is_balanced(recipe["start"])
    fields["balance_rate"] = balance_rate if balanced else 0.0
    fields["balance_mode"] = balance_mode if balanced else "sign"
    fields["balance_schedule"] = balance_schedule if balanced else "constant"
    fields["balance_window"] = balance_window  # read by balance_mode="revive_dead" only
    return fields


def is_balanced(start: str) -> bool:
    return start.endswith("balanced")


def train(model: Any, opts: argparse.Namespace, recipes: dict[str, dict[str, Any]]) -> float:
    work = Path(opts.work_dir)
    options = DemoOptions(model=opts.model, training_tokens=opts.tokens, seed=opts.seed)
    layer = zoo.default_layer(opts.model)
    steps = opts.tokens // options.batch_tokens
    configs = {
        name: layer_config(
            model,
            recipe["architecture"],
            options,
            layer,
            str(work / name),
            device=opts.device,
            **recipe_fields(
                recipe,
                steps,
                opts.balance_rate,
                opts.balance_mode,
                getattr(opts, "balance_schedule", "constant"),  # the grid itself: constant
                opts.balance_window,
            ),
        )
        for name, recipe in recipes.items()
        if not (work / name / "cfg.json").exists()  # a finished layer is kept
    }
    started = time.perf_counter()
    if configs:
        print(f"training {len(configs)} candidates, {opts.tokens:,} tokens each")
        train_layers(model, configs)
    return time.perf_counter() - started


REFERENCE = "topk_transcoder"  # whose readability sets the floor


def reference_transcoder(at_k: dict[str, dict[str, Any]], max_dead: float) -> dict | None:
    """The TopK transcoder the row's MxD is judged against, chosen as the rule chooses it before
    any probe floor exists: its most faithful candidate on validation with at most ``max_dead``
    dead (the fewest dead, where none has so few). None where no TopK transcoder was trained."""
    pool = [row for row in at_k.values() if row["architecture"] == REFERENCE]
    live = [row for row in pool if row["validation"]["dead_fraction"] <= max_dead]
    if live:
        return min(live, key=lambda row: row["validation"]["delta_ce"])
    return min(pool, key=lambda row: nearest_the_floor(row, max_dead), default=None)


def probe_floor(at_k: dict[str, dict[str, Any]], max_dead: float, probe_margin: float) -> float:
    """The probe F1 floor at one k, the same for every architecture: the probe F1 of the TopK
    transcoder the row compares against (:func:`reference_transcoder`) less ``probe_margin``,
    which is the probe target the row is judged by (every candidate's best, where no TopK
    transcoder was trained). Not the best of the TopK transcoder's candidates: that maximum of
    a dozen noisy estimates sits above the baseline the row reports, and a floor above the
    target excludes layers that meet it."""
    reference = reference_transcoder(at_k, max_dead)
    if reference is None:
        return max(row["probe_f1"] for row in at_k.values()) - probe_margin
    return reference["probe_f1"] - probe_margin


def best_live_reference_f1(at_k: dict[str, dict[str, Any]], max_dead: float) -> float:
    """The floor's base before it followed the reference transcoder: the best probe F1 among
    the TopK transcoder's live candidates. Only to read results written under that rule."""
    reference = [
        row["probe_f1"]
        for row in at_k.values()
        if row["architecture"] == REFERENCE and row["validation"]["dead_fraction"] <= max_dead
    ]
    return max(reference or [row["probe_f1"] for row in at_k.values()])


def ranked(
    rows: dict[str, dict[str, Any]], max_dead: float, probe_margin: float
) -> dict[str, dict[str, Any]]:
    """(architecture, k) → its candidates that meet the floor, most faithful on validation
    first, with the floor; when none meets it, all of them, flagged, nearest the floor first
    (:func:`nearest_the_floor`)."""
    out = {}
    for k in sorted({row["k"] for row in rows.values()}):
        at_k = {name: row for name, row in rows.items() if row["k"] == k}
        floor_f1 = probe_floor(at_k, max_dead, probe_margin)
        for architecture in sorted({row["architecture"] for row in at_k.values()}):
            pool = {n: r for n, r in at_k.items() if r["architecture"] == architecture}
            readable = [
                n
                for n, r in pool.items()
                if r["validation"]["dead_fraction"] <= max_dead and r["probe_f1"] >= floor_f1
            ]
            if readable:
                names = sorted(readable, key=lambda n: pool[n]["validation"]["delta_ce"])
            else:
                names = sorted(pool, key=lambda n: nearest_the_floor(pool[n], max_dead))
            out[f"{architecture}-k{k}"] = {
                "names": names,
                "met_floor": bool(readable),
                "floor": {
                    "max_dead": max_dead,
                    "min_probe_f1": floor_f1,
                    "probe_margin": probe_margin,
                },
            }
    return out


def nearest_the_floor(row: dict[str, Any], max_dead: float) -> tuple[float, ...]:
    """Sort key of the fallback, when no candidate meets the floor: the live candidates (at most
    ``max_dead`` dead) by probe F1, best first, then the rest by dead fraction, fewest first;
    validation ΔCE breaks ties. The fallback keeps the rule's priority, readability before
    faithfulness, instead of taking the most faithful layer, which is here the least readable."""
    dead = row["validation"]["dead_fraction"]
    delta_ce = row["validation"]["delta_ce"]
    if dead <= max_dead:
        return (0.0, -row["probe_f1"], delta_ce)
    return (1.0, dead, delta_ce)


def select(
    rows: dict[str, dict[str, Any]], max_dead: float, probe_margin: float
) -> dict[str, dict[str, Any]]:
    """(architecture, k) → the selected candidate's name, the floor and whether it was met."""
    return {
        key: {"name": r["names"][0], "met_floor": r["met_floor"], "floor": r["floor"]}
        for key, r in ranked(rows, max_dead, probe_margin).items()
    }


def probe_difference(a: LayerSpecialisation, b: LayerSpecialisation) -> dict[str, float]:
    """a's probe F1 minus b's, paired over the same probing texts."""
    probe = compare_probes(a.probe, b.probe)
    return {"probe_f1_diff": probe["difference"], "probe_f1_diff_se": probe["se"]}


def comparisons(
    selected: dict[str, dict[str, Any]],
    test: Evaluation,
    probes: dict[str, LayerSpecialisation],
) -> list[dict[str, Any]]:
    """The selected MxD of each k against each selected transcoder of that k, on test."""
    out = []
    for key, choice in selected.items():
        architecture, k = key.rsplit("-k", 1)
        mxd = selected.get(f"mxd-k{k}")
        if architecture == "mxd" or mxd is None:
            continue
        a, b = mxd["name"], choice["name"]
        out.append({"k": int(k), **test.compare(a, b), **probe_difference(probes[a], probes[b])})
    return out


def stage2_recipes(
    stage1: dict[str, Any], per_architecture: int, max_dead: float, probe_margin: float
) -> dict[str, dict[str, Any]]:
    """The ``per_architecture`` best stage-1 candidates of each (architecture, k) on validation
    ΔCE among those that meet the floor (the selected one first), to retrain at the budget. The
    floor is recomputed from the stage-1 rows, so it is this file's rule that decides."""
    recipes = {}
    for choice in ranked(stage1["candidates"], max_dead, probe_margin).values():
        for name in choice["names"][:per_architecture]:
            row = stage1["candidates"][name]
            recipes[name] = {key: row[key] for key in ("architecture", "k", "start", "lr")}
    return recipes


def measure(
    model: Any, opts: argparse.Namespace, recipes: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, Evaluation], dict[str, LayerSpecialisation]]:
    """Every candidate spliced on validation and test, and probed: one row each."""
    folders = {name: Path(opts.work_dir) / name for name in recipes}
    heldout = token_sequences(model, zoo.load_corpus("heldout"), 128).to(opts.device)
    half = heldout.shape[0] // 2
    splits = {"validation": heldout[:half], "test": heldout[half:]}
    layers = {name: SAE.load_from_disk(folder, opts.device) for name, folder in folders.items()}
    evaluations = {
        split: evaluate_and_specialise(
            model, layers, tokens, specialisation=False, chunk=opts.eval_chunk, progress=False
        )[0]
        for split, tokens in splits.items()
    }
    probes = layer_specialisation(model, layers)
    rows = {}
    for name, recipe in recipes.items():
        per_split = {
            split: {key: row[key] for row in ev.rows if row["name"] == name for key in ROW_FIELDS}
            for split, ev in evaluations.items()
        }
        rows[name] = {
            **recipe,
            "tokens": opts.tokens,
            "schedule": "warm-up 5 %, constant, linear decay over the last 20 %",
            **trained_balance(folders[name]),
            "n_sequences": {split: int(t.shape[0]) for split, t in splits.items()},
            **per_split,
            **probes[name].row(),
            "dead_fraction_probe_set": probes[name].usage.dead_fraction,
        }
    return rows, evaluations, probes


def trained_balance(folder: Path) -> dict[str, Any]:
    """The balancing a saved layer was trained with, from its own config (a layer kept from an
    earlier run in the work folder keeps its own)."""
    details = json.loads((folder / "cfg.json").read_text())["metadata"].get(
        "training_architecture_details", {}
    )
    rate = details.get("balance_rate", 0.0)
    if not rate:
        return {"balance_rate": 0.0, "balance_mode": None}
    out = {"balance_rate": rate, "balance_mode": details["balance_mode"]}
    if details.get("balance_schedule", "constant") != "constant":
        out["balance_schedule"] = details["balance_schedule"]
    if details["balance_mode"] == "revive_dead":
        out["balance_window"] = details["balance_window"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument(
        "--architectures", nargs="+", default=["mxd", "topk_transcoder", "topk_skip_transcoder"]
    )
    parser.add_argument("--ks", nargs="+", type=int, default=[32])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS))
    parser.add_argument("--balance_rate", type=float, default=1e-2, help="for start 'balanced'")
    parser.add_argument("--balance_mode", default="revive", help="for start 'balanced'")
    parser.add_argument(
        "--balance_window",
        type=int,
        default=DEFAULT_BALANCE_WINDOW,
        help="for --balance_mode revive_dead: steps",
    )
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument(
        "--stage2_from",
        default=None,
        help="a stage-1 result: retrain its best candidates of each architecture at --tokens",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="stage-1 results of disjoint candidates: write their union, selected again, to --out",
    )
    parser.add_argument("--stage2_per_architecture", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max_dead", type=float, default=0.25)
    parser.add_argument("--probe_margin", type=float, default=0.03)
    parser.add_argument("--eval_chunk", type=int, default=3, help="layers per splice pass")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--device", default="cpu", help="where the candidates train and are spliced"
    )
    parser.add_argument("--work_dir", default=None, help="where the candidates are trained")
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    if opts.merge:
        parts = [json.loads(Path(path).read_text()) for path in opts.merge]
        write_result(opts.out, merge_stage1(parts, opts.max_dead, opts.probe_margin))
        return
    if opts.work_dir is None:
        parser.error("--work_dir is required to train")

    model = zoo.load(opts.model, device=opts.device)
    stage1 = None
    if opts.stage2_from:
        stage1 = json.loads(Path(opts.stage2_from).read_text())
        recipes = stage2_recipes(
            stage1, opts.stage2_per_architecture, opts.max_dead, opts.probe_margin
        )
        opts.balance_rate, opts.balance_mode = balance_of(stage1)
        opts.balance_window = balance_window_of(stage1, opts.balance_window)
    else:
        recipes = candidates(opts, gated_mlp=bool(mlp_shape(model)["glu"]))
    train_seconds = train(model, opts, recipes)
    rows, evaluations, probes = measure(model, opts, recipes)
    selected = select(rows, opts.max_dead, opts.probe_margin)
    compared = comparisons(selected, evaluations["test"], probes)
    result = {
        "model": opts.model,
        "layer": zoo.default_layer(opts.model),
        "procedure": __doc__.split("\n\n", 2)[2].strip(),
        "lr_grid": stage1["lr_grid"] if stage1 else opts.lrs,
        "starts": stage1["starts"] if stage1 else opts.starts,
        "tokens": opts.tokens,
        "train_device": opts.device,
        "train_seconds": round(train_seconds, 1),
        "splits": next(iter(rows.values()))["n_sequences"],
        "selected_on": "validation",
        "reported_on": "test",
        "candidates": rows,
        "selected": selected,
        "comparisons": compared,
    }
    if stage1 is not None:
        result["stage1"] = {
            "from": opts.stage2_from,
            "tokens": stage1["tokens"],
            "command": stage1["command"],
            "candidates": stage1["candidates"],
            "selected": stage1["selected"],
            "comparisons": stage1["comparisons"],
        }
    write_result(opts.out, result)
    for key, choice in selected.items():
        row = rows[choice["name"]]
        test = row["test"]
        print(
            f"{key:24s} {choice['name']:40s} test ΔCE {test['delta_ce']:.4f} ± "
            f"{test['delta_ce_se']:.4f}  dead {test['dead_fraction']:.1%}  probe F1 "
            f"{row['probe_f1']:.3f} ± {row['probe_f1_se']:.3f}"
            + ("" if choice["met_floor"] else "  (no candidate met the floor)")
        )
    print(json.dumps(compared, indent=1))


def merge_stage1(parts: list[dict[str, Any]], max_dead: float, probe_margin: float) -> dict:
    """Stage-1 results of disjoint candidates on the same model, layer, budget and splits, as
    one: every row is a function of its layer and the splits alone, so the selection is redone
    on the union. Paired comparisons need the per-sequence losses, so they stay in the parts."""
    first = parts[0]
    for part in parts[1:]:
        for key in ("model", "layer", "tokens", "splits"):
            if part.get(key) != first.get(key):
                raise SystemExit(
                    f"cannot merge: {key} differs ({part.get(key)} vs {first.get(key)})"
                )
        overlap = set(part["candidates"]) & set(first["candidates"])
        if overlap:
            raise SystemExit(f"cannot merge: candidates measured twice: {sorted(overlap)}")
    candidates = {name: row for part in parts for name, row in part["candidates"].items()}
    return {
        **{key: first[key] for key in ("model", "layer", "procedure", "tokens", "splits")},
        "lr_grid": sorted({lr for part in parts for lr in part["lr_grid"]}),
        "starts": [start for start in STARTS if any(start in p["starts"] for p in parts)],
        "train_seconds": sum(part["train_seconds"] for part in parts),
        "selected_on": "validation",
        "reported_on": "test",
        "candidates": candidates,
        "selected": select(candidates, max_dead, probe_margin),
        "comparisons": [],
        "parts": [
            {"command": part["command"], "comparisons": part["comparisons"]} for part in parts
        ],
    }


def balance_of(result: dict[str, Any]) -> tuple[float, str]:
    """The balancing a grid result gave its balanced starts (one rate and mode for them all)."""
    for row in result["candidates"].values():
        if is_balanced(row["start"]):
            return row["balance_rate"], row["balance_mode"]
    return 0.0, "sign"


def balance_window_of(result: dict[str, Any], default: int) -> int:
    """The window a grid result's ``revive_dead`` balancing used (``default`` for other modes)."""
    for row in result["candidates"].values():
        if row.get("balance_mode") == "revive_dead":
            return row["balance_window"]
    return default


if __name__ == "__main__":
    main()
