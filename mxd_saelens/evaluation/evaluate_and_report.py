"""The evaluation flow every entry point shares: splice each layer into its model on held-out
sequences, add its specialisation (probe F1, expert usage), compare the layers pairwise, print
the tables and write ``results.json`` and ``report.html``. The demo and ``mxd-saelens eval``
call :func:`evaluate_and_report`; the benchmarks call :func:`evaluate_and_specialise` and write
their own results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.evaluation.loss import Evaluation, evaluate_layers
from mxd_saelens.evaluation.report import (
    format_comparisons,
    format_specialisation,
    format_table,
    has_specialisation,
    peak_memory_line,
    write_report,
)
from mxd_saelens.evaluation.specialisation import (
    LayerSpecialisation,
    add_specialisation,
    layer_specialisation,
)


def evaluate_and_specialise(
    model: HookedRootModule,
    layers: Mapping[str, nn.Module],
    tokens: Tensor,  # [n_sequences, context]
    batch_size: int = 8,
    specialisation: bool = True,
    per_class: int = 100,
    chunk: int | None = None,
    progress: bool = True,
) -> tuple[Evaluation, dict[str, LayerSpecialisation]]:
    """Every layer spliced on ``tokens`` (``chunk`` layers per pass when given: each pass shares
    its clean forwards, and every pass sees the same tokens, so comparisons stay paired), with
    its specialisation added to its row."""
    names = list(layers)
    step = chunk or max(1, len(names))
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for start in range(0, len(names), step):
        part = {name: layers[name] for name in names[start : start + step]}
        evaluation = evaluate_layers(model, part, tokens, batch_size=batch_size, progress=progress)
        rows += evaluation.rows
        metrics |= evaluation.metrics
    evaluation = Evaluation(rows=rows, metrics=metrics)
    found = layer_specialisation(model, layers, per_class=per_class) if specialisation else {}
    add_specialisation(evaluation.rows, found)
    return evaluation, found


@dataclass
class Report:
    evaluation: Evaluation
    specialisation: dict[str, LayerSpecialisation]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    json_path: Path | None = None
    html_path: Path | None = None


def print_report(evaluation: Evaluation, comparisons: list[dict[str, Any]]) -> None:
    print(format_table(evaluation.rows))
    if has_specialisation(evaluation.rows):
        print()
        print(format_specialisation(evaluation.rows))
    if comparisons:
        print()
        print(format_comparisons(comparisons))


def evaluate_and_report(
    model: HookedRootModule,
    layers: Mapping[str, nn.Module],
    tokens: Tensor,  # [n_sequences, context]
    out_dir: str | Path,
    title: str,
    batch_size: int = 8,
    specialisation: bool = True,
    reference: str | None = None,
) -> Report:
    """:func:`evaluate_and_specialise`, the paired comparisons (every pair of up to four layers,
    else each against ``reference``), the printed tables and the written report."""
    evaluation, found = evaluate_and_specialise(
        model, layers, tokens, batch_size=batch_size, specialisation=specialisation
    )
    comparisons = evaluation.comparisons(reference)
    print()
    print_report(evaluation, comparisons)
    json_path, html_path = write_report(
        evaluation.rows, out_dir, title=title, comparisons=comparisons
    )
    print(f"\nwrote {json_path} and {html_path}")
    print(peak_memory_line())
    return Report(evaluation, found, comparisons, json_path, html_path)
