"""The project's canonical annotation files: where they live and how they are read for training.

The canonical format is one JSON file per split in Intentonomy's schema (COCO-like; parsed by the
one torch-free parser in :mod:`mccl_core.data.intentonomy_json`). Whatever the data is - the
synthetic demo, the validate step's clean copies of a manifest, MDID or Intentonomy dataset - the
files the project itself writes carry neutral names: ``<root>/annotations/<split>.json``
(:data:`CANONICAL_FILENAMES`, :func:`canonical_annotation_file`). The real Intentonomy dataset
keeps its published names (``intentonomy_<split>2020.json``,
:data:`mccl_core.data.intentonomy.OFFICIAL_ANNOTATION_FILENAMES`); which names a source looks
for by default is its registry entry's
:attr:`~mccl_core.data.sources.DataSource.annotation_filenames`, resolved by
:func:`find_annotation_file` (the first that exists; so a demo folder written before the neutral
names, with ``annotations/intentonomy_<split>2020.json``, still loads).

The reader (:func:`load_annotation_records`, :func:`parse_annotations`) turns a file's strict
parse into :class:`~mccl_core.data.dataset.ImageRecord` lists (raising
:class:`~mccl_core.data.dataset.AnnotationError` with every offending record). Label convention
(as in every Intentonomy codebase): a class is positive when its softprob is > 0; the soft
probabilities are kept as ``soft_labels``. Images live at ``<image_root>/<filename>``.

This module is torch-free at import (the demo renderer, and its worker processes, use the names);
the reader imports :mod:`mccl_core.data.dataset` when called.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mccl_core.data.intentonomy_json import (
    INTENTONOMY_CLASSES,
    AnnotationFileError,
    parse_intentonomy_document,
    read_intentonomy_json,
)

if TYPE_CHECKING:
    from mccl_core.data.dataset import ImageRecord

logger = logging.getLogger(__name__)

#: Folder of the annotation files under a data root (and in the validate step's output folder).
ANNOTATIONS_DIR = "annotations"

#: Canonical annotation file name per split (``<root>/annotations/<name>``).
CANONICAL_FILENAMES: dict[str, str] = {split: f"{split}.json" for split in ("train", "val", "test")}
#: The names the project's own files had before the canonical ones (Intentonomy's published names,
#: which the demo and the validate step used to borrow): still read when the canonical file is
#: missing (the demo source), dropped when a folder is rewritten.
LEGACY_FILENAMES: dict[str, str] = {split: f"intentonomy_{split}2020.json" for split in ("train", "val", "test")}


def canonical_annotation_file(root: Path, split: str) -> Path:
    """``<root>/annotations/<split>.json``: where the project writes the canonical file of ``split``."""
    return Path(root) / ANNOTATIONS_DIR / CANONICAL_FILENAMES[split]


def find_annotation_file(root: Path, names: Sequence[str]) -> Path:
    """``<root>/annotations/<name>`` for the first of ``names`` (most preferred first) that is a
    file; ``names[0]``'s path when none is (so a "not found" names the file that is expected)."""
    if not names:
        raise ValueError("find_annotation_file needs at least one file name")
    folder = Path(root) / ANNOTATIONS_DIR
    preferred = folder / names[0]
    if preferred.is_file():
        return preferred
    for name in names[1:]:
        other = folder / name
        if other.is_file():
            logger.debug("%s not found; reading %s instead", preferred, other)
            return other
    return preferred


# ----------------------------------------------------------------------------- reading


def parse_annotations(
    data: dict[str, Any], image_root: Path, split: str, source: str
) -> tuple[list[ImageRecord], list[str], list[str] | None]:
    """Validate an annotation dict (Intentonomy schema) and turn it into records (strict mode).

    The parsing is :func:`mccl_core.data.intentonomy_json.parse_intentonomy_document`; every problem
    (duplicate image ids, annotations for unknown images, images without annotation, duplicate
    annotations, unknown category ids, malformed soft probabilities, and for val/test images
    without any label) is raised together as one :class:`~mccl_core.data.dataset.AnnotationError`.
    Unlabelled train images are kept (legitimate negatives in multi-label training) and counted
    in a warning.

    Returns:
        records in annotation order (the order of the official label-vector files), class names,
        class descriptions from the file (``None`` if it has none).
    """
    from mccl_core.data.dataset import AnnotationError, ImageRecord

    try:
        parsed = parse_intentonomy_document(data, source, mode="strict", image_root=Path(image_root), split=split)
    except AnnotationFileError as error:
        raise AnnotationError(error.source, error.problems) from None
    # Strict mode: every record has an id, an image path and parsed labels.
    records = [
        ImageRecord(str(r.image_id), Path(str(r.image_path)), tuple(r.label_ids or ()), r.soft_labels)
        for r in parsed.records
    ]
    unlabelled = sum(1 for r in records if not r.labels)
    if unlabelled:
        logger.warning(
            "%s: %d %s images have no positive label (kept as all-negative examples)", source, unlabelled, split
        )
    descriptions = list(parsed.class_descriptions) if parsed.class_descriptions is not None else None
    return records, list(parsed.class_names), descriptions


def resolve_class_descriptions(names: Sequence[str], from_file: Sequence[str] | None) -> list[str]:
    """Class descriptions: the file's own when it has them (the demo writes them), the bundled ones
    for the official 28 Intentonomy classes, otherwise empty strings."""
    if from_file is not None:
        return list(from_file)
    if tuple(names) == INTENTONOMY_CLASSES:
        from mccl_core.data.intentonomy import intentonomy_descriptions

        return intentonomy_descriptions()
    return [""] * len(names)


def load_annotation_records(
    annotation_file: Path, image_root: Path, split: str
) -> tuple[list[ImageRecord], list[str], list[str]]:
    """Read an annotation file (strict; see :func:`parse_annotations`).

    A missing file raises ``FileNotFoundError``, an unreadable one ``ValueError`` (both
    :class:`~mccl_core.data.intentonomy_json.AnnotationFileError`); annotation problems raise
    :class:`~mccl_core.data.dataset.AnnotationError`. Descriptions: see
    :func:`resolve_class_descriptions`.
    """
    annotation_file = Path(annotation_file)
    data = read_intentonomy_json(annotation_file)
    records, names, descriptions = parse_annotations(data, Path(image_root), split, str(annotation_file))
    logger.info("%s: %d %s images, %d classes", annotation_file, len(records), split, len(names))
    return records, names, resolve_class_descriptions(names, descriptions)


def check_class_names(names: Sequence[str], expected: Sequence[str], source: str) -> None:
    """Raise if an annotation file's classes differ from the expected list (e.g. train vs val)."""
    if list(names) != list(expected):
        raise ValueError(f"{source}: class list differs from the expected {len(expected)} classes: got {list(names)}")
