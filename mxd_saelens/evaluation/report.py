"""Evaluation results as terminal tables, JSON, and an offline plotly HTML report with the
sparsity–accuracy frontier (L0 against ΔCE ± 1 SE, one line per architecture).

Inputs are the rows and paired comparisons of :func:`mxd_saelens.evaluation.loss.evaluate_layers`
(``Evaluation.rows`` and ``Evaluation.comparisons()``); a missing field shows as ``-``.
"""

from __future__ import annotations

import json
import math
import platform
import resource
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

Row = dict[str, Any]


def _finite(row: Row, key: str, default: float = math.nan) -> float:
    """``row[key]`` as a float; ``default`` when missing, null or not finite."""
    value = row.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else default


def _number(fmt: str) -> Callable[[Row, str], str]:
    def cell(row: Row, key: str) -> str:
        value = row.get(key)
        return "-" if value is None else fmt.format(value)

    return cell


def _with_se(fmt: str, se_fmt: str = "{:.4f}") -> Callable[[Row, str], str]:
    def cell(row: Row, key: str) -> str:
        value, se = row.get(key), row.get(f"{key}_se")
        if value is None:
            return "-"
        text = fmt.format(value)
        if se is None or not math.isfinite(se):
            return text
        return f"{text} ± {se_fmt.format(se)}"

    return cell


def _percent(row: Row, key: str) -> str:
    value = _finite(row, key)
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


TABLE_COLUMNS: tuple[tuple[str, str, Callable[[Row, str], str]], ...] = (
    ("name", "layer", _number("{}")),
    ("architecture", "architecture", _number("{}")),
    ("parameters", "params", _number("{:,}")),
    ("l0", "L0", _number("{:.1f}")),
    ("nmse", "NMSE", _number("{:.4f}")),
    ("delta_ce", "ΔCE ± SE", _with_se("{:+.4f}")),
    ("ce_recovered", "CE rec.", _number("{:.3f}")),
    ("kl", "KL ± SE", _with_se("{:.4f}")),
    ("dead_fraction", "dead", _percent),
)

SPECIALISATION_COLUMNS: tuple[tuple[str, str, Callable[[Row, str], str]], ...] = (
    ("name", "layer", _number("{}")),
    ("probe_f1", "probe F1 ± SE", _with_se("{:.3f}", "{:.3f}")),
    ("top_share", "top-32 share", _number("{:.3f}")),
    ("effective_experts", "effective codes", _number("{:.0f}")),
    ("jaccard_random", "Jaccard random", _number("{:.3f}")),
    ("jaccard_same_class", "same class", _number("{:.3f}")),
)

COMPARISON_COLUMNS: tuple[tuple[str, str, Callable[[Row, str], str]], ...] = (
    ("a", "A", _number("{}")),
    ("b", "B", _number("{}")),
    ("delta_ce_diff", "ΔCE A−B ± SE", _with_se("{:+.4f}")),
    ("delta_ce_z", "z", _number("{:+.1f}")),
    ("delta_ce_ratio", "ΔCE A/B", _with_se("{:.3f}", "{:.3f}")),
    ("kl_diff", "KL A−B ± SE", _with_se("{:+.4f}")),
    ("kl_z", "z", _number("{:+.1f}")),
    ("kl_ratio", "KL A/B", _with_se("{:.3f}", "{:.3f}")),
)


def _table(rows: Sequence[Row], columns: Sequence[tuple[str, str, Any]]) -> str:
    header = [title for _, title, _ in columns]
    body = [[cell(row, key) for key, _, cell in columns] for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(rows: Sequence[Row]) -> str:
    """A fixed-width table of the main numbers, ΔCE and KL with ± 1 standard error."""
    return _table(rows, TABLE_COLUMNS)


def has_specialisation(rows: Sequence[Row]) -> bool:
    return any("probe_f1" in row for row in rows)


def format_specialisation(rows: Sequence[Row]) -> str:
    """A fixed-width table of how specialised each layer's codes are (see
    :mod:`mxd_saelens.evaluation.specialisation`): probe F1 ± SE, the share of firings taken by the 32 most
    used codes, the effective number of codes, and the expert-set overlap of two random tokens
    and of two tokens of the same language."""
    return _table(rows, SPECIALISATION_COLUMNS)


def format_comparisons(comparisons: Sequence[Row]) -> str:
    """A fixed-width table of paired comparisons: difference ± paired SE, z = difference / SE,
    and ratio ± SE, for ΔCE and KL."""
    return _table(comparisons, COMPARISON_COLUMNS)


def _zero_ablation_delta(rows: Sequence[Row]) -> float | None:
    """The largest ΔCE of zero-ablating a spliced MLP (one value unless the rows replace
    MLPs of different blocks)."""
    values = [_finite(r, "ce_zero_ablation") - _finite(r, "ce_clean") for r in rows]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else None


def frontier_figure(rows: Sequence[Row], title: str = "Sparsity–accuracy frontier") -> go.Figure:
    """L0 against ΔCE with ± 1 SE error bars, one line per architecture (parameter counts in
    the labels); both axes start at 0, with the clean model's ΔCE = 0 drawn, and the MLP
    zero-ablated ΔCE drawn when in range, else noted."""
    figure = go.Figure()
    for architecture in sorted({row["architecture"] for row in rows}):
        points = sorted(
            (r for r in rows if r["architecture"] == architecture), key=lambda r: r["l0"]
        )
        figure.add_trace(
            go.Scatter(
                x=[r["l0"] for r in points],
                y=[r["delta_ce"] for r in points],
                error_y={
                    "type": "data",
                    "array": [_finite(r, "delta_ce_se", 0.0) for r in points],
                    "visible": True,
                },
                mode="lines+markers",
                name=f"{architecture} ({points[0]['parameters']:,} params)",
                text=[r.get("name", "") for r in points],
                customdata=[
                    [
                        r["parameters"],
                        _finite(r, "nmse"),
                        _finite(r, "delta_ce_se"),
                        100 * _finite(r, "dead_fraction"),
                        _finite(r, "kl"),
                    ]
                    for r in points
                ],
                hovertemplate="%{text}<br>L0 %{x:.1f}<br>ΔCE %{y:.4f} ± %{customdata[2]:.4f}"
                "<br>KL %{customdata[4]:.4f}<br>params %{customdata[0]:,}"
                "<br>NMSE %{customdata[1]:.4f}<br>dead %{customdata[3]:.1f}%<extra></extra>",
            )
        )
    _reference_lines(figure, rows)
    # from L0 = 0, so that a fraction of an expert's difference does not look like a gap
    figure.update_xaxes(range=[0, 1.05 * max([_finite(r, "l0", 0.0) for r in rows] + [1.0])])
    figure.update_layout(
        title=title,
        xaxis_title="L0: active experts or latents per token (lower is better)",
        yaxis_title="ΔCE: spliced − clean, nats/token (lower is better)",
        template="plotly_white",
    )
    return figure


def readability_figure(rows: Sequence[Row], title: str = "Faithful and readable") -> go.Figure:
    """Probe F1 against ΔCE, each with ± 1 SE error bars, one point per layer (rows that carry
    ``probe_f1``): a layer is better the further up and left it sits. ΔCE starts at 0."""
    probed = [r for r in rows if "probe_f1" in r]
    figure = go.Figure()
    for row in probed:
        figure.add_trace(
            go.Scatter(
                x=[row["delta_ce"]],
                y=[row["probe_f1"]],
                error_x={"type": "data", "array": [_finite(row, "delta_ce_se", 0.0)]},
                error_y={"type": "data", "array": [_finite(row, "probe_f1_se", 0.0)]},
                mode="markers+text",
                text=[row.get("name", row["architecture"])],
                textposition="top right",
                name=row.get("name", row["architecture"]),
            )
        )
    right = max([_finite(r, "delta_ce", 0.0) + _finite(r, "delta_ce_se", 0.0) for r in probed])
    figure.update_xaxes(range=[0, 1.15 * right if right > 0 else 1.0])
    figure.update_layout(
        title=title,
        xaxis_title="ΔCE: spliced − clean, nats/token (lower is better)",
        yaxis_title="sparse-probe F1 of the best single code (higher is better)",
        template="plotly_white",
    )
    return figure


def _reference_lines(figure: go.Figure, rows: Sequence[Row]) -> None:
    """The clean model at ΔCE = 0, and the zero-ablated MLP: drawn when it is at most a few
    times the highest point, otherwise written as a note so that the points keep the plot."""
    tops = [_finite(r, "delta_ce", 0.0) + _finite(r, "delta_ce_se", 0.0) for r in rows]
    bottoms = [_finite(r, "delta_ce", 0.0) - _finite(r, "delta_ce_se", 0.0) for r in rows]
    top, bottom = max([*tops, 0.0]), min([*bottoms, 0.0])
    figure.add_hline(y=0, line_dash="dot", annotation_text="clean model")
    zero = _zero_ablation_delta(rows)
    if zero is not None and zero <= 3 * top:
        figure.add_hline(
            y=zero, line_dash="dash", annotation_text=f"MLP zero-ablated (ΔCE {zero:.3f})"
        )
        top = max(top, zero)
    elif zero is not None:
        figure.add_annotation(
            text=f"MLP zero-ablated: ΔCE {zero:.3f} (off the top of the plot)",
            xref="paper",
            yref="paper",
            x=1.0,
            y=1.0,
            xanchor="right",
            yanchor="bottom",
            showarrow=False,
        )
    figure.update_yaxes(range=[bottom, 1.08 * top if top > 0 else 1.0])


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null, so that the file is standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


# the packages whose versions can move a result's figures in their last digits
KEY_PACKAGES = ("torch", "sae-lens", "transformer-lens", "transformers", "numpy", "datasets")


def software_environment() -> dict[str, Any]:
    """The processor's vector capability as torch dispatches to it (``AVX2``, ``AVX512`` …),
    Python's version and those of ``KEY_PACKAGES``: what a results file needs for its numbers
    to be reproduced."""
    import torch

    versions: dict[str, str | None] = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "versions": versions,
    }


def peak_resident_bytes() -> int:
    """This process's peak resident memory so far (``getrusage``'s ``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux KiB


def peak_memory_line() -> str:
    return f"peak resident memory: {peak_resident_bytes() / 2**30:.2f} GiB"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")


def write_report(
    rows: Sequence[Row],
    out_dir: str | Path,
    title: str = "Splice evaluation",
    comparisons: Sequence[Row] = (),
) -> tuple[Path, Path]:
    """Write ``results.json`` (``{"rows": [...], "comparisons": [...], "environment": {...}}``,
    the environment from :func:`software_environment`, non-finite numbers as null) and
    ``report.html`` (the frontier figure, plotly.js embedded so it opens offline; when the rows
    carry probe F1, a second panel of probe F1 against ΔCE; then the tables)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    results = {
        "rows": list(rows),
        "comparisons": list(comparisons),
        "environment": software_environment(),
    }
    json_path.write_text(json.dumps(_json_safe(results), indent=2))
    html_path = out / "report.html"
    figure = frontier_figure(rows, title=f"{title}: sparsity–accuracy frontier")
    sections = [f"<pre>{_escape(format_table(rows))}</pre>"]
    if has_specialisation(rows):
        sections += [
            "<h2>Specialisation (bundled corpus, natural-language labels)</h2>",
            f"<pre>{_escape(format_specialisation(rows))}</pre>",
        ]
    if comparisons:
        sections += [
            "<h2>Paired comparisons (same tokens; SE over sequences)</h2>",
            f"<pre>{_escape(format_comparisons(comparisons))}</pre>",
        ]
    html = figure.to_html(full_html=False, include_plotlyjs=True)
    if has_specialisation(rows):
        panel = readability_figure(rows, title=f"{title}: probe F1 against ΔCE")
        html += panel.to_html(full_html=False, include_plotlyjs=False)
    html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1>{html}{''.join(sections)}</body></html>",
        encoding="utf-8",
    )
    return json_path, html_path
