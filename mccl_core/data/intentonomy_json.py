"""The one parser of Intentonomy annotation JSON, in a strict and a lenient mode.

Intentonomy's schema is also the project's canonical annotation format (the demo and the validate
step's clean files use it, named ``annotations/<split>.json``: :mod:`mccl_core.data.annotations`).
Every reader of Intentonomy-schema files goes through here: the training loader
(:func:`mccl_core.data.annotations.load_annotation_records`), the scoring CLI
(:func:`mccl_core.metrics.annotations.load_split_annotations`) and the validate step's manifest
(:mod:`mccl_core.steps.validate`). Schema (COCO-like)::

    {"categories": [{"id": int, "name": str, "description"?: str}, ...],
     "images": [{"id": str, "filename": "low/<id>.jpg", "original_id"?: str, "unsplash_url"?: str}],
     "annotations": [{"id": int, "image_id": str,
                      "category_ids": [int]              # val / test
                      "category_ids_softprob": [float]}]  # train: one value per class, x/3

A class is positive when it is listed in ``category_ids`` or its softprob is > 0 (when both are
given they must agree); the soft probabilities are kept as ``soft_labels``.

Modes:

* ``strict``: every problem of the file is collected and, if there is any, raised as ONE
  :class:`AnnotationFileError` listing them all, each naming the record (``annotations[i]`` /
  ``images[i]``, image id, image file). The records returned are all good.
* ``lenient``: every record is returned, bad ones included, each with its ``problems``; the
  result's ``problems`` lists every problem in the order strict mode would raise them (problems
  tied to no single record, e.g. an image listed twice, are only there). Validation uses this to
  report or quarantine bad records instead of failing on the first file.

Both modes raise for *structural* (file-level) problems, without which no record can be
interpreted: a file that is missing / unreadable / not UTF-8 / not a JSON object, ``categories``
that are not exactly ids 0..C-1 with unique non-empty names, or ``images`` / ``annotations`` that
are missing or not lists (ONE problem for the file, not one per row). ``strict(file)`` raises
exactly when ``lenient(file).problems`` is non-empty, with those problems.

Record-level vs file-level in lenient mode: every problem that concerns one image is attached to
that image's record (an ``images`` entry listed twice or malformed included), so validation can
quarantine the record under ``validate.policy: quarantine``. The only problem tied to no record
is a file mixing soft-label and hard-label annotations (:meth:`IntentonomyAnnotations.
file_problems`); it is a property of the file and fails it.

This module is deliberately free of torch (and of :mod:`mccl_core.data`, whose package import
pulls in torch): ``mccl score`` uses it and must stay light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Mode = Literal["strict", "lenient"]
MODES: tuple[str, ...] = ("strict", "lenient")

#: The 28 Intentonomy intents, index = category id.
INTENTONOMY_CLASSES: tuple[str, ...] = (
    "Attractive",
    "BeatCompete",
    "Communicate",
    "CreativeUnique",
    "CuriousAdventurousExcitingLife",
    "EasyLife",
    "EnjoyLife",
    "FineDesignLearnArt-Arch",
    "FineDesignLearnArt-Art",
    "FineDesignLearnArt-Culture",
    "GoodParentEmoCloseChild",
    "Happy",
    "HardWorking",
    "Harmony",
    "Health",
    "InLove",
    "InLoveAnimal",
    "InspirOthrs",
    "ManagableMakePlan",
    "NatBeauty",
    "PassionAbSmthing",
    "Playful",
    "ShareFeelings",
    "SocialLifeFriendship",
    "SuccInOccupHavGdJob",
    "TchOthrs",
    "ThngsInOrdr",
    "WorkILike",
)

#: How many problems an :class:`AnnotationFileError` message spells out before summarising.
MAX_LISTED_PROBLEMS = 20

#: Splits whose images are scored and therefore need at least one label.
_EVAL_SPLITS = ("val", "test")


class AnnotationFileError(ValueError):
    """An annotation file that cannot be used as it is.

    ``source`` is the file, ``problems`` every problem (each naming its record). The message is
    ``"<file>: <problem>"`` for a single problem, else a listing truncated to
    :data:`MAX_LISTED_PROBLEMS` lines.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"{self.source}: {self.problems[0]}"
        else:
            listed = [f"  - {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
            if len(self.problems) > MAX_LISTED_PROBLEMS:
                listed.append(f"  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
            message = f"{self.source}: {len(self.problems)} annotation problem(s):\n" + "\n".join(listed)
        super().__init__(message)


class AnnotationFileNotFoundError(AnnotationFileError, FileNotFoundError):
    """The annotation file does not exist (both a ``ValueError`` and a ``FileNotFoundError``)."""


@dataclass(frozen=True)
class AnnotationRecord:
    """One record of an annotation file: an entry of ``annotations``, or (lenient mode only) an
    image of ``images`` that no annotation covers (``position`` ``None``).

    Attributes:
        position: index in ``annotations``; ``None`` for an image without annotation (or an
            unusable ``images`` entry, lenient mode).
        image_id: the image id as a string; ``None`` when the annotation has no usable id.
        image_path: ``<image_root>/<filename>`` (just ``<filename>`` without an image root);
            ``None`` when the image is not in ``images`` (or the file has no ``images``).
        label_ids: sorted positive class ids. For a record whose labels could not be parsed
            (lenient mode) the ids as written, out-of-range or non-integer ones included (the
            ``category_ids`` list, else the indices of softprob values > 0); ``None`` when there
            is nothing readable (or no annotation).
        soft_labels: per-class soft probabilities when the annotation has valid ones, else ``None``.
        problems: what is wrong with this record (always empty in strict mode).
        image_positions: indices in ``images`` of this record's image (several when the image is
            listed twice): what a cleaned copy of the file drops with the record.
    """

    position: int | None
    image_id: str | None
    image_path: Path | None
    label_ids: tuple[Any, ...] | None
    soft_labels: tuple[float, ...] | None = None
    problems: tuple[str, ...] = ()
    image_positions: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class IntentonomyAnnotations:
    """A parsed annotation file.

    ``records`` follow the order of ``annotations`` (the order of the official label-vector
    files); in lenient mode images without annotation follow at the end. ``problems`` is empty in
    strict mode (it would have raised).
    """

    source: str
    mode: Mode
    class_names: tuple[str, ...]
    #: ``categories[].description`` when the file carries any, else ``None``.
    class_descriptions: tuple[str, ...] | None
    records: tuple[AnnotationRecord, ...]
    problems: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_records(self) -> list[AnnotationRecord]:
        return [r for r in self.records if not r.ok]

    def file_problems(self) -> list[str]:
        """Problems attached to no record (lenient mode): they concern the file as a whole."""
        attached = {p for r in self.records for p in r.problems}
        return [p for p in self.problems if p not in attached]


# ----------------------------------------------------------------------------- reading


def read_intentonomy_json(path: Path | str) -> dict[str, Any]:
    """Read an annotation file's JSON object; the only place annotation files are decoded.

    Raises :class:`AnnotationFileNotFoundError` (a ``FileNotFoundError``) or
    :class:`AnnotationFileError` (a ``ValueError``), naming the file.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError as error:
        raise AnnotationFileNotFoundError(str(path), ["annotation file does not exist"]) from error
    except (OSError, UnicodeDecodeError) as error:
        raise AnnotationFileError(str(path), [f"cannot read annotation file: {error}"]) from error
    except json.JSONDecodeError as error:
        raise AnnotationFileError(str(path), [f"not valid JSON: {error}"]) from error
    if not isinstance(document, dict):
        raise AnnotationFileError(str(path), [f"top level must be a JSON object, got {type(document).__name__}"])
    return document


def load_intentonomy_annotations(
    path: Path | str,
    *,
    mode: Mode = "strict",
    image_root: Path | str | None = None,
    split: str | None = None,
    need_hard_labels: bool = False,
    need_images: bool = True,
) -> IntentonomyAnnotations:
    """:func:`read_intentonomy_json` + :func:`parse_intentonomy_document` (source = the path)."""
    return parse_intentonomy_document(
        read_intentonomy_json(path),
        str(path),
        mode=mode,
        image_root=image_root,
        split=split,
        need_hard_labels=need_hard_labels,
        need_images=need_images,
    )


# ----------------------------------------------------------------------------- parsing


def _is_id(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool) and value != ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at(problem: str, where: str | None = None, image_id: str | None = None, path: Path | None = None) -> str:
    """``"<where> image '<id>' file '<path>': <problem>"`` with the parts that are known."""
    parts = [where] if where else []
    if image_id is not None:
        parts.append(f"image {image_id!r}")
    if path is not None:
        parts.append(f"file {str(path)!r}")
    return (" ".join(parts) + ": " if parts else "") + problem


def _categories(categories: Any) -> tuple[tuple[str, ...], tuple[str, ...] | None, list[str]]:
    """Class names (index = id), descriptions (``None`` if the file has none), problems.

    Ids must be exactly 0..C-1: label vectors index classes by id, so a gap would silently shift
    every later class.
    """
    if not isinstance(categories, list) or not categories:
        return (), None, ["'categories' must be a non-empty list"]
    problems: list[str] = []
    by_id: dict[int, dict[str, Any]] = {}
    for position, category in enumerate(categories):
        name = category.get("name") if isinstance(category, dict) else None
        if not isinstance(category, dict) or not _is_int(category.get("id")) or not isinstance(name, str) or not name:
            problems.append(
                f"categories[{position}] must have an integer 'id' and a non-empty string 'name': {category!r}"
            )
            continue
        if category["id"] in by_id:
            problems.append(f"duplicate category id {category['id']} (categories[{position}])")
        by_id[category["id"]] = category
    if problems:
        return (), None, problems
    if sorted(by_id) != list(range(len(by_id))):
        return (), None, [f"category ids must be 0..{len(by_id) - 1} (class index = id), got {sorted(by_id)}"]
    names = tuple(by_id[i]["name"] for i in range(len(by_id)))
    if len(set(names)) != len(names):
        return (), None, [f"duplicate category names {sorted({n for n in names if names.count(n) > 1})}"]
    descriptions = None
    if any("description" in c for c in by_id.values()):
        descriptions = tuple(str(by_id[i].get("description", "")) for i in range(len(by_id)))
    return names, descriptions, []


def _labels_as_written(annotation: dict[str, Any]) -> tuple[Any, ...] | None:
    """Label ids as written, for a record whose labels do not parse (lenient mode)."""
    hard = annotation.get("category_ids")
    if isinstance(hard, list):
        return tuple(hard)
    soft = annotation.get("category_ids_softprob")
    if isinstance(soft, list) and all(_is_number(v) for v in soft):
        return tuple(i for i, v in enumerate(soft) if v > 0)
    return None


def _labels(
    annotation: dict[str, Any], num_classes: int, need_hard_labels: bool
) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None, str | None]:
    """(sorted labels, soft labels, None) of one annotation, or (None, None, problem)."""
    soft = annotation.get("category_ids_softprob")
    hard = annotation.get("category_ids")
    if need_hard_labels and hard is None:
        return None, None, "has no 'category_ids' list (soft-label train files are not scorable)"
    if soft is None and hard is None:
        return None, None, "annotation has neither 'category_ids' nor 'category_ids_softprob'"
    soft_labels: tuple[float, ...] | None = None
    from_soft: tuple[int, ...] | None = None
    if soft is not None:
        if not isinstance(soft, list) or len(soft) != num_classes:
            size = len(soft) if isinstance(soft, list) else type(soft).__name__
            return None, None, f"'category_ids_softprob' must be a list of {num_classes} numbers, got {size}"
        if not all(_is_number(v) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in soft):
            return None, None, f"'category_ids_softprob' values must be numbers in [0, 1], got {soft}"
        soft_labels = tuple(float(v) for v in soft)
        from_soft = tuple(i for i, v in enumerate(soft_labels) if v > 0)
    if hard is None:
        assert from_soft is not None
        return from_soft, soft_labels, None
    if not isinstance(hard, list) or not all(_is_int(v) for v in hard):
        return None, None, f"'category_ids' must be a list of integers, got {hard!r}"
    unknown = [v for v in hard if not 0 <= v < num_classes]
    if unknown:
        return None, None, f"unknown category id(s) {unknown} (valid: 0..{num_classes - 1})"
    if len(set(hard)) != len(hard):
        return None, None, f"category id listed more than once in {hard}"
    labels = tuple(sorted(hard))
    if from_soft is not None and from_soft != labels:
        return None, None, f"'category_ids' {list(labels)} disagree with 'category_ids_softprob' > 0 {list(from_soft)}"
    return labels, soft_labels, None


def parse_intentonomy_document(
    document: Any,
    source: str,
    *,
    mode: Mode = "strict",
    image_root: Path | str | None = None,
    split: str | None = None,
    need_hard_labels: bool = False,
    need_images: bool = True,
) -> IntentonomyAnnotations:
    """Parse an Intentonomy-schema document (see the module docstring for the modes).

    Args:
        document: the parsed JSON (e.g. from :func:`read_intentonomy_json`).
        source: the file name used in every message.
        mode: ``"strict"`` (raise every problem at once) or ``"lenient"`` (return every record).
        image_root: images are at ``<image_root>/<filename>``; ``None`` keeps ``<filename>``.
        split: ``"val"`` / ``"test"``: an image without any label is a problem (it is scored);
            ``"train"`` or ``None``: such images are fine (all-negative examples).
        need_hard_labels: every annotation must have ``category_ids`` (scoring: softprob-only
            train files are not scorable).
        need_images: ``images`` must be present. When it is absent (only allowed with
            ``need_images=False``) records have no image path and are not cross-checked.

    Raises:
        AnnotationFileError: structural problems (both modes), any problem (strict mode).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be 'strict' or 'lenient', got {mode!r}")
    if not isinstance(document, dict):
        raise AnnotationFileError(source, [f"top level must be a JSON object, got {type(document).__name__}"])
    structural: list[str] = []
    if not isinstance(document.get("categories"), list):
        structural.append("missing or non-list 'categories'")
    images_value = document.get("images")
    if not isinstance(images_value, list) and (need_images or images_value is not None):
        structural.append("missing or non-list 'images'")
    if not isinstance(document.get("annotations"), list):
        structural.append("missing or non-list 'annotations'")
    if structural:
        raise AnnotationFileError(source, structural)
    names, descriptions, category_problems = _categories(document["categories"])
    if category_problems:
        raise AnnotationFileError(source, category_problems)
    root = Path(image_root) if image_root is not None else None

    def image_path(filename: str) -> Path:
        return root / filename if root is not None else Path(filename)

    problems: list[str] = []
    # Shared by the loops below: a listed image has both, an annotation may lack either.
    image_id: str | None
    path: Path | None
    # image id -> (images position, path); ``None`` = the file has no 'images' (no cross-check).
    images: dict[str, tuple[int, Path]] | None = None
    # Problems of ``images`` entries, attached to the record of their image (lenient mode).
    image_problems: dict[str, list[str]] = {}
    image_positions: dict[str, list[int]] = {}
    unusable_images: list[AnnotationRecord] = []
    if isinstance(images_value, list):
        images = {}
        for position, image in enumerate(images_value):
            where = f"images[{position}]"
            if not isinstance(image, dict) or not _is_id(image.get("id")) or not isinstance(image.get("filename"), str):
                problem = _at(f"needs a string 'id' and a string 'filename': {image!r}", where)
                problems.append(problem)
                raw = image.get("id") if isinstance(image, dict) else None
                unusable_images.append(
                    AnnotationRecord(None, str(raw) if _is_id(raw) else None, None, None, None, (problem,), (position,))
                )
                continue
            image_id, path = str(image["id"]), image_path(image["filename"])
            image_positions.setdefault(image_id, []).append(position)
            if image_id in images:
                first = images[image_id][0]
                problem = _at(f"duplicate image id (first listed as images[{first}])", where, image_id, path)
                problems.append(problem)
                image_problems.setdefault(image_id, []).append(problem)
                continue
            images[image_id] = (position, path)

    records: list[AnnotationRecord] = []
    first_annotation: dict[str, int] = {}
    # Whether each annotation without problems of its own carries soft labels (one format per file).
    formats: set[bool] = set()
    for position, annotation in enumerate(document["annotations"]):
        where = f"annotations[{position}]"
        record_problems: list[str] = []
        if not isinstance(annotation, dict):
            record_problems.append(_at(f"is not an object: {annotation!r}", where))
            records.append(AnnotationRecord(position, None, None, None, None, tuple(record_problems)))
            problems += record_problems
            continue
        raw_id = annotation.get("image_id")
        image_id = str(raw_id) if _is_id(raw_id) else None
        path = None
        if image_id is None:
            record_problems.append(_at(f"has no usable 'image_id' ({raw_id!r})", where))
        elif images is not None and image_id not in images:
            record_problems.append(_at("refers to an image id missing from 'images'", where, image_id))
        elif images is not None:
            path = images[image_id][1]
        if image_id is not None and image_id in first_annotation:
            first = first_annotation[image_id]
            record_problems.append(
                _at(f"more than one annotation (first: annotations[{first}])", where, image_id, path)
            )
        elif image_id is not None:
            first_annotation[image_id] = position
        labels, soft_labels, label_problem = _labels(annotation, len(names), need_hard_labels)
        if label_problem is not None:
            record_problems.append(_at(label_problem, where, image_id, path))
        elif not labels and split in _EVAL_SPLITS:
            record_problems.append(
                _at(f"no labels (every {split} image needs at least one intent)", where, image_id, path)
            )
        label_ids = labels if labels is not None else _labels_as_written(annotation)
        if not record_problems and label_ids is not None:
            formats.add(soft_labels is not None)
        problems += record_problems
        # The image's own problems (listed twice) go with its first annotation, without
        # repeating them in ``problems`` (strict mode reports each problem once).
        own_image = image_id is not None and first_annotation.get(image_id) == position
        if own_image and image_id in image_problems:
            record_problems = [*record_problems, *image_problems[image_id]]
        record_positions = tuple(image_positions.get(image_id, ())) if own_image and image_id is not None else ()
        records.append(
            AnnotationRecord(position, image_id, path, label_ids, soft_labels, tuple(record_problems), record_positions)
        )

    if images is not None:
        for image_id, (position, path) in images.items():
            if image_id not in first_annotation:
                problem = _at("image has no annotation", f"images[{position}]", image_id, path)
                problems.append(problem)
                attached = (*image_problems.get(image_id, ()), problem)
                records.append(
                    AnnotationRecord(None, image_id, path, None, None, attached, tuple(image_positions[image_id]))
                )
    records += unusable_images
    if len(formats) > 1:
        problems.append("some annotations have 'category_ids_softprob' and others do not; use one format per file")

    if mode == "strict":
        if problems:
            raise AnnotationFileError(source, problems)
        return IntentonomyAnnotations(source, mode, names, descriptions, tuple(records))
    return IntentonomyAnnotations(source, mode, names, descriptions, tuple(records), tuple(problems))


__all__ = [
    "INTENTONOMY_CLASSES",
    "MAX_LISTED_PROBLEMS",
    "MODES",
    "AnnotationFileError",
    "AnnotationFileNotFoundError",
    "AnnotationRecord",
    "IntentonomyAnnotations",
    "Mode",
    "load_intentonomy_annotations",
    "parse_intentonomy_document",
    "read_intentonomy_json",
]
