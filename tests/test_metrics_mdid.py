"""MDID top-1 accuracy over splits, checked against sklearn and np.std(ddof=0)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score

from mccl_core.metrics import MDIDAccuracyResult, format_table, mdid_accuracy

NUM_INTENTS = 7  # MDID intent classes


def make_split(seed: int, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_INTENTS, size=n)
    scores = rng.random((n, NUM_INTENTS))
    scores[np.arange(n), labels] += signal
    return labels, scores


def test_accuracy_mean_and_population_std_match_sklearn() -> None:
    splits = [make_split(seed, 260, signal) for seed, signal in enumerate([0.1, 0.3, 0.5, 0.2, 0.0])]
    result = mdid_accuracy(splits)
    expected = [accuracy_score(y, s.argmax(1)) for y, s in splits]
    np.testing.assert_allclose(result.per_split, expected, atol=1e-12)
    assert result.mean == pytest.approx(np.mean(expected), abs=1e-12)
    assert result.std == pytest.approx(np.std(expected, ddof=0), abs=1e-12)
    assert result.std != pytest.approx(np.std(expected, ddof=1))  # documented: population std
    assert len(set(result.per_split)) > 1
    mean, std, per_split = result  # unpacks as (mean, std, per_split)
    assert (mean, std, per_split) == (result.mean, result.std, result.per_split)
    document = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert document["std_ddof"] == 0 and document["n_splits"] == 5 and document["mean"] == result.mean


def test_hand_checked_values_and_argmax_ties() -> None:
    # split 0: 3/4 correct; split 1: tie between classes 0 and 1 -> argmax takes class 0 (lowest index)
    split0 = (np.array([0, 1, 2, 2]), np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.0, 0.2, 0.7], [0.6, 0.3, 0.1]]))
    split1 = (np.array([0, 1]), np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]))
    result = mdid_accuracy([split0, split1])
    assert result.per_split == (0.75, 0.5)
    assert result.mean == pytest.approx(0.625)
    assert result.std == pytest.approx(0.125)
    assert isinstance(result, MDIDAccuracyResult)
    text = format_table(result)
    assert "75.00" in text and "62.50 +- 12.50" in text and "ddof=0" in text


def test_torch_inputs() -> None:
    labels, scores = make_split(3, 50, 0.4)
    from_torch = mdid_accuracy([(torch.from_numpy(labels), torch.from_numpy(scores).bfloat16())])
    assert from_torch.per_split[0] == pytest.approx(
        accuracy_score(labels, torch.from_numpy(scores).bfloat16().float().argmax(1).numpy())
    )


@pytest.mark.parametrize(
    ("splits", "message"),
    [
        ([], "at least one split"),
        ([(np.array([0, 1]), np.ones((3, 7)))], r"split 0: 2 labels but 3 score rows"),
        ([(np.eye(7)[:3], np.ones((3, 7)))], r"split 0 y_true must be a 1-D vector of class indices"),
        ([(np.array([0, 9]), np.ones((2, 7)))], r"split 0 y_true has 1 class index/indices outside 0..6: \[9\]"),
        ([(np.array([0.0, 1.5]), np.ones((2, 7)))], r"must hold integer class indices"),
        ([(np.array([0, 1]), np.array([[np.nan] * 7, [0.1] * 7]))], r"split 0 scores contains 7 NaN"),
        ([(np.array([0, 1]), np.ones(2))], r"split 0 scores must be a 2-D"),
    ],
)
def test_bad_inputs(splits: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mdid_accuracy(splits)
