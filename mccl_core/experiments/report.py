"""Writing an experiment's results: CSV, Markdown table, PNG plot and a JSON record."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def cell(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``columns``: (row key, header) pairs; missing values show as ``–``."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    keys = list(columns) + sorted({k for r in rows for k in r} - set(columns) - {"history"})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_plot(path: Path, rows: Sequence[Mapping[str, Any]], metrics: Sequence[tuple[str, str]], title: str) -> None:
    """Grouped bars: one group per row (variant), one bar per metric."""
    plt = _pyplot()
    names = [str(r["variant"]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(names) + 2), 3.6))
    width = 0.8 / max(1, len(metrics))
    for i, (key, label) in enumerate(metrics):
        values = [float(r[key]) if isinstance(r.get(key), (int, float)) else float("nan") for r in rows]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=label)
    ax.set_xticks([x + width * (len(metrics) - 1) / 2 for x in range(len(names))], names)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def line_plot(path: Path, series: Mapping[str, Sequence[tuple[str, float]]], ylabel: str, title: str) -> None:
    """One line per model: x = the categories (corruptions) in order, y = the metric."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
