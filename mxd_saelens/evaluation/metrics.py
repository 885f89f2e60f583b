"""What a splice evaluation reports for a layer (:class:`SpliceMetrics`), and the standard
error of a ratio of per-sequence sums that its error bars use (see :mod:`mxd_saelens.evaluation.loss`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class SpliceMetrics:
    """The metrics of one spliced layer (see the module docstring).

    ``per_sequence`` holds ``[n_sequences]`` arrays for paired comparisons: ``n_tokens`` (the
    predicted tokens counted in each sequence) and the per-sequence means over them of
    ``ce_clean``, ``ce_spliced``, ``ce_zero_ablation``, ``ce_mean_ablation`` and ``kl``.
    """

    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_mean_ablation: float
    delta_ce: float
    delta_ce_se: float
    ce_recovered: float
    ce_recovered_se: float
    kl: float
    kl_se: float
    nmse: float
    nmse_se: float
    explained_variance: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    n_tokens: int
    n_sequences: int
    per_sequence: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, float | int]:
        """The scalar metrics (``per_sequence`` left out)."""
        out = asdict(self)
        out.pop("per_sequence")
        return out


def flatten_metrics(metrics: SpliceMetrics, prefix: str = "eval/") -> dict[str, Any]:
    return {f"{prefix}{name}": value for name, value in metrics.to_dict().items()}


def ratio_se(num: np.ndarray, den: np.ndarray) -> float:
    """Delta-method standard error of ``Σ num / Σ den`` over independent clusters (sequences),
    from per-cluster sums ``num`` and ``den`` ([n]). NaN with fewer than two clusters."""
    n = len(num)
    if n < 2 or den.sum() == 0:
        return math.nan
    ratio = num.sum() / den.sum()
    residual = (num - ratio * den) / den.mean()
    return float(np.sqrt((residual**2).sum() / (n * (n - 1))))


def ratio(num: np.ndarray | float, den: np.ndarray | float) -> float:
    num, den = float(np.sum(num)), float(np.sum(den))
    return num / den if den else math.nan


def safe_div(a: float, b: float) -> float:
    return a / b if b else math.nan
