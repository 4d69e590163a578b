"""Image transforms (torchvision v2): PIL RGB image -> normalised float tensor ``[3, S, S]``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from PIL import Image
from torchvision.transforms import v2

#: How a photo of any aspect becomes the square network input. ``center_crop``: resize the short
#: side, keep the central square (the torchvision/timm evaluation habit; a 3:2 photo loses a third
#: of its width). ``resize``: squash the whole photo to the square (Query2Label's
#: ``Resize((S, S))`` for train and test; nothing is cut off, shapes are stretched).
GEOMETRIES: tuple[str, ...] = ("center_crop", "resize")


class AspectRandomCrop(v2.Transform):
    """Random crop of ``scale`` x the image's area *with the image's own aspect ratio*, resized to
    ``size x size``: under the ``resize`` geometry, a crop then looks exactly as stretched as the
    whole photo does at evaluation (RandomResizedCrop would add a second, random stretch)."""

    def __init__(self, size: int, scale: tuple[float, float]) -> None:
        super().__init__()
        self.size = size
        self.scale = scale

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.functional.get_size(flat_inputs[0])
        # torch's generator, as torchvision's own transforms: seeded per DataLoader worker.
        side = math.sqrt(float(torch.empty(1).uniform_(*self.scale)))
        crop_h, crop_w = max(1, round(height * side)), max(1, round(width * side))
        return {
            "top": int(torch.randint(0, height - crop_h + 1, (1,))),
            "left": int(torch.randint(0, width - crop_w + 1, (1,))),
            "height": crop_h,
            "width": crop_w,
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return v2.functional.resized_crop(inpt, **params, size=[self.size, self.size], antialias=True)


class InputSpec(Protocol):
    """What a model's input looks like: a model bundle's metadata
    (:class:`mccl_core.models.bundle.BundleMeta`) is one; no import of the models needed."""

    @property
    def image_size(self) -> int: ...
    @property
    def geometry(self) -> str: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...


def eval_transform_for(spec: InputSpec) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform of a trained model (its size, geometry and normalisation): what
    every consumer of a bundle - evaluation, explanations, serving, experiments - feeds it."""
    return build_transforms(spec.image_size, train=False, geometry=spec.geometry, mean=tuple(spec.mean),
                            std=tuple(spec.std))  # fmt: skip


def geometry_transform(image_size: int, geometry: str) -> list[Callable]:
    """The deterministic square view of ``geometry`` (evaluation, CPI extraction, serving)."""
    if geometry == "center_crop":
        return [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if geometry == "resize":
        return [v2.Resize((image_size, image_size), antialias=True)]
    raise ValueError(f"geometry must be one of {list(GEOMETRIES)}, got {geometry!r}")


def build_transforms(
    image_size: int,
    train: bool,
    *,
    geometry: str = "center_crop",
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_scale: tuple[float, float] = (0.6, 1.0),
    hflip: bool = True,
    randaugment: bool = True,
    randaugment_ops: int = 1,
    randaugment_magnitude: int = 5,
    erase_prob: float = 0.0,
) -> Callable[[Image.Image], torch.Tensor]:
    """Training or evaluation transform.

    Eval: the ``geometry``'s square view (:func:`geometry_transform`) -> tensor -> normalisation.
    Train: the same geometry, randomly cropped -> horizontal flip -> RandAugment (``randaugment_ops``
    operations of ``randaugment_magnitude``/31) -> tensor -> normalisation -> optional
    RandomErasing (Cutout). With ``crop_scale=(1, 1)`` the train view *is* the eval view (so CPI's
    tokens are those of the first training forward); below 1, ``center_crop`` takes a
    RandomResizedCrop (area ``crop_scale``, aspect 3/4..4/3) and ``resize`` an
    :class:`AspectRandomCrop` (area ``crop_scale``, the photo's own aspect, squashed like eval).

    The defaults are deliberately light: intents hinge on small, composable clues, and strong
    crops or colour operations can remove or change a clue and so silently corrupt the label.
    ``mean``/``std`` belong to the backbone's weights (``BackboneConfig.normalization()``; the model
    bundle stores them): ImageNet statistics for torchvision weights, 0.5/0.5 for the TF-ported
    EfficientNet-Lite weights. For the synthetic demo (colour is part of every clue, objects reach the image border) use
    ``crop_scale=(1.0, 1.0), randaugment=False``.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
    if not 0 <= erase_prob <= 1:
        raise ValueError(f"erase_prob must be in [0, 1], got {erase_prob}")
    if randaugment and not (randaugment_ops >= 1 and 0 <= randaugment_magnitude <= 30):
        raise ValueError(
            f"randaugment needs ops >= 1 and magnitude in [0, 30], got {randaugment_ops} / {randaugment_magnitude}"
        )
    view = geometry_transform(image_size, geometry)
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if not train:
        return v2.Compose([v2.ToImage(), *view, *to_float])
    steps: list[Callable] = [v2.ToImage()]
    if crop_scale[0] >= 1.0:
        steps += view
    elif geometry == "resize":
        steps.append(AspectRandomCrop(image_size, crop_scale))
    else:
        steps.append(v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude))
    steps += to_float
    if erase_prob > 0:
        steps.append(v2.RandomErasing(p=erase_prob, value=0))
    return v2.Compose(steps)
