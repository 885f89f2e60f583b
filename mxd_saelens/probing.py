"""Sparse probing: how well one code of a layer picks out a class of texts (DESIGN §2).

Protocol of the MxD paper, per labelled set:

- sample-level: each text becomes one feature vector, the layer's codes mean-pooled over the
  text's first ``context_size`` tokens (its last ones for code, where a licence header would
  otherwise dominate); token-level: the codes at one named token position;
- 80/20 stratified split, seed 42;
- per class (one-vs-rest): the ``n_candidates`` = 100 codes with the largest class-mean
  difference on the train split, a class-balanced L2 logistic regression on each single code,
  and the best test F1 among them.

"Codes" come from a :class:`CodeSource`: an MxD's expert coefficients or a transcoder's latents
(:class:`LayerCodes`), or the base MLP's neurons (:class:`NeuronCodes`), the reference a
replacement layer's codes should match or beat.

Labelled sets: the bundled corpus (:func:`corpus_labelled_set`) and the paper's five Hugging
Face sets (:data:`HUB_SETS`), each of which also reads a local file with the hub set's columns.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from datasets import load_dataset
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.hooks import layer_of
from mxd_saelens.sources import load_dataset_source

PAPER_CONTEXT = 128

# --- where codes come from ---------------------------------------------------------------------


class CodeSource(Protocol):
    """Anything that turns token sequences into per-token codes."""

    name: str
    n_codes: int

    def codes(self, model: HookedRootModule, tokens: Tensor) -> Tensor:
        """``[batch, pos]`` token ids to ``[batch, pos, n_codes]`` codes."""
        ...


@torch.no_grad()
def hook_activations(model: HookedRootModule, hook_name: str, tokens: Tensor) -> Tensor:
    """The activations at one hook, running the model only as far as that hook's block."""
    block = layer_of(hook_name)
    kwargs: dict[str, Any] = {"names_filter": [hook_name]}
    if block is not None:
        kwargs["stop_at_layer"] = block + 1
    _, cache = model.run_with_cache(tokens, **kwargs)
    return cache[hook_name]


@dataclass
class LayerCodes:
    """A trained layer's codes: an MxD's expert coefficients, a transcoder's latents."""

    layer: nn.Module
    name: str = ""
    hook_name: str = ""

    def __post_init__(self) -> None:
        cfg = getattr(self.layer, "cfg", None)
        self.hook_name = self.hook_name or getattr(getattr(cfg, "metadata", None), "hook_name", "")
        if not self.hook_name:
            raise ValueError(
                "the layer's config does not name its input hook (cfg.metadata.hook_name); "
                "pass LayerCodes(layer, hook_name=...)."
            )
        if not hasattr(self.layer, "encode"):
            raise TypeError(f"{type(self.layer).__name__} has no encode(): it has no codes.")
        self.name = self.name or (cfg.architecture() if cfg is not None else "layer")

    @property
    def n_codes(self) -> int:
        return int(self.layer.cfg.d_sae)  # type: ignore[union-attr]

    @torch.no_grad()
    def codes(self, model: HookedRootModule, tokens: Tensor) -> Tensor:
        acts = hook_activations(model, self.hook_name, tokens)
        return self.layer.encode(acts).float()  # type: ignore[operator]


@dataclass
class NeuronCodes:
    """The base MLP's own neurons (``blocks.L.mlp.hook_post``), the probing reference."""

    layer: int
    n_codes: int
    name: str = "base MLP neurons"

    @classmethod
    def of(cls, model: HookedRootModule, layer: int) -> NeuronCodes:
        hook = f"blocks.{layer}.mlp.hook_post"
        if hook not in model.hook_dict:
            raise ValueError(f"the model has no hook {hook!r}: is layer {layer} an MLP block?")
        return cls(layer=layer, n_codes=int(model.cfg.d_mlp))  # type: ignore[attr-defined]

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.mlp.hook_post"

    @torch.no_grad()
    def codes(self, model: HookedRootModule, tokens: Tensor) -> Tensor:
        return hook_activations(model, self.hook_name, tokens).float()


# --- labelled texts ----------------------------------------------------------------------------


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


# --- features: pooled or token-level codes -----------------------------------------------------


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def text_window(tokenizer: Any, text: str, n: int, from_end: bool) -> list[int]:
    """The first (or last) ``n`` tokens of ``text`` (fewer if the text is shorter)."""
    # tokenising a 20,000-character file to keep 128 tokens is wasteful: cut a generous
    # character window first and drop the token the cut may have split
    budget = n * 16
    if len(text) > budget:
        ids = _encode(tokenizer, text[-budget:] if from_end else text[:budget])
        ids = ids[1:] if from_end else ids[:-1]
        if len(ids) >= n:
            return ids[-n:] if from_end else ids[:n]
    ids = _encode(tokenizer, text)
    return ids[-n:] if from_end else ids[:n]


def _bos(model: HookedRootModule) -> list[int]:
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    prepend = getattr(model.cfg, "default_prepend_bos", True)  # type: ignore[attr-defined]
    return [tokenizer.bos_token_id] if prepend and tokenizer.bos_token_id is not None else []


def resolve_context(model: HookedRootModule, context_size: int | None) -> int:
    """Text tokens per sample: the paper's 128, or what fits beside BOS in the model's context."""
    room = int(model.cfg.n_ctx) - len(_bos(model))  # type: ignore[attr-defined]
    if context_size is None:
        return min(PAPER_CONTEXT, room)
    if not 1 <= context_size <= room:
        raise ValueError(
            f"context_size={context_size} does not fit: the model takes {room} text tokens "
            "after BOS."
        )
    return context_size


def _pad(rows: list[list[int]], pad_id: int) -> Tensor:
    tokens = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    return tokens


def _batched_codes(
    model: HookedRootModule,
    source: CodeSource,
    rows: list[list[int]],
    reduce: Callable[[Tensor, int], Tensor],
    batch_size: int,
) -> Tensor:
    """Run ``source`` on right-padded rows and reduce each row's ``[pos, n_codes]`` codes.

    Causal attention means padding on the right never changes the real positions' codes.
    """
    pad_id = model.tokenizer.pad_token_id or 0  # type: ignore[attr-defined]
    device = getattr(model.cfg, "device", "cpu")  # type: ignore[attr-defined]
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        codes = source.codes(model, _pad(chunk, pad_id).to(device)).cpu()
        out.extend(reduce(codes[i], len(row)) for i, row in enumerate(chunk))
    return torch.stack(out) if out else torch.zeros(0, source.n_codes)


def pooled_features(
    model: HookedRootModule,
    source: CodeSource,
    data: LabelledTexts,
    context_size: int | None = None,
    drop_short: bool = False,
    batch_size: int = 16,
) -> tuple[Tensor, LabelledTexts]:
    """Each text's codes mean-pooled over its first ``context_size`` tokens (last, for code),
    ``[n_samples, n_codes]``.

    BOS is prepended as in training and left out of the mean. A text shorter than the context
    is an error unless ``drop_short``; returns the features and the texts they belong to.
    """
    n = resolve_context(model, context_size)
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    bos = _bos(model)
    windows = [
        text_window(tokenizer, t, n, c) for t, c in zip(data.texts, data.is_code, strict=True)
    ]
    short = [i for i, w in enumerate(windows) if len(w) < n]
    if short and not drop_short:
        shortest = min(len(windows[i]) for i in short)
        raise ValueError(
            f"{len(short)} of {len(data)} texts are shorter than the context of {n} tokens (the "
            f"shortest has {shortest}): pass drop_short=True to leave them out, or a smaller "
            "context_size."
        )
    keep = [i for i in range(len(data)) if len(windows[i]) >= n]
    if not keep:
        raise ValueError(f"no text has {n} tokens; use a smaller context_size.")
    rows = [bos + windows[i] for i in keep]
    start = len(bos)

    def mean_pool(codes: Tensor, length: int) -> Tensor:
        return codes[start:length].mean(0)

    return _batched_codes(model, source, rows, mean_pool, batch_size), data.subset(keep)


def token_position(tokenizer: Any, ids: list[int], position: int | str) -> int | None:
    """Index into ``ids`` of a position: an int (negative counts from the end), or a token
    string, meaning its first occurrence. None when the text has no such position."""
    if isinstance(position, str):
        target = _encode(tokenizer, position)
        if len(target) != 1:
            raise ValueError(
                f"{position!r} is {len(target)} tokens for this tokenizer; name a single token."
            )
        return ids.index(target[0]) if target[0] in ids else None
    index = position if position >= 0 else len(ids) + position
    return index if 0 <= index < len(ids) else None


def token_features(
    model: HookedRootModule,
    source: CodeSource,
    data: LabelledTexts,
    position: int | str,
    drop_missing: bool = False,
    batch_size: int = 16,
) -> tuple[Tensor, LabelledTexts]:
    """Token-level probing features, ``[n_samples, n_codes]``: the codes at one named position
    of each text, read within the model's context (the first tokens of the text, after BOS)."""
    tokenizer = model.tokenizer  # type: ignore[attr-defined]
    bos = _bos(model)
    room = int(model.cfg.n_ctx) - len(bos)  # type: ignore[attr-defined]
    windows = [text_window(tokenizer, t, room, from_end=False) for t in data.texts]
    where = [token_position(tokenizer, w, position) for w in windows]
    missing = [i for i, p in enumerate(where) if p is None]
    if missing and not drop_missing:
        raise ValueError(
            f"{len(missing)} of {len(data)} texts have no position {position!r} within "
            f"{room} tokens: pass drop_missing=True to leave them out."
        )
    keep = [i for i, p in enumerate(where) if p is not None]
    if not keep:
        raise ValueError(f"no text has position {position!r}.")
    rows = [bos + windows[i][: where[i] + 1] for i in keep]  # type: ignore[operator]

    def last(codes: Tensor, length: int) -> Tensor:
        return codes[length - 1]

    return _batched_codes(model, source, rows, last, batch_size), data.subset(keep)


# --- the probes --------------------------------------------------------------------------------


@dataclass
class ClassScore:
    """The best single-code probe of one class (one-vs-rest)."""

    label: str
    f1: float
    code: int
    chance_f1: float
    """F1 of always answering this class, on the test split: the floor to beat."""
    n_train: int
    n_test: int


@dataclass
class ProbeResult:
    source: str
    dataset: str
    scores: list[ClassScore]
    n_samples: int

    @property
    def mean_f1(self) -> float:
        return float(np.mean([s.f1 for s in self.scores]))

    def f1_by_class(self) -> dict[str, float]:
        return {s.label: s.f1 for s in self.scores}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean_f1": self.mean_f1}


def check_labels(labels: Sequence[str], test_size: float) -> list[str]:
    """The classes, after checking that every one can appear in both splits."""
    counts = Counter(labels)
    if len(counts) < 2:
        raise ValueError(
            f"probing needs at least two classes; every sample is labelled {next(iter(counts), None)!r}."
        )
    need = max(2, int(np.ceil(1 / min(test_size, 1 - test_size))))
    rare = {label: n for label, n in counts.items() if n < need}
    if rare:
        raise ValueError(
            f"classes {rare} have fewer than {need} samples, too few to appear in both the "
            f"train and the test split; drop them or add samples."
        )
    return sorted(counts)


def probe_features(
    features: Tensor | np.ndarray,
    labels: Sequence[str],
    n_candidates: int = 100,
    test_size: float = 0.2,
    seed: int = 42,
    C: float = 1.0,
) -> list[ClassScore]:
    """The best single-code F1 of each class, one-vs-rest (see the module docstring)."""
    x = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else features
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray([str(label) for label in labels])
    if x.ndim != 2 or x.shape[0] != len(y):
        raise ValueError(f"features must be [n_samples={len(y)}, n_codes], got {x.shape}.")
    classes = check_labels(y.tolist(), test_size)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    # standardise so that the L2 penalty treats large and small codes alike
    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std == 0] = 1.0
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    scores = []
    for label in classes:
        pos_tr, pos_te = y_tr == label, y_te == label
        gap = np.abs(x_tr[pos_tr].mean(0) - x_tr[~pos_tr].mean(0))
        candidates = np.argsort(-gap, kind="stable")[: min(n_candidates, x.shape[1])]
        best_f1, best_code = -1.0, -1
        for j in candidates:
            # newton-cg: the same objective as the default lbfgs, ~10x faster on one feature
            probe = LogisticRegression(C=C, class_weight="balanced", solver="newton-cg")
            probe.fit(x_tr[:, j : j + 1], pos_tr)
            f1 = float(f1_score(pos_te, probe.predict(x_te[:, j : j + 1]), zero_division=0.0))
            if f1 > best_f1:
                best_f1, best_code = f1, int(j)
        prevalence = pos_te.mean()
        scores.append(
            ClassScore(
                label=str(label),
                f1=best_f1,
                code=best_code,
                chance_f1=float(2 * prevalence / (1 + prevalence)),
                n_train=int(pos_tr.sum()),
                n_test=int(pos_te.sum()),
            )
        )
    return scores


def sparse_probe(
    model: HookedRootModule,
    source: CodeSource,
    data: LabelledTexts,
    position: int | str | None = None,
    context_size: int | None = None,
    drop_short: bool = False,
    n_candidates: int = 100,
    test_size: float = 0.2,
    seed: int = 42,
    batch_size: int = 16,
) -> ProbeResult:
    """Sample-level probing (``position=None``) or token-level probing at ``position``."""
    check_labels(data.labels, test_size)  # fail before running the model
    if position is None:
        features, kept = pooled_features(model, source, data, context_size, drop_short, batch_size)
    else:
        features, kept = token_features(model, source, data, position, drop_short, batch_size)
    scores = probe_features(features, kept.labels, n_candidates, test_size, seed)
    return ProbeResult(source=source.name, dataset=data.name, scores=scores, n_samples=len(kept))


# --- labelled sets -----------------------------------------------------------------------------


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


def format_probe_table(results: Sequence[ProbeResult]) -> str:
    """Best F1 per class (rows) and code source (columns), with the code that scored it and the
    always-this-class floor."""
    labels = sorted({s.label for r in results for s in r.scores})
    chance = {s.label: s.chance_f1 for r in results for s in r.scores}
    header = ["class", "chance", *(r.source for r in results)]
    body = []
    for label in labels:
        cells = [label, f"{chance[label]:.3f}"]
        for r in results:
            score = next((s for s in r.scores if s.label == label), None)
            cells.append("-" if score is None else f"{score.f1:.3f} (#{score.code})")
        body.append(cells)
    body.append(["mean", "", *(f"{r.mean_f1:.3f}" for r in results)])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
