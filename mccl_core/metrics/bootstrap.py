"""Seed spread and paired bootstrap intervals: is a difference between two variants real?

One training seed is an anecdote: on the demo the same config has landed anywhere in a 0.08
band of test macro-F1. A comparison of variant A against reference B therefore trains both
with the same seeds and reports:

* per variant, the mean and the sample standard deviation (``ddof=1``) of each metric over seeds;
* the paired difference ``mean_s [m(A_s) - m(B_s)]`` on the full test set, with a 95 % interval
  from a two-level bootstrap: each replicate draws the seeds with replacement (the pair A_s, B_s
  stays together, so seed noise enters the interval) and the test images with replacement (the
  same images for every seed and both variants, so the comparison stays paired);
* a verdict: ``better`` when the whole interval lies above 0, ``worse`` when below, otherwise
  ``within noise``.

Each model keeps the threshold it chose on val (the official protocol); the bootstrap only
resamples test images, it never re-tunes. The resampled metrics are the same definitions as
:mod:`mccl_core.metrics.f1` and :mod:`mccl_core.metrics.average_precision` (``score >
threshold``, ``zero_division=0``; step-wise AP with tied scores grouped, classes without
positives left out of the mean), written with image multiplicities as weights so that a thousand
replicates cost a few matrix products; tests check them against sklearn at unit weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mccl_core.metrics._validation import as_label_matrix, as_score_matrix, check_same_shape

Metric = Literal["macro_f1", "map"]
Verdict = Literal["better", "worse", "within noise"]
METRICS: tuple[Metric, ...] = ("macro_f1", "map")


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single seed) of per-seed values."""
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    if array.size == 0:
        raise ValueError("seed_spread needs at least one value")
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return float(array.mean()), std


def weighted_macro_f1(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro-F1 of binary ``predictions`` [N, C] against ``labels`` [N, C] under image weights
    ``weights`` [R, N] (multiplicities of a resample); returns [R]. F1 = 2tp / (2tp + fp + fn),
    0 where a class has neither positives nor predictions (sklearn's ``zero_division=0``)."""
    y = labels.astype(np.float64)
    p = predictions.astype(np.float64)
    tp = weights @ (y * p)  # [R, C]
    fp = weights @ ((1.0 - y) * p)
    fn = weights @ (y * (1.0 - p))
    denominator = 2.0 * tp + fp + fn
    f1 = np.divide(2.0 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(axis=1)


def weighted_map(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """mAP of ``scores`` [N, C] under image weights [R, N]; returns [R]. Per class: step-wise
    average precision over the distinct score thresholds (ties in one step, as sklearn); a class
    with no weighted positive in a replicate is left out of that replicate's mean."""
    n_rep = weights.shape[0]
    per_class = np.full((n_rep, labels.shape[1]), np.nan)
    for c in range(labels.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        sorted_scores = scores[order, c]
        positive = labels[order, c].astype(np.float64)
        w = weights[:, order]  # [R, N]
        cum_tp = np.cumsum(w * positive, axis=1)
        cum_all = np.cumsum(w, axis=1)
        # a threshold step ends where the next score differs (tied scores form one step)
        ends = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
        tp_at = cum_tp[:, ends]
        all_at = cum_all[:, ends]
        total = tp_at[:, -1:]
        precision = np.divide(tp_at, all_at, out=np.zeros_like(tp_at), where=all_at > 0)
        recall_step = np.diff(tp_at, axis=1, prepend=0.0)
        ap = np.divide((recall_step * precision).sum(axis=1, keepdims=True), total,
                       out=np.full_like(total, np.nan), where=total > 0)  # fmt: skip
        per_class[:, c] = ap[:, 0]
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(per_class), axis=1)
        sums = np.nansum(per_class, axis=1)
    return np.divide(sums, counts, out=np.full(n_rep, np.nan), where=counts > 0)


@dataclass(frozen=True)
class ScoredRun:
    """One trained model's test scores [N, C] and the threshold it chose on val."""

    scores: np.ndarray
    threshold: float

    def metric(self, name: Metric, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if name == "macro_f1":
            return weighted_macro_f1(labels, self.scores > self.threshold, weights)
        if name == "map":
            return weighted_map(labels, self.scores, weights)
        raise ValueError(f"unknown metric {name!r}; valid: {METRICS}")


@dataclass(frozen=True)
class PairedDifference:
    """``estimate`` = mean over seeds of (variant - reference) on the full test set; [low, high]
    its bootstrap interval at ``level``."""

    metric: str
    estimate: float
    low: float
    high: float
    n_seeds: int
    n_boot: int
    level: float

    @property
    def verdict(self) -> Verdict:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "within noise"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "estimate": self.estimate, "low": self.low, "high": self.high,
                "n_seeds": self.n_seeds, "n_boot": self.n_boot, "level": self.level,
                "verdict": self.verdict}  # fmt: skip

    def describe(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(
    labels: Any,
    variant: Sequence[ScoredRun],
    reference: Sequence[ScoredRun],
    metric: Metric = "macro_f1",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Paired difference of ``variant`` against ``reference`` (same test images; ``variant[i]``
    and ``reference[i]`` trained with the same seed) with a two-level bootstrap interval."""
    truth = as_label_matrix(labels, "labels")
    if len(variant) != len(reference) or not variant:
        raise ValueError(f"paired comparison needs the same seeds on both sides, got {len(variant)} "
                         f"and {len(reference)} runs")  # fmt: skip
    for run in (*variant, *reference):
        check_same_shape(truth, as_score_matrix(run.scores, "scores"), "labels", "scores")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n_images, n_seeds = truth.shape[0], len(variant)
    rng = np.random.default_rng(seed)
    full = np.ones((1, n_images))
    per_seed_full = [float(a.metric(metric, truth, full)[0] - b.metric(metric, truth, full)[0])
                     for a, b in zip(variant, reference)]  # fmt: skip
    draws = rng.integers(0, n_images, size=(n_boot, n_images))
    weights = np.zeros((n_boot, n_images))
    np.add.at(weights, (np.arange(n_boot)[:, None], draws), 1.0)
    # [S, R]: each seed's difference on each image resample (same images everywhere: paired)
    per_seed = np.stack([a.metric(metric, truth, weights) - b.metric(metric, truth, weights)
                         for a, b in zip(variant, reference)])  # fmt: skip
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    replicates = per_seed[seed_draws, np.arange(n_boot)[:, None]].mean(axis=1)
    replicates = replicates[np.isfinite(replicates)]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return PairedDifference(metric, float(np.mean(per_seed_full)), float(low), float(high), n_seeds, n_boot, level)
