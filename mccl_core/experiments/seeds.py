"""Comparisons over several seeds: one model per (variant, seed), summarised per variant as
mean ± std with a paired difference against the reference variant and a verdict.

A seed sets every random choice of the recipe: ``train.seed`` (initialisation, data order,
augmentation), ``extract.seed`` (which patch tokens CPI clusters) and ``model.cpi.seed`` (k-means
starts). The trained-model cache keys on the resolved configs, so each (variant, seed) is
trained once and reused by every later experiment that needs it.

The statistics are :mod:`mccl_core.metrics.bootstrap`'s: per variant the mean and sample std
over seeds; against the reference the mean paired difference over seeds with a 95 % interval
from a bootstrap over seeds and test images, and ``better`` / ``worse`` / ``within noise``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mccl_core.config import ConfigError, merge
from mccl_core.metrics.bootstrap import Metric, PairedDifference, ScoredRun, paired_difference, seed_spread

#: (metric of the bootstrap, row key of its value) compared against the reference.
COMPARED: tuple[tuple[Metric, str], ...] = (("macro_f1", "test_macro_f1"), ("map", "test_map"))


def parse_seeds(text: str | Sequence[int] | None, default: int) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; empty -> ``[default]`` (the params' ``train.seed``)."""
    items: list[Any] = []
    if isinstance(text, str):
        items = text.split(",")
    elif text is not None:
        items = [*text]
    items = [i for i in items if str(i).strip()]
    if not items:
        return [int(default)]
    seeds: list[int] = []
    for item in items:
        try:
            seed = int(str(item).strip())
        except ValueError:
            raise ConfigError(f"--seeds: {item!r} is not an integer (expected e.g. 0,1,2)") from None
        if seed < 0:
            raise ConfigError(f"--seeds: seeds must be >= 0, got {seed}")
        if seed in seeds:
            raise ConfigError(f"--seeds: seed {seed} is listed twice")
        seeds.append(seed)
    return seeds


def with_seed(params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """``params`` with every random choice of the recipe seeded by ``seed``."""
    return merge(params, {"train": {"seed": seed}, "extract": {"seed": seed}, "model": {"cpi": {"seed": seed}}})


@dataclass
class SeedRun:
    """One evaluated model: its row of metrics and its test scores (for the paired bootstrap)."""

    variant: str
    seed: int
    row: dict[str, Any]
    truth_test: np.ndarray
    scores_test: np.ndarray
    #: Rows are compared only within one group (e.g. one corruption of the robustness experiment).
    group: str = ""

    @property
    def scored(self) -> ScoredRun:
        return ScoredRun(self.scores_test, float(self.row["threshold"]))


@dataclass
class SeedSummary:
    variant: str
    group: str
    seeds: list[int]
    spread: dict[str, tuple[float, float]]
    differences: dict[str, PairedDifference] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "seeds": ",".join(map(str, self.seeds)),
                               "n_seeds": len(self.seeds)}  # fmt: skip
        if self.group:
            out["group"] = self.group
        for key, (mean, std) in self.spread.items():
            out[f"{key}_mean"] = mean
            out[f"{key}_std"] = std
        for metric, diff in self.differences.items():
            out[f"diff_{metric}"] = diff.estimate
            out[f"diff_{metric}_low"] = diff.low
            out[f"diff_{metric}_high"] = diff.high
            out[f"verdict_{metric}"] = diff.verdict
        return out


def summarise(
    runs: Sequence[SeedRun],
    reference: str | None,
    keys: Sequence[str] = ("val_macro_f1", "test_macro_f1", "test_map"),
    n_boot: int = 1000,
) -> list[SeedSummary]:
    """Per (group, variant) in first-seen order: mean ± std of ``keys`` over seeds, and against
    ``reference`` (same group) the paired difference of test macro-F1 and mAP with its interval.

    A run without seeds of its own (the label prior: ``seed == -1``) is paired with every seed of
    the reference, as its predictions do not depend on the seed.
    """
    order: list[tuple[str, str]] = []
    by_key: dict[tuple[str, str], dict[int, SeedRun]] = {}
    for run in runs:
        slot = (run.group, run.variant)
        if slot not in by_key:
            order.append(slot)
            by_key[slot] = {}
        if run.seed in by_key[slot]:
            raise ValueError(f"two runs of variant {run.variant!r} with seed {run.seed}")
        by_key[slot][run.seed] = run
    out = []
    for group, variant in order:
        seeded = by_key[(group, variant)]
        present = [k for k in keys if all(isinstance(r.row.get(k), (int, float)) for r in seeded.values())]
        spread = {k: seed_spread([r.row[k] for r in seeded.values()]) for k in present}
        summary = SeedSummary(variant, group, sorted(s for s in seeded if s >= 0), spread)
        base = by_key.get((group, reference)) if reference is not None else None
        if base is not None and variant != reference:
            seedless = set(seeded) == {-1}
            shared = sorted(base) if seedless else sorted(set(seeded) & set(base))
            if shared:
                mine = [seeded[-1] if seedless else seeded[s] for s in shared]
                truth = base[shared[0]].truth_test
                for metric, _ in COMPARED:
                    summary.differences[metric] = paired_difference(
                        truth, [r.scored for r in mine], [base[s].scored for s in shared], metric, n_boot
                    )
        out.append(summary)
    return out


def mean_std_cell(mean: float | None, std: float | None) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.3f}" if std is None or not np.isfinite(std) else f"{mean:.3f} ± {std:.3f}"


def summary_table(summaries: Sequence[SeedSummary], reference: str | None,
                  keys: Sequence[tuple[str, str]] = (("val_macro_f1", "val macro-F1"),
                                                     ("test_macro_f1", "test macro-F1"),
                                                     ("test_map", "test mAP"))) -> str:  # fmt: skip
    """Markdown: mean ± std per variant and, against ``reference``, the paired difference
    ``+d [low, high]`` with its verdict for test macro-F1 and mAP."""
    grouped = any(s.group for s in summaries)
    head = (["group"] if grouped else []) + ["variant", "seeds"] + [h for _, h in keys]
    head += [f"Δ macro-F1 vs {reference} [95 % CI]", "verdict", f"Δ mAP vs {reference} [95 % CI]", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = ([s.group] if grouped else []) + [s.variant, ",".join(map(str, s.seeds)) or "–"]
        cells += [mean_std_cell(*s.spread.get(k, (None, None))) for k, _ in keys]
        for metric, _ in COMPARED:
            diff = s.differences.get(metric)
            if s.variant == reference:
                cells += ["reference", ""]
            elif diff is None:
                cells += ["–", "–"]
            else:
                cells += [diff.describe(), f"**{diff.verdict}**" if diff.verdict != "within noise" else diff.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
