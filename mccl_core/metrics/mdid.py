"""MDID intent accuracy: top-1 accuracy per split, then mean and std over the splits.

MDID (Kruk et al., EMNLP 2019) gives each post exactly one intent label and is evaluated with
5 train/val splits. Per split the prediction is ``argmax`` of the scores (on exact ties NumPy
returns the lowest class index) and accuracy is :func:`sklearn.metrics.accuracy_score`.

The std over splits is the POPULATION standard deviation (``np.std(..., ddof=0)``): the splits
are the complete set being summarised, not a sample from a larger population of splits. Note
that some papers use the sample std (ddof=1), which is larger by a factor sqrt(n/(n-1))
(about 1.118 for 5 splits).

The pipeline trains and evaluates ONE split index per run (``data.mdid_split_index``); the
protocol's number needs all five. :func:`mdid_protocol` combines the five evaluate-step outputs
(``predictions/val.npz``, read with :func:`load_mdid_val_predictions`) and checks that they
really are the five different splits: the val folds must not share a post (they partition the
dataset), so evaluating one split five times is an error, not a std of 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mccl_core.metrics._validation import as_score_matrix, format_id_list, to_numpy

#: MDID's protocol: val accuracy averaged over split indices 0..4.
MDID_PROTOCOL_SPLITS = 5


@dataclass(frozen=True)
class MDIDAccuracyResult:
    """Accuracy (fraction in [0, 1]) per split plus mean and population std (ddof=0).

    Unpacks like the tuple ``(mean, std, per_split)`` for callers that only want the numbers.
    """

    mean: float
    std: float
    per_split: tuple[float, ...]
    ddof: int = 0
    #: The MDID split index of each ``per_split`` entry, when known (:func:`mdid_protocol`).
    split_indices: tuple[int, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.mean, self.std, self.per_split))

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "mean": float(self.mean),
            "std": float(self.std),
            "per_split": [float(v) for v in self.per_split],
            "n_splits": len(self.per_split),
            "std_ddof": int(self.ddof),
        }
        if self.split_indices:
            document["split_indices"] = [int(k) for k in self.split_indices]
        return document


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
    from sklearn.metrics import accuracy_score  # imported here: sklearn + scipy cost ~1 s in every step process

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


@dataclass(frozen=True)
class MDIDSplitPredictions:
    """One split index's val predictions: post ids, true intent indices [N], scores [N, C]."""

    split_index: int
    image_ids: tuple[str, ...]
    labels: np.ndarray
    scores: np.ndarray


def load_mdid_val_predictions(path: Path, split_index: int) -> MDIDSplitPredictions:
    """Read the evaluate step's ``predictions/val.npz`` (``scores`` [N, C], one-hot ``labels``
    [N, C], ``image_ids`` [N]) of the run on ``data.mdid_split_index = split_index``.

    Raises:
        FileNotFoundError: no such file. ValueError: missing arrays, shapes that disagree, or a
            label row that is not exactly one intent (MDID is single-label).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MDID split {split_index}: predictions file {str(path)!r} not found")
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in ("scores", "labels", "image_ids") if key not in data.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (expected the evaluate step's predictions/val.npz)")
        scores = as_score_matrix(data["scores"], f"{path} scores")
        labels = to_numpy(data["labels"], f"{path} labels")
        image_ids = tuple(str(i) for i in data["image_ids"].tolist())
    if labels.shape != scores.shape or len(image_ids) != scores.shape[0]:
        raise ValueError(
            f"{path}: labels {labels.shape}, scores {scores.shape} and {len(image_ids)} image ids disagree"
        )
    not_single = np.flatnonzero((labels > 0).sum(axis=1) != 1)
    if len(not_single):
        raise ValueError(
            f"{path}: {len(not_single)} post(s) without exactly one intent (MDID is single-label): "
            f"{format_id_list([image_ids[i] for i in not_single])}"
        )
    return MDIDSplitPredictions(int(split_index), image_ids, labels.argmax(axis=1), scores)


def mdid_protocol(
    predictions: Sequence[MDIDSplitPredictions], n_splits: int | None = MDID_PROTOCOL_SPLITS
) -> MDIDAccuracyResult:
    """MDID's reported number: val top-1 accuracy of each split index, mean and population std.

    Args:
        predictions: one entry per split index (any order; the result is ordered by index).
        n_splits: the split indices required (0..n_splits-1); ``None`` accepts any distinct
            subset (a partial run - do not report it as the MDID number).

    Raises:
        ValueError: a split index given twice or missing, differing class counts, or val folds
            that share a post (the same split evaluated twice, or splits of another dataset).
    """
    ordered = sorted(predictions, key=lambda p: p.split_index)
    indices = [p.split_index for p in ordered]
    if len(set(indices)) != len(indices):
        raise ValueError(f"MDID split indices given more than once: {sorted(indices)}")
    if n_splits is not None and indices != list(range(n_splits)):
        raise ValueError(
            f"the MDID protocol averages split indices 0..{n_splits - 1}; got {indices} "
            "(evaluate the missing ones, or pass n_splits=None for a partial summary)"
        )
    counts = {p.scores.shape[1] for p in ordered}
    if len(counts) > 1:
        raise ValueError(f"the splits' models predict different numbers of classes: {sorted(counts)}")
    seen: dict[str, int] = {}
    for split in ordered:
        shared = [i for i in split.image_ids if i in seen]
        if shared:
            raise ValueError(
                f"MDID val folds must not overlap, but split {split.split_index} shares "
                f"{len(shared)} post(s) with split {seen[shared[0]]}: {format_id_list(shared)}; "
                "was the same split index evaluated twice?"
            )
        seen.update({i: split.split_index for i in split.image_ids})
    result = mdid_accuracy([(p.labels, p.scores) for p in ordered])
    return MDIDAccuracyResult(result.mean, result.std, result.per_split, result.ddof, tuple(indices))
