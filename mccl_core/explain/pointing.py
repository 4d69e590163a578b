"""Pointing game on the synthetic demo: does an intent's explanation peak land on its clues?

The demo annotations record every drawn object (``demo_objects``: colour, shape, clue index, box
in original-image pixels) and every intent's defining clues (``categories[].clues``). For every
(image, true intent) pair whose intent has at least one clue drawn, the game takes the peak of
the intent's attention map and of its own-prototype assignment map (:mod:`mccl_core.explain.maps`,
in original pixels) and counts a hit when the peak pixel lies inside the box of one of that
intent's clues. A box ``[x0, y0, x1, y1]`` covers the pixels ``x0 <= x < x1``, ``y0 <= y < y1``.

Two baselines a map must beat:

* ``random``: the exact expected hit rate of a pointer that picks a uniformly random pixel of the
  original image (the mean over the pairs of the fraction covered by the union of the clue boxes);
* ``centre``: a pointer that always names the pixel under the centre of the model's input. It is
  what a flat map points at (the peak tie-break goes to the plateau's centre), and on data whose
  objects sit around the middle it is the stronger one (the demo's 3 x 3 layout: ~0.25 vs ~0.13).
  :attr:`PointingResult.chance` is the stronger of the two.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mccl_core.data.transforms import eval_transform_for
from mccl_core.explain.maps import CropGeometry, ExplanationMaps, require_mccl


class PointingDataError(ValueError):
    """The split carries no clue boxes to point at (not demo-format annotations)."""


@dataclass(frozen=True)
class PointingResult:
    #: (image, true intent) pairs scored (the intent has >= 1 clue box drawn).
    pairs: int
    #: Fraction whose attention peak lies inside a box of one of that intent's clues.
    attention: float
    #: Same for the prototype-assignment peak; None when MCC is off.
    assignment: float | None
    #: Exact expected hit rate of a uniformly random pixel (mean box-union area fraction).
    random: float
    #: Hit rate of a pointer fixed at the centre of the model's input (what a flat map points at).
    centre: float = 0.0

    @property
    def chance(self) -> float:
        """The stronger baseline: a map is worth reading only where it beats this."""
        return max(self.random, self.centre)

    def as_metrics(self, prefix: str = "pointing_") -> dict[str, float]:
        metrics = {
            f"{prefix}pairs": float(self.pairs),
            f"{prefix}attention": float(self.attention),
            f"{prefix}random": float(self.random),
            f"{prefix}centre": float(self.centre),
        }
        if self.assignment is not None:
            metrics[f"{prefix}assignment"] = float(self.assignment)
        return metrics

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.pairs, "attention": self.attention, "assignment": self.assignment, "random": self.random,
                "centre": self.centre}  # fmt: skip


Box = tuple[int, int, int, int]


def point_in_boxes(point: tuple[int, int], boxes: Sequence[Box]) -> bool:
    x, y = point
    return any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in boxes)


def union_fraction(boxes: Sequence[Box], width: int, height: int) -> float:
    """Fraction of the ``width x height`` image's pixels inside the union of ``boxes`` (clipped)."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(y0, 0) : max(min(y1, height), 0), max(x0, 0) : max(min(x1, width), 0)] = True
    return float(mask.mean())


def intent_clue_boxes(annotation_file: Path) -> dict[str, dict[int, list[Box]]]:
    """``{image_id: {intent: [clue boxes drawn in that image]}}`` from a demo-format annotation file.

    Raises :class:`PointingDataError` naming the file when it carries no ``demo_objects``."""
    path = Path(annotation_file)
    if not path.is_file():
        raise PointingDataError(f"{path}: annotation file not found (the pointing game needs demo-format annotations)")
    document = json.loads(path.read_text(encoding="utf-8"))
    annotations = document.get("annotations") or []
    if not any(isinstance(a, dict) and a.get("demo_objects") for a in annotations):
        raise PointingDataError(
            f"{path}: no annotation carries 'demo_objects' clue boxes; the pointing game runs on the "
            "synthetic demo (or data annotated in its format) only"
        )
    clue_names = list((document.get("info") or {}).get("clues") or [])
    intent_clues: dict[int, set[int]] = {}
    for category in document.get("categories") or []:
        clues = category.get("clues") or []
        indices = {clue_names.index(c) if isinstance(c, str) and c in clue_names else c for c in clues}
        intent_clues[int(category["id"])] = {int(i) for i in indices if isinstance(i, int)}
    if not any(intent_clues.values()):
        raise PointingDataError(f"{path}: the categories list no 'clues' (which clues define each intent)")
    out: dict[str, dict[int, list[Box]]] = {}
    for annotation in annotations:
        objects = annotation.get("demo_objects") or []
        per_intent: dict[int, list[Box]] = {}
        for intent, clues in intent_clues.items():
            boxes = [
                (int(o["box"][0]), int(o["box"][1]), int(o["box"][2]), int(o["box"][3]))
                for o in objects
                if o.get("clue") is not None and int(o["clue"]) in clues
            ]
            if boxes:
                per_intent[intent] = boxes
        out[str(annotation["image_id"])] = per_intent
    return out


def upright_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as the loader sees it (EXIF orientation applied), header only."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


@dataclass
class PairOutcome:
    """One scored (image, intent) pair (kept for reports and tests)."""

    image_id: str
    intent: int
    attention_hit: bool
    assignment_hit: bool | None
    random: float
    centre_hit: bool = False


def score_pairs(outcomes: Sequence[PairOutcome]) -> PointingResult:
    """Aggregate pair outcomes into a :class:`PointingResult` (zero pairs -> all rates 0)."""
    n = len(outcomes)
    if n == 0:
        return PointingResult(0, 0.0, None, 0.0)
    assignment_hits = [o.assignment_hit for o in outcomes]
    known = [bool(h) for h in assignment_hits if h is not None]
    assignment = float(np.mean(known)) if len(known) == n else None
    return PointingResult(
        pairs=n,
        attention=float(np.mean([o.attention_hit for o in outcomes])),
        assignment=assignment,
        random=float(np.mean([o.random for o in outcomes])),
        centre=float(np.mean([o.centre_hit for o in outcomes])),
    )


def score_image(
    maps: ExplanationMaps,
    row: int,
    image_id: str,
    labels: Sequence[int],
    boxes: Mapping[int, Sequence[Box]],
    geometry: CropGeometry,
) -> list[PairOutcome]:
    """The pairs of one image (row ``row`` of ``maps``): its true intents that have clue boxes."""
    outcomes = []
    centre = geometry.input_pixel_to_original(geometry.size // 2, geometry.size // 2)
    for intent in labels:
        intent_boxes = list(boxes.get(int(intent), ()))
        if not intent_boxes:
            continue
        m = maps.intent(row, int(intent), geometry)
        outcomes.append(
            PairOutcome(
                image_id=image_id,
                intent=int(intent),
                attention_hit=point_in_boxes(m.attention_peak, intent_boxes),
                assignment_hit=None if m.assignment_peak is None else point_in_boxes(m.assignment_peak, intent_boxes),
                random=union_fraction(intent_boxes, geometry.width, geometry.height),
                centre_hit=point_in_boxes(centre, intent_boxes),
            )
        )
    return outcomes


def pointing_pairs(
    model: Any,
    meta: Any,
    data_cfg: Any,
    split: str = "test",
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
) -> list[PairOutcome]:
    """Every scored pair of ``split`` (see :func:`pointing_game`)."""
    from mccl_core.data import load_split
    from mccl_core.data.sources import data_source

    require_mccl(model)
    if not data_source(data_cfg).intentonomy_schema:
        raise PointingDataError(
            f"data source {data_cfg.source!r} has no demo_objects clue boxes (the pointing game needs the demo format)"
        )
    annotation_file = data_cfg.annotation_file(split)
    boxes = intent_clue_boxes(annotation_file)
    dataset = load_split(data_cfg, split, transform=eval_transform_for(meta))
    if dataset.class_names != list(meta.class_names):
        raise PointingDataError(
            f"{annotation_file}: classes {dataset.class_names} differ from the model's {meta.class_names}"
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    indices = list(range(len(dataset) if max_images is None else min(max_images, len(dataset))))
    size = int(meta.image_size)
    outcomes: list[PairOutcome] = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        images = torch.stack([dataset[i]["image"] for i in chunk]).to(device)
        maps = ExplanationMaps(model.explain(images), len(meta.class_names), size)
        for row, index in enumerate(chunk):
            record = dataset.records[index]
            width, height = upright_size(record.image_path)
            outcomes += score_image(
                maps,
                row,
                record.image_id,
                record.labels,
                boxes.get(record.image_id, {}),
                CropGeometry.of(width, height, size, meta.geometry),
            )
    return outcomes


def pointing_game(
    model: Any,
    meta: Any,
    data_cfg: Any,
    split: str = "test",
    *,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    max_images: int | None = None,
) -> PointingResult:
    """Pointing game of ``model`` (an MCCL model; ``meta``: its :class:`BundleMeta`) on ``split``
    of ``data_cfg`` (a :class:`mccl_core.data.DataConfig` of demo-format data).

    Raises :class:`~mccl_core.explain.maps.ExplainError` for a baseline model and
    :class:`PointingDataError` when the split carries no clue boxes (naming the file)."""
    outcomes = pointing_pairs(model, meta, data_cfg, split, device=device, batch_size=batch_size, max_images=max_images)
    return score_pairs(outcomes)
