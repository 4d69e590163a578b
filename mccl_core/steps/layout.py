"""Where each step puts its outputs: the names inside every step's output folder, in one place.

A step reads an upstream step's folder by these names (its ``StepSpec.inputs[...].reads`` list
them, and ``tests/test_dvc_deps.py`` checks ``dvc.yaml``'s literal paths against those), so no
step module imports another step module for a file name. Files only the step itself reads back
(summaries, reports) are listed too, so that a folder's whole layout can be read from this page.
The training loop writes the train folder under its own names (it runs without the pipeline);
``tests/test_architecture.py`` checks that they are these.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------- validate
#: The data handle: the data config later steps must use (it points at the clean annotations).
VALIDATED_DATA_FILE = "validated_data.json"
#: Folder of the clean annotation files, next to the handle.
VALIDATED_ANNOTATIONS_DIR = "annotations"
VALIDATE_REPORT_FILE = "report.json"
VALIDATE_SUMMARY_FILE = "summary.md"
VALIDATE_METRICS_FILE = "metrics.json"
QUARANTINE_FILE = "quarantine.csv"

# ----------------------------------------------------------------------------------- extract
#: The backbone's weights as CPI saw them (the train step starts from exactly these).
BACKBONE_INIT_FILE = "backbone_init.pt"
#: Parquet token shards, one per (shard, stage), and their manifest.
FEATURES_DIR = "features"
EXTRACT_SUMMARY_FILE = "extract.json"

# ----------------------------------------------------------------------------------- cluster
PROTOTYPES_FILE = "prototypes.safetensors"
EMBEDDINGS_FILE = "label_embeddings.npz"
ALLOCATION_CSV = "allocation.csv"
ALLOCATION_MD = "allocation.md"
CLUSTER_SUMMARY_FILE = "cluster.json"

# ------------------------------------------------------------------------------------- train
#: The model bundle (weights, config, class names, threshold): what evaluate, explain, register
#: and serving load.
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
RESOLVED_PARAMS_FILE = "resolved_params.yaml"
#: The resume guard's record of what the checkpoints were trained on (in ``CHECKPOINT_DIR``).
FINGERPRINT_FILE = "inputs.json"
TRAIN_SUMMARY_FILE = "metrics.json"
HISTORY_FILE = "history.json"
#: Per-epoch curves without timings (``dvc plots``).
CURVES_FILE = "curves.csv"

# ---------------------------------------------------------------------------------- evaluate
#: The official scores (threshold chosen on val): what explain and register read.
EVALUATE_METRICS_FILE = "metrics.json"
EVALUATE_REPORT_FILE = "report.json"
THRESHOLD_CURVE_FILE = "threshold_curve.csv"
PER_CLASS_FILE = "per_class_f1.csv"
PLOTS_DIR = "plots"
HTML_REPORT_FILE = "report.html"
PREDICTIONS_DIR = "predictions"

# ----------------------------------------------------------------------------------- explain
GALLERY_DIR = "gallery"
EXPLANATIONS_DIR = "explanations"
POINTING_FILE = "pointing.json"
EXPLAIN_METRICS_FILE = "metrics.json"

# ---------------------------------------------------------------------------------- register
DECISION_FILE = "register.json"
SUBMISSION_FILE = "submission.json"

# -------------------------------------------------------------------------------------- demo
#: What the demo step writes when another data source is configured (it renders nothing then).
NOT_USED_FILE = "NOT_USED.txt"
