"""Official Intentonomy protocol and the "split-tuned" protocol, kept strictly apart.

* **Official** (Jia et al., CVPR 2021): choose ONE global threshold on the validation split from
  0.05, 0.10, ..., 0.95 by macro-F1, then apply it unchanged to the test split and report test
  macro / micro / samples / per-class / subset F1.
* **Split-tuned**: several follow-up papers tune the threshold on the very split they report.
  That is optimistic (the threshold has seen the labels), so it gets its own result type,
  :class:`SplitTunedProtocolResult`, and its own key prefix ``split_tuned/`` in
  :meth:`ProtocolResult.metrics`; official numbers are always under ``official/``.

See :mod:`mccl_core.metrics.f1` for the F1 conventions (``scores > thr``, sklearn
``zero_division=0``, lowest threshold wins ties). Both results also carry the mAP of the
evaluated split (threshold-free, hence the same value under either protocol).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mccl_core.metrics._validation import as_label_matrix, as_score_matrix
from mccl_core.metrics.average_precision import MAPResult, mean_average_precision
from mccl_core.metrics.f1 import THRESHOLDS, F1Report, f1_report, pick_threshold, threshold_curve


@dataclass(frozen=True)
class ThresholdSelection:
    """Which global threshold was chosen, on which split, and the macro-F1 curve behind it."""

    threshold: float
    tuned_on: str
    tuning_macro_f1: float
    candidates: tuple[float, ...]
    macro_f1_per_candidate: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": float(self.threshold),
            "tuned_on": self.tuned_on,
            "tuning_macro_f1": float(self.tuning_macro_f1),
            "candidates": [float(t) for t in self.candidates],
            "macro_f1_per_candidate": [float(v) for v in self.macro_f1_per_candidate],
        }


@dataclass(frozen=True)
class ProtocolResult:
    """Base of the two protocol results; use the subclasses, which fix :attr:`protocol`."""

    selection: ThresholdSelection
    evaluated_on: str
    report: F1Report
    average_precision: MAPResult

    protocol: ClassVar[str] = ""

    @property
    def threshold(self) -> float:
        return self.selection.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "threshold": float(self.selection.threshold),
            "tuned_on": self.selection.tuned_on,
            "evaluated_on": self.evaluated_on,
            "selection": self.selection.to_dict(),
            "f1": self.report.to_dict(),
            "map": self.average_precision.to_dict(),
        }

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics for trackers (e.g. MLflow); every key starts with ``<protocol>/``."""
        split_prefix = f"{self.protocol}/{self.evaluated_on}"
        flat: dict[str, float] = {
            f"{self.protocol}/threshold": float(self.selection.threshold),
            f"{self.protocol}/tuning_macro_f1": float(self.selection.tuning_macro_f1),
            f"{split_prefix}/macro_f1": float(self.report.macro_f1),
            f"{split_prefix}/micro_f1": float(self.report.micro_f1),
            f"{split_prefix}/samples_f1": float(self.report.samples_f1),
            f"{split_prefix}/map": float(self.average_precision.map),
            f"{split_prefix}/map_excluded_classes": float(self.average_precision.n_excluded),
        }
        for name, value in self.report.subset_macro_f1.items():
            flat[f"{split_prefix}/subset_macro_f1/{name}"] = float(value)
        for index, value in enumerate(self.report.per_class_f1):
            flat[f"{split_prefix}/per_class_f1/{self.report.class_name(index)}"] = float(value)
        return flat


@dataclass(frozen=True)
class OfficialProtocolResult(ProtocolResult):
    """Threshold tuned on val, reported on test (the official Intentonomy protocol)."""

    protocol: ClassVar[str] = "official"


@dataclass(frozen=True)
class SplitTunedProtocolResult(ProtocolResult):
    """Threshold tuned on the reported split itself (optimistic; some papers report this)."""

    protocol: ClassVar[str] = "split_tuned"


def official_protocol(
    val_true: Any,
    val_scores: Any,
    test_true: Any,
    test_scores: Any,
    subsets: Mapping[str, Sequence[int]] | None = None,
    class_names: Sequence[str] | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> OfficialProtocolResult:
    """Tune one global threshold on val (max macro-F1, lowest wins ties), report F1 and mAP on test.

    Args:
        val_true, test_true: binary (N, C) label matrices.
        val_scores, test_scores: (N, C) probabilities in [0, 1].
        subsets: name -> class indices for subset macro-F1 (for Intentonomy pass
            ``intentonomy_subsets_for(class_names)``, which is ``None`` for other classes); None
            reports no subsets.
        class_names: optional C class names for reports.
        thresholds: candidate thresholds (the official grid by default).
    """
    val_labels = as_label_matrix(val_true, "val_true")
    test_labels = as_label_matrix(test_true, "test_true")
    val_probabilities = as_score_matrix(val_scores, "val_scores")
    test_probabilities = as_score_matrix(test_scores, "test_scores")
    if val_labels.shape[1] != test_labels.shape[1]:
        raise ValueError(
            f"val and test have different numbers of classes: val_true has {val_labels.shape[1]}, "
            f"test_true has {test_labels.shape[1]}"
        )
    for true_name, labels, score_name, probabilities in (
        ("val_true", val_labels, "val_scores", val_probabilities),
        ("test_true", test_labels, "test_scores", test_probabilities),
    ):
        if labels.shape != probabilities.shape:
            raise ValueError(
                f"shape mismatch: {true_name} has shape {labels.shape} but {score_name} has shape {probabilities.shape}"
            )
    selection = _select(val_labels, val_probabilities, "val", thresholds)
    return OfficialProtocolResult(
        selection=selection,
        evaluated_on="test",
        report=f1_report(test_labels, test_probabilities, selection.threshold, subsets, class_names),
        average_precision=mean_average_precision(test_labels, test_probabilities, class_names),
    )


def split_tuned_protocol(
    y_true: Any,
    scores: Any,
    subsets: Mapping[str, Sequence[int]] | None = None,
    class_names: Sequence[str] | None = None,
    split: str = "test",
    thresholds: Sequence[float] = THRESHOLDS,
) -> SplitTunedProtocolResult:
    """Tune the global threshold on ``split`` itself and report F1 and mAP on that same split."""
    labels = as_label_matrix(y_true, "y_true")
    probabilities = as_score_matrix(scores, "scores")
    if labels.shape != probabilities.shape:
        raise ValueError(f"shape mismatch: y_true has shape {labels.shape} but scores has shape {probabilities.shape}")
    selection = _select(labels, probabilities, split, thresholds)
    return SplitTunedProtocolResult(
        selection=selection,
        evaluated_on=split,
        report=f1_report(labels, probabilities, selection.threshold, subsets, class_names),
        average_precision=mean_average_precision(labels, probabilities, class_names),
    )


def _select(labels: Any, probabilities: Any, split: str, thresholds: Sequence[float]) -> ThresholdSelection:
    candidates = tuple(float(t) for t in thresholds)
    curve = threshold_curve(labels, probabilities, candidates)
    threshold, best = pick_threshold(candidates, curve)
    return ThresholdSelection(
        threshold=threshold,
        tuned_on=split,
        tuning_macro_f1=best,
        candidates=candidates,
        macro_f1_per_candidate=curve,
    )
