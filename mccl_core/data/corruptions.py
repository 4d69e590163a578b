"""Deterministic image corruptions for robustness tests, applied on the fly to PIL images.

A corruption runs *before* the evaluation transform (resize, crop, normalise) of a model, on
the decoded image, so no corrupted copy of a dataset is ever written. Severity is defined at the
model's input resolution: with ``input_size`` (the robustness experiment passes the model's), the
image is first rescaled so that its short side is ``input_size`` (aspect kept), then corrupted.
Without it a corruption acts on the source pixels, and the same level means less on a large photo
(a 4x downscale of a 1,000 px photo still leaves 250 px for a 224 px model: no loss at all; noise
and JPEG blocks shrink with the eval resize):

* ``jpeg<q>``: re-encode as JPEG at quality ``q`` (90, 70, 50, 30, 10) and decode again;
* ``down<f>``: downscale by ``f`` (2, 4; bilinear), the normal eval resize then scales it back up
  (at input resolution: the model sees ``1/f`` of its resolution);
* ``noise<s>``: additive Gaussian noise with standard deviation ``s`` in units of the full
  0..255 range (0.05, 0.10), clipped to 0..255. Its random stream is seeded by a fixed seed and
  a hash of the image's own pixels, so an image gets the same noise in every run, worker and
  order;
* ``clean``: the identity.

    from mccl_core.data.corruptions import corrupted_transform, get_corruption
    dataset = load_split(data_cfg, "test", transform=corrupted_transform("jpeg30", eval_transform_for(meta),
                                                                          input_size=meta.image_size))
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

#: Seed mixed into the per-image noise seed (change it to draw other noise).
NOISE_SEED = 20250424
JPEG_QUALITIES = (90, 70, 50, 30, 10)
DOWNSCALE_FACTORS = (2, 4)
NOISE_SIGMAS = (0.05, 0.10)

Kind = Literal["clean", "jpeg", "down", "noise"]


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``kind`` and its ``level`` (JPEG quality, downscale factor, noise sigma)."""

    kind: Kind
    level: float = 0.0
    seed: int = NOISE_SEED

    @property
    def name(self) -> str:
        if self.kind == "clean":
            return "clean"
        if self.kind == "noise":
            return f"noise{self.level:.2f}"
        return f"{self.kind}{int(self.level)}"

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if self.kind == "clean":
            return image
        if self.kind == "jpeg":
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(self.level))
            buffer.seek(0)
            with Image.open(buffer) as decoded:
                return decoded.convert("RGB")
        if self.kind == "down":
            factor = int(self.level)
            size = (max(1, image.width // factor), max(1, image.height // factor))
            return image.resize(size, Image.Resampling.BILINEAR)
        if self.kind == "noise":
            pixels = np.asarray(image, dtype=np.uint8)
            digest = hashlib.sha256(str(self.seed).encode() + pixels.tobytes()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            noisy = pixels.astype(np.float32) + rng.normal(0.0, self.level * 255.0, pixels.shape)
            return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), mode="RGB")
        raise ValueError(f"unknown corruption kind {self.kind!r}")


_NAME = re.compile(r"^(clean|jpeg|down|noise)([0-9.]*)$")


def get_corruption(name: str) -> Corruption:
    """``"jpeg30"`` -> ``Corruption("jpeg", 30)``; also ``clean``, ``down2``, ``noise0.05``."""
    match = _NAME.match(name.strip())
    if match is None or (match.group(1) != "clean" and not match.group(2)):
        raise ValueError(f"unknown corruption {name!r}: use clean, jpeg<quality>, down<factor> or noise<sigma>")
    kind, raw = match.group(1), match.group(2)
    if kind == "clean":
        return Corruption("clean")
    level = float(raw)
    if kind == "jpeg" and not 1 <= level <= 95:
        raise ValueError(f"JPEG quality must be 1..95, got {raw}")
    if kind == "down" and (level < 1 or level != int(level)):
        raise ValueError(f"downscale factor must be an integer >= 1, got {raw}")
    if kind == "noise" and not 0 <= level <= 1:
        raise ValueError(f"noise sigma is a fraction of the 0..255 range (0..1), got {raw}")
    return Corruption(kind, level)  # type: ignore[arg-type]


#: The default robustness suite, clean first.
DEFAULT_CORRUPTIONS: tuple[str, ...] = (
    "clean",
    *(f"jpeg{q}" for q in JPEG_QUALITIES),
    *(f"down{f}" for f in DOWNSCALE_FACTORS),
    *(f"noise{s:.2f}" for s in NOISE_SIGMAS),
)


def to_input_scale(image: Image.Image, input_size: int) -> Image.Image:
    """``image`` rescaled (bilinear, antialiased) so that its short side is ``input_size``."""
    short = min(image.width, image.height)
    if short == input_size:
        return image
    scale = input_size / short
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)


class CorruptedTransform:
    """``transform(corruption(image))`` (at ``input_size`` resolution when given); a top-level
    class so DataLoader workers can pickle it."""

    def __init__(
        self, corruption: Corruption, transform: Callable[[Image.Image], Any], input_size: int | None = None
    ) -> None:
        if input_size is not None and input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        self.corruption = corruption
        self.transform = transform
        self.input_size = input_size

    def __call__(self, image: Image.Image) -> Any:
        if self.input_size is not None:
            image = to_input_scale(image.convert("RGB"), self.input_size)
        return self.transform(self.corruption(image))

    def __repr__(self) -> str:
        return f"CorruptedTransform({self.corruption.name}, {self.transform!r}, input_size={self.input_size})"


def corrupted_transform(
    corruption: Corruption | str, transform: Callable[[Image.Image], Any], input_size: int | None = None
) -> CorruptedTransform:
    """``transform`` after ``corruption``; ``input_size`` (the model's) sets the corruption's scale."""
    resolved = get_corruption(corruption) if isinstance(corruption, str) else corruption
    return CorruptedTransform(resolved, transform, input_size)
