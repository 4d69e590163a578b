"""Threshold-based multi-label F1 as defined by the official Intentonomy evaluation.

Conventions (all deliberate, all documented here because they change the numbers):

* A class is predicted when ``score > threshold`` (strictly greater), as in the official
  Intentonomy code. Scores must be probabilities in [0, 1].
* All F1 values come from :func:`sklearn.metrics.f1_score` with ``zero_division=0``: a class
  (macro / per-class) or an image (samples) whose F1 is undefined (no positives and no
  predictions, or no predictions at all for precision) contributes 0. This is sklearn's
  default value made explicit (it also silences the warnings), and it is what the official
  protocol's sklearn call produces. Classes without positives in the split therefore still
  count in macro-F1; the report lists them so that this is visible.
* Subset macro-F1 is sklearn's macro-F1 over the subset's label columns, i.e. the mean of the
  per-class F1 of the classes in the subset.
* Candidate thresholds are 0.05, 0.10, ..., 0.95 stored as the exact decimals (``round(k *
  0.05, 2)``), not ``np.arange`` accumulations such as 0.15000000000000002.
* Threshold selection maximises macro-F1; when several thresholds reach exactly the same
  maximum (floating-point equality), the LOWEST threshold wins.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mccl_core.metrics._validation import (
    as_label_matrix,
    as_score_matrix,
    check_class_names,
    check_probabilities,
    check_same_shape,
    check_subsets,
)

logger = logging.getLogger(__name__)

THRESHOLDS: tuple[float, ...] = tuple(round(k * 0.05, 2) for k in range(1, 20))
"""Candidate global thresholds of the official protocol: 0.05, 0.10, ..., 0.95."""


@dataclass(frozen=True)
class F1Report:
    """F1 scores of one split at one global threshold (values are fractions in [0, 1])."""

    threshold: float
    macro_f1: float
    micro_f1: float
    samples_f1: float
    per_class_f1: tuple[float, ...]
    subset_macro_f1: dict[str, float]
    subsets: dict[str, tuple[int, ...]]
    n_samples: int
    positives_per_class: tuple[int, ...]
    classes_without_positives: tuple[int, ...]
    class_names: tuple[str, ...] | None = None
    zero_division: float = field(default=0.0)

    @property
    def n_classes(self) -> int:
        return len(self.per_class_f1)

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names is not None else str(index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": float(self.threshold),
            "macro_f1": float(self.macro_f1),
            "micro_f1": float(self.micro_f1),
            "samples_f1": float(self.samples_f1),
            "per_class_f1": [float(v) for v in self.per_class_f1],
            "subset_macro_f1": {k: float(v) for k, v in self.subset_macro_f1.items()},
            "subsets": {k: [int(i) for i in v] for k, v in self.subsets.items()},
            "n_samples": int(self.n_samples),
            "n_classes": int(self.n_classes),
            "positives_per_class": [int(v) for v in self.positives_per_class],
            "classes_without_positives": [int(v) for v in self.classes_without_positives],
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "zero_division": float(self.zero_division),
        }


def _validated_pair(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = as_label_matrix(y_true, "y_true")
    probabilities = as_score_matrix(scores, "scores")
    check_same_shape(labels, probabilities, "y_true", "scores")
    check_probabilities(probabilities, "scores")
    return labels, probabilities


def _binarise(scores: np.ndarray, threshold: float) -> np.ndarray:
    return (scores > threshold).astype(np.int64)


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(t) for t in thresholds)
    if not values:
        raise ValueError("thresholds is empty")
    if not all(np.isfinite(values)):
        raise ValueError(f"thresholds must be finite, got {values}")
    return values


def f1_report(
    y_true: Any,
    scores: Any,
    threshold: float,
    subsets: Mapping[str, Sequence[int]] | None = None,
    class_names: Sequence[str] | None = None,
) -> F1Report:
    """Macro / micro / samples / per-class / subset F1 of ``scores > threshold`` against ``y_true``.

    Args:
        y_true: binary (N, C) multi-hot labels.
        scores: (N, C) probabilities in [0, 1].
        threshold: one global threshold applied to every class.
        subsets: optional name -> class indices (e.g. ``INTENTONOMY_SUBSETS``); None = no subsets.
        class_names: optional C names, carried into the report for tables.
    """
    from sklearn.metrics import f1_score  # imported here: sklearn + scipy cost ~1 s in every step process

    labels, probabilities = _validated_pair(y_true, scores)
    threshold = float(threshold)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    checked_subsets = check_subsets(subsets, labels.shape[1])
    names = check_class_names(class_names, labels.shape[1])
    predictions = _binarise(probabilities, threshold)

    per_class = f1_score(labels, predictions, average=None, zero_division=0)
    subset_f1 = {
        name: float(f1_score(labels[:, list(idx)], predictions[:, list(idx)], average="macro", zero_division=0))
        for name, idx in checked_subsets.items()
    }
    positives = labels.sum(axis=0)
    without_positives = tuple(int(i) for i in np.flatnonzero(positives == 0))
    if without_positives:
        logger.warning(
            "%d class(es) have no positives in this split (indices %s); their F1 is 0 by "
            "zero_division=0 and they still count in macro-F1",
            len(without_positives),
            list(without_positives),
        )
    return F1Report(
        threshold=threshold,
        macro_f1=float(f1_score(labels, predictions, average="macro", zero_division=0)),
        micro_f1=float(f1_score(labels, predictions, average="micro", zero_division=0)),
        samples_f1=float(f1_score(labels, predictions, average="samples", zero_division=0)),
        per_class_f1=tuple(float(v) for v in per_class),
        subset_macro_f1=subset_f1,
        subsets=checked_subsets,
        n_samples=int(labels.shape[0]),
        positives_per_class=tuple(int(v) for v in positives),
        classes_without_positives=without_positives,
        class_names=names,
    )


def threshold_curve(y_true: Any, scores: Any, thresholds: Sequence[float] = THRESHOLDS) -> tuple[float, ...]:
    """Macro-F1 (sklearn, zero_division=0, ``scores > t``) for every candidate threshold ``t``."""
    from sklearn.metrics import f1_score  # imported here: sklearn + scipy cost ~1 s in every step process

    labels, probabilities = _validated_pair(y_true, scores)
    candidates = _check_thresholds(thresholds)
    return tuple(
        float(f1_score(labels, _binarise(probabilities, t), average="macro", zero_division=0)) for t in candidates
    )


def select_threshold(y_true: Any, scores: Any, thresholds: Sequence[float] = THRESHOLDS) -> tuple[float, float]:
    """Return ``(threshold, macro_f1)`` maximising macro-F1; ties go to the lowest threshold."""
    candidates = _check_thresholds(thresholds)
    return pick_threshold(candidates, threshold_curve(y_true, scores, candidates))


def pick_threshold(candidates: Sequence[float], macro_f1_per_candidate: Sequence[float]) -> tuple[float, float]:
    """Return ``(threshold, macro_f1)`` of the best candidate; exact ties go to the lowest threshold.

    The order of ``candidates`` does not matter: the lowest of all maximising thresholds wins.
    """
    values = _check_thresholds(candidates)
    curve = tuple(float(v) for v in macro_f1_per_candidate)
    if len(curve) != len(values):
        raise ValueError(f"{len(values)} candidate thresholds but {len(curve)} macro-F1 values")
    best_f1 = max(curve)
    best_threshold = min(t for t, f in zip(values, curve, strict=True) if f == best_f1)
    return best_threshold, best_f1
