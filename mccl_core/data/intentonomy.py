"""Intentonomy (Jia et al., CVPR 2021): training-side annotation loading and bundled metadata.

The annotation JSON (schema, strict / lenient parsing, the 28 class names) is handled by the one
torch-free parser in :mod:`mccl_core.data.intentonomy_json`; this module turns its strict result into
:class:`~mccl_core.data.dataset.ImageRecord` lists for training (raising
:class:`~mccl_core.data.dataset.AnnotationError` with every offending record). Label convention
(as in every Intentonomy codebase): a class is positive when its softprob is > 0; the soft
probabilities are kept as ``soft_labels``. Images live at ``<root>/<filename>``. The demo dataset
is written in this same schema, so the demo walks the real-data code path.

The bundled metadata (``resources/intentonomy_metadata.json``) holds the 28 class names, our own
one-to-two sentence class descriptions (label text for PKI), the 28 -> 15 -> 9 hierarchy with
approximate group names, and per-split class counts; ``resources/
intentonomy_train_cooccurrence_counts.npy`` holds the training co-occurrence counts. Both are
derived from the Intentonomy annotations (CC BY-NC 4.0); see ``resources/ATTRIBUTION.md``.
The official evaluation subsets (and the rule for when they apply) live in
``mccl_core.metrics.intentonomy_subsets``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mccl_core.data.dataset import AnnotationError, ImageRecord, ProblemCollector
from mccl_core.data.intentonomy_json import (
    INTENTONOMY_CLASSES,
    AnnotationFileError,
    parse_intentonomy_document,
    read_intentonomy_json,
)

logger = logging.getLogger(__name__)

#: Official annotation file name per split (``<root>/annotations/<name>``).
ANNOTATION_FILENAMES: dict[str, str] = {
    "train": "intentonomy_train2020.json",
    "val": "intentonomy_val2020.json",
    "test": "intentonomy_test2020.json",
}

_RESOURCES = "mccl_core.data.resources"


def _metadata() -> dict[str, Any]:
    return json.loads(resources.files(_RESOURCES).joinpath("intentonomy_metadata.json").read_text(encoding="utf-8"))


def intentonomy_class_metadata() -> list[dict[str, Any]]:
    """Per-class metadata: id, name, description, mid/coarse group ids and (approximate) names,
    n_train / n_val / n_test positives."""
    return _metadata()["classes"]


def intentonomy_descriptions() -> list[str]:
    """Our one-to-two sentence description of each of the 28 intents (index = class id)."""
    return [c["description"] for c in intentonomy_class_metadata()]


def intentonomy_coarse_groups() -> dict[str, list[int]]:
    """The 9 coarse groups: approximate group name -> class ids (HLEG ``CLASS_9`` structure)."""
    return {g["name"]: list(g["class_ids"]) for g in _metadata()["coarse_groups"]}


def intentonomy_mid_groups() -> dict[str, list[int]]:
    """The 15 middle-level groups: approximate name -> class ids (HLEG ``CLASS_15`` structure)."""
    return {g["name"]: list(g["class_ids"]) for g in _metadata()["mid_groups"]}


def intentonomy_coarse_group_ids() -> np.ndarray:
    """Coarse group id (0..8) of each of the 28 classes, int64 ``[28]``."""
    return np.asarray([c["coarse_id"] for c in intentonomy_class_metadata()], dtype=np.int64)


def intentonomy_class_counts(split: str = "train") -> np.ndarray:
    """Images carrying each class in the official ``split`` (int64 ``[28]``)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown Intentonomy split {split!r}; expected train, val or test")
    return np.asarray([c[f"n_{split}"] for c in intentonomy_class_metadata()], dtype=np.int64)


def intentonomy_train_cooccurrence() -> np.ndarray:
    """Training co-occurrence counts ``M[i, j]`` (int64 ``[28, 28]``, diagonal = class counts)."""
    with resources.as_file(resources.files(_RESOURCES).joinpath("intentonomy_train_cooccurrence_counts.npy")) as path:
        return np.load(path, allow_pickle=False).astype(np.int64)


# ----------------------------------------------------------------------------- annotation reading


def parse_intentonomy_annotations(
    data: dict[str, Any], image_root: Path, split: str, source: str
) -> tuple[list[ImageRecord], list[str], list[str] | None]:
    """Validate an Intentonomy-schema annotation dict and turn it into records (strict mode).

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
    for the official 28 classes, otherwise empty strings."""
    if from_file is not None:
        return list(from_file)
    return intentonomy_descriptions() if tuple(names) == INTENTONOMY_CLASSES else [""] * len(names)


def load_intentonomy_records(
    annotation_file: Path, image_root: Path, split: str
) -> tuple[list[ImageRecord], list[str], list[str]]:
    """Read an Intentonomy-schema annotation file (strict; see :func:`parse_intentonomy_annotations`).

    A missing file raises ``FileNotFoundError``, an unreadable one ``ValueError`` (both
    :class:`~mccl_core.data.intentonomy_json.AnnotationFileError`); annotation problems raise
    :class:`~mccl_core.data.dataset.AnnotationError`. Descriptions: see
    :func:`resolve_class_descriptions`.
    """
    annotation_file = Path(annotation_file)
    data = read_intentonomy_json(annotation_file)
    records, names, descriptions = parse_intentonomy_annotations(data, Path(image_root), split, str(annotation_file))
    logger.info("%s: %d %s images, %d classes", annotation_file, len(records), split, len(names))
    return records, names, resolve_class_descriptions(names, descriptions)


def image_urls(annotation_file: Path) -> list[tuple[str, str, str]]:
    """``(image_id, filename, unsplash_url)`` of every image in an annotation file.

    Raises ``ValueError`` listing images that lack an id, filename or URL.
    """
    data = read_intentonomy_json(Path(annotation_file))
    problems = ProblemCollector(str(annotation_file))
    entries: list[tuple[str, str, str]] = []
    images = data.get("images")
    if not isinstance(images, list):
        problems.add("missing or non-list 'images'")
        problems.raise_if_any()
    assert isinstance(images, list)  # raise_if_any() raised above otherwise
    seen: set[str] = set()
    for position, image in enumerate(images):
        if not isinstance(image, dict):
            problems.add(f"image entry #{position} is not an object")
            continue
        image_id, filename, url = image.get("id"), image.get("filename"), image.get("unsplash_url")
        if not isinstance(image_id, (str, int)) or not isinstance(filename, str) or not isinstance(url, str) or not url:
            problems.add(f"image entry #{position} needs 'id', 'filename' and 'unsplash_url': {image!r}")
            continue
        if str(image_id) in seen:
            problems.add(f"duplicate image id (image entry #{position})", str(image_id))
            continue
        seen.add(str(image_id))
        entries.append((str(image_id), filename, url))
    problems.raise_if_any()
    return entries


def check_class_names(names: Sequence[str], expected: Sequence[str], source: str) -> None:
    """Raise if an annotation file's classes differ from the expected list (e.g. train vs val)."""
    if list(names) != list(expected):
        raise ValueError(f"{source}: class list differs from the expected {len(expected)} classes: got {list(names)}")
