"""Official / split-tuned Intentonomy protocol and mAP, checked against direct sklearn calls on the
real Intentonomy val/test label matrices (copied into tests/fixtures/intentonomy/)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score

from mccl_core.metrics import (
    INTENTONOMY_SUBSETS,
    THRESHOLDS,
    F1Report,
    MAPResult,
    OfficialProtocolResult,
    SplitTunedProtocolResult,
    f1_report,
    format_table,
    intentonomy_subsets_for,
    mean_average_precision,
    official_protocol,
    pick_threshold,
    resolve_subsets,
    select_threshold,
    split_tuned_protocol,
    threshold_curve,
)

FIXTURES = Path(__file__).parent / "fixtures" / "intentonomy"
NUM_CLASSES = 28


@pytest.fixture(scope="module")
def val_labels() -> np.ndarray:
    return np.load(FIXTURES / "val_label_vectors_intentonomy2020.npy")


@pytest.fixture(scope="module")
def test_labels() -> np.ndarray:
    return np.load(FIXTURES / "test_label_vectors_intentonomy2020.npy")


def random_scores(labels: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(labels.shape)


def informative_scores(labels: np.ndarray, seed: int, signal: float = 0.35) -> np.ndarray:
    """Labels plus noise: positives score higher on average, so F1 depends on the threshold."""
    noise = np.random.default_rng(seed).random(labels.shape)
    return np.clip(signal * labels + (1.0 - signal) * noise, 0.0, 1.0)


def brute_force_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Independent re-implementation of the selection rule with sklearn: argmax, first = lowest."""
    grid = np.round(np.linspace(0.05, 0.95, 19), 2)
    curve = [f1_score(labels, (scores > t).astype(int), average="macro", zero_division=0) for t in grid]
    best = int(np.argmax(curve))
    return float(grid[best]), float(curve[best])


def test_real_fixtures_are_the_expected_matrices(val_labels: np.ndarray, test_labels: np.ndarray) -> None:
    assert val_labels.shape == (498, NUM_CLASSES)
    assert test_labels.shape == (1217, NUM_CLASSES)
    assert set(np.unique(val_labels)) == {0.0, 1.0}
    # Every class has positives in both official splits (so mAP excludes nothing there).
    assert (val_labels.sum(0) > 0).all() and (test_labels.sum(0) > 0).all()


def test_threshold_grid_is_the_official_one() -> None:
    assert THRESHOLDS == tuple(np.round(np.arange(1, 20) * 0.05, 2).tolist())
    assert THRESHOLDS[0] == 0.05 and THRESHOLDS[-1] == 0.95 and len(THRESHOLDS) == 19
    assert 0.15 in THRESHOLDS  # exact decimals, not 0.15000000000000002


def test_intentonomy_subsets_partition_and_complement() -> None:
    assert set(INTENTONOMY_SUBSETS) == {"easy", "medium", "hard", "object", "context", "other"}
    assert INTENTONOMY_SUBSETS["easy"] == (0, 7, 19)
    assert INTENTONOMY_SUBSETS["context"] == (7, 8)
    assert INTENTONOMY_SUBSETS["object"] == (0, 3, 10, 11, 12, 16, 23)
    difficulty = INTENTONOMY_SUBSETS["easy"] + INTENTONOMY_SUBSETS["medium"] + INTENTONOMY_SUBSETS["hard"]
    assert sorted(difficulty) == list(range(NUM_CLASSES))  # partition: each class exactly once
    object_or_context = set(INTENTONOMY_SUBSETS["object"]) | set(INTENTONOMY_SUBSETS["context"])
    assert set(INTENTONOMY_SUBSETS["other"]) == set(range(NUM_CLASSES)) - object_or_context
    assert len(INTENTONOMY_SUBSETS["other"]) == 19


def test_subsets_rule_is_by_class_names() -> None:
    from mccl_core.data.intentonomy_json import INTENTONOMY_CLASSES

    assert intentonomy_subsets_for(INTENTONOMY_CLASSES) == INTENTONOMY_SUBSETS
    assert intentonomy_subsets_for(list(INTENTONOMY_CLASSES)) == INTENTONOMY_SUBSETS
    other_28 = [f"intent_{i}" for i in range(NUM_CLASSES)]
    assert intentonomy_subsets_for(other_28) is None  # 28 classes, other names: no Intentonomy subsets
    assert intentonomy_subsets_for(INTENTONOMY_CLASSES[::-1]) is None  # same names, other ids
    assert intentonomy_subsets_for(INTENTONOMY_CLASSES[:10]) is None
    # A fresh dict: callers cannot change the module constant.
    intentonomy_subsets_for(INTENTONOMY_CLASSES)["easy"] = ()  # type: ignore[index]
    assert INTENTONOMY_SUBSETS["easy"] == (0, 7, 19)
    assert resolve_subsets("auto", INTENTONOMY_CLASSES) == INTENTONOMY_SUBSETS
    assert resolve_subsets("auto", other_28) is None
    assert resolve_subsets("none", INTENTONOMY_CLASSES) is None
    assert resolve_subsets("intentonomy", INTENTONOMY_CLASSES) == INTENTONOMY_SUBSETS
    with pytest.raises(ValueError, match="Intentonomy subsets need the 28 Intentonomy classes"):
        resolve_subsets("intentonomy", other_28)
    with pytest.raises(ValueError, match="subsets must be one of"):
        resolve_subsets("all", INTENTONOMY_CLASSES)


@pytest.mark.parametrize("kind", ["random", "informative"])
def test_f1_report_equals_sklearn_on_real_labels(test_labels: np.ndarray, kind: str) -> None:
    scores = random_scores(test_labels, 1) if kind == "random" else informative_scores(test_labels, 1)
    threshold = 0.45
    report = f1_report(test_labels, scores, threshold, INTENTONOMY_SUBSETS)
    predicted = (scores > threshold).astype(int)
    assert report.macro_f1 == pytest.approx(
        f1_score(test_labels, predicted, average="macro", zero_division=0), abs=1e-12
    )
    assert report.micro_f1 == pytest.approx(
        f1_score(test_labels, predicted, average="micro", zero_division=0), abs=1e-12
    )
    assert report.samples_f1 == pytest.approx(
        f1_score(test_labels, predicted, average="samples", zero_division=0), abs=1e-12
    )
    np.testing.assert_allclose(
        report.per_class_f1, f1_score(test_labels, predicted, average=None, zero_division=0), atol=1e-12
    )
    for name, indices in INTENTONOMY_SUBSETS.items():
        expected = f1_score(test_labels[:, indices], predicted[:, indices], average="macro", zero_division=0)
        assert report.subset_macro_f1[name] == pytest.approx(expected, abs=1e-12)
        # subset macro-F1 is the mean of the subset's per-class F1
        assert report.subset_macro_f1[name] == pytest.approx(np.mean([report.per_class_f1[i] for i in indices]))
    assert report.positives_per_class == tuple(int(v) for v in test_labels.sum(0))
    assert report.classes_without_positives == ()


def test_strictly_greater_than_threshold() -> None:
    labels = np.array([[1, 0], [0, 1]])
    scores = np.array([[0.5, 0.5], [0.5, 0.5]])
    # score == threshold is NOT a positive prediction, so nothing is predicted and F1 is 0
    assert f1_report(labels, scores, 0.5).macro_f1 == 0.0
    assert f1_report(labels, scores, 0.45).micro_f1 == pytest.approx(f1_score(labels, np.ones((2, 2)), average="micro"))


def test_zero_division_is_zero_for_undefined_f1() -> None:
    # class 1 has no positives and no predictions; image 1 has no labels and no predictions:
    # both F1 values are undefined (0/0) and count as 0, as with sklearn zero_division=0.
    labels = np.array([[1, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.1, 0.1]])
    report = f1_report(labels, scores, 0.5)
    assert report.per_class_f1 == (1.0, 0.0)
    assert report.macro_f1 == 0.5
    assert report.samples_f1 == 0.5
    assert report.micro_f1 == 1.0
    assert report.classes_without_positives == (1,)
    assert report.to_dict()["zero_division"] == 0.0


@pytest.mark.parametrize("kind", ["random", "informative"])
def test_selected_threshold_equals_brute_force(val_labels: np.ndarray, kind: str) -> None:
    scores = random_scores(val_labels, 2) if kind == "random" else informative_scores(val_labels, 2)
    expected_threshold, expected_f1 = brute_force_threshold(val_labels, scores)
    threshold, best_f1 = select_threshold(val_labels, scores)
    assert threshold == expected_threshold
    assert best_f1 == pytest.approx(expected_f1, abs=1e-12)
    curve = threshold_curve(val_labels, scores)
    assert len(curve) == len(THRESHOLDS) and max(curve) == best_f1
    if kind == "informative":
        # the choice is not trivial: the curve has a strict interior maximum
        assert 0.05 < threshold < 0.95
        assert curve[0] < best_f1 and curve[-1] < best_f1


def test_ties_go_to_the_lowest_threshold() -> None:
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    # All scores are far outside 0.05..0.95, so every candidate gives identical predictions.
    scores = np.where(labels == 1, 0.99, 0.01)
    assert len(set(threshold_curve(labels, scores))) == 1
    assert select_threshold(labels, scores) == (0.05, 1.0)
    # The rule does not depend on the order of the candidates.
    assert pick_threshold([0.9, 0.3, 0.5], [0.7, 0.7, 0.6]) == (0.3, 0.7)
    assert pick_threshold([0.9, 0.3, 0.5], [0.7, 0.6, 0.8]) == (0.5, 0.8)


def test_official_protocol_tunes_on_val_and_reports_test(val_labels: np.ndarray, test_labels: np.ndarray) -> None:
    val_scores = informative_scores(val_labels, 3)
    # Test scores are shifted up, so the best test threshold differs from the val one:
    # the official protocol must NOT pick up the test optimum.
    test_scores = np.clip(informative_scores(test_labels, 4) + 0.2, 0.0, 1.0)
    result = official_protocol(val_labels, val_scores, test_labels, test_scores, INTENTONOMY_SUBSETS)
    assert isinstance(result, OfficialProtocolResult) and result.protocol == "official"
    val_threshold, val_f1 = brute_force_threshold(val_labels, val_scores)
    test_threshold, test_best_f1 = brute_force_threshold(test_labels, test_scores)
    assert val_threshold != test_threshold
    assert result.threshold == val_threshold
    assert result.selection.tuned_on == "val" and result.evaluated_on == "test"
    assert result.selection.tuning_macro_f1 == pytest.approx(val_f1, abs=1e-12)
    predicted = (test_scores > val_threshold).astype(int)
    assert result.report.macro_f1 == pytest.approx(
        f1_score(test_labels, predicted, average="macro", zero_division=0), abs=1e-12
    )
    assert result.report.micro_f1 == pytest.approx(
        f1_score(test_labels, predicted, average="micro", zero_division=0), abs=1e-12
    )
    assert result.report.samples_f1 == pytest.approx(
        f1_score(test_labels, predicted, average="samples", zero_division=0), abs=1e-12
    )
    assert result.report.macro_f1 < test_best_f1  # tuned on val, so below the test-tuned optimum
    expected_map = np.mean([average_precision_score(test_labels[:, c], test_scores[:, c]) for c in range(NUM_CLASSES)])
    assert result.average_precision.map == pytest.approx(expected_map, abs=1e-12)

    tuned = split_tuned_protocol(test_labels, test_scores, INTENTONOMY_SUBSETS, split="test")
    assert isinstance(tuned, SplitTunedProtocolResult) and tuned.protocol == "split_tuned"
    assert not isinstance(tuned, OfficialProtocolResult)
    assert tuned.threshold == test_threshold
    assert tuned.selection.tuned_on == tuned.evaluated_on == "test"
    assert tuned.report.macro_f1 == pytest.approx(test_best_f1, abs=1e-12)

    official_keys, tuned_keys = set(result.metrics()), set(tuned.metrics())
    assert all(k.startswith("official/") for k in official_keys)
    assert all(k.startswith("split_tuned/") for k in tuned_keys)
    assert not official_keys & tuned_keys
    assert result.metrics()["official/test/macro_f1"] == result.report.macro_f1
    assert tuned.metrics()["split_tuned/test/macro_f1"] == tuned.report.macro_f1
    assert result.to_dict()["protocol"] == "official" and tuned.to_dict()["protocol"] == "split_tuned"


def test_results_are_json_serialisable(val_labels: np.ndarray, test_labels: np.ndarray) -> None:
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    result = official_protocol(
        val_labels,
        informative_scores(val_labels, 5),
        test_labels,
        informative_scores(test_labels, 6),
        INTENTONOMY_SUBSETS,
        class_names=names,
    )
    document = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert document["f1"]["macro_f1"] == result.report.macro_f1
    assert document["threshold"] == result.threshold
    assert document["map"]["map"] == result.average_precision.map
    assert document["f1"]["class_names"] == names
    assert document["selection"]["candidates"] == list(THRESHOLDS)
    assert isinstance(document["f1"]["per_class_f1"][0], float)
    assert result.metrics()["official/test/per_class_f1/class_3"] == result.report.per_class_f1[3]


@pytest.mark.parametrize("kind", ["random", "informative"])
def test_map_equals_sklearn_on_real_labels(test_labels: np.ndarray, kind: str) -> None:
    scores = random_scores(test_labels, 7) if kind == "random" else informative_scores(test_labels, 7)
    result = mean_average_precision(test_labels, scores)
    per_class = [average_precision_score(test_labels[:, c], scores[:, c]) for c in range(NUM_CLASSES)]
    np.testing.assert_allclose(result.per_class, per_class, atol=1e-12)
    assert result.map == pytest.approx(average_precision_score(test_labels, scores, average="macro"), abs=1e-12)
    assert result.n_excluded == 0 and result.excluded_classes == ()


def test_map_matches_torchmetrics(test_labels: np.ndarray) -> None:
    from torchmetrics.classification import MultilabelAveragePrecision

    scores = informative_scores(test_labels, 8)
    metric = MultilabelAveragePrecision(num_labels=NUM_CLASSES, average="macro", thresholds=None)
    expected = metric(torch.from_numpy(scores), torch.from_numpy(test_labels).long()).item()
    assert mean_average_precision(test_labels, scores).map == pytest.approx(expected, abs=1e-6)


@pytest.mark.filterwarnings("ignore:No positive class found in y_true")  # the test's own sklearn call
def test_map_excludes_and_reports_classes_without_positives(
    test_labels: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    labels = test_labels.copy()
    labels[:, [5, 25]] = 0
    scores = informative_scores(test_labels, 9)
    names = [f"intent{i}" for i in range(NUM_CLASSES)]
    with caplog.at_level(logging.WARNING):
        result = mean_average_precision(labels, scores, class_names=names)
    kept = [c for c in range(NUM_CLASSES) if c not in (5, 25)]
    expected = np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in kept])
    assert result.map == pytest.approx(expected, abs=1e-12)
    # sklearn's macro average would count the empty classes as 0 and be lower
    assert result.map > np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in range(NUM_CLASSES)])
    assert result.n_excluded == 2 and result.excluded_classes == (5, 25)
    assert result.excluded_class_names == ("intent5", "intent25")
    assert result.per_class[5] is None and result.per_class[25] is None and result.per_class[0] is not None
    assert "intent25" in caplog.text
    assert result.to_dict()["excluded_class_names"] == ["intent5", "intent25"]
    with pytest.raises(ValueError, match="none of the 28 classes has a positive"):
        mean_average_precision(np.zeros_like(labels), scores)

    report = f1_report(labels, scores, 0.5)
    assert report.classes_without_positives == (5, 25)
    assert report.per_class_f1[5] == 0.0  # zero_division=0, still counted in macro-F1
    assert report.macro_f1 == pytest.approx(np.mean(report.per_class_f1))


def test_torch_tensors_are_accepted(test_labels: np.ndarray) -> None:
    scores = informative_scores(test_labels, 10)
    from_numpy = f1_report(test_labels, scores, 0.5)
    from_torch = f1_report(torch.from_numpy(test_labels), torch.from_numpy(scores), 0.5)
    assert from_torch.macro_f1 == from_numpy.macro_f1
    bf16 = f1_report(torch.from_numpy(test_labels).bool(), torch.from_numpy(scores).bfloat16(), 0.5)
    assert 0.0 < bf16.macro_f1 <= 1.0


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        (
            np.ones((4, 3)),
            np.full((4, 2), 0.5),
            r"shape mismatch: y_true has shape \(4, 3\) but scores has shape \(4, 2\)",
        ),
        (
            np.ones((4, 3)),
            np.array([[0.5, np.nan, 0.5]] * 4),
            r"scores contains 4 NaN value\(s\), first at \(row, class\) \(0, 1\)",
        ),
        (np.ones((4, 3)), np.array([[0.5, np.inf, 0.5]] * 4), r"scores contains 4 infinite"),
        (np.array([[1, 0, 2]] * 4), np.full((4, 3), 0.5), r"y_true must be binary .* non-binary values \[2\]"),
        (np.array([[1, 0, 0.5]] * 4), np.full((4, 3), 0.5), r"y_true must be binary .* \[0.5\]"),
        (np.array([[1, 0, np.nan]] * 4), np.full((4, 3), 0.5), r"y_true contains 4 NaN"),
        (np.ones(4), np.full(4, 0.5), r"y_true must be a 2-D"),
        (np.ones((4, 3)), np.full((4, 3), 3.0), r"probabilities in \[0, 1\].*apply a sigmoid"),
        (np.ones((0, 3)), np.ones((0, 3)), r"y_true is empty"),
        (np.array([["a", "b"]]), np.full((1, 2), 0.5), r"y_true must be numeric"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_problem(labels: np.ndarray, scores: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        f1_report(labels, scores, 0.5)


def test_other_validation_errors(val_labels: np.ndarray, test_labels: np.ndarray) -> None:
    scores = informative_scores(test_labels, 11)
    with pytest.raises(ValueError, match=r"subset 'bad' has class indices \[28\] outside 0..27"):
        f1_report(test_labels, scores, 0.5, {"bad": (0, 28)})
    with pytest.raises(ValueError, match="subset 'empty' is empty"):
        f1_report(test_labels, scores, 0.5, {"empty": ()})
    with pytest.raises(ValueError, match="class_names has 2 entries but the matrices have 28 classes"):
        f1_report(test_labels, scores, 0.5, class_names=["a", "b"])
    with pytest.raises(ValueError, match="val and test have different numbers of classes"):
        official_protocol(val_labels[:, :27], val_labels[:, :27], test_labels, scores)
    with pytest.raises(ValueError, match=r"shape mismatch: val_true has shape \(498, 28\) but val_scores"):
        official_protocol(val_labels, scores, test_labels, scores)
    with pytest.raises(ValueError, match=r"shape mismatch"):
        mean_average_precision(test_labels, scores[:10])
    with pytest.raises(ValueError, match="thresholds is empty"):
        select_threshold(test_labels, scores, thresholds=())
    with pytest.raises(ValueError, match="threshold must be finite"):
        f1_report(test_labels, scores, float("nan"))


def test_format_table_shows_protocol_names_and_numbers(val_labels: np.ndarray, test_labels: np.ndarray) -> None:
    names = [f"Intent{i}" for i in range(NUM_CLASSES)]
    official = official_protocol(
        val_labels,
        informative_scores(val_labels, 12),
        test_labels,
        informative_scores(test_labels, 13),
        INTENTONOMY_SUBSETS,
        class_names=names,
    )
    text = format_table(official)
    assert text.startswith("OFFICIAL protocol")
    assert f"{100 * official.report.macro_f1:6.2f}" in text
    assert f"{100 * official.average_precision.map:6.2f}" in text
    assert f"threshold {official.threshold:g} chosen on val" in text
    for name in ("Intent0", "Intent27", "easy", "medium", "hard", "object", "context", "other"):
        assert name in text
    tuned_text = format_table(split_tuned_protocol(test_labels, informative_scores(test_labels, 13), class_names=names))
    assert tuned_text.startswith("SPLIT-TUNED protocol") and "Subset" not in tuned_text

    assert isinstance(official.report, F1Report) and "Per-class" in format_table(official.report)
    assert isinstance(official.average_precision, MAPResult)
    assert "mAP (%)" in format_table(official.average_precision)
    with pytest.raises(TypeError, match="does not know how to render dict"):
        format_table({})
