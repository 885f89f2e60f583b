"""The budget curve at the selected recipes: the MxD and the TopK transcoder that
``benchmarks/grid.py`` selected at one k, each retrained at every budget with the grid's own
schedule (warm-up over the first 5 % of the steps, linear decay over the last 20 %, both scaled to
the budget), spliced on the grid's validation and test halves and on as many sequences from the
start of the training split.

    python benchmarks/budget_curve.py --grid benchmarks/results/grid_tiny-gelu_k32.json --k 32 \\
        --budgets 16000000 500000 1000000 4000000 8000000 2000000 \\
        --work_dir benchmarks/layers/budget/tiny-gelu-k32 --out benchmarks/results/budget_tuned.json

A budget above one pass over the bundled training split is several epochs of it: the layers
then see the training sequences more than once, and ``train_minus_test`` (ΔCE on those seen
sequences minus ΔCE on test, per layer) is the overfit check: a layer that memorises its
training text splices better on it than on unseen text, and the gap grows with the epochs.
The result is written after every budget, so a stopped run keeps the budgets it finished; a
layer already trained in ``--work_dir`` is evaluated again, not retrained, so a second run over
the same folder with more ``--architectures`` trains only the new ones and compares them all on
the same tokens (without the MxD among them, a run trains and measures with no comparison).

``--lr_step_down`` trains, instead of each selected recipe, the same start at the next lower
rate of the grid's ``lr_grid``: a recipe chosen at 2M tokens can be too fast for a run eight
times longer, and ``benchmarks/tuned_frontier.py`` re-selects each architecture at the reported
budget among the selected recipe and this one, on validation under the grid's floor.
``--with_lr_step_down`` trains both in one run, so every comparison among them is paired (a
selected recipe already at the lowest rate is trained alone).

``--also NAME …`` adds grid candidates that were not selected (from stage 2 or stage 1, by
name): what a recipe the procedure left out measures at this budget, paired with the selected
ones (``--also_only``: without them). ``benchmarks/tuned_frontier.py`` pools such a run with
the selected recipes' at the same budget, since every recipe of the grid's space trained at the
reported budget is a candidate there, whichever architecture it strengthens.

``--balance_mode`` (with ``--balance_window``) and ``--balance_schedule`` train the balanced
starts with another balancing than the grid's
(:class:`mxd_saelens.saes.paired.SelectionBalanceFields`; the grid's is its mode at a constant
rate): another diagnostic, recorded as ``balance_as_grid: false`` and refused by
``benchmarks/tuned_frontier.py`` too, since the grid selected its recipes with its own balancing.
A grid run with ``--balance_mode revive_dead`` records its window, and the budget runs from it
take that window unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks import grid
from benchmarks.common import write_result
from benchmarks.evaluate_layers import split_sequences
from mxd_saelens import zoo
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.evaluation.evaluate_and_report import evaluate_and_specialise
from mxd_saelens.saes.paired import BALANCE_MODES, BALANCE_SCHEDULES, DEFAULT_BALANCE_WINDOW

RECIPE_KEYS = ("architecture", "k", "start", "lr")


def selected_recipes(
    grid_result: dict[str, Any], k: int, architectures: list[str]
) -> dict[str, dict[str, Any]]:
    """name → recipe of each architecture's selected candidate at ``k`` in a grid result."""
    out = {}
    for architecture in architectures:
        key = f"{architecture}-k{k}"
        if key not in grid_result["selected"]:
            raise SystemExit(
                f"the grid selected no {key}; it has {sorted(grid_result['selected'])}"
            )
        name = grid_result["selected"][key]["name"]
        out[name] = {field: grid_result["candidates"][name][field] for field in RECIPE_KEYS}
    return out


def stepped_down(
    recipes: dict[str, dict[str, Any]], lr_grid: list[float], skip_lowest: bool = False
) -> dict[str, dict[str, Any]]:
    """Each recipe at the next lower rate of ``lr_grid``, named as the grid names its candidates;
    one already at the lowest rate is refused, or left out with ``skip_lowest``."""
    rates = sorted(lr_grid)
    out = {}
    for recipe in recipes.values():
        lower = [lr for lr in rates if lr < recipe["lr"] * (1 - 1e-9)]
        if not lower and skip_lowest:
            continue
        if not lower:
            raise SystemExit(
                f"{recipe['architecture']} k={recipe['k']} already uses the grid's lowest rate "
                f"{recipe['lr']:g}; --lr_step_down has no lower rate in {rates}"
            )
        stepped = {**recipe, "lr": lower[-1]}
        out[grid.candidate_name(**{key: stepped[key] for key in RECIPE_KEYS})] = stepped
    return out


def named_candidates(grid_result: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """name → recipe of grid candidates picked by name, from stage 2 or else stage 1."""
    pool = {**grid_result.get("stage1", {}).get("candidates", {}), **grid_result["candidates"]}
    unknown = sorted(set(names) - set(pool))
    if unknown:
        raise SystemExit(f"--also: the grid has no candidate {unknown}; it has {sorted(pool)}")
    return {name: {field: pool[name][field] for field in RECIPE_KEYS} for name in names}


def train_split_rows(
    model: Any, folders: dict[str, Path], n_sequences: int, opts: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Each layer spliced on the first ``n_sequences`` sequences of the training split."""
    tokens = split_sequences(model, "train", n_sequences).to(opts.device)
    layers = {name: SAE.load_from_disk(folder, opts.device) for name, folder in folders.items()}
    evaluation, _ = evaluate_and_specialise(
        model, layers, tokens, specialisation=False, chunk=opts.eval_chunk, progress=False
    )
    return {
        row["name"]: {key: row[key] for key in grid.ROW_FIELDS} | {"n_sequences": len(tokens)}
        for row in evaluation.rows
    }


def budget_point(
    model: Any, opts: argparse.Namespace, recipes: dict[str, dict[str, Any]], tokens: int
) -> dict[str, Any]:
    """Every recipe trained at ``tokens``, measured on validation, test and seen training text."""
    point_opts = argparse.Namespace(**{**vars(opts), "tokens": tokens})
    point_opts.work_dir = str(Path(opts.work_dir) / f"{tokens}")
    train_seconds = grid.train(model, point_opts, recipes)
    rows, evaluations, probes = grid.measure(model, point_opts, recipes)
    folders = {name: Path(point_opts.work_dir) / name for name in recipes}
    n_test = next(iter(rows.values()))["n_sequences"]["test"]
    seen = train_split_rows(model, folders, n_test, point_opts)
    for name, row in rows.items():
        row["train"] = seen[name]
        train, test = seen[name], row["test"]
        row["train_minus_test"] = {
            "delta_ce": train["delta_ce"] - test["delta_ce"],
            # disjoint sequences: the two SEs add in quadrature
            "delta_ce_se": math.hypot(train["delta_ce_se"], test["delta_ce_se"]),
        }
    mxds = [n for n, r in recipes.items() if r["architecture"] == "mxd"]
    others = [n for n in recipes if n not in mxds]
    return {
        "tokens": tokens,
        "epochs": tokens / opts.train_split_tokens,
        "train_seconds": round(train_seconds, 1),
        "layers": rows,
        "comparisons": [
            {**evaluations["test"].compare(a, b), **grid.probe_difference(probes[a], probes[b])}
            for a in mxds
            for b in others
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grid", required=True, help="a stage-2 grid result (its selection)")
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--architectures", nargs="+", default=["mxd", "topk_transcoder"])
    parser.add_argument("--budgets", nargs="+", type=int, required=True, help="tokens per layer")
    parser.add_argument(
        "--lr_step_down",
        action="store_true",
        help="train each selected start at the next lower rate of the grid's lr_grid instead",
    )
    parser.add_argument(
        "--with_lr_step_down",
        action="store_true",
        help="train each selected recipe and its start at the next lower rate, in one run",
    )
    parser.add_argument(
        "--also",
        nargs="+",
        default=[],
        metavar="CANDIDATE",
        help="grid candidates (by name) trained beside the selected recipes, for a diagnostic",
    )
    parser.add_argument(
        "--also_only",
        action="store_true",
        help="train the --also candidates alone, without the selected recipes",
    )
    parser.add_argument(
        "--balance_mode",
        choices=BALANCE_MODES,
        help="the balanced starts' balancing mode instead of the grid's, for a diagnostic",
    )
    parser.add_argument(
        "--balance_schedule",
        default="constant",
        choices=BALANCE_SCHEDULES,
        help="the balanced starts' balancing schedule (the grid's: constant), for a diagnostic",
    )
    parser.add_argument(
        "--balance_window",
        type=int,
        default=None,
        help="with --balance_mode revive_dead: the steps a code must be silent before it is "
        "raised (default: the grid's, else 8)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval_chunk", type=int, default=3, help="layers per splice pass")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    grid_result = json.loads(Path(opts.grid).read_text())
    recipes = selected_recipes(grid_result, opts.k, opts.architectures)
    if opts.lr_step_down and opts.with_lr_step_down:
        raise SystemExit("give --lr_step_down or --with_lr_step_down, not both")
    if opts.lr_step_down:
        recipes = stepped_down(recipes, grid_result["lr_grid"])
    elif opts.with_lr_step_down:
        recipes |= stepped_down(recipes, grid_result["lr_grid"], skip_lowest=True)
    also = named_candidates(grid_result, opts.also)
    if set(also) & set(recipes):
        raise SystemExit(f"--also {sorted(set(also) & set(recipes))}: already trained by this run")
    if opts.also_only and not also:
        raise SystemExit("--also_only needs --also")
    recipes = also if opts.also_only else recipes | also
    opts.model = grid_result["model"]
    opts.balance_rate, grid_mode = grid.balance_of(grid_result)
    grid_window = grid.balance_window_of(grid_result, DEFAULT_BALANCE_WINDOW)
    opts.balance_window = opts.balance_window or grid_window
    balance_as_grid = (
        opts.balance_mode in (None, grid_mode)
        and opts.balance_schedule == "constant"
        and (grid_mode != "revive_dead" or opts.balance_window == grid_window)
    )
    opts.balance_mode = opts.balance_mode or grid_mode
    model = zoo.load(opts.model, device=opts.device)
    # one pass over the training split, as the store cuts it into sequences
    opts.train_split_tokens = int(token_sequences(model, zoo.load_corpus("train"), 128).numel())
    points = []
    for tokens in opts.budgets:
        points.append(budget_point(model, opts, recipes, tokens))
        write_result(
            opts.out,
            {
                "model": opts.model,
                "layer": zoo.default_layer(opts.model),
                "k": opts.k,
                "grid": opts.grid,
                "recipes": recipes,
                "lr_step_down": opts.lr_step_down,
                "with_lr_step_down": opts.with_lr_step_down,
                "also": sorted(also),
                "also_only": opts.also_only,
                "balance": {
                    "rate": opts.balance_rate,
                    "mode": opts.balance_mode,
                    "schedule": opts.balance_schedule,
                    **(
                        {"window": opts.balance_window}
                        if opts.balance_mode == "revive_dead"
                        else {}
                    ),
                },
                "balance_as_grid": balance_as_grid,
                "train_split_tokens": opts.train_split_tokens,
                "points": sorted(points, key=lambda p: p["tokens"]),
            },
        )
        _print_point(points[-1])


def _print_point(point: dict[str, Any]) -> None:
    for name, row in point["layers"].items():
        gap = row["train_minus_test"]
        print(
            f"{point['tokens']:>10,} ({point['epochs']:.2f} epochs) {name:36s} test ΔCE "
            f"{row['test']['delta_ce']:.4f} ± {row['test']['delta_ce_se']:.4f}  train − test "
            f"{gap['delta_ce']:+.4f} ± {gap['delta_ce_se']:.4f}  dead "
            f"{row['test']['dead_fraction']:.1%}  probe F1 {row['probe_f1']:.3f}"
        )
    for c in point["comparisons"]:
        print(f"  {c['a']} / {c['b']}: {c['delta_ce_ratio']:.3f} ± {c['delta_ce_ratio_se']:.3f}")


if __name__ == "__main__":
    main()
