"""Score prediction files against Intentonomy-format annotation files (library side of the CLI).

With val AND test annotations the official protocol is reported (threshold tuned on val,
applied to test). With a single annotation file only the split-tuned protocol is possible
(threshold tuned on that split itself); the result says so in ``notes``. The two are kept in
separate fields (``official`` / ``split_tuned``) and are never merged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import expit

from mccl_core.metrics._validation import format_id_list
from mccl_core.metrics.annotations import SplitAnnotations, load_split_annotations
from mccl_core.metrics.f1 import THRESHOLDS
from mccl_core.metrics.intentonomy_subsets import resolve_subsets
from mccl_core.metrics.predictions import Predictions, PredictionsFileError, load_predictions
from mccl_core.metrics.protocol import (
    OfficialProtocolResult,
    SplitTunedProtocolResult,
    official_protocol,
    split_tuned_protocol,
)

logger = logging.getLogger(__name__)

SubsetChoice = Literal["auto", "intentonomy", "none"]


@dataclass(frozen=True)
class ScoringConfig:
    """What to score.

    Attributes:
        prediction_paths: one or more ``.csv`` / ``.json`` score files (merged; ids must be unique).
        val_annotations / test_annotations: Intentonomy-format JSON; at least one is required.
        subsets: ``auto`` = official Intentonomy subsets when the categories are the 28 Intentonomy
            classes (by name, :func:`~mccl_core.metrics.intentonomy_subsets.intentonomy_subsets_for`),
            else none; ``intentonomy`` = the same, but an error when they are not.
        scores_are_logits: apply a sigmoid before thresholding (thresholds assume probabilities).
        also_split_tuned: with val+test, additionally report the split-tuned protocol on test.
        ignore_extra_ids: drop (with a warning and a note) predicted ids not in any annotation
            file instead of failing.
    """

    prediction_paths: tuple[Path, ...]
    val_annotations: Path | None = None
    test_annotations: Path | None = None
    subsets: SubsetChoice = "auto"
    scores_are_logits: bool = False
    also_split_tuned: bool = False
    ignore_extra_ids: bool = False
    thresholds: tuple[float, ...] = THRESHOLDS


@dataclass(frozen=True)
class ScoringResult:
    """Official and/or split-tuned results, kept apart, plus notes on what could not be reported."""

    official: OfficialProtocolResult | None
    split_tuned: SplitTunedProtocolResult | None
    notes: tuple[str, ...] = field(default_factory=tuple)
    prediction_files: tuple[str, ...] = field(default_factory=tuple)
    annotation_files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "official": self.official.to_dict() if self.official is not None else None,
            "split_tuned": self.split_tuned.to_dict() if self.split_tuned is not None else None,
            "notes": list(self.notes),
            "prediction_files": list(self.prediction_files),
            "annotation_files": dict(self.annotation_files),
        }

    def metrics(self) -> dict[str, float]:
        """Flat metrics of both protocols; keys are prefixed ``official/`` or ``split_tuned/``."""
        flat: dict[str, float] = {}
        for result in (self.official, self.split_tuned):
            if result is not None:
                flat.update(result.metrics())
        return flat


def _check_compatible(val: SplitAnnotations, test: SplitAnnotations) -> None:
    if val.class_names != test.class_names:
        differing = [
            i
            for i in range(max(len(val.class_names), len(test.class_names)))
            if val.class_names[i : i + 1] != test.class_names[i : i + 1]
        ]
        raise ValueError(
            f"{val.path} and {test.path} define different categories ({len(val.class_names)} vs "
            f"{len(test.class_names)} classes; first differing id {differing[0]})"
        )
    overlap = sorted(set(val.image_ids) & set(test.image_ids))
    if overlap:
        raise ValueError(
            f"{val.path} and {test.path} share images (val would leak into test): {format_id_list(overlap)}"
        )


def _check_extra_ids(predictions: Predictions, splits: list[SplitAnnotations], ignore: bool) -> list[str]:
    annotated = set().union(*(set(s.image_ids) for s in splits))
    extra = [i for i in predictions.image_ids if i not in annotated]
    if extra and not ignore:
        raise PredictionsFileError(
            f"predictions ({', '.join(map(str, predictions.sources))}) contain images that are in none of the "
            f"annotation files ({', '.join(str(s.path) for s in splits)}): {format_id_list(extra)}"
        )
    if extra:
        logger.warning("ignoring %d predicted image(s) not in the annotations", len(extra))
    return extra


def score_prediction_files(config: ScoringConfig) -> ScoringResult:
    """Load annotations and predictions, then run the protocols the available splits allow."""
    if config.val_annotations is None and config.test_annotations is None:
        raise ValueError("at least one annotation file (val or test) is needed")
    val = load_split_annotations(config.val_annotations) if config.val_annotations else None
    test = load_split_annotations(config.test_annotations) if config.test_annotations else None
    if val is not None and test is not None:
        _check_compatible(val, test)
    splits = [s for s in (val, test) if s is not None]
    class_names = splits[0].class_names
    predictions = load_predictions(config.prediction_paths, class_names)
    notes: list[str] = []
    extra = _check_extra_ids(predictions, splits, config.ignore_extra_ids)
    if extra:
        notes.append(f"ignored predictions for {format_id_list(extra)} not in any annotation file")

    def split_scores(split: SplitAnnotations, name: str) -> np.ndarray:
        scores = predictions.rows_for(split.image_ids, name)
        return expit(scores) if config.scores_are_logits else scores

    subsets = resolve_subsets(config.subsets, class_names)
    if subsets is None:
        notes.append("no class subsets reported")
    official: OfficialProtocolResult | None = None
    split_tuned: SplitTunedProtocolResult | None = None
    if val is not None and test is not None:
        official = official_protocol(
            val.label_matrix,
            split_scores(val, "val"),
            test.label_matrix,
            split_scores(test, "test"),
            subsets=subsets,
            class_names=class_names,
            thresholds=config.thresholds,
        )
        if config.also_split_tuned:
            split_tuned = split_tuned_protocol(
                test.label_matrix,
                split_scores(test, "test"),
                subsets=subsets,
                class_names=class_names,
                split="test",
                thresholds=config.thresholds,
            )
    else:
        only, name = splits[0], ("val" if val is not None else "test")
        notes.append(
            f"official protocol needs both val and test annotations; only {name} was given, so only the "
            f"split-tuned protocol (threshold tuned on {name} itself) is reported"
        )
        split_tuned = split_tuned_protocol(
            only.label_matrix,
            split_scores(only, name),
            subsets=subsets,
            class_names=class_names,
            split=name,
            thresholds=config.thresholds,
        )
    annotation_files = {name: str(split.path) for name, split in (("val", val), ("test", test)) if split is not None}
    return ScoringResult(
        official=official,
        split_tuned=split_tuned,
        notes=tuple(notes),
        prediction_files=tuple(str(p) for p in predictions.sources),
        annotation_files=annotation_files,
    )
