"""Input checks shared by the metric functions.

Every public metric converts its inputs through these helpers so that a wrong input fails
loudly with a message naming the argument and the problem (shape, NaN, non-binary labels,
out-of-range indices) instead of producing a plausible-looking but wrong number.
Torch tensors (any device / dtype, including bf16) are accepted and copied to float64 NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_MAX_LISTED = 5


def to_numpy(values: Any, name: str) -> np.ndarray:
    """Convert array-likes (NumPy, lists, torch tensors) to a NumPy array without importing torch."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        # torch.Tensor: bf16/half cannot go straight to NumPy, so upcast first.
        values = values.detach().cpu()
        if values.is_floating_point():
            values = values.double()
        values = values.numpy()
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def _first_positions(mask: np.ndarray) -> str:
    positions = np.argwhere(mask)[:_MAX_LISTED]
    return ", ".join(str(tuple(int(i) for i in p)) for p in positions)


def as_label_matrix(y_true: Any, name: str = "y_true") -> np.ndarray:
    """Return a binary (N, C) int64 label matrix or raise ValueError saying what is wrong."""
    array = to_numpy(y_true, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, n_classes) matrix, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating):
        nan_mask = np.isnan(array)
        if nan_mask.any():
            raise ValueError(
                f"{name} contains {int(nan_mask.sum())} NaN value(s), first at (row, class) "
                f"{_first_positions(nan_mask)}"
            )
    non_binary = (array != 0) & (array != 1)
    if non_binary.any():
        bad_values = np.unique(array[non_binary])[:_MAX_LISTED].tolist()
        raise ValueError(
            f"{name} must be binary (0/1 multi-hot labels), found non-binary values {bad_values} "
            f"in {int(non_binary.sum())} cell(s), first at (row, class) {_first_positions(non_binary)}"
        )
    return array.astype(np.int64)


def as_score_matrix(scores: Any, name: str = "scores") -> np.ndarray:
    """Return a finite (N, C) float64 score matrix or raise ValueError saying what is wrong."""
    array = to_numpy(scores, name).astype(np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n_samples, n_classes) matrix, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape})")
    nan_mask = np.isnan(array)
    if nan_mask.any():
        raise ValueError(
            f"{name} contains {int(nan_mask.sum())} NaN value(s), first at (row, class) {_first_positions(nan_mask)}"
        )
    inf_mask = np.isinf(array)
    if inf_mask.any():
        raise ValueError(
            f"{name} contains {int(inf_mask.sum())} infinite value(s), first at (row, class) "
            f"{_first_positions(inf_mask)}"
        )
    return array


def check_same_shape(y_true: np.ndarray, scores: np.ndarray, true_name: str, score_name: str) -> None:
    if y_true.shape != scores.shape:
        raise ValueError(
            f"shape mismatch: {true_name} has shape {y_true.shape} but {score_name} has shape {scores.shape}"
        )


def check_probabilities(scores: np.ndarray, name: str = "scores") -> None:
    """Thresholds 0.05..0.95 only mean something for probabilities; logits must be rejected."""
    outside = (scores < 0.0) | (scores > 1.0)
    if outside.any():
        raise ValueError(
            f"{name} must be probabilities in [0, 1] for threshold-based F1 (apply a sigmoid to logits "
            f"first); {int(outside.sum())} value(s) outside, range [{scores.min():.4g}, {scores.max():.4g}], "
            f"first at (row, class) {_first_positions(outside)}"
        )


def check_subsets(subsets: Mapping[str, Sequence[int]] | None, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Validate class-index subsets against the number of classes."""
    if subsets is None:
        return {}
    checked: dict[str, tuple[int, ...]] = {}
    for subset_name, indices in subsets.items():
        index_tuple = tuple(int(i) for i in indices)
        if not index_tuple:
            raise ValueError(f"subset {subset_name!r} is empty")
        if len(set(index_tuple)) != len(index_tuple):
            raise ValueError(f"subset {subset_name!r} lists a class index more than once: {index_tuple}")
        out_of_range = [i for i in index_tuple if not 0 <= i < num_classes]
        if out_of_range:
            raise ValueError(f"subset {subset_name!r} has class indices {out_of_range} outside 0..{num_classes - 1}")
        checked[str(subset_name)] = index_tuple
    return checked


def check_class_names(class_names: Sequence[str] | None, num_classes: int) -> tuple[str, ...] | None:
    if class_names is None:
        return None
    names = tuple(str(n) for n in class_names)
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries but the matrices have {num_classes} classes")
    return names


def format_id_list(ids: Sequence[str], limit: int = _MAX_LISTED) -> str:
    """'N id(s): a, b, c' or 'N id(s), first 5: a, b, ...' for error messages about image ids."""
    ids = list(ids)
    shown = ", ".join(repr(i) for i in ids[:limit])
    if len(ids) <= limit:
        return f"{len(ids)} id(s): {shown}"
    return f"{len(ids)} id(s), first {limit}: {shown}"
