"""Which data to use (:class:`DataConfig`) and the single entry point :func:`load_split`."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from mccl_core.config import ConfigError, from_dict
from mccl_core.data.annotations import find_annotation_file
from mccl_core.data.dataset import SPLITS, ImageRecord, IntentDataset
from mccl_core.data.images import DEFAULT_MAX_PIXELS
from mccl_core.data.mdid import MDID_NUM_SPLITS
from mccl_core.data.sources import SOURCES as SOURCE_REGISTRY
from mccl_core.data.sources import data_source

logger = logging.getLogger(__name__)

Source = Literal["demo", "intentonomy", "mdid", "manifest"]
#: The registered sources (:mod:`mccl_core.data.sources`); ``Source`` spells them for type checkers.
SOURCES: tuple[str, ...] = tuple(SOURCE_REGISTRY)


@dataclass
class DataConfig:
    """Where the data comes from.

    Attributes:
        source: ``demo`` | ``intentonomy`` | ``mdid`` | ``manifest``.
        root: dataset root. demo/intentonomy: folder holding ``low/`` and ``annotations/``;
            mdid: folder with ``<post_id>.jpg|.jpeg|.png``. manifest: not used and best left
            out - relative image paths resolve against the manifest file's folder (so the
            manifest, its images and the class list move, and are DVC-tracked, as one folder),
            and that folder is what the data hash looks up in DVC
            (:attr:`mccl_core.data.sources.DataSource.data_dir`).
        annotations: demo/intentonomy: per-split annotation file overriding the default under
            ``<root>/annotations/``: ``<split>.json`` for the demo (the project's canonical name;
            a demo folder from before it, with ``intentonomy_<split>2020.json``, still loads),
            Intentonomy's published ``intentonomy_<split>2020.json`` for intentonomy.
        mdid_split_index: which of MDID's 5 train/val splits (0..4).
        mdid_splits_file: compact MDID split file overriding the bundled one.
        manifest: CSV/JSONL manifest (columns ``image_path`` - alias ``image`` -, ``labels``,
            ``split``, optional ``image_id``; see :mod:`mccl_core.data.manifest`); may contain
            ``{split}`` for one file per split. Relative to the working directory.
        class_list: class-list file for ``manifest`` (one name per line or JSON).
        max_image_pixels: images above this many pixels are refused (decompression bombs).
        allowed_roots: more folders image paths may resolve into. Validation refuses every image
            whose path resolves (after symlinks) outside ``root``, the manifest's folder and
            these: DVC watches only those, and nothing else should be read.
    """

    source: Source = "demo"
    root: Path = Path("data/demo")
    annotations: dict[str, Path] = field(default_factory=dict)
    mdid_split_index: int = 0
    mdid_splits_file: Path | None = None
    manifest: Path | None = None
    class_list: Path | None = None
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS
    #: Folders besides ``root`` (and a manifest's folder) that image paths may resolve into.
    allowed_roots: list[Path] = field(default_factory=list)
    #: Share of the training split kept (label efficiency, ``mccl experiment data-size``): a fixed
    #: subset - the images with the smallest SHA-256 of their id, so 10 % lies inside 25 % inside
    #: 50 % - topped up so that every class keeps an image. Val and test are never cut.
    train_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"DataConfig.source must be one of {list(SOURCES)}, got {self.source!r}")
        self.root = Path(self.root)
        self.annotations = {str(k): Path(v) for k, v in (self.annotations or {}).items()}
        unknown = sorted(set(self.annotations) - set(SPLITS))
        if unknown:
            raise ConfigError(f"DataConfig.annotations keys must be splits {list(SPLITS)}, got {unknown}")
        self.mdid_splits_file = Path(self.mdid_splits_file) if self.mdid_splits_file is not None else None
        self.manifest = Path(self.manifest) if self.manifest is not None else None
        self.class_list = Path(self.class_list) if self.class_list is not None else None
        self.allowed_roots = [Path(p) for p in self.allowed_roots or []]
        if self.source == "mdid" and not 0 <= self.mdid_split_index < MDID_NUM_SPLITS:
            raise ConfigError(
                f"DataConfig.mdid_split_index must be 0..{MDID_NUM_SPLITS - 1}, got {self.mdid_split_index}"
            )
        if not 0.0 < float(self.train_fraction) <= 1.0:
            raise ConfigError(f"DataConfig.train_fraction must be in (0, 1], got {self.train_fraction}")
        self.train_fraction = float(self.train_fraction)
        if self.source == "manifest" and (self.manifest is None or self.class_list is None):
            raise ConfigError("DataConfig with source 'manifest' needs both 'manifest' and 'class_list'")

    def annotation_file(self, split: str) -> Path:
        """Annotation file of ``split`` for the demo / intentonomy sources: ``annotations[split]``,
        else the first of the source's default names under ``<root>/annotations/`` that exists
        (:attr:`mccl_core.data.sources.DataSource.annotation_filenames`), else the preferred one."""
        if split in self.annotations:
            return self.annotations[split]
        names = [filenames[split] for filenames in data_source(self).annotation_filenames]
        return find_annotation_file(self.root, names)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly form (paths as strings)."""
        return (
            {
                "source": self.source,
                "root": str(self.root),
                "annotations": {k: str(v) for k, v in self.annotations.items()},
                "mdid_split_index": self.mdid_split_index,
                "mdid_splits_file": str(self.mdid_splits_file) if self.mdid_splits_file else None,
                "manifest": str(self.manifest) if self.manifest else None,
                "class_list": str(self.class_list) if self.class_list else None,
                "max_image_pixels": self.max_image_pixels,
            }
            | ({"allowed_roots": [str(p) for p in self.allowed_roots]} if self.allowed_roots else {})
            | ({"train_fraction": self.train_fraction} if self.train_fraction != 1.0 else {})
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (catches config typos)."""
        return from_dict(cls, data, "data")


def load_split(
    cfg: DataConfig,
    split: str,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
) -> IntentDataset:
    """The ``split`` ("train" | "val" | "test") of the configured source as an :class:`IntentDataset`.

    Annotations are fully validated here (all problems reported at once); images are read lazily.
    MDID has only "train" and "val" for each ``mdid_split_index``; asking it for "test" raises
    ``ValueError`` (the MDID protocol averages val accuracy over the 5 split indices).
    The demo source does not generate data: run ``generate_demo`` (or ``mccl data demo``) first.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    records, names, descriptions, name = data_source(cfg).load(cfg, split)
    if split == "train" and cfg.train_fraction < 1.0:
        kept = train_subset(records, cfg.train_fraction, len(names))
        logger.info("train split cut to %d of %d images (data.train_fraction %g)", len(kept), len(records),
                    cfg.train_fraction)  # fmt: skip
        records = kept
    return IntentDataset(
        records, names, descriptions, transform, name=name, split=split, max_pixels=cfg.max_image_pixels
    )


def train_subset(records: Sequence[ImageRecord], fraction: float, num_classes: int) -> list[ImageRecord]:
    """The ``fraction`` of ``records`` with the smallest SHA-256 of their image id (nested across
    fractions, independent of file order), plus for every class missing from it its first image
    in that order; returned in the original order."""

    def key(record: ImageRecord) -> str:
        return hashlib.sha256(record.image_id.encode("utf-8")).hexdigest()

    ranked = sorted(range(len(records)), key=lambda i: key(records[i]))
    keep = set(ranked[: max(1, math.ceil(fraction * len(records)))])
    covered = {c for i in keep for c in records[i].labels}
    for i in ranked:
        missing = set(records[i].labels) - covered
        if missing:
            keep.add(i)
            covered |= missing
        if len(covered) == num_classes:
            break
    return [records[i] for i in sorted(keep)]
