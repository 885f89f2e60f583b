"""The tuned frontier (benchmarks/tuned_frontier.py): the grid's selected rows reported on test,
the targets checked against the paired comparisons, a retrained budget taking the grid's place
with every recipe of the grid's space trained at it pooled and selected again, and every
candidate of every stage listed."""

from __future__ import annotations

import copy

import pytest

from benchmarks.budget_curve import named_candidates, selected_recipes, stepped_down
from benchmarks.tuned_frontier import (
    at_largest_budget,
    candidate_rows,
    degraded_layers,
    floor_of,
    grid_section,
    merged_point,
    retrained_section,
    targets,
)

SPLIT = {"delta_ce": 0.0, "delta_ce_se": 0.0001, "kl": 0.01, "kl_se": 0.001, "nmse": 0.1, "l0": 8.0}


def candidate(architecture: str, test_ce: float, dead: float, lr: float = 3e-3) -> dict:
    return {
        "architecture": architecture,
        "k": 8,
        "start": "paper",
        "lr": lr,
        "tokens": 2_000_000,
        "schedule": "warm-up 5 %, constant, linear decay over the last 20 %",
        "balance_rate": 0.0,
        "n_sequences": {"validation": 10, "test": 10},
        "validation": {**SPLIT, "delta_ce": test_ce * 1.1, "dead_fraction": dead},
        "test": {**SPLIT, "delta_ce": test_ce, "dead_fraction": dead},
        "probe_f1": 0.9,
        "probe_f1_se": 0.01,
        "top_share": 0.2,
        "effective_experts": 300.0,
    }


def comparison(a: str, b: str, ratio: float, z: float, probe_diff: float = 0.0) -> dict:
    return {
        "k": 8,
        "a": a,
        "b": b,
        "delta_ce_ratio": ratio,
        "delta_ce_ratio_se": 0.02,
        "delta_ce_diff": -0.01,
        "delta_ce_diff_se": 0.01 / abs(z),
        "delta_ce_z": z,
        "probe_f1_diff": probe_diff,
        "probe_f1_diff_se": 0.02,
    }


FLOOR = {"met_floor": True, "floor": {"max_dead": 0.25, "min_probe_f1": 0.87}}
GRID = {
    "model": "tiny-gelu",
    "layer": 2,
    "tokens": 2_000_000,
    "command": "python benchmarks/grid.py --stage2_from s1.json",
    "lr_grid": [1e-3, 3e-3, 1e-2],
    "starts": ["paper"],
    "selected_on": "validation",
    "reported_on": "test",
    "candidates": {
        "mxd-a": candidate("mxd", 0.003, 0.05),
        "mxd-b": candidate("mxd", 0.004, 0.01, lr=1e-3),
        "tc-a": candidate("topk_transcoder", 0.010, 0.0),
        "skip-a": candidate("topk_skip_transcoder", 0.009, 0.0),
    },
    "selected": {
        "mxd-k8": {"name": "mxd-a", **FLOOR},
        "topk_transcoder-k8": {"name": "tc-a", **FLOOR},
        "topk_skip_transcoder-k8": {"name": "skip-a", **FLOOR},
    },
    "comparisons": [
        comparison("mxd-a", "tc-a", ratio=0.30, z=-12.0),
        comparison("mxd-a", "skip-a", ratio=0.33, z=-2.5),  # not 3 SE apart: missed
    ],
    "stage1": {
        "from": "s1.json",
        "command": "python benchmarks/grid.py --tokens 1000000",
        "candidates": {"mxd-c": candidate("mxd", 0.02, 0.6, lr=1e-2)},
        "selected": {"mxd-k8": {"name": "mxd-c", **FLOOR}},
    },
}


def test_the_frontier_rows_are_the_selected_candidates_on_test():
    section = grid_section(GRID)
    by_name = {row["name"]: row for row in section["rows"]}
    assert set(by_name) == {"mxd-a", "tc-a", "skip-a"}
    row = by_name["mxd-a"]
    assert row["delta_ce"] == 0.003 and row["validation_delta_ce"] == pytest.approx(0.0033)
    assert (row["selected_on"], row["reported_on"], row["tokens"]) == ("validation", "test", 2e6)
    assert row["lr_grid"] == [1e-3, 3e-3, 1e-2] and row["probe_f1_se"] == 0.01


def test_each_target_is_checked_against_its_bound_and_its_noise():
    checks = targets(grid_section(GRID))["tiny-gelu-k8"]
    assert checks["ratio_to_topk_transcoder_at_most_0.4"]["met"]
    assert not checks["ratio_to_topk_skip_transcoder_at_most_0.5"]["met"]  # ratio fine, z not
    assert checks["mxd_dead_fraction_at_most_0.25"] == {"value": 0.05, "met": True}
    assert checks["probe_f1_at_least_topk_minus_0.03"]["met"]
    assert checks["tokens_at_least_16000000"] == {"tokens": 2_000_000, "met": False}
    assert not checks["all_met"]
    worse = copy.deepcopy(GRID)
    worse["comparisons"][0] = comparison("mxd-a", "tc-a", ratio=0.30, z=-12.0, probe_diff=-0.05)
    assert not targets(grid_section(worse))["tiny-gelu-k8"]["probe_f1_at_least_topk_minus_0.03"][
        "met"
    ]


def budget_with(layers: dict, pairs=(("mxd-a", "tc-a"), ("mxd-a", "skip-a"))) -> dict:
    point = {
        "tokens": 16_000_000,
        "layers": layers,
        "comparisons": [
            {k: v for k, v in comparison(a, b, 0.2, -20.0).items() if k != "k"}
            for a, b in pairs
            if a in layers and b in layers
        ],
    }
    small = {**point, "tokens": 500_000, "layers": {}}
    return {"model": "tiny-gelu", "k": 8, "points": [small, point]}


def retrained_at_16m() -> dict:
    """The grid's three selected candidates, as if retrained unchanged at 16M tokens."""
    return {
        name: {**copy.deepcopy(GRID["candidates"][name]), "tokens": 16_000_000}
        for name in ("mxd-a", "tc-a", "skip-a")
    }


def test_a_retrained_budget_replaces_the_grid_rows_with_the_same_recipes():
    retrained = retrained_at_16m()
    section = retrained_section(GRID, merged_point([budget_with(retrained)]))
    assert {row["tokens"] for row in section["rows"]} == {16_000_000}
    assert {row["selected_at_tokens"] for row in section["rows"]} == {2_000_000}
    assert targets(section)["tiny-gelu-k8"]["all_met"]  # the retrained comparisons count
    retrained["tc-a"]["tokens"] = 8_000_000  # the budget is the least-trained layer's
    section = retrained_section(GRID, merged_point([budget_with(retrained)]))
    budget = targets(section)["tiny-gelu-k8"]["tokens_at_least_16000000"]
    assert budget == {"tokens": 8_000_000, "met": False}


def test_a_budget_that_makes_a_selected_recipe_worse_is_flagged_by_its_noise():
    def flagged_in(layers: dict) -> dict:
        return degraded_layers(GRID, retrained_section(GRID, merged_point([budget_with(layers)])))

    assert flagged_in(retrained_at_16m()) == {}  # level: kept
    worse = retrained_at_16m()
    worse["tc-a"]["test"]["delta_ce"] = 0.0105  # +0.0005 at SE 0.0001 each: 3.5 SE
    worse["skip-a"]["test"]["delta_ce"] = 0.0092  # +0.0002: 1.4 SE, within noise
    worse["mxd-a"]["test"]["delta_ce"] = 0.001  # better: never flagged
    flagged = flagged_in(worse)
    assert list(flagged) == ["tc-a"]
    assert flagged["tc-a"]["z"] == pytest.approx(0.0005 / (2**0.5 * 0.0001))
    assert flagged["tc-a"]["delta_ce_at_2000000"] == 0.010


def test_a_retrained_budget_must_cover_every_selected_recipe_and_no_other():
    partial = {name: GRID["candidates"][name] for name in ("mxd-a", "tc-a")}
    with pytest.raises(SystemExit, match="retrain every selected recipe"):
        retrained_section(GRID, merged_point([budget_with(partial)]))
    changed = {name: dict(GRID["candidates"][name]) for name in ("mxd-a", "tc-a", "skip-a")}
    changed["mxd-a"]["lr"] = 1e-2
    with pytest.raises(SystemExit, match="differs from the grid's"):
        retrained_section(GRID, merged_point([budget_with(changed)]))


def test_every_candidate_of_both_stages_is_listed_with_its_selection():
    rows = candidate_rows(GRID, "grid_tiny-gelu_k8.json")
    stages = {(row["name"], row["stage"]) for row in rows}
    assert stages == {("mxd-c", 1), ("mxd-a", 2), ("mxd-b", 2), ("tc-a", 2), ("skip-a", 2)}
    by_name = {row["name"]: row for row in rows}
    assert by_name["mxd-a"]["selected"] and not by_name["mxd-b"]["selected"]
    assert by_name["mxd-c"]["selected"] and by_name["mxd-c"]["source"] == "s1.json"
    assert by_name["mxd-b"]["test_delta_ce"] == 0.004 and by_name["mxd-c"]["init"] == "paper"


def test_the_budget_curve_refuses_an_architecture_the_grid_did_not_select():
    recipes = selected_recipes(GRID, 8, ["mxd", "topk_transcoder"])
    assert set(recipes) == {"mxd-a", "tc-a"} and recipes["mxd-a"]["lr"] == 3e-3
    with pytest.raises(SystemExit, match="selected no mxd-k16"):
        selected_recipes(GRID, 16, ["mxd"])


def stepped_down_at_16m(**changes: dict) -> dict:
    """The selected starts one rate lower (3e-3 → 1e-3), as a second run at 16M tokens."""
    layers = {}
    for name in ("mxd-a", "tc-a", "skip-a"):
        row = {**copy.deepcopy(GRID["candidates"][name]), "tokens": 16_000_000, "lr": 1e-3}
        for split, fields in changes.get(name, {}).items():
            row[split] = {**row[split], **fields} if isinstance(fields, dict) else fields
        layers[f"{name}-lr0.001"] = row
    pairs = (("mxd-a-lr0.001", "tc-a-lr0.001"), ("mxd-a-lr0.001", "skip-a-lr0.001"))
    return budget_with(layers, pairs)


def test_each_architecture_is_selected_again_at_the_retrained_budget_on_validation():
    slower = stepped_down_at_16m(
        **{
            "tc-a": {"validation": {"delta_ce": 0.005}, "test": {"delta_ce": 0.006}},
            "mxd-a": {"validation": {"delta_ce": 0.01, "dead_fraction": 0.3}},  # too many dead
            "skip-a": {"validation": {"delta_ce": 0.02}},  # slower and worse: not chosen
        }
    )
    point = merged_point([budget_with(retrained_at_16m()), slower])
    section = retrained_section(GRID, point)
    by_architecture = {row["architecture"]: row for row in section["rows"]}
    assert by_architecture["topk_transcoder"]["name"] == "tc-a-lr0.001"
    assert by_architecture["mxd"]["name"] == "mxd-a"  # the MxD's 16M run was not beaten...
    assert by_architecture["topk_skip_transcoder"]["name"] == "skip-a"
    assert {row["selected_at_tokens"] for row in section["rows"]} == {16_000_000}
    # ...so it meets the rate-lowered transcoder across two runs: SEs in quadrature
    (across,) = [c for c in section["comparisons"] if c["b"] == "tc-a-lr0.001"]
    assert not across["paired"]
    assert across["delta_ce_diff"] == pytest.approx(0.003 - 0.006)
    assert across["delta_ce_diff_se"] == pytest.approx((2 * 0.0001**2) ** 0.5)
    ratio_se = 0.5 * ((0.0001 / 0.003) ** 2 + (0.0001 / 0.006) ** 2) ** 0.5
    assert across["delta_ce_ratio"] == pytest.approx(0.5)
    assert across["delta_ce_ratio_se"] == pytest.approx(ratio_se)
    (within,) = [c for c in section["comparisons"] if c["b"] == "skip-a"]
    assert within["paired"] and within["delta_ce_ratio"] == 0.2  # the run's own comparison
    checks = targets(section)["tiny-gelu-k8"]
    assert not checks["ratio_to_topk_transcoder_at_most_0.4"]["met"]  # 0.5 > 0.4
    assert checks["tokens_at_least_16000000"]["met"]


def test_a_reselected_row_still_worse_than_at_the_grid_budget_is_flagged():
    slower = stepped_down_at_16m(**{"tc-a": {"validation": {"delta_ce": 0.005}}})
    worse = retrained_at_16m()
    section = retrained_section(GRID, merged_point([budget_with(worse), slower]))
    assert degraded_layers(GRID, section) == {}
    slower = stepped_down_at_16m(
        **{"tc-a": {"validation": {"delta_ce": 0.005}, "test": {"delta_ce": 0.0106}}}
    )
    section = retrained_section(GRID, merged_point([budget_with(worse), slower]))
    flagged = degraded_layers(GRID, section)
    assert list(flagged) == ["tc-a-lr0.001"] and flagged["tc-a-lr0.001"]["compared_with"] == "tc-a"


def test_merging_refuses_mixed_budgets_and_recipes_outside_the_grid_s_space():
    at_16m = budget_with(retrained_at_16m())
    at_8m = copy.deepcopy(stepped_down_at_16m())
    at_8m["points"][-1]["tokens"] = 8_000_000
    with pytest.raises(SystemExit, match="give runs of one budget"):
        merged_point([at_16m, at_8m])
    other = stepped_down_at_16m()
    other["points"][-1]["layers"]["tc-a-lr0.001"]["start"] = "balanced"  # not in GRID's starts
    with pytest.raises(SystemExit, match="not a recipe of the grid's space"):
        retrained_section(GRID, merged_point([at_16m, other]))
    faster = stepped_down_at_16m()
    faster["points"][-1]["layers"]["tc-a-lr0.001"]["lr"] = 3e-2  # not in the lr grid
    with pytest.raises(SystemExit, match="not a recipe of the grid's space"):
        retrained_section(GRID, merged_point([at_16m, faster]))
    unknown = stepped_down_at_16m()
    unknown["points"][-1]["layers"]["tc-a-lr0.001"]["architecture"] = "jumprelu_transcoder"
    with pytest.raises(SystemExit, match="not a recipe of the grid's space"):
        retrained_section(GRID, merged_point([at_16m, unknown]))


def test_a_recipe_trained_twice_counts_once_as_the_later_run_measured_it():
    first = retrained_at_16m()
    first["skip-a"]["validation"]["delta_ce"] = 0.0001  # would win if both counted
    again = retrained_at_16m()
    point = merged_point([budget_with(first), budget_with(again)], ["old.json", "new.json"])
    assert point["layers"]["skip-a"] is again["skip-a"]
    assert set(point["source_of"].values()) == {"new.json"}
    assert [(r["name"], r["source"]) for r in point["repeats"]] == [
        ("mxd-a", "old.json"),
        ("tc-a", "old.json"),
        ("skip-a", "old.json"),
    ]
    assert {c["b"] for c in point["comparisons"]} == {"tc-a", "skip-a"}
    assert len(point["comparisons"]) == 2  # the earlier run's pairs are not counted twice
    section = retrained_section(GRID, point)
    rows = candidate_rows(GRID, "grid.json", (point, section))
    from_old = [row for row in rows if row["source"] == "old.json"]
    assert len(from_old) == 3 and not any(row["selected"] for row in from_old)


def test_a_stronger_baseline_from_another_run_joins_the_pool_and_can_cost_the_mxd_its_target():
    # a cold skip transcoder trained at the budget by another run (an earlier stage 2's pick,
    # a named candidate): better on validation than the selected one, so it is the baseline
    cold_skip = {
        **copy.deepcopy(GRID["candidates"]["skip-a"]),
        "tokens": 16_000_000,
        "lr": 1e-3,
        "validation": {**SPLIT, "delta_ce": 0.004, "dead_fraction": 0.0},
        "test": {**SPLIT, "delta_ce": 0.005, "dead_fraction": 0.0},
    }
    other_run = {**budget_with({"skip-a-lr0.001": cold_skip}), "also": ["skip-a-lr0.001"]}
    latest, _ = at_largest_budget(
        [("sel.json", budget_with(retrained_at_16m())), ("o.json", other_run)]
    )
    point = merged_point([b for _, b in latest], [p for p, _ in latest])
    section = retrained_section(GRID, point)
    by_architecture = {row["architecture"]: row["name"] for row in section["rows"]}
    assert by_architecture["topk_skip_transcoder"] == "skip-a-lr0.001"
    (against,) = [c for c in section["comparisons"] if c["b"] == "skip-a-lr0.001"]
    assert not against["paired"] and against["delta_ce_ratio"] == pytest.approx(0.003 / 0.005)
    assert not targets(section)["tiny-gelu-k8"]["ratio_to_topk_skip_transcoder_at_most_0.5"]["met"]
    assert point["source_of"]["skip-a-lr0.001"] == "o.json"


def test_a_balanced_recipe_must_be_balanced_as_the_grid_balanced_it():
    grid = copy.deepcopy(GRID)
    grid["starts"] = ["paper", "balanced"]
    balanced = {**candidate("topk_transcoder", 0.011, 0.0), "start": "balanced"}
    grid["candidates"]["tc-b"] = {**balanced, "balance_rate": 0.01, "balance_mode": "revive"}
    for row in grid["candidates"].values():
        row.setdefault("balance_mode", None)
    layers = retrained_at_16m()
    layers["tc-b"] = {**copy.deepcopy(grid["candidates"]["tc-b"]), "tokens": 16_000_000}
    assert retrained_section(grid, merged_point([budget_with(layers)]))["rows"]
    layers["tc-b"]["balance_mode"] = "revive_dead"
    with pytest.raises(
        SystemExit, match=r"balanced with revive_dead at 0\.01, the grid with revive"
    ):
        retrained_section(grid, merged_point([budget_with(layers)]))


def test_the_retrained_layers_are_listed_as_a_third_stage_with_the_budget_s_choice():
    slower = stepped_down_at_16m(
        **{
            "tc-a": {"validation": {"delta_ce": 0.005}},
            "mxd-a": {"validation": {"delta_ce": 0.004}},
            "skip-a": {"validation": {"delta_ce": 0.02}},
        }
    )
    point = merged_point([budget_with(retrained_at_16m()), slower], ["a.json", "b.json"])
    section = retrained_section(GRID, point)
    rows = candidate_rows(GRID, "grid.json", (point, section))
    third = {row["name"]: row for row in rows if row["stage"] == 3}
    assert set(third) == set(point["layers"]) and len(rows) == 5 + 6
    chosen = {name for name, row in third.items() if row["selected"]}
    assert chosen == {"mxd-a", "tc-a-lr0.001", "skip-a"}
    assert third["tc-a-lr0.001"]["tokens"] == 16_000_000
    assert third["tc-a"]["source"] == "a.json" and third["tc-a-lr0.001"]["source"] == "b.json"


def test_the_budget_curve_steps_each_selected_start_down_one_rate():
    recipes = stepped_down(selected_recipes(GRID, 8, ["mxd", "topk_transcoder"]), GRID["lr_grid"])
    assert recipes == {
        "mxd-k8-paper-lr0.001": {"architecture": "mxd", "k": 8, "start": "paper", "lr": 1e-3},
        "topk_transcoder-k8-paper-lr0.001": {
            "architecture": "topk_transcoder",
            "k": 8,
            "start": "paper",
            "lr": 1e-3,
        },
    }
    with pytest.raises(SystemExit, match="already uses the grid's lowest rate"):
        stepped_down(recipes, GRID["lr_grid"])


def test_with_the_lowered_rates_a_recipe_at_the_lowest_rate_is_left_out_not_refused():
    lowered = stepped_down(selected_recipes(GRID, 8, ["mxd", "topk_transcoder"]), GRID["lr_grid"])
    mixed = lowered | {
        "mxd-k8-paper-lr0.003": {"architecture": "mxd", "k": 8, "start": "paper", "lr": 3e-3}
    }
    assert stepped_down(mixed, GRID["lr_grid"], skip_lowest=True) == {
        "mxd-k8-paper-lr0.001": {"architecture": "mxd", "k": 8, "start": "paper", "lr": 1e-3}
    }


def test_a_shorter_run_is_superseded_by_the_longer_one_and_only_listed():
    at_16m = budget_with(retrained_at_16m())
    at_8m = copy.deepcopy(budget_with(retrained_at_16m()))
    at_8m["points"][-1]["tokens"] = 8_000_000
    latest, earlier = at_largest_budget([("a16.json", at_16m), ("a8.json", at_8m)])
    assert [path for path, _ in latest] == ["a16.json"]
    assert [path for path, _ in earlier] == ["a8.json"]
    point = merged_point([budget for _, budget in latest], [path for path, _ in latest])
    section = retrained_section(GRID, point)
    rows = candidate_rows(GRID, "grid.json", (point, section), earlier)
    third = [row for row in rows if row["stage"] == 3]
    from_8m = [row for row in third if row["source"] == "a8.json"]
    assert len(from_8m) == 3 and not any(row["selected"] for row in from_8m)
    assert sum(row["selected"] for row in third if row["source"] == "a16.json") == 3


def test_a_named_candidate_is_picked_by_name_from_either_stage():
    also = named_candidates(GRID, ["mxd-c", "mxd-b"])
    assert also == {
        "mxd-c": {"architecture": "mxd", "k": 8, "start": "paper", "lr": 1e-2},
        "mxd-b": {"architecture": "mxd", "k": 8, "start": "paper", "lr": 1e-3},
    }
    with pytest.raises(SystemExit, match=r"no candidate \['mxd-z'\]"):
        named_candidates(GRID, ["mxd-z"])


def test_a_run_balanced_otherwise_than_the_grid_is_kept_off_the_frontier():
    as_grid = {**budget_with(retrained_at_16m()), "balance_as_grid": True}
    assert at_largest_budget([("g.json", as_grid)])[0] == [("g.json", as_grid)]
    balance = {"rate": 1e-2, "mode": "revive_centred", "schedule": "constant"}
    other = {**as_grid, "balance": balance, "balance_as_grid": False}
    # the same recipes by name: only the run's record of its balancing tells them apart
    assert retrained_section(GRID, merged_point([other]))["rows"]
    with pytest.raises(SystemExit, match=r"o.json balanced its layers otherwise than the grid"):
        at_largest_budget([("g.json", as_grid), ("o.json", other)])
    older = {**budget_with(retrained_at_16m()), "balance": {**balance, "schedule": "lr"}}
    with pytest.raises(SystemExit, match=r"s.json balanced its layers otherwise than the grid"):
        at_largest_budget([("s.json", older)])  # written before balance_as_grid was recorded


def test_the_floor_s_margin_is_read_as_recorded_or_recovered_from_an_older_result():
    # older results record only the floor; it was then the best live TopK candidate's probe F1
    # (all 0.9 here) less the margin, so the margin is recovered from it
    assert floor_of(GRID) == (0.25, pytest.approx(0.9 - 0.87))
    recorded = copy.deepcopy(GRID)
    for choice in recorded["selected"].values():
        choice["floor"] = {"max_dead": 0.2, "min_probe_f1": 0.85, "probe_margin": 0.05}
    assert floor_of(recorded) == (0.2, 0.05)


def test_a_retrained_row_records_where_its_own_run_trained_it():
    on_gpu = {**copy.deepcopy(GRID), "train_device": "cuda"}
    assert {row["train_device"] for row in grid_section(on_gpu)["rows"]} == {"cuda"}
    on_cpu = {**budget_with(retrained_at_16m()), "device": "cpu"}
    section = retrained_section(on_gpu, merged_point([on_cpu]))
    assert {row["train_device"] for row in section["rows"]} == {"cpu"}
