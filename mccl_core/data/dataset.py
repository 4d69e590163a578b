"""The one dataset interface every source (Intentonomy, MDID, manifest, demo) produces.

A source's job is only to turn its annotation format into a list of :class:`ImageRecord` plus the
class names/descriptions; everything downstream (training, CPI, evaluation, serving) sees an
:class:`IntentDataset` and never the source format. Annotation problems are collected for *all*
records and raised together as one :class:`AnnotationError`, so a user fixes a broken manifest in
one pass instead of one error per run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mccl_core.data.images import DEFAULT_MAX_PIXELS, load_rgb_image

logger = logging.getLogger(__name__)

#: How many offending records an AnnotationError message lists before summarising.
MAX_LISTED_PROBLEMS = 20

SPLITS = ("train", "val", "test")


class AnnotationError(ValueError):
    """Annotations that cannot be used as they are.

    The message lists every offending record (image id + file + problem), truncated to
    :data:`MAX_LISTED_PROBLEMS` lines followed by the total count; ``problems`` keeps them all.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        listed = [f"  - {p}" for p in self.problems[:MAX_LISTED_PROBLEMS]]
        if len(self.problems) > MAX_LISTED_PROBLEMS:
            listed.append(f"  ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
        super().__init__(f"{source}: {len(self.problems)} annotation problem(s):\n" + "\n".join(listed))


class ProblemCollector:
    """Accumulates annotation problems so they can be reported all at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def add(self, problem: str, image_id: str | None = None, image_path: Path | str | None = None) -> None:
        where = []
        if image_id is not None:
            where.append(f"image {image_id!r}")
        if image_path is not None:
            where.append(f"file {str(image_path)!r}")
        self.problems.append((" ".join(where) + ": " if where else "") + problem)

    def raise_if_any(self) -> None:
        if self.problems:
            raise AnnotationError(self.source, self.problems)


@dataclass(frozen=True)
class ImageRecord:
    """One annotated image.

    Attributes:
        image_id: unique id within the dataset (Intentonomy hash, MDID post id, manifest id).
        image_path: absolute or root-relative-resolved path of the image file.
        labels: sorted class indices of the positive intents (may be empty only for train).
        soft_labels: per-class soft targets of length C (e.g. Intentonomy's annotator agreement
            1/3, 2/3, 1), or ``None`` when the source has only hard labels.
    """

    image_id: str
    image_path: Path
    labels: tuple[int, ...]
    soft_labels: tuple[float, ...] | None = None


def default_to_tensor() -> Callable[[Image.Image], torch.Tensor]:
    """Transform used when none is given: PIL RGB -> float tensor in [0, 1], no resizing."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


class IntentDataset(torch.utils.data.Dataset):
    """Multi-label intent dataset over a list of :class:`ImageRecord`.

    ``__getitem__`` returns ``dict(image=FloatTensor[3,H,W], labels=FloatTensor[C], index=int)``
    plus ``soft_labels=FloatTensor[C]`` when the dataset has soft labels (then every record has).
    Images are read lazily with :func:`load_rgb_image`, so a bad file raises
    :class:`~mccl_core.data.images.ImageLoadError` naming the record when it is read (use
    :func:`~mccl_core.data.images.verify_images` to check all files up front).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        class_names: Sequence[str],
        class_descriptions: Sequence[str] | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        *,
        name: str = "dataset",
        split: str = "",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.records: list[ImageRecord] = list(records)
        self.class_names: list[str] = list(class_names)
        descriptions = list(class_descriptions) if class_descriptions is not None else [""] * len(self.class_names)
        if len(descriptions) != len(self.class_names):
            raise ValueError(f"{name}: {len(descriptions)} class descriptions for {len(self.class_names)} classes")
        self.class_descriptions: list[str] = descriptions
        self.transform = transform if transform is not None else default_to_tensor()
        self.name = name
        self.split = split
        self.max_pixels = max_pixels
        self._check_records()

    def _check_records(self) -> None:
        """Structural checks every source gets for free (sources check their own formats)."""
        problems = ProblemCollector(f"{self.name} {self.split}".strip())
        num_classes = len(self.class_names)
        if len(set(self.class_names)) != num_classes:
            duplicates = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            problems.add(f"duplicate class names {duplicates}")
        seen: dict[str, int] = {}
        has_soft = [r.soft_labels is not None for r in self.records]
        if any(has_soft) and not all(has_soft):
            problems.add(
                f"{has_soft.count(False)} of {len(self.records)} records lack soft labels (all or none must have them)"
            )
        for index, record in enumerate(self.records):
            if record.image_id in seen:
                problems.add(
                    f"duplicate image id (records {seen[record.image_id]} and {index})",
                    record.image_id,
                    record.image_path,
                )
            else:
                seen[record.image_id] = index
            bad = [label for label in record.labels if not 0 <= label < num_classes]
            if bad:
                problems.add(f"label index {bad} outside 0..{num_classes - 1}", record.image_id, record.image_path)
            if record.soft_labels is not None and len(record.soft_labels) != num_classes:
                problems.add(
                    f"{len(record.soft_labels)} soft labels for {num_classes} classes",
                    record.image_id,
                    record.image_path,
                )
        problems.raise_if_any()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_soft_labels(self) -> bool:
        return bool(self.records) and self.records[0].soft_labels is not None

    def __len__(self) -> int:
        return len(self.records)

    def label_matrix(self) -> np.ndarray:
        """Multi-hot labels, float32 ``[N, C]``, rows in record order."""
        matrix = np.zeros((len(self.records), self.num_classes), dtype=np.float32)
        for row, record in enumerate(self.records):
            matrix[row, list(record.labels)] = 1.0
        return matrix

    def soft_label_matrix(self) -> np.ndarray | None:
        """Soft labels ``[N, C]`` float32, or ``None`` if the dataset has none."""
        if not self.has_soft_labels:
            return None
        return np.asarray([r.soft_labels for r in self.records], dtype=np.float32).reshape(
            len(self.records), self.num_classes
        )

    def class_counts(self) -> np.ndarray:
        """Positives per class (int64 ``[C]``)."""
        return self.label_matrix().sum(axis=0).astype(np.int64)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of record ``index`` (no transform)."""
        record = self.records[index]
        return load_rgb_image(record.image_path, max_pixels=self.max_pixels, image_id=record.image_id)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = self.transform(self.load_image(index))
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[list(record.labels)] = 1.0
        item: dict[str, Any] = {"image": image, "labels": labels, "index": index}
        if record.soft_labels is not None:
            item["soft_labels"] = torch.tensor(record.soft_labels, dtype=torch.float32)
        return item

    def __repr__(self) -> str:
        return (
            f"IntentDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, classes={self.num_classes})"
        )


def cooccurrence_counts(label_matrix: np.ndarray) -> np.ndarray:
    """Label co-occurrence counts ``M[i, j]`` = number of images carrying both i and j.

    The diagonal holds the class counts. Entries > 0 count as positive, so soft-label matrices
    follow the Intentonomy convention (softprob > 0). Used to build the PKI (ML-GCN) adjacency.

    Args:
        label_matrix: ``[N, C]`` array (multi-hot or soft).

    Returns:
        int64 ``[C, C]`` symmetric matrix.
    """
    matrix = np.asarray(label_matrix)
    if matrix.ndim != 2:
        raise ValueError(f"label_matrix must be 2-D [N, C], got shape {matrix.shape}")
    binary = (matrix > 0).astype(np.int64)
    return binary.T @ binary
