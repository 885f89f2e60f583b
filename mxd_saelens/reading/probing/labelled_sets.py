"""Labelled sets: the bundled corpus (:func:`corpus_labelled_set`) and the paper's five Hugging
Face sets (:data:`HUB_SETS`), each of which also reads a local file with the hub set's columns."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import load_dataset

from mxd_saelens.data.sources import load_dataset_source


@dataclass
class LabelledTexts:
    """Texts with one class label each; ``is_code`` marks source files (pooled from their end)."""

    texts: list[str]
    labels: list[str]
    is_code: list[bool] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        self.is_code = self.is_code or [False] * len(self.texts)
        if not len(self.texts) == len(self.labels) == len(self.is_code):
            raise ValueError(
                f"texts, labels and is_code differ in length: {len(self.texts)}, "
                f"{len(self.labels)}, {len(self.is_code)}."
            )
        self.labels = [str(label) for label in self.labels]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def subset(self, indices: Sequence[int]) -> LabelledTexts:
        return LabelledTexts(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            [self.is_code[i] for i in indices],
            self.name,
        )

    def balanced(self, per_class: int, seed: int = 42) -> LabelledTexts:
        """At most ``per_class`` texts of each class, drawn with ``seed``."""
        rng = random.Random(seed)
        by_class: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(self.labels):
            by_class[label].append(i)
        keep = [
            i for rows in by_class.values() for i in rng.sample(rows, min(per_class, len(rows)))
        ]
        return self.subset(sorted(keep))


def corpus_labelled_set(
    label: str = "natural_language",
    splits: Iterable[str] = ("train", "heldout"),
    exclude: Iterable[str] = ("none",),
    per_class: int | None = None,
    seed: int = 42,
) -> LabelledTexts:
    """The bundled corpus labelled by ``natural_language`` or ``programming_language``.

    ``"none"`` (no natural language: a source file; no programming language: prose) is left out
    by default so that every sample belongs to one of the probed classes, as in the paper's sets.
    """
    from mxd_saelens import zoo

    if label not in ("natural_language", "programming_language"):
        raise ValueError(
            f"unknown corpus label {label!r}; choose natural_language or programming_language."
        )
    texts, labels, is_code = [], [], []
    skip = set(exclude)
    for split in splits:
        corpus = zoo.load_corpus(split)  # type: ignore[arg-type]
        for row in corpus:
            if row[label] in skip:
                continue
            texts.append(row["text"])
            labels.append(row[label])
            is_code.append(row["programming_language"] != "none")
    data = LabelledTexts(texts, labels, is_code, name=f"corpus:{label}")
    return data.balanced(per_class, seed) if per_class else data


def _rows(source: str | None, hub_id: str, config: str | None = None, **kwargs: Any) -> Any:
    """Rows of a local stand-in file/folder when ``source`` is one, else of the hub set."""
    if source is not None:
        local = load_dataset_source(source)
        if local is not None:
            return local
        hub_id = source
    return load_dataset(hub_id, config, **kwargs)


def _class_names(rows: Any, column: str, names: Sequence[str]) -> Callable[[Any], str]:
    """Integer labels to names, from the dataset's ClassLabel feature when it has one."""
    feature = getattr(rows, "features", {}) or {}
    feature = feature.get(column) if hasattr(feature, "get") else None
    table = list(getattr(feature, "names", None) or names)

    def name(value: Any) -> str:
        if isinstance(value, (int, np.integer)) and 0 <= value < len(table):
            return table[value]
        return str(value)

    return name


def _collect(
    samples: Iterable[tuple[str, str]],
    per_class: int,
    classes: Sequence[str] | None,
    seed: int,
    name: str,
    is_code: bool = False,
    min_chars: int = 0,
) -> LabelledTexts:
    """Up to ``per_class`` texts of each class (of ``classes``, if given), balanced."""
    wanted = set(classes) if classes else None
    by_class: dict[str, list[str]] = defaultdict(list)
    # gather a few more than needed so the draw is random among them
    limit = 2 * per_class
    for text, label in samples:
        wanted_here = (wanted is None or label in wanted) and len(text) >= min_chars
        if wanted_here and len(by_class[label]) < limit:
            by_class[label].append(text)
        if wanted and all(len(by_class[c]) >= limit for c in wanted):
            break
    if wanted:
        absent = sorted(wanted - set(by_class))
        if absent:
            raise ValueError(f"{name}: no samples of classes {absent}.")
    data = LabelledTexts(
        [t for rows in by_class.values() for t in rows],
        [c for c, rows in by_class.items() for _ in rows],
        [is_code] * sum(len(rows) for rows in by_class.values()),
        name=name,
    )
    return data.balanced(per_class, seed)


AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
BIOS_PROFESSIONS = [
    "accountant",
    "architect",
    "attorney",
    "chiropractor",
    "comedian",
    "composer",
    "dentist",
    "dietitian",
    "dj",
    "filmmaker",
    "interior_designer",
    "journalist",
    "model",
    "nurse",
    "painter",
    "paralegal",
    "pastor",
    "personal_trainer",
    "photographer",
    "physician",
    "poet",
    "professor",
    "psychologist",
    "rapper",
    "software_engineer",
    "surgeon",
    "teacher",
    "yoga_teacher",
]
EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}


def ag_news(
    source: str | None = None, per_class: int = 500, split: str = "train", seed: int = 42
) -> LabelledTexts:
    """News topic: ``fancyzhx/ag_news`` (``text``, integer ``label``)."""
    rows = _rows(source, "fancyzhx/ag_news", split=split)
    name = _class_names(rows, "label", AG_NEWS_CLASSES)
    return _collect(((r["text"], name(r["label"])) for r in rows), per_class, None, seed, "ag_news")


def github_code(
    source: str | None = None,
    per_class: int = 500,
    languages: Sequence[str] = ("C", "Python", "HTML", "Java", "PHP"),
    seed: int = 42,
) -> LabelledTexts:
    """Programming language: ``codeparrot/github-code`` (``code``, ``language``), streamed;
    probed on each file's last tokens."""
    rows = _rows(source, "codeparrot/github-code", split="train", streaming=True)
    return _collect(
        ((r["code"], r["language"]) for r in rows),
        per_class,
        languages,
        seed,
        "github_code",
        is_code=True,
        min_chars=512,
    )


def amazon_sentiment(
    source: str | None = None, per_class: int = 500, split: str = "train", seed: int = 42
) -> LabelledTexts:
    """Review sentiment: ``canrager/amazon_reviews_mcauley_1and5`` (``text``, ``rating`` 1 or
    5 stars)."""
    rows = _rows(source, "canrager/amazon_reviews_mcauley_1and5", split=split)
    sentiment = {1: "negative", 5: "positive"}
    return _collect(
        ((r["text"], sentiment.get(int(r["rating"]), str(r["rating"]))) for r in rows),
        per_class,
        ("negative", "positive"),
        seed,
        "amazon_sentiment",
    )


def europarl(
    source: str | None = None,
    per_class: int = 500,
    languages: Sequence[str] = tuple(EUROPARL_PAIRS),
    seed: int = 42,
) -> LabelledTexts:
    """European language: ``Helsinki-NLP/europarl``, one language pair per language, streamed;
    each row's ``translation`` maps a language code to the sentence."""
    if source is None:
        unknown = sorted(set(languages) - set(EUROPARL_PAIRS))
        if unknown:
            raise ValueError(
                f"no europarl pair configured for {unknown}; use {sorted(EUROPARL_PAIRS)}."
            )
        streams = [
            _rows(
                None, "Helsinki-NLP/europarl", EUROPARL_PAIRS[lang], split="train", streaming=True
            )
            for lang in languages
        ]
    else:
        streams = [_rows(source, "Helsinki-NLP/europarl")]

    def samples() -> Iterable[tuple[str, str]]:
        for rows in streams:
            for r in rows:
                for lang, text in r["translation"].items():
                    if text:  # a local file's rows hold None for the pair's absent languages
                        yield text, lang

    return _collect(samples(), per_class, languages, seed, "europarl")


def bias_in_bios(
    source: str | None = None,
    per_class: int = 500,
    professions: Sequence[str] = ("professor", "nurse", "attorney", "photographer", "journalist"),
    split: str = "train",
    seed: int = 42,
) -> LabelledTexts:
    """Profession: ``LabHC/bias_in_bios`` (``hard_text``, integer ``profession``)."""
    rows = _rows(source, "LabHC/bias_in_bios", split=split)
    name = _class_names(rows, "profession", BIOS_PROFESSIONS)
    return _collect(
        ((r["hard_text"], name(r["profession"])) for r in rows),
        per_class,
        professions,
        seed,
        "bias_in_bios",
    )


HUB_SETS: dict[str, Callable[..., LabelledTexts]] = {
    "ag_news": ag_news,
    "github_code": github_code,
    "amazon_sentiment": amazon_sentiment,
    "europarl": europarl,
    "bias_in_bios": bias_in_bios,
}


def labelled_set(name: str, source: str | None = None, **kwargs: Any) -> LabelledTexts:
    """A labelled set by name: a corpus label or one of :data:`HUB_SETS` (``source``: a local
    file with the hub set's columns, instead of the hub)."""
    if name in ("natural_language", "programming_language"):
        if source is not None:
            raise ValueError(f"{name!r} is a label of the bundled corpus; it takes no source.")
        return corpus_labelled_set(name, **kwargs)
    if name not in HUB_SETS:
        raise ValueError(
            f"unknown labelled set {name!r}; choose natural_language, programming_language or "
            f"one of {sorted(HUB_SETS)}."
        )
    return HUB_SETS[name](source, **kwargs)
