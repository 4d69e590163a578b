"""Explanation maps in original-image pixels.

The eval transform (:func:`mccl_core.data.transforms.build_transforms`, ``train=False``) makes
the ``S x S`` input by the backbone's geometry: ``center_crop`` resizes the short side to ``S``
and keeps the central square, ``resize`` squashes the whole image. :class:`CropGeometry` inverts
either: a point of the model input maps back to the original image, and a map over the model
input is placed into the original frame (zeros outside the crop, which the model never saw).

Per (image, intent):

* **attention map**: the last decoder layer's cross-attention of the intent query as a density
  (each stage's per-token mass spread over its cell's area, so the ``S x S`` map sums to the
  attention's total mass, 1), summed over the stages (they share one distribution). Without the
  area normalisation a stage-4 cell, 4x the area of a stage-3 cell, would pull every peak;
* **assignment map**: each patch's assignment mass on the intent's own prototypes, averaged over
  the stages (None when MCC is off);
* **peak**: the arg-max pixel of the ``S x S`` map, mapped to original pixels (integer
  ``(x, y)``, column then row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mccl_core.models.mccl import ClueExplanation


class ExplainError(ValueError):
    """The model or the input cannot be explained (e.g. a plain-backbone baseline model)."""


@dataclass(frozen=True)
class CropGeometry:
    """How the eval transform maps an original ``width x height`` image onto the ``size x size`` input.

    ``center_crop``: same arithmetic as torchvision's ``Resize(size)`` (short side to ``size``, long
    side truncated) and ``CenterCrop(size)`` (offsets rounded). ``resize``: ``Resize((size, size))``,
    the whole image, no offsets.
    """

    width: int
    height: int
    size: int
    resized_width: int
    resized_height: int
    left: int
    top: int

    @classmethod
    def of(cls, width: int, height: int, size: int, geometry: str = "center_crop") -> CropGeometry:
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if geometry == "resize":
            return cls(int(width), int(height), int(size), int(size), int(size), 0, 0)
        if geometry != "center_crop":
            raise ValueError(f"unknown input geometry {geometry!r}: center_crop or resize")
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        left = int(round((new_w - size) / 2.0))
        top = int(round((new_h - size) / 2.0))
        return cls(int(width), int(height), int(size), new_w, new_h, left, top)

    @property
    def scale_x(self) -> float:
        """Original pixels per resized pixel, horizontally."""
        return self.width / self.resized_width

    @property
    def scale_y(self) -> float:
        return self.height / self.resized_height

    def input_to_original(self, u: float, v: float) -> tuple[float, float]:
        """A point ``(u, v)`` of the model input (continuous pixel coordinates) in original pixels."""
        return (u + self.left) * self.scale_x, (v + self.top) * self.scale_y

    def input_box_to_original(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0 = self.input_to_original(box[0], box[1])
        x1, y1 = self.input_to_original(box[2], box[3])
        return x0, y0, x1, y1

    def input_pixel_to_original(self, u: int, v: int) -> tuple[int, int]:
        """The original pixel ``(x, y)`` under the centre of input pixel ``(u, v)``."""
        x, y = self.input_to_original(u + 0.5, v + 0.5)
        return min(max(int(x), 0), self.width - 1), min(max(int(y), 0), self.height - 1)

    def to_original(self, input_map: Tensor, out_size: tuple[int, int] | None = None) -> Tensor:
        """``[..., S, S]`` map over the model input -> ``[..., H, W]`` over the original image
        (``out_size=(H', W')`` renders the same frame at another resolution). Zero outside the crop."""
        lead = input_map.shape[:-2]
        flat = input_map.reshape(-1, 1, self.size, self.size).float()
        canvas = F.pad(
            flat,
            (
                self.left,
                self.resized_width - self.size - self.left,
                self.top,
                self.resized_height - self.size - self.top,
            ),
        )
        height, width = out_size if out_size is not None else (self.height, self.width)
        out = F.interpolate(canvas, size=(height, width), mode="bilinear", align_corners=False)
        return out.reshape(*lead, height, width)


def _upsample(maps: list[Tensor], size: int) -> list[Tensor]:
    return [F.interpolate(m.float(), size=(size, size), mode="bilinear", align_corners=False) for m in maps]


def combined_attention(explanation: ClueExplanation, size: int) -> Tensor:
    """``[B, C, S, S]``: the attention as a density over the input, summed over stages.

    A token's mass is spread over its cell (``S^2 / (H_s W_s)`` input pixels), so the map sums to
    the attention's total mass (1) and a coarse stage cannot win a peak by its cell size alone."""
    densities = [m * (m.shape[-2] * m.shape[-1] / float(size * size)) for m in explanation.attention_maps()]
    return torch.stack(_upsample(densities, size)).sum(dim=0)


def combined_assignment(explanation: ClueExplanation, num_classes: int, size: int) -> Tensor | None:
    """``[B, C, S, S]``: each patch's assignment mass on class c's prototypes, upsampled and
    averaged over stages. None when MCC is off."""
    maps = explanation.class_assignment_maps(num_classes)
    if maps is None:
        return None
    return torch.stack(_upsample(maps, size)).mean(dim=0)


def input_peak(input_map: Tensor) -> tuple[int, int]:
    """``(u, v)`` (column, row) of the maximum of a ``[S, S]`` map.

    Bilinear upsampling turns a border cell's maximum into a plateau that reaches the image edge,
    so on ties the pixel of the plateau nearest its centroid is taken (not the first, which would
    pull peaks to the top-left border)."""
    values = input_map.float()
    top = values.max()
    rows, cols = torch.nonzero(values >= top - 1e-6 * top.abs().clamp(min=1e-12), as_tuple=True)
    if len(rows) == 1:
        return int(cols[0]), int(rows[0])
    centre_r, centre_c = rows.float().mean(), cols.float().mean()
    nearest = int(torch.argmin((rows.float() - centre_r) ** 2 + (cols.float() - centre_c) ** 2))
    return int(cols[nearest]), int(rows[nearest])


def original_peak(input_map: Tensor, geometry: CropGeometry) -> tuple[int, int]:
    """The peak of a ``[S, S]`` input map in original pixels ``(x, y)``."""
    u, v = input_peak(input_map)
    return geometry.input_pixel_to_original(u, v)


@dataclass
class IntentMaps:
    """One (image, intent): maps over the model input (``[S, S]``) and their peaks in original pixels."""

    intent: int
    attention: Tensor
    assignment: Tensor | None
    attention_peak: tuple[int, int]
    assignment_peak: tuple[int, int] | None
    geometry: CropGeometry

    def attention_original(self, out_size: tuple[int, int] | None = None) -> Tensor:
        return self.geometry.to_original(self.attention, out_size)

    def assignment_original(self, out_size: tuple[int, int] | None = None) -> Tensor | None:
        return None if self.assignment is None else self.geometry.to_original(self.assignment, out_size)


class ExplanationMaps:
    """The combined maps of one :class:`ClueExplanation` batch (computed once, read per pair)."""

    def __init__(self, explanation: ClueExplanation, num_classes: int, size: int) -> None:
        self.size = int(size)
        self.attention = combined_attention(explanation, self.size).cpu()
        assignment = combined_assignment(explanation, num_classes, self.size)
        self.assignment = None if assignment is None else assignment.cpu()

    def intent(self, image: int, intent: int, geometry: CropGeometry) -> IntentMaps:
        if geometry.size != self.size:
            raise ValueError(f"geometry for input size {geometry.size}, maps of size {self.size}")
        attention = self.attention[image, intent]
        assignment = None if self.assignment is None else self.assignment[image, intent]
        return IntentMaps(
            intent=intent,
            attention=attention,
            assignment=assignment,
            attention_peak=original_peak(attention, geometry),
            assignment_peak=None if assignment is None else original_peak(assignment, geometry),
            geometry=geometry,
        )


def require_mccl(model: object) -> None:
    """Raise :class:`ExplainError` unless ``model`` is an MCCL model (the baseline has no clues)."""
    from mccl_core.models.mccl import MCCLModel

    if not isinstance(model, MCCLModel):
        raise ExplainError(
            f"{type(model).__name__} cannot be explained: only MCCL models (variant: mccl) have intent "
            "queries and prototypes; the plain-backbone baseline (variant: baseline) has neither"
        )
