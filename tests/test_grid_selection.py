"""The grid's selection rule (benchmarks/grid.py): the most faithful on validation among the
candidates that meet the readability floor, the same rule for every architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

import mxd_saelens as mxd
from benchmarks.grid import (
    balance_window_of,
    candidates,
    merge_stage1,
    recipe_fields,
    select,
    stage2_recipes,
    trained_balance,
)


def row(architecture: str, delta_ce: float, dead: float, probe_f1: float, k: int = 32) -> dict:
    return {
        "architecture": architecture,
        "k": k,
        "start": "paper",
        "lr": 1e-2,
        "validation": {"delta_ce": delta_ce, "dead_fraction": dead},
        "probe_f1": probe_f1,
    }


ROWS = {
    "mxd-exact-but-dead": row("mxd", 0.0001, 0.65, 0.78),  # the dense MLP again, behind a gate
    "mxd-good": row("mxd", 0.0030, 0.10, 0.91),
    "mxd-worse": row("mxd", 0.0050, 0.05, 0.93),
    "tc-dead": row("topk_transcoder", 0.0040, 0.40, 0.93),
    "tc-alive": row("topk_transcoder", 0.0070, 0.05, 0.92),
    "skip-all-dead": row("topk_skip_transcoder", 0.0060, 0.50, 0.92),
}
FLOOR = {"max_dead": 0.25, "min_probe_f1": 0.92 - 0.03, "probe_margin": 0.03}


def test_the_floor_is_applied_before_faithfulness():
    selected = select(ROWS, max_dead=0.25, probe_margin=0.03)
    assert selected["mxd-k32"]["name"] == "mxd-good"  # not the exact but collapsed one
    assert selected["topk_transcoder-k32"]["name"] == "tc-alive"
    # the floor is relative to the TopK transcoder the row compares against (the live one,
    # 0.92; the dead one's 0.93 does not count), the same for everyone
    assert selected["mxd-k32"]["floor"] == FLOOR


def test_an_architecture_with_no_readable_candidate_is_flagged_not_dropped():
    selected = select(ROWS, max_dead=0.25, probe_margin=0.03)
    assert selected["topk_skip_transcoder-k32"] == {
        "name": "skip-all-dead",
        "met_floor": False,
        "floor": FLOOR,
    }
    assert selected["mxd-k32"]["met_floor"] and selected["topk_transcoder-k32"]["met_floor"]


def test_with_no_readable_candidate_the_one_nearest_the_floor_is_taken_not_the_most_faithful():
    # the floor is 0.89; no MxD meets it. The most faithful is collapsed (the dense MLP behind a
    # gate), the next most faithful is live but reads worse than the live one nearest the floor
    rows = {
        "mxd-exact-but-dead": row("mxd", 0.0001, 0.94, 0.48),
        "mxd-live-faithful": row("mxd", 0.0070, 0.01, 0.86),
        "mxd-live-nearest": row("mxd", 0.0280, 0.02, 0.88),
        "mxd-half-dead": row("mxd", 0.0040, 0.40, 0.89),
        "tc-alive": row("topk_transcoder", 0.0070, 0.05, 0.92),
    }
    selected = select(rows, max_dead=0.25, probe_margin=0.03)
    assert selected["mxd-k32"]["name"] == "mxd-live-nearest"
    assert not selected["mxd-k32"]["met_floor"]
    # stage 2 retrains the two nearest, in that order: every live one before any over max_dead
    recipes = stage2_recipes({"candidates": rows}, 2, max_dead=0.25, probe_margin=0.03)
    mxds = [n for n in recipes if recipes[n]["architecture"] == "mxd"]
    assert mxds == ["mxd-live-nearest", "mxd-live-faithful"]
    # with every candidate over max_dead, the fewest dead, whatever its probe or ΔCE
    dead = {n: r for n, r in rows.items() if r["validation"]["dead_fraction"] > 0.25}
    dead["tc-alive"] = rows["tc-alive"]
    assert select(dead, 0.25, 0.03)["mxd-k32"]["name"] == "mxd-half-dead"


def test_stage2_retrains_the_best_readable_candidates_in_order():
    stage1 = {"candidates": ROWS}
    recipes = stage2_recipes(stage1, per_architecture=2, max_dead=0.25, probe_margin=0.03)
    assert [n for n in recipes if recipes[n]["architecture"] == "mxd"] == ["mxd-good", "mxd-worse"]
    assert [n for n in recipes if recipes[n]["architecture"] == "topk_transcoder"] == ["tc-alive"]


def test_the_floor_is_the_baselines_readability_not_the_luckiest_candidates():
    # an MxD that probes above every transcoder must not raise the bar for the transcoders
    rows = {**ROWS, "mxd-lucky": row("mxd", 0.0090, 0.0, 0.99)}
    selected = select(rows, max_dead=0.25, probe_margin=0.03)
    assert selected["mxd-k32"]["floor"]["min_probe_f1"] == pytest.approx(0.92 - 0.03)
    assert selected["topk_transcoder-k32"]["name"] == "tc-alive"
    assert selected["mxd-k32"]["name"] == "mxd-good"
    # with no TopK transcoder in the grid, every candidate's best sets it
    no_reference = {n: r for n, r in ROWS.items() if r["architecture"] != "topk_transcoder"}
    floor = select(no_reference, 0.25, 0.03)["mxd-k32"]["floor"]["min_probe_f1"]
    assert floor == pytest.approx(0.93 - 0.03)


def test_the_floor_follows_the_selected_transcoder_not_its_best_probing_candidate():
    # the probe target compares the MxD with the TopK transcoder the row reports: the most
    # faithful live one (0.90), not the best probing of its candidates (0.95), which would set a
    # floor above the target and exclude an MxD that meets it
    rows = {
        "tc-faithful": row("topk_transcoder", 0.0050, 0.05, 0.90),
        "tc-readable": row("topk_transcoder", 0.0080, 0.05, 0.95),
        "tc-dead-and-faithful": row("topk_transcoder", 0.0010, 0.60, 0.80),
        "mxd-meets-the-target": row("mxd", 0.0020, 0.00, 0.875),
        "mxd-reads-like-the-best": row("mxd", 0.0040, 0.00, 0.93),
    }
    selected = select(rows, max_dead=0.25, probe_margin=0.03)
    assert selected["topk_transcoder-k32"]["name"] == "tc-faithful"
    assert selected["mxd-k32"]["floor"]["min_probe_f1"] == pytest.approx(0.90 - 0.03)
    assert selected["mxd-k32"]["name"] == "mxd-meets-the-target"
    # with no live TopK transcoder, the fewest dead sets the floor
    dead = {n: r for n, r in rows.items() if n != "tc-faithful" and n != "tc-readable"}
    assert select(dead, 0.25, 0.03)["mxd-k32"]["floor"]["min_probe_f1"] == pytest.approx(0.77)


def test_every_candidate_states_its_balancing():
    # an architecture's default (the MxD revives by default) must not decide a candidate
    cold = recipe_fields({"k": 32, "lr": 1e-2, "start": "paper"}, 100, 0.01, "revive")
    balanced = recipe_fields({"k": 32, "lr": 1e-2, "start": "balanced"}, 100, 0.01, "revive")
    assert cold["balance_rate"] == 0.0 and balanced["balance_rate"] == 0.01
    assert cold["lr_warm_up_steps"] == 5 and cold["lr_decay_steps"] == 20


@pytest.mark.parametrize(
    ("balance", "expected"),
    [
        ({"balance_rate": 0.0}, {"balance_rate": 0.0, "balance_mode": None}),
        (
            {"balance_rate": 0.01, "balance_mode": "revive_centred"},
            {"balance_rate": 0.01, "balance_mode": "revive_centred"},
        ),
        (
            {"balance_rate": 0.02, "balance_mode": "revive", "balance_schedule": "lr"},
            {"balance_rate": 0.02, "balance_mode": "revive", "balance_schedule": "lr"},
        ),
        (
            {"balance_rate": 0.01, "balance_mode": "revive_dead", "balance_window": 5},
            {"balance_rate": 0.01, "balance_mode": "revive_dead", "balance_window": 5},
        ),
    ],
)
def test_a_saved_layer_states_the_balancing_it_was_trained_with(
    tmp_path: Path, balance: dict, expected: dict
):
    # read from the layer's own config: a layer kept from an earlier run keeps its balancing
    cfg = mxd.TopKTranscoderTrainingSAEConfig(d_in=6, d_sae=12, k=2, **balance)
    mxd.TopKTranscoderTrainingSAE(cfg).save_inference_model(tmp_path / "layer")
    assert trained_balance(tmp_path / "layer") == expected


def test_stage2_keeps_stage1s_revive_dead_window():
    stage1 = {
        "candidates": {
            "a": {"start": "paper", "balance_mode": None},
            "b": {"start": "balanced", "balance_mode": "revive_dead", "balance_window": 5},
        }
    }
    assert balance_window_of(stage1, 8) == 5
    assert balance_window_of({"candidates": {"a": stage1["candidates"]["a"]}}, 8) == 8
    fields = recipe_fields(
        {"k": 8, "lr": 1e-3, "start": "balanced"}, 100, 0.01, "revive_dead", "constant", 5
    )
    assert (fields["balance_mode"], fields["balance_window"]) == ("revive_dead", 5)


def test_the_encoder_copy_can_be_balanced_too():
    both = recipe_fields(
        {"k": 32, "lr": 3e-3, "start": "mlp_encoder_balanced"}, 100, 0.01, "revive"
    )
    assert both["init"] == "mlp_encoder" and both["balance_rate"] == 0.01


def test_merged_stage1_parts_are_selected_again_on_their_union():
    base = {"model": "m", "layer": 2, "tokens": 10, "splits": {"validation": 4, "test": 4}}
    old = {
        **base,
        "procedure": "p",
        "lr_grid": [1e-2],
        "starts": ["paper"],
        "train_seconds": 1.0,
        "command": "a",
        "comparisons": [],
        "candidates": {"mxd-good": ROWS["mxd-good"]},
    }
    better = row("mxd", 0.0010, 0.02, 0.92)
    new = {
        **old,
        "starts": ["mlp_encoder_balanced"],
        "command": "b",
        "candidates": {"mxd-better": better},
    }
    merged = merge_stage1([old, new], max_dead=0.25, probe_margin=0.03)
    assert merged["selected"]["mxd-k32"]["name"] == "mxd-better"
    assert merged["starts"] == ["paper", "mlp_encoder_balanced"]
    assert [part["command"] for part in merged["parts"]] == ["a", "b"]
    with pytest.raises(SystemExit, match="splits differs"):
        merge_stage1([old, {**new, "splits": {"validation": 5, "test": 3}}], 0.25, 0.03)


def test_a_gated_mlp_offers_the_encoder_copy_to_the_mxd_alone():
    from argparse import Namespace

    opts = Namespace(
        architectures=["mxd", "topk_transcoder"], ks=[64], lrs=[3e-3],
        starts=["paper", "mlp_encoder", "mlp_encoder_balanced"],
    )  # fmt: skip
    gated = candidates(opts, gated_mlp=True)
    assert sorted(gated) == [
        "mxd-k64-mlp_encoder-lr0.003",
        "mxd-k64-mlp_encoder_balanced-lr0.003",
        "mxd-k64-paper-lr0.003",
        "topk_transcoder-k64-paper-lr0.003",
    ]
    assert len(candidates(opts, gated_mlp=False)) == 6
