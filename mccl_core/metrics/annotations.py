"""Labels of one Intentonomy annotation file (val/test) as a matrix, for the scoring CLI.

The file is parsed by the project's one Intentonomy parser (``load_intentonomy_annotations`` in
:mod:`mccl_core.data.intentonomy_json`), in strict mode with the
scoring requirements (every annotation has a ``category_ids`` list; ``images`` is optional and
cross-checked when present). That module is torch-free, so ``mccl score`` stays light. Anything
it cannot interpret raises :class:`AnnotationFileError` naming the file and every offending
record, so that no image or label is silently dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mccl_core.data.intentonomy_json import AnnotationFileError, load_intentonomy_annotations

logger = logging.getLogger(__name__)

__all__ = ["AnnotationFileError", "SplitAnnotations", "load_split_annotations"]


@dataclass(frozen=True)
class SplitAnnotations:
    """Labels of one split: ``label_matrix[i]`` is the multi-hot label of ``image_ids[i]``."""

    path: Path
    class_names: tuple[str, ...]
    image_ids: tuple[str, ...]
    label_matrix: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_split_annotations(path: Path | str) -> SplitAnnotations:
    """Read one Intentonomy-format annotation file (e.g. ``intentonomy_val2020.json``).

    Rows follow the order of the ``annotations`` list. Raises :class:`AnnotationFileError`.
    """
    path = Path(path)
    parsed = load_intentonomy_annotations(path, mode="strict", need_hard_labels=True, need_images=False)
    if not parsed.records:
        raise AnnotationFileError(str(path), ["'annotations' is empty: nothing to score"])
    labels = np.zeros((len(parsed.records), parsed.num_classes), dtype=np.int64)
    for row, record in enumerate(parsed.records):
        labels[row, list(record.label_ids or ())] = 1
    unlabelled = int((labels.sum(axis=1) == 0).sum())
    if unlabelled:
        logger.warning("%s: %d image(s) have an empty category_ids list", path, unlabelled)
    logger.info("%s: %d images, %d classes", path, len(parsed.records), parsed.num_classes)
    return SplitAnnotations(
        path=path,
        class_names=parsed.class_names,
        image_ids=tuple(str(r.image_id) for r in parsed.records),
        label_matrix=labels,
    )
