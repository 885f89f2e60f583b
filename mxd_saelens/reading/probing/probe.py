"""The probes: the best single code's F1 per class, one-vs-rest (the protocol is in
:mod:`mxd_saelens.reading.probing`), and a table of the results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from torch import Tensor
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.reading.probing.codes import CodeSource
from mxd_saelens.reading.probing.features import pooled_features, token_features
from mxd_saelens.reading.probing.labelled_sets import LabelledTexts


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
    test_truth: tuple[bool, ...] = field(default=(), repr=False)
    """Per test sample (in the split's order): is it this class?"""
    test_predicted: tuple[bool, ...] = field(default=(), repr=False)
    """Per test sample: the best code's probe's answer. With ``test_truth``, what the standard
    errors resample."""


N_BOOTSTRAP = 1000


def _bootstrap_mean_f1(scores: Sequence[ClassScore], draws: np.ndarray) -> np.ndarray:
    """Mean F1 over classes for each bootstrap draw ``[B, n_test]`` of test-sample indices."""
    truth = np.asarray([s.test_truth for s in scores], dtype=bool)  # [C, n_test]
    predicted = np.asarray([s.test_predicted for s in scores], dtype=bool)
    if truth.shape[1] == 0:
        raise ValueError("these scores keep no test outcomes; rerun probe_features.")
    t, p = truth[:, draws], predicted[:, draws]  # [C, B, n_test]
    tp = (t & p).sum(-1)
    wrong = (t ^ p).sum(-1)  # false positives + false negatives
    denominator = 2 * tp + wrong
    f1 = np.divide(2 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)
    return f1.mean(0)  # [B]


def _draws(n_test: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_test, size=(N_BOOTSTRAP, n_test))


@dataclass
class ProbeResult:
    source: str
    dataset: str
    scores: list[ClassScore]
    n_samples: int

    @property
    def mean_f1(self) -> float:
        return float(np.mean([s.f1 for s in self.scores]))

    def mean_f1_se(self, seed: int = 0) -> float:
        """Standard error of the mean F1: the test samples resampled with replacement
        (``N_BOOTSTRAP`` draws), each class's chosen code and probe held fixed. It measures the
        test split's noise, not the choice of code."""
        draws = _draws(len(self.scores[0].test_truth), seed)
        return float(_bootstrap_mean_f1(self.scores, draws).std(ddof=1))

    def f1_by_class(self) -> dict[str, float]:
        return {s.label: s.f1 for s in self.scores}

    def to_dict(self) -> dict[str, Any]:
        scores = [
            {k: v for k, v in asdict(s).items() if k not in ("test_truth", "test_predicted")}
            for s in self.scores
        ]
        return {
            **asdict(self),
            "scores": scores,
            "mean_f1": self.mean_f1,
            "mean_f1_se": self.mean_f1_se(),
        }


def compare_probes(a: ProbeResult, b: ProbeResult, seed: int = 0) -> dict[str, float]:
    """Mean F1 of ``a`` minus ``b`` with its paired standard error: both resampled with the same
    test samples. They must have probed the same labelled set with the same split; a differing
    split or class list is refused (two sets whose labels happen to split alike cannot be told
    apart here)."""
    truth_a = [(s.label, s.test_truth) for s in a.scores]
    if truth_a != [(s.label, s.test_truth) for s in b.scores]:
        raise ValueError(
            f"{a.source!r} and {b.source!r} were probed on different test samples or classes; "
            "compare probes of the same labelled set with the same split."
        )
    draws = _draws(len(a.scores[0].test_truth), seed)
    difference = _bootstrap_mean_f1(a.scores, draws) - _bootstrap_mean_f1(b.scores, draws)
    return {"difference": a.mean_f1 - b.mean_f1, "se": float(difference.std(ddof=1))}


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
    """The best single-code F1 of each class, one-vs-rest (see the package docstring)."""
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
        best_f1, best_code, best_predicted = -1.0, -1, pos_te
        for j in candidates:
            # newton-cg: the same objective as the default lbfgs, ~10x faster on one feature
            probe = LogisticRegression(C=C, class_weight="balanced", solver="newton-cg")
            probe.fit(x_tr[:, j : j + 1], pos_tr)
            predicted = probe.predict(x_te[:, j : j + 1])
            f1 = float(f1_score(pos_te, predicted, zero_division=0.0))
            if f1 > best_f1:
                best_f1, best_code, best_predicted = f1, int(j), predicted
        prevalence = pos_te.mean()
        scores.append(
            ClassScore(
                label=str(label),
                f1=best_f1,
                code=best_code,
                chance_f1=float(2 * prevalence / (1 + prevalence)),
                n_train=int(pos_tr.sum()),
                n_test=int(pos_te.sum()),
                test_truth=tuple(bool(v) for v in pos_te),
                test_predicted=tuple(bool(v) for v in best_predicted),
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
