"""Image transforms (torchvision v2): PIL RGB image -> normalised float tensor ``[3, S, S]``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from mccl_core.models.archs import IMAGENET_MEAN, IMAGENET_STD


def build_transforms(
    image_size: int,
    train: bool,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    hflip: bool = True,
    randaugment: bool = True,
    randaugment_ops: int = 1,
    randaugment_magnitude: int = 5,
    erase_prob: float = 0.0,
) -> Callable[[Image.Image], torch.Tensor]:
    """Training or evaluation transform.

    Train: RandomResizedCrop(``crop_scale``) -> horizontal flip -> light RandAugment (1 op,
    magnitude 5 of 31) -> tensor -> normalisation -> optional RandomErasing (Cutout).
    Eval: resize the short side to ``image_size`` -> center crop -> tensor -> normalisation.

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
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if not train:
        return v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size), *to_float])
    steps: list[Callable] = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude))
    steps += to_float
    if erase_prob > 0:
        steps.append(v2.RandomErasing(p=erase_prob, value=0))
    return v2.Compose(steps)
