"""MDID intent accuracy: top-1 accuracy per split, then mean and std over the splits.

MDID (Kruk et al., EMNLP 2019) gives each post exactly one intent label and is evaluated with
5 train/val splits. Per split the prediction is ``argmax`` of the scores (on exact ties NumPy
returns the lowest class index) and accuracy is :func:`sklearn.metrics.accuracy_score`.

The std over splits is the POPULATION standard deviation (``np.std(..., ddof=0)``): the splits
are the complete set being summarised, not a sample from a larger population of splits. Note
that some papers use the sample std (ddof=1), which is larger by a factor sqrt(n/(n-1))
(about 1.118 for 5 splits).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score

from mccl_core.metrics._validation import as_score_matrix, to_numpy


@dataclass(frozen=True)
class MDIDAccuracyResult:
    """Accuracy (fraction in [0, 1]) per split plus mean and population std (ddof=0).

    Unpacks like the tuple ``(mean, std, per_split)`` for callers that only want the numbers.
    """

    mean: float
    std: float
    per_split: tuple[float, ...]
    ddof: int = 0

    def __iter__(self) -> Iterator[Any]:
        return iter((self.mean, self.std, self.per_split))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": float(self.mean),
            "std": float(self.std),
            "per_split": [float(v) for v in self.per_split],
            "n_splits": len(self.per_split),
            "std_ddof": int(self.ddof),
        }


def _as_class_indices(y_true: Any, name: str, num_classes: int) -> np.ndarray:
    array = to_numpy(y_true, name)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D vector of class indices (one intent per post), got shape {array.shape}; "
            "convert one-hot labels with argmax first"
        )
    if np.issubdtype(array.dtype, np.floating):
        if np.isnan(array).any():
            raise ValueError(f"{name} contains NaN class indices")
        if not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer class indices, found non-integer values")
    indices = array.astype(np.int64)
    out_of_range = (indices < 0) | (indices >= num_classes)
    if out_of_range.any():
        raise ValueError(
            f"{name} has {int(out_of_range.sum())} class index/indices outside 0..{num_classes - 1}: "
            f"{np.unique(indices[out_of_range])[:5].tolist()}"
        )
    return indices


def mdid_accuracy(splits: Sequence[tuple[Any, Any]]) -> MDIDAccuracyResult:
    """Top-1 accuracy per split, mean and population std (ddof=0) over splits.

    Args:
        splits: one ``(y_true_indices [N], scores [N, C])`` pair per split.
    """
    if len(splits) == 0:
        raise ValueError("mdid_accuracy needs at least one split")
    accuracies: list[float] = []
    for split_index, pair in enumerate(splits):
        if len(pair) != 2:
            raise ValueError(f"split {split_index}: expected a (y_true_indices, scores) pair, got {len(pair)} items")
        scores = as_score_matrix(pair[1], f"split {split_index} scores")
        labels = _as_class_indices(pair[0], f"split {split_index} y_true", scores.shape[1])
        if labels.shape[0] != scores.shape[0]:
            raise ValueError(f"split {split_index}: {labels.shape[0]} labels but {scores.shape[0]} score rows")
        accuracies.append(float(accuracy_score(labels, np.argmax(scores, axis=1))))
    values = np.asarray(accuracies)
    return MDIDAccuracyResult(
        mean=float(np.mean(values)), std=float(np.std(values, ddof=0)), per_split=tuple(accuracies)
    )
