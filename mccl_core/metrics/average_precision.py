"""Mean average precision (mAP) over classes, with explicit handling of empty classes.

AP of one class is :func:`sklearn.metrics.average_precision_score` on that class's column
(step-wise precision-recall area, no interpolation; the definition torchmetrics also uses).
A class without any positive image in the split has no defined AP (sklearn would return 0
with a warning, silently dragging the mean down), so it is EXCLUDED from the mean and its
index/name is reported in :class:`MAPResult` instead. mAP is threshold-free, so scores may be
probabilities or logits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mccl_core.metrics._validation import (
    as_label_matrix,
    as_score_matrix,
    check_class_names,
    check_same_shape,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MAPResult:
    """mAP over the classes that have positives; ``per_class`` holds None for excluded classes."""

    map: float
    per_class: tuple[float | None, ...]
    n_excluded: int
    excluded_classes: tuple[int, ...]
    class_names: tuple[str, ...] | None = None

    @property
    def excluded_class_names(self) -> tuple[str, ...]:
        if self.class_names is None:
            return tuple(str(i) for i in self.excluded_classes)
        return tuple(self.class_names[i] for i in self.excluded_classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "map": float(self.map),
            "per_class": [None if v is None else float(v) for v in self.per_class],
            "n_excluded": int(self.n_excluded),
            "excluded_classes": [int(i) for i in self.excluded_classes],
            "excluded_class_names": list(self.excluded_class_names),
            "class_names": list(self.class_names) if self.class_names is not None else None,
        }


def mean_average_precision(y_true: Any, scores: Any, class_names: Sequence[str] | None = None) -> MAPResult:
    """Mean of per-class average precision, excluding (and reporting) classes with no positives.

    Raises:
        ValueError: on bad inputs, or when no class has a positive (mAP undefined).
    """
    from sklearn.metrics import (
        average_precision_score,  # imported here: sklearn + scipy cost ~1 s in every step process
    )

    labels = as_label_matrix(y_true, "y_true")
    values = as_score_matrix(scores, "scores")
    check_same_shape(labels, values, "y_true", "scores")
    names = check_class_names(class_names, labels.shape[1])

    per_class: list[float | None] = []
    excluded: list[int] = []
    for class_index in range(labels.shape[1]):
        column = labels[:, class_index]
        if column.sum() == 0:
            per_class.append(None)
            excluded.append(class_index)
            continue
        per_class.append(float(average_precision_score(column, values[:, class_index])))
    included = [v for v in per_class if v is not None]
    if not included:
        raise ValueError(f"mAP is undefined: none of the {labels.shape[1]} classes has a positive label in y_true")
    if excluded:
        logger.warning(
            "mAP: excluded %d class(es) without positives in this split: %s",
            len(excluded),
            [names[i] if names else i for i in excluded],
        )
    return MAPResult(
        map=float(np.mean(included)),
        per_class=tuple(per_class),
        n_excluded=len(excluded),
        excluded_classes=tuple(excluded),
        class_names=names,
    )
