"""Evaluation results as a terminal table, JSON, and an offline plotly HTML report with the
sparsity–accuracy frontier (L0 against ΔCE, one line per architecture)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

TABLE_COLUMNS = (
    ("name", "layer", "{}"),
    ("architecture", "architecture", "{}"),
    ("parameters", "params", "{:,}"),
    ("l0", "L0", "{:.1f}"),
    ("nmse", "NMSE", "{:.4f}"),
    ("delta_ce", "ΔCE", "{:+.4f}"),
    ("ce_recovered", "CE rec.", "{:.3f}"),
    ("kl", "KL", "{:.4f}"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the main numbers."""
    header = [title for _, title, _ in TABLE_COLUMNS]
    body = [
        [fmt.format(row[key]) if key in row else "-" for key, _, fmt in TABLE_COLUMNS]
        for row in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
    lines = [
        "  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def frontier_figure(
    rows: Sequence[dict[str, Any]], title: str = "Sparsity–accuracy frontier"
) -> go.Figure:
    """L0 against ΔCE, one line per architecture, parameter counts in the labels and hovers."""
    figure = go.Figure()
    for architecture in sorted({row["architecture"] for row in rows}):
        points = sorted(
            (r for r in rows if r["architecture"] == architecture), key=lambda r: r["l0"]
        )
        figure.add_trace(
            go.Scatter(
                x=[r["l0"] for r in points],
                y=[r["delta_ce"] for r in points],
                mode="lines+markers",
                name=f"{architecture} ({points[0]['parameters']:,} params)",
                text=[r.get("name", "") for r in points],
                customdata=[[r["parameters"], r.get("nmse", float("nan"))] for r in points],
                hovertemplate="%{text}<br>L0 %{x:.1f}<br>ΔCE %{y:.4f}"
                "<br>params %{customdata[0]:,}<br>NMSE %{customdata[1]:.4f}<extra></extra>",
            )
        )
    figure.update_layout(
        title=title,
        xaxis_title="L0 (active experts or latents per token)",
        yaxis_title="ΔCE (spliced − clean, nats/token)",
        template="plotly_white",
    )
    return figure


def write_report(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, title: str = "Splice evaluation"
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.html`` (plotly.js embedded: opens offline)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(list(rows), indent=2))
    html_path = out / "report.html"
    figure = frontier_figure(rows, title=f"{title}: sparsity–accuracy frontier")
    table = format_table(rows).replace("&", "&amp;").replace("<", "&lt;")
    html = figure.to_html(full_html=False, include_plotlyjs=True)
    html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body><h1>{title}</h1>{html}<pre>{table}</pre></body></html>",
        encoding="utf-8",
    )
    return json_path, html_path
