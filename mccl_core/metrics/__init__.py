"""Evaluation metrics: official Intentonomy protocol, split-tuned protocol, mAP, MDID accuracy.

Conventions that change numbers (see the submodules for the reasons):

* F1: ``scores > threshold``; sklearn ``f1_score`` with ``zero_division=0``; one global threshold
  from :data:`THRESHOLDS` (0.05..0.95) maximising macro-F1, lowest threshold on exact ties.
* Official protocol: tune on val, report on test. Split-tuned: tune and report on the same split;
  separate result type and ``split_tuned/`` metric prefix.
* mAP: mean of sklearn per-class average precision over classes WITH positives; the excluded
  classes are reported.
* MDID: top-1 accuracy per split, mean and population std (``np.std(ddof=0)``).
* Subset macro-F1: the official Intentonomy subsets only when the classes ARE the 28 Intentonomy
  classes by name (:func:`intentonomy_subsets_for`), never because there happen to be 28.
"""

from mccl_core.metrics.annotations import AnnotationFileError, SplitAnnotations, load_split_annotations
from mccl_core.metrics.average_precision import MAPResult, mean_average_precision
from mccl_core.metrics.f1 import THRESHOLDS, F1Report, f1_report, pick_threshold, select_threshold, threshold_curve
from mccl_core.metrics.intentonomy_subsets import (
    INTENTONOMY_NUM_CLASSES,
    INTENTONOMY_SUBSETS,
    intentonomy_subsets_for,
    resolve_subsets,
)
from mccl_core.metrics.mdid import (
    MDIDAccuracyResult,
    MDIDSplitPredictions,
    load_mdid_val_predictions,
    mdid_accuracy,
    mdid_protocol,
)
from mccl_core.metrics.predictions import Predictions, PredictionsFileError, load_predictions
from mccl_core.metrics.protocol import (
    OfficialProtocolResult,
    ProtocolResult,
    SplitTunedProtocolResult,
    ThresholdSelection,
    official_protocol,
    split_tuned_protocol,
)
from mccl_core.metrics.scoring import ScoringConfig, ScoringResult, score_prediction_files
from mccl_core.metrics.tables import format_table

__all__ = [
    "INTENTONOMY_NUM_CLASSES",
    "INTENTONOMY_SUBSETS",
    "THRESHOLDS",
    "AnnotationFileError",
    "F1Report",
    "MAPResult",
    "MDIDAccuracyResult",
    "MDIDSplitPredictions",
    "OfficialProtocolResult",
    "Predictions",
    "PredictionsFileError",
    "ProtocolResult",
    "ScoringConfig",
    "ScoringResult",
    "SplitAnnotations",
    "SplitTunedProtocolResult",
    "ThresholdSelection",
    "f1_report",
    "format_table",
    "intentonomy_subsets_for",
    "load_mdid_val_predictions",
    "load_predictions",
    "load_split_annotations",
    "mdid_accuracy",
    "mdid_protocol",
    "mean_average_precision",
    "official_protocol",
    "pick_threshold",
    "resolve_subsets",
    "score_prediction_files",
    "select_threshold",
    "split_tuned_protocol",
    "threshold_curve",
]
