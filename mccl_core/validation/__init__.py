"""Data validation of an image manifest with Great Expectations (GX Core 1.x).

Why: a training run that silently skips a corrupt JPEG, trains on a class that has no train
image, or scores on a test image without labels produces numbers nobody can trust. This package
checks a manifest *before* any step consumes it and either stops the pipeline with a message that
names every offending record (``policy="fail"``) or moves the bad records to a quarantine file
and hands back a clean manifest (``policy="quarantine"``) - never dropping anything silently.

Modules:

* :mod:`~mccl_core.validation.schema` - the manifest's columns (``image_id``, ``image_path``,
  ``split``, ``label_ids``; optional ``annotation_problems``: what the annotation reader found
  wrong with each record, so reader-found and suite-found problems follow the same policy) and
  splits;
* :mod:`~mccl_core.validation.suite` - the GX expectations and :func:`validate_manifest`;
* :mod:`~mccl_core.validation.images` - a thin GX-facing adapter over the one image inspector,
  :func:`mccl_core.data.images.inspect_image`, which the training loader uses too: a file
  validation accepts is a file the loader decodes, and a refused file carries the loader's reason;
* :mod:`~mccl_core.validation.report` - :class:`ValidationReport` (JSON, Markdown) and
  :class:`DataValidationError`;
* :mod:`~mccl_core.validation.quarantine` - the quarantine file (``.csv``/``.json``).

To check only the image files of a dataset from the command line, use ``mccl data verify``.
"""

from mccl_core.data.images import RGB_CONVERTIBLE_MODES, ImageInspection, ImageLimits, inspect_image
from mccl_core.validation.quarantine import write_quarantine
from mccl_core.validation.report import (
    MESSAGE_RECORD_LIMIT,
    DataValidationError,
    ExpectationOutcome,
    OffendingRecord,
    ValidationReport,
)
from mccl_core.validation.schema import (
    ANNOTATION_PROBLEMS,
    EVAL_SPLITS,
    REQUIRED_COLUMNS,
    ROW_NUMBER,
    SPLITS,
    Policy,
)
from mccl_core.validation.suite import validate_manifest

__all__ = [
    "ANNOTATION_PROBLEMS",
    "EVAL_SPLITS",
    "MESSAGE_RECORD_LIMIT",
    "REQUIRED_COLUMNS",
    "RGB_CONVERTIBLE_MODES",
    "ROW_NUMBER",
    "SPLITS",
    "DataValidationError",
    "ExpectationOutcome",
    "ImageInspection",
    "ImageLimits",
    "OffendingRecord",
    "Policy",
    "ValidationReport",
    "inspect_image",
    "validate_manifest",
    "write_quarantine",
]
