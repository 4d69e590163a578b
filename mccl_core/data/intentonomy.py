"""Intentonomy (Jia et al., CVPR 2021): what is Intentonomy's own - its published annotation file
names, its bundled class metadata, its image URLs.

Intentonomy is one data source among others (:mod:`mccl_core.data.sources`). Its annotation JSON
schema is the project's canonical annotation format: the files are parsed by
:mod:`mccl_core.data.intentonomy_json` and read into records by :mod:`mccl_core.data.annotations`
(whose logger, not this module's, reports what was loaded). Under ``data.source: intentonomy``
the files keep the dataset's published names, ``<root>/annotations/intentonomy_<split>2020.json``
(:data:`OFFICIAL_ANNOTATION_FILENAMES`; what ``mccl data download-intentonomy`` reads), while the
files the project writes itself are named ``annotations/<split>.json``.

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
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from mccl_core.data.dataset import ProblemCollector
from mccl_core.data.intentonomy_json import INTENTONOMY_CLASSES as INTENTONOMY_CLASSES  # mccl_core.data exports it
from mccl_core.data.intentonomy_json import read_intentonomy_json

#: The dataset's published annotation file name per split (``<root>/annotations/<name>``), read
#: under ``data.source: intentonomy``. (Demo folders written before the project named its own
#: files ``<split>.json`` carry these names too; the demo source still finds them.)
OFFICIAL_ANNOTATION_FILENAMES: dict[str, str] = {
    "train": "intentonomy_train2020.json",
    "val": "intentonomy_val2020.json",
    "test": "intentonomy_test2020.json",
}
#: Old name of :data:`OFFICIAL_ANNOTATION_FILENAMES`.
ANNOTATION_FILENAMES = OFFICIAL_ANNOTATION_FILENAMES

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


# ----------------------------------------------------------------------------- image URLs


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
