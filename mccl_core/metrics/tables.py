"""Plain-text tables of metric results (values shown as percentages, as papers report them).

The result objects themselves hold fractions in [0, 1]; only this presentation layer multiplies
by 100, and every column header says ``(%)``.
"""

from __future__ import annotations

from functools import singledispatch

from mccl_core.metrics.average_precision import MAPResult
from mccl_core.metrics.f1 import F1Report
from mccl_core.metrics.mdid import MDIDAccuracyResult
from mccl_core.metrics.protocol import ProtocolResult
from mccl_core.metrics.scoring import ScoringResult

_PROTOCOL_TITLES = {
    "official": "OFFICIAL protocol (threshold tuned on val, applied to test)",
    "split_tuned": "SPLIT-TUNED protocol (threshold tuned on the reported split itself; optimistic)",
}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:6.2f}"


def _overall_lines(report: F1Report, mean_ap: MAPResult | None) -> list[str]:
    lines = [
        f"  Macro-F1 (%)   {_pct(report.macro_f1)}",
        f"  Micro-F1 (%)   {_pct(report.micro_f1)}",
        f"  Samples-F1 (%) {_pct(report.samples_f1)}",
    ]
    if mean_ap is not None:
        lines.append(f"  mAP (%)        {_pct(mean_ap.map)}")
        if mean_ap.n_excluded:
            lines.append(
                f"  mAP excludes {mean_ap.n_excluded} class(es) without positives: "
                f"{', '.join(mean_ap.excluded_class_names)}"
            )
    if report.classes_without_positives:
        lines.append(
            f"  {len(report.classes_without_positives)} class(es) without positives count as F1 = 0 in macro-F1: "
            f"{', '.join(report.class_name(i) for i in report.classes_without_positives)}"
        )
    return lines


def _subset_lines(report: F1Report) -> list[str]:
    if not report.subset_macro_f1:
        return []
    width = max(len(name) for name in report.subset_macro_f1)
    lines = ["", "  Subset macro-F1 (%)"]
    for name, value in report.subset_macro_f1.items():
        lines.append(f"    {name:<{width}}  {_pct(value)}  ({len(report.subsets[name])} classes)")
    return lines


def _per_class_lines(report: F1Report, mean_ap: MAPResult | None) -> list[str]:
    names = [report.class_name(i) for i in range(report.n_classes)]
    width = max(5, max(len(n) for n in names))
    header = f"    {'id':>3}  {'class':<{width}}  {'pos':>5}  {'F1 (%)':>6}"
    if mean_ap is not None:
        header += f"  {'AP (%)':>6}"
    lines = ["", "  Per-class", header]
    for index, name in enumerate(names):
        line = (
            f"    {index:>3}  {name:<{width}}  {report.positives_per_class[index]:>5}  "
            f"{_pct(report.per_class_f1[index])}"
        )
        if mean_ap is not None:
            line += f"  {_pct(mean_ap.per_class[index])}"
        lines.append(line)
    return lines


@singledispatch
def format_table(result: object) -> str:
    """Render a metrics result (protocol, F1 report, mAP, MDID accuracy, scoring run) as text."""
    raise TypeError(f"format_table does not know how to render {type(result).__name__}")


@format_table.register
def _(result: F1Report) -> str:
    lines = [f"F1 at threshold {result.threshold:g} ({result.n_samples} images, {result.n_classes} classes)"]
    lines += _overall_lines(result, None) + _subset_lines(result) + _per_class_lines(result, None)
    return "\n".join(lines)


@format_table.register
def _(result: MAPResult) -> str:
    lines = [f"mAP (%) {_pct(result.map)} over {len(result.per_class) - result.n_excluded} classes"]
    if result.n_excluded:
        lines.append(
            f"  excluded {result.n_excluded} class(es) without positives: {', '.join(result.excluded_class_names)}"
        )
    names = [result.class_names[i] if result.class_names else str(i) for i in range(len(result.per_class))]
    width = max(5, max(len(n) for n in names))
    lines.append(f"    {'id':>3}  {'class':<{width}}  {'AP (%)':>6}")
    for index, (name, value) in enumerate(zip(names, result.per_class, strict=True)):
        lines.append(f"    {index:>3}  {name:<{width}}  {_pct(value)}")
    return "\n".join(lines)


@format_table.register
def _(result: ProtocolResult) -> str:
    title = _PROTOCOL_TITLES.get(result.protocol, result.protocol)
    selection = result.selection
    lines = [
        title,
        f"  threshold {selection.threshold:g} chosen on {selection.tuned_on} "
        f"(macro-F1 there {_pct(selection.tuning_macro_f1).strip()} %); "
        f"evaluated on {result.evaluated_on} ({result.report.n_samples} images)",
    ]
    lines += _overall_lines(result.report, result.average_precision)
    lines += _subset_lines(result.report)
    lines += _per_class_lines(result.report, result.average_precision)
    return "\n".join(lines)


@format_table.register
def _(result: MDIDAccuracyResult) -> str:
    lines = ["MDID top-1 accuracy (%)"]
    for index, value in zip(result.split_indices or range(len(result.per_split)), result.per_split):
        lines.append(f"  split {index}  {_pct(value)}")
    lines.append(
        f"  mean {_pct(result.mean).strip()} +- {_pct(result.std).strip()} "
        f"(population std, ddof={result.ddof}, {len(result.per_split)} splits)"
    )
    return "\n".join(lines)


@format_table.register
def _(result: ScoringResult) -> str:
    sections = [format_table(r) for r in (result.official, result.split_tuned) if r is not None]
    if result.notes:
        sections.append("Notes:\n" + "\n".join(f"  - {note}" for note in result.notes))
    return "\n\n".join(sections)
