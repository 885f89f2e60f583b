"""Specialisation metrics against independent computations."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

import mxd_saelens as mxd
from mxd_saelens import zoo
from mxd_saelens.evaluation.specialisation import (
    _mean_jaccard,
    _random_pairs,
    _same_class_pairs,
    add_specialisation,
    firing_sets,
    layer_specialisation,
    specialisation,
    usage_metrics,
)
from mxd_saelens.reading.probing import corpus_labelled_set


def _fired(n_tokens: int = 300, n_codes: int = 50, k: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # a skewed usage: low-numbered codes fire far more often
    weights = torch.linspace(3.0, 0.1, n_codes)
    picks = torch.multinomial(weights.expand(n_tokens, -1), k, generator=generator)
    fired = torch.zeros(n_tokens, n_codes, dtype=torch.bool)
    fired.scatter_(1, picks, True)
    return fired


def test_usage_metrics_match_counting_by_hand() -> None:
    fired = _fired()
    counts = Counter(int(c) for row in fired for c in row.nonzero()[:, 0])
    total = sum(counts.values())
    top = sorted(counts.values(), reverse=True)[:10]
    entropy = -sum(n / total * math.log(n / total) for n in counts.values())
    top_share, effective, dead = usage_metrics(fired, top=10)
    assert top_share == pytest.approx(sum(top) / total)
    assert effective == pytest.approx(math.exp(entropy))
    assert dead == pytest.approx((50 - len(counts)) / 50)


def test_uniform_and_collapsed_usage_are_the_extremes() -> None:
    uniform = torch.eye(64, dtype=torch.bool).repeat(10, 1)  # each code fires equally
    assert usage_metrics(uniform, top=32) == pytest.approx((0.5, 64.0, 0.0))
    collapsed = torch.zeros(100, 64, dtype=torch.bool)
    collapsed[:, :4] = True  # four always-on codes
    share, effective, dead = usage_metrics(collapsed, top=32)
    assert (share, effective, dead) == pytest.approx((1.0, 4.0, 60 / 64))


def test_jaccard_matches_python_sets() -> None:
    fired = _fired(seed=1)
    pairs = _random_pairs(len(fired), 200, random.Random(0))
    sets = [set(row.nonzero()[:, 0].tolist()) for row in fired]
    by_hand = [len(sets[a] & sets[b]) / len(sets[a] | sets[b]) for a, b in pairs.tolist()]
    assert _mean_jaccard(fired, pairs) == pytest.approx(sum(by_hand) / len(by_hand))
    assert all(a != b for a, b in pairs.tolist())


def test_same_class_pairs_join_different_texts_of_one_label() -> None:
    owner = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    labels = ["en", "pl", "en", "pl"]
    pairs = _same_class_pairs(owner, labels, 100, random.Random(0))
    for a, b in pairs.tolist():
        ta, tb = int(owner[a]), int(owner[b])
        assert ta != tb and labels[ta] == labels[tb]
    with pytest.raises(ValueError, match="two texts"):
        _same_class_pairs(torch.tensor([0, 1]), ["en", "pl"], 5, random.Random(0))


@torch.no_grad()
def test_firing_sets_are_the_layers_codes_on_each_texts_tokens() -> None:
    model = zoo.load("tiny-gelu")
    data = corpus_labelled_set("natural_language", splits=("heldout",), per_class=2)
    layer = mxd.MxD(
        mxd.MxDConfig(d_in=128, n_experts=64, k=4, d_hidden=512, activation="gelu_tanh")
    )
    layer.cfg.metadata.hook_name = "blocks.2.ln2.hook_normalized"
    fired, owner = firing_sets(model, layer, data, context_size=16)
    assert fired.shape == (16 * len(data), 64)
    assert (fired.sum(-1) == 4).all()  # k codes per token, BOS and padding left out
    # a prose text (read from its start), run on its own, gives the same firing pattern
    prose = data.is_code.index(False)
    alone = model.to_tokens(data.texts[prose], prepend_bos=True)[:, :17]
    _, cache = model.run_with_cache(alone, names_filter=["blocks.2.ln2.hook_normalized"])
    own = layer.encode(cache["blocks.2.ln2.hook_normalized"][0, 1:]) != 0
    assert torch.equal(fired[owner == prose], own)
    result = specialisation(model, layer, data, context_size=16, n_pairs=300)
    assert result.n_tokens == len(fired) and 0 <= result.jaccard_random <= 1


def test_layer_specialisation_rows_carry_the_probe_and_the_usage() -> None:
    """The row fields are the probe's and the usage metrics' own numbers, added to the named
    row only, and the report prints them."""
    from mxd_saelens.evaluation.report import format_specialisation
    from mxd_saelens.reading.probing import LayerCodes, sparse_probe

    model = zoo.load("tiny-gelu")
    layer = mxd.MxD(
        mxd.MxDConfig(d_in=128, n_experts=64, k=4, d_hidden=512, activation="gelu_tanh")
    )
    layer.cfg.metadata.hook_name = "blocks.2.ln2.hook_normalized"
    found = layer_specialisation(model, {"random": layer}, per_class=10)
    probe = sparse_probe(
        model, LayerCodes(layer), corpus_labelled_set("natural_language", per_class=10)
    )
    usage = specialisation(
        model, layer, corpus_labelled_set("natural_language", splits=("heldout",))
    )
    rows = add_specialisation([{"name": "random"}, {"name": "other"}], found)
    assert rows[0]["probe_f1"] == pytest.approx(probe.mean_f1)
    assert (
        rows[0]["probe_f1_se"] == pytest.approx(probe.mean_f1_se()) and rows[0]["probe_f1_se"] > 0
    )
    for key in ("top_share", "effective_experts", "jaccard_random", "jaccard_same_class"):
        assert rows[0][key] == pytest.approx(getattr(usage, key)), key
    assert rows[1] == {"name": "other"}
    table = format_specialisation(rows)
    assert f"{probe.mean_f1:.3f} ± " in table and "top-32 share" in table
