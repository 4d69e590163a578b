"""Minimal reader for official Intentonomy annotation JSON (val/test), for the scoring CLI.

Only what scoring needs is read: ``categories`` (``id``, ``name``) and ``annotations``
(``image_id``, ``category_ids``), cross-checked against ``images`` when that list is present.
The full dataset loaders live in :mod:`mccl_core.data`; this reader is intentionally small and
independent so that the metrics package does not depend on the data package (the data package
may import :mod:`mccl_core.metrics.intentonomy_subsets`). It is strict: anything it cannot
interpret raises :class:`AnnotationFileError` naming the file and the record, so that no
image or label is silently dropped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mccl_core.metrics._validation import format_id_list

logger = logging.getLogger(__name__)


class AnnotationFileError(ValueError):
    """An annotation file is missing, unreadable or not in the Intentonomy schema."""


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


def _fail(path: Path, message: str) -> AnnotationFileError:
    return AnnotationFileError(f"{path}: {message}")


def _read_categories(path: Path, document: dict[str, Any]) -> tuple[str, ...]:
    categories = document.get("categories")
    if not isinstance(categories, list) or not categories:
        raise _fail(path, "missing or empty 'categories' list")
    names_by_id: dict[int, str] = {}
    for position, category in enumerate(categories):
        if not isinstance(category, dict):
            raise _fail(path, f"categories[{position}] is not an object")
        category_id, name = category.get("id"), category.get("name")
        if isinstance(category_id, bool) or not isinstance(category_id, int):
            raise _fail(path, f"categories[{position}] has a non-integer id {category_id!r}")
        if not isinstance(name, str) or not name:
            raise _fail(path, f"categories[{position}] (id {category_id}) has no name")
        if category_id in names_by_id:
            raise _fail(path, f"category id {category_id} appears more than once")
        names_by_id[category_id] = name
    if sorted(names_by_id) != list(range(len(names_by_id))):
        raise _fail(
            path,
            f"category ids must be exactly 0..{len(names_by_id) - 1} (class index = id), got {sorted(names_by_id)}",
        )
    names = tuple(names_by_id[i] for i in range(len(names_by_id)))
    if len(set(names)) != len(names):
        raise _fail(path, f"category names are not unique: {names}")
    return names


def load_split_annotations(path: Path | str) -> SplitAnnotations:
    """Read one Intentonomy-format annotation file (e.g. ``intentonomy_val2020.json``).

    Rows follow the order of the ``annotations`` list. Raises :class:`AnnotationFileError`.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError as exc:
        raise _fail(path, "annotation file does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot read annotation file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _fail(path, f"top level must be a JSON object, got {type(document).__name__}")

    class_names = _read_categories(path, document)
    annotations = document.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        raise _fail(path, "missing or empty 'annotations' list")

    image_ids: list[str] = []
    seen: set[str] = set()
    labels = np.zeros((len(annotations), len(class_names)), dtype=np.int64)
    for row, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise _fail(path, f"annotations[{row}] is not an object")
        image_id = annotation.get("image_id")
        if isinstance(image_id, bool) or not isinstance(image_id, (str, int)) or image_id == "":
            raise _fail(path, f"annotations[{row}] has no usable image_id ({image_id!r})")
        image_id = str(image_id)
        if image_id in seen:
            raise _fail(path, f"annotations[{row}]: image_id {image_id!r} is annotated more than once")
        seen.add(image_id)
        category_ids = annotation.get("category_ids")
        if not isinstance(category_ids, list):
            raise _fail(
                path,
                f"annotations[{row}] (image {image_id!r}) has no 'category_ids' list "
                "(soft-label train files are not scorable)",
            )
        for category_id in category_ids:
            if isinstance(category_id, bool) or not isinstance(category_id, int):
                raise _fail(path, f"annotations[{row}] (image {image_id!r}) has non-integer category id {category_id!r}")
            if not 0 <= category_id < len(class_names):
                raise _fail(
                    path,
                    f"annotations[{row}] (image {image_id!r}) has category id {category_id} not in categories "
                    f"(0..{len(class_names) - 1})",
                )
        if len(set(category_ids)) != len(category_ids):
            raise _fail(path, f"annotations[{row}] (image {image_id!r}) repeats a category id: {category_ids}")
        labels[row, category_ids] = 1
        image_ids.append(image_id)

    images = document.get("images")
    if images is not None:
        if not isinstance(images, list):
            raise _fail(path, "'images' must be a list")
        listed = [str(image.get("id")) if isinstance(image, dict) else None for image in images]
        if None in listed:
            raise _fail(path, f"images[{listed.index(None)}] is not an object")
        unannotated = [i for i in listed if i not in seen]
        if unannotated:
            raise _fail(path, f"images without an annotation: {format_id_list(unannotated)}")
        listed_set = set(listed)
        unlisted = [i for i in image_ids if i not in listed_set]
        if unlisted:
            raise _fail(path, f"annotations for images missing from 'images': {format_id_list(unlisted)}")

    unlabelled = int((labels.sum(axis=1) == 0).sum())
    if unlabelled:
        logger.warning("%s: %d image(s) have an empty category_ids list", path, unlabelled)
    logger.info("%s: %d images, %d classes", path, len(image_ids), len(class_names))
    return SplitAnnotations(
        path=path, class_names=class_names, image_ids=tuple(image_ids), label_matrix=labels
    )
