"""The manifest's columns and vocabulary, shared by the suite, the report and the quarantine file.

The manifest is a plain :class:`pandas.DataFrame` with one row per image::

    image_id     str         unique over the whole manifest
    image_path   str | Path  relative paths are resolved against ``image_root``
    split        "train" | "val" | "test"
    label_ids    list[int]   class indices in [0, num_classes); val/test need at least one

Optional column ``annotation_problems`` (list[str]): what the annotation reader found wrong with
the record (each naming the annotation file and the record) - a duplicate id, an unknown label
name, a malformed soft-label vector, ... The suite fails the row when the list is not empty, so
every record-level problem, whoever detected it, is reported (or quarantined) the same way.
"""

from __future__ import annotations

from typing import Literal

Policy = Literal["fail", "quarantine"]

REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "image_path", "split", "label_ids")
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Splits whose records are scored and therefore need at least one label.
EVAL_SPLITS: tuple[str, ...] = ("val", "test")
#: The derived column holding each row's position in the input manifest.
ROW_NUMBER = "row_number"
#: Optional manifest column: the annotation reader's problems of each record (see above).
ANNOTATION_PROBLEMS = "annotation_problems"
