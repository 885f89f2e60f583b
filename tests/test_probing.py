"""Sparse probing: planted signals are found, shuffled labels score at chance, windows and
token positions are the ones the protocol names, and the labelled-set loaders read local
stand-ins of the hub sets."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import datasets.config
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from mxd_saelens.cli import research as research_cli
from mxd_saelens.reading.probing import (
    HUB_SETS,
    LabelledTexts,
    LayerCodes,
    NeuronCodes,
    ProbeResult,
    compare_probes,
    corpus_labelled_set,
    pooled_features,
    probe_features,
    sparse_probe,
    text_window,
    token_features,
)
from tests.conftest import synthetic_texts
from tests.test_steering import train_small_layer

torch.set_num_threads(1)

LAYER = 1


def planted(n: int, labels: np.ndarray, target: str, code: int, seed: int = 0) -> np.ndarray:
    """Gaussian codes with one code that fires exactly on ``target``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 50))
    x[:, code] = (labels == target) * (1.0 + rng.random(n))
    return x


def test_planted_code_is_found_and_shuffled_labels_score_chance():
    rng = np.random.default_rng(1)
    labels = rng.choice(np.array(["a", "b", "c"]), size=600, p=[0.5, 0.3, 0.2])
    x = planted(600, labels, "b", code=17)
    scores = {s.label: s for s in probe_features(x, labels, n_candidates=20)}
    assert scores["b"].f1 == pytest.approx(1.0) and scores["b"].code == 17
    assert max(scores["a"].f1, scores["c"].f1) < 0.9

    shuffled = labels.copy()
    rng.shuffle(shuffled)
    for score in probe_features(x, shuffled, n_candidates=20):
        # no better than answering the class for every sample
        assert score.f1 < score.chance_f1 + 0.1, score


def test_rare_class_is_weighted_up():
    """With 4% positives an unweighted 1-D probe can answer "no" everywhere; the
    class-balanced one must still find the planted code."""
    labels = np.array(["rare"] * 40 + ["common"] * 960)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 30))
    x[:, 4] += (labels == "rare") * 5.0
    score = next(s for s in probe_features(x, labels, n_candidates=10) if s.label == "rare")
    assert score.code == 4 and score.f1 > 0.7
    assert score.n_test == 8 and score.n_train == 32
    assert score.chance_f1 == pytest.approx(2 * 0.04 / 1.04)


def test_split_is_stratified_and_seeded():
    labels = np.array(["x"] * 50 + ["y"] * 50)
    x = planted(100, labels, "x", code=3)
    first = probe_features(x, labels, n_candidates=5)
    assert first == probe_features(x, labels, n_candidates=5)
    assert [s.n_test for s in first] == [10, 10]


def noisy_planted(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes; code 0 carries the label under Gaussian noise, so the probe errs."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array(["a", "b"]), size=n)
    x = rng.normal(size=(n, 5))
    x[:, 0] = (labels == "a") + noise * rng.normal(size=n)
    return x, labels


def test_mean_f1_standard_error_is_the_bootstrap_of_sklearns_f1():
    x, labels = noisy_planted(500, noise=0.6)
    result = ProbeResult("planted", "noisy", probe_features(x, labels, n_candidates=3), 500)
    truth = [np.array(s.test_truth) for s in result.scores]
    predicted = [np.array(s.test_predicted) for s in result.scores]
    # the kept outcomes are the reported F1s
    for score, t, p in zip(result.scores, truth, predicted, strict=True):
        assert f1_score(t, p) == pytest.approx(score.f1)
    draws = np.random.default_rng(0).integers(0, len(truth[0]), size=(1000, len(truth[0])))
    by_hand = [
        np.mean([f1_score(t[d], p[d]) for t, p in zip(truth, predicted, strict=True)])
        for d in draws
    ]
    assert result.mean_f1_se() == pytest.approx(np.std(by_hand, ddof=1), rel=1e-9)
    # four times the test samples: about half the error
    x4, labels4 = noisy_planted(2000, noise=0.6)
    bigger = ProbeResult("planted", "noisy", probe_features(x4, labels4, n_candidates=3), 2000)
    assert 1.5 < result.mean_f1_se() / bigger.mean_f1_se() < 2.7


def test_paired_probe_comparison():
    x, labels = noisy_planted(500, noise=0.6)
    a = ProbeResult("a", "noisy", probe_features(x, labels, n_candidates=3), 500)
    same = compare_probes(a, a)
    assert same == {"difference": 0.0, "se": 0.0}
    nudged = x.copy()
    nudged[:, 0] += 0.2 * np.random.default_rng(5).normal(size=500)
    b = ProbeResult("b", "noisy", probe_features(nudged, labels, n_candidates=3), 500)
    paired = compare_probes(a, b)
    assert paired["difference"] == pytest.approx(a.mean_f1 - b.mean_f1)
    # the two share most of their errors, so pairing removes most of the split's noise
    assert 0 < paired["se"] < np.hypot(a.mean_f1_se(), b.mean_f1_se())
    x2, labels2 = noisy_planted(400, noise=0.6)
    other = ProbeResult("c", "noisy", probe_features(x2, labels2, n_candidates=3), 400)
    with pytest.raises(ValueError, match="different test samples"):
        compare_probes(a, other)
    assert "test_truth" not in json.dumps(a.to_dict())
    assert a.to_dict()["mean_f1_se"] == pytest.approx(a.mean_f1_se())


def test_bad_labels_are_rejected():
    x = np.zeros((20, 4))
    with pytest.raises(ValueError, match="at least two classes"):
        probe_features(x, ["only"] * 20)
    with pytest.raises(ValueError, match="fewer than 5 samples"):
        probe_features(x, ["a"] * 17 + ["b"] * 3)
    with pytest.raises(ValueError, match="features must be"):
        probe_features(np.zeros((19, 4)), ["a", "b"] * 10)


@dataclass
class PlantedWordCodes:
    """The MLP's neurons plus one planted code that is 1 exactly on one token."""

    token_id: int
    neurons: NeuronCodes
    name: str = "planted"

    @property
    def n_codes(self) -> int:
        return self.neurons.n_codes + 1

    def codes(self, model, tokens: torch.Tensor) -> torch.Tensor:
        planted = (tokens == self.token_id).float()[..., None]
        return torch.cat([self.neurons.codes(model, tokens), planted], dim=-1)


def word_dataset(n: int = 80) -> LabelledTexts:
    """Half the texts have "cat" as their third word, half never mention a cat."""
    texts, labels = [], []
    for i, text in enumerate(synthetic_texts(n, seed=4)):
        words = [w for w in text.split() if w != "cat"]
        if i % 2:
            words.insert(2, "cat")
        texts.append(" ".join(words))
        labels.append("cat" if i % 2 else "other")
    return LabelledTexts(texts, labels, name="cats")


def test_probing_pipeline_recovers_a_planted_code(tiny_model):
    source = PlantedWordCodes(
        tiny_model.tokenizer.convert_tokens_to_ids("cat"), NeuronCodes.of(tiny_model, LAYER)
    )
    data = word_dataset()
    result = sparse_probe(tiny_model, source, data, context_size=16, n_candidates=10)
    assert result.n_samples == len(data)
    assert {s.label: (s.f1, s.code) for s in result.scores} == {
        "cat": (1.0, source.n_codes - 1),
        "other": (1.0, source.n_codes - 1),
    }
    shuffled = LabelledTexts(data.texts, random.Random(1).sample(data.labels, len(data)))
    chance = sparse_probe(tiny_model, source, shuffled, context_size=16, n_candidates=10)
    assert all(s.f1 < s.chance_f1 + 0.15 for s in chance.scores), chance.scores
    # token level: the planted code at the third token
    at_third = sparse_probe(tiny_model, source, data, position=2, n_candidates=10)
    assert [(s.f1, s.code) for s in at_third.scores] == [(1.0, source.n_codes - 1)] * 2
    # a named token: only the texts that have it are kept
    features, kept = token_features(tiny_model, source, data, "cat", drop_missing=True)
    assert set(kept.labels) == {"cat"} and bool((features[:, -1] == 1).all())


@pytest.fixture(scope="module")
def mxd_layer(tiny_model, text_dataset, tmp_path_factory):
    return train_small_layer(
        tiny_model, text_dataset, "mxd", tmp_path_factory.mktemp("probe") / "mxd"
    )


def test_pooled_features_are_the_mean_codes_of_the_window(tiny_model, mxd_layer):
    texts = synthetic_texts(6, seed=9)
    data = LabelledTexts(texts, ["a", "b"] * 3, is_code=[False, True] * 3)
    source = LayerCodes(mxd_layer)
    features, kept = pooled_features(tiny_model, source, data, context_size=12)
    assert features.shape == (6, 128) and kept.texts == texts
    bos = tiny_model.tokenizer.bos_token_id
    for i, text in enumerate(texts):
        ids = tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]
        window = ids[-12:] if data.is_code[i] else ids[:12]
        tokens = torch.tensor([[bos, *window]])
        _, cache = tiny_model.run_with_cache(tokens)
        expected = mxd_layer.encode(cache[f"blocks.{LAYER}.ln2.hook_normalized"])[0, 1:].mean(0)
        torch.testing.assert_close(features[i], expected, atol=1e-5, rtol=1e-5)


def test_token_features_are_the_codes_at_the_position(tiny_model):
    data = word_dataset(10)
    source = NeuronCodes.of(tiny_model, LAYER)
    features, _ = token_features(tiny_model, source, data, position=3)
    bos = tiny_model.tokenizer.bos_token_id
    ids = tiny_model.tokenizer(data.texts[0], add_special_tokens=False)["input_ids"]
    _, cache = tiny_model.run_with_cache(torch.tensor([[bos, *ids[:20]]]))
    torch.testing.assert_close(features[0], cache[f"blocks.{LAYER}.mlp.hook_post"][0, 4])


def test_window_of_a_long_text_matches_full_tokenisation(tiny_model):
    text = " ".join(synthetic_texts(200, seed=3))
    ids = tiny_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    for from_end in (False, True):
        expected = ids[-40:] if from_end else ids[:40]
        assert text_window(tiny_model.tokenizer, text, 40, from_end) == expected


def test_short_text_long_context_and_missing_position(tiny_model):
    data = LabelledTexts(["the cat runs", *synthetic_texts(9, seed=5)], ["a", "b"] * 5)
    source = NeuronCodes.of(tiny_model, LAYER)
    with pytest.raises(ValueError, match="shorter than the context of 16 tokens"):
        pooled_features(tiny_model, source, data, context_size=16)
    features, kept = pooled_features(tiny_model, source, data, context_size=16, drop_short=True)
    assert len(kept) == features.shape[0] == 9
    with pytest.raises(ValueError, match="does not fit"):
        pooled_features(tiny_model, source, data, context_size=64)
    with pytest.raises(ValueError, match="no position 'dog'"):
        token_features(tiny_model, source, LabelledTexts(["the cat"] * 2, ["a", "b"]), "dog")
    with pytest.raises(ValueError, match="at least two classes"):
        sparse_probe(tiny_model, source, LabelledTexts(data.texts, ["a"] * 10))


def test_layer_codes_need_a_hook_name(mxd_layer):
    source = LayerCodes(mxd_layer)
    assert source.hook_name == f"blocks.{LAYER}.ln2.hook_normalized"
    assert source.n_codes == 128


def test_corpus_labels():
    langs = corpus_labelled_set("natural_language", splits=["heldout"])
    assert "none" not in langs.classes and {"en", "fr", "de"} <= set(langs.classes)
    assert not any(langs.is_code)
    code = corpus_labelled_set("programming_language", splits=["heldout"], per_class=5)
    assert code.classes == ["c", "python"] and all(code.is_code) and len(code) == 10
    with pytest.raises(ValueError, match="unknown corpus label"):
        corpus_labelled_set("source_kind")


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_hub_sets_read_local_stand_ins(tmp_path):
    long_code = "x = 1\n" * 100
    stand_ins = {
        "ag_news": [{"text": f"story {i}", "label": i % 4} for i in range(40)],
        "github_code": [
            {"code": long_code, "language": lang, "repo_name": "r", "path": "p"}
            for lang in ["C", "Python", "HTML", "Java", "PHP", "Rust"] * 6
        ],
        "amazon_sentiment": [
            {"text": f"review {i}", "rating": [1.0, 5.0, 3.0][i % 3], "category": "x"}
            for i in range(30)
        ],
        "europarl": [{"translation": {"en": f"hello {i}", "fr": f"bonjour {i}"}} for i in range(10)]
        + [
            {"translation": {"de": f"hallo {i}", "es": f"hola {i}", "nl": "hoi"}} for i in range(10)
        ],
        "bias_in_bios": [
            {"hard_text": f"bio {i}", "profession": i % 28, "gender": i % 2} for i in range(280)
        ],
    }
    expected = {
        "ag_news": ["Business", "Sci/Tech", "Sports", "World"],
        "github_code": ["C", "HTML", "Java", "PHP", "Python"],
        "amazon_sentiment": ["negative", "positive"],
        "europarl": ["de", "en", "es", "fr", "nl"],
        "bias_in_bios": ["attorney", "journalist", "nurse", "photographer", "professor"],
    }
    for name, rows in stand_ins.items():
        data = HUB_SETS[name](write_jsonl(tmp_path / f"{name}.jsonl", rows), per_class=5)
        assert data.classes == expected[name], name
        assert all(data.labels.count(c) == 5 for c in data.classes), name
        assert all(data.is_code) == (name == "github_code")


def test_hub_sets_ask_the_hub_by_id(monkeypatch):
    # offline mode: the real hub code runs and fails at once, naming the set it asked for
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ids = {
        "ag_news": "fancyzhx/ag_news",
        "github_code": "codeparrot/github-code",
        "amazon_sentiment": "canrager/amazon_reviews_mcauley_1and5",
        "europarl": "Helsinki-NLP/europarl",
        "bias_in_bios": "LabHC/bias_in_bios",
    }
    for name, hub_id in ids.items():
        with pytest.raises(ConnectionError, match=hub_id):
            HUB_SETS[name]()


def test_probe_command(tmp_path, capsys):
    from mxd_saelens import zoo

    model = zoo.load("tiny-gelu")
    folder = tmp_path / "mxd"
    train_small_layer(
        model, zoo.load_corpus("heldout"), "mxd", folder, layer=zoo.default_layer(), steps=5
    )
    out = tmp_path / "probe.json"
    research_cli.probe(
        [
            str(folder),
            "--base_mlp",
            "--labels",
            "programming_language",
            "--per_class",
            "10",
            "--n_candidates",
            "5",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "base MLP neurons" in printed and "python" in printed
    results = json.loads(out.read_text())
    assert [r["source"] for r in results] == [str(folder), "base MLP neurons"]
    assert all({s["label"] for s in r["scores"]} == {"c", "python"} for r in results)
