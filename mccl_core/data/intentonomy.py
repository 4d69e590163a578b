"""Intentonomy (Jia et al., CVPR 2021): annotation JSON reader and bundled metadata.

Annotation schema (COCO-like)::

    {"categories": [{"id": int, "name": str, "description"?: str}, ...],
     "images": [{"id": str, "filename": "low/<id>.jpg", "original_id"?: str, "unsplash_url"?: str}],
     "annotations": [{"id": int, "image_id": str,
                      "category_ids": [int]              # val / test
                      "category_ids_softprob": [float]}]  # train: one value per class, x/3

Label convention (as in every Intentonomy codebase): a class is positive when its softprob is
> 0; the soft probabilities are kept as ``soft_labels``. Images live at ``<root>/<filename>``.
The demo dataset is written in this same schema, so the demo walks the real-data code path.

The bundled metadata (``resources/intentonomy_metadata.json``) holds the 28 class names, our own
one-to-two sentence class descriptions (label text for PKI), the 28 -> 15 -> 9 hierarchy with
approximate group names, and per-split class counts; ``resources/
intentonomy_train_cooccurrence_counts.npy`` holds the training co-occurrence counts. Both are
derived from the Intentonomy annotations (CC BY-NC 4.0); see ``resources/ATTRIBUTION.md``.
The official evaluation subsets live in ``mccl_core.metrics.intentonomy_subsets``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mccl_core.data.dataset import ImageRecord, ProblemCollector

logger = logging.getLogger(__name__)

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


def read_annotation_json(path: Path) -> dict[str, Any]:
    """Parse an annotation JSON file, naming the file in any error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"annotation file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {str(path)!r}: top level must be an object, got {type(data).__name__}")
    return data


def parse_categories(categories: Any, problems: ProblemCollector) -> tuple[list[str], list[str] | None]:
    """Class names (index = id) and descriptions (``None`` if the file carries none).

    Ids must be exactly 0..C-1: the label vectors index classes by id, so a gap would silently
    shift every later class.
    """
    if not isinstance(categories, list) or not categories:
        problems.add("'categories' must be a non-empty list")
        return [], None
    by_id: dict[int, dict[str, Any]] = {}
    for position, category in enumerate(categories):
        if (
            not isinstance(category, dict)
            or not isinstance(category.get("id"), int)
            or not isinstance(category.get("name"), str)
        ):
            problems.add(f"category #{position} must have an integer 'id' and a string 'name': {category!r}")
            continue
        if category["id"] in by_id:
            problems.add(f"duplicate category id {category['id']}")
        by_id[category["id"]] = category
    if problems.problems:
        return [], None
    if sorted(by_id) != list(range(len(by_id))):
        problems.add(f"category ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
        return [], None
    names = [by_id[i]["name"] for i in range(len(by_id))]
    if len(set(names)) != len(names):
        problems.add(f"duplicate category names {sorted({n for n in names if names.count(n) > 1})}")
    if any("description" in c for c in by_id.values()):
        descriptions = [str(by_id[i].get("description", "")) for i in range(len(by_id))]
    else:
        descriptions = None
    return names, descriptions


def _labels_from_annotation(
    annotation: dict[str, Any], num_classes: int, image_id: str, path: Path, problems: ProblemCollector
) -> tuple[tuple[int, ...], tuple[float, ...] | None] | None:
    """(labels, soft labels) of one annotation, or ``None`` after recording a problem."""
    soft = annotation.get("category_ids_softprob")
    hard = annotation.get("category_ids")
    if soft is None and hard is None:
        problems.add("annotation has neither 'category_ids' nor 'category_ids_softprob'", image_id, path)
        return None
    soft_labels: tuple[float, ...] | None = None
    labels_from_soft: tuple[int, ...] | None = None
    if soft is not None:
        if not isinstance(soft, list) or len(soft) != num_classes:
            size = len(soft) if isinstance(soft, list) else type(soft).__name__
            problems.add(f"'category_ids_softprob' must be a list of {num_classes} numbers, got {size}", image_id, path)
            return None
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0
            for v in soft
        ):
            problems.add(f"'category_ids_softprob' values must be numbers in [0, 1], got {soft}", image_id, path)
            return None
        soft_labels = tuple(float(v) for v in soft)
        labels_from_soft = tuple(i for i, v in enumerate(soft_labels) if v > 0)
    if hard is not None:
        if not isinstance(hard, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in hard):
            problems.add(f"'category_ids' must be a list of integers, got {hard!r}", image_id, path)
            return None
        unknown = [v for v in hard if not 0 <= v < num_classes]
        if unknown:
            problems.add(f"unknown category id(s) {unknown} (valid: 0..{num_classes - 1})", image_id, path)
            return None
        if len(set(hard)) != len(hard):
            problems.add(f"category id listed more than once in {hard}", image_id, path)
            return None
        labels = tuple(sorted(hard))
        if labels_from_soft is not None and labels_from_soft != labels:
            problems.add(
                f"'category_ids' {list(labels)} disagree with 'category_ids_softprob' > 0 {list(labels_from_soft)}",
                image_id,
                path,
            )
            return None
        return labels, soft_labels
    assert labels_from_soft is not None
    return labels_from_soft, soft_labels


def parse_intentonomy_annotations(
    data: dict[str, Any], image_root: Path, split: str, source: str
) -> tuple[list[ImageRecord], list[str], list[str] | None]:
    """Validate an Intentonomy-schema annotation dict and turn it into records.

    Every record is checked and all problems are raised together as one
    :class:`~mccl_core.data.dataset.AnnotationError`: duplicate image ids, annotations for unknown
    images, images without annotation, duplicate annotations, unknown category ids, malformed soft
    probabilities, and (for val/test) images without any label. Unlabelled train images are kept
    (they are legitimate negatives in multi-label training) and counted in a warning.

    Returns:
        records in annotation order (the order of the official label-vector files), class names,
        class descriptions from the file (``None`` if it has none).
    """
    problems = ProblemCollector(source)
    for key in ("categories", "images", "annotations"):
        if not isinstance(data.get(key), list):
            problems.add(f"missing or non-list '{key}'")
    problems.raise_if_any()
    names, descriptions = parse_categories(data["categories"], problems)
    problems.raise_if_any()

    images: dict[str, Path] = {}
    for position, image in enumerate(data["images"]):
        if (
            not isinstance(image, dict)
            or not isinstance(image.get("id"), (str, int))
            or not isinstance(image.get("filename"), str)
        ):
            problems.add(f"image entry #{position} needs a string 'id' and a string 'filename': {image!r}")
            continue
        image_id = str(image["id"])
        path = Path(image_root) / image["filename"]
        if image_id in images:
            problems.add(f"duplicate image id (image entry #{position})", image_id, path)
            continue
        images[image_id] = path

    records: list[ImageRecord] = []
    annotated: set[str] = set()
    unlabelled_train = 0
    for position, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or not isinstance(annotation.get("image_id"), (str, int)):
            problems.add(f"annotation #{position} has no 'image_id': {annotation!r}")
            continue
        image_id = str(annotation["image_id"])
        if image_id not in images:
            problems.add(f"annotation #{position} refers to an image id missing from 'images'", image_id)
            continue
        path = images[image_id]
        if image_id in annotated:
            problems.add(f"more than one annotation (annotation #{position})", image_id, path)
            continue
        annotated.add(image_id)
        parsed = _labels_from_annotation(annotation, len(names), image_id, path, problems)
        if parsed is None:
            continue
        labels, soft_labels = parsed
        if not labels:
            if split == "train":
                unlabelled_train += 1
            else:
                problems.add(f"no labels (every {split} image needs at least one intent)", image_id, path)
                continue
        records.append(ImageRecord(image_id, path, labels, soft_labels))
    for image_id, path in images.items():
        if image_id not in annotated:
            problems.add("image has no annotation", image_id, path)
    has_soft = {r.soft_labels is not None for r in records}
    if len(has_soft) > 1:
        problems.add("some annotations have 'category_ids_softprob' and others do not; use one format per file")
    problems.raise_if_any()
    if unlabelled_train:
        logger.warning(
            "%s: %d train images have no positive label (kept as all-negative examples)", source, unlabelled_train
        )
    return records, names, descriptions


def load_intentonomy_records(
    annotation_file: Path, image_root: Path, split: str
) -> tuple[list[ImageRecord], list[str], list[str]]:
    """Read an Intentonomy-schema annotation file.

    Class descriptions come from the file's ``categories[].description`` when present (the demo
    writes them); for the official 28 classes without descriptions the bundled ones are used;
    otherwise they are empty strings.
    """
    annotation_file = Path(annotation_file)
    data = read_annotation_json(annotation_file)
    records, names, descriptions = parse_intentonomy_annotations(data, Path(image_root), split, str(annotation_file))
    if descriptions is None:
        descriptions = intentonomy_descriptions() if tuple(names) == INTENTONOMY_CLASSES else [""] * len(names)
    logger.info("%s: %d %s images, %d classes", annotation_file, len(records), split, len(names))
    return records, names, descriptions


def image_urls(annotation_file: Path) -> list[tuple[str, str, str]]:
    """``(image_id, filename, unsplash_url)`` of every image in an annotation file.

    Raises ``ValueError`` listing images that lack an id, filename or URL.
    """
    data = read_annotation_json(Path(annotation_file))
    problems = ProblemCollector(str(annotation_file))
    entries: list[tuple[str, str, str]] = []
    images = data.get("images")
    if not isinstance(images, list):
        problems.add("missing or non-list 'images'")
        problems.raise_if_any()
    seen: set[str] = set()
    for position, image in enumerate(images):  # type: ignore[union-attr]
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
