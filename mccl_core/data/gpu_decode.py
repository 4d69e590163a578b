"""GPU JPEG decoding for training (``train.decode_device: cuda``).

At thousands of images per second, PIL decoding and augmenting in DataLoader workers becomes the
limit of a 16-core machine. On this path the workers only read the encoded bytes; the train step
decodes the whole batch with nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``) and runs
the dataset's own train transform (RandomResizedCrop, flip, RandAugment, normalisation, erasing:
torchvision v2 ops are device-agnostic) on the GPU tensors, so both paths augment alike.

Only baseline/progressive JPEG files are accepted (nvJPEG's formats): another file fails the step
with its path. Image size limits and EXIF orientation follow the CPU loader's rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from mccl_core.data.dataset import IntentDataset

_JPEG_MAGIC = b"\xff\xd8\xff"


class GpuDecodeError(ValueError):
    """A file the GPU decoder cannot take (not a JPEG), or no CUDA device."""


class EncodedImages(torch.utils.data.Dataset):
    """``dataset``'s records as encoded JPEG bytes: ``dict(jpeg=uint8[N], labels=[C], index)``."""

    def __init__(self, dataset: IntentDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.dataset.records[index]
        data = read_file(str(record.image_path))
        if bytes(data[:3].tolist()) != _JPEG_MAGIC:
            raise GpuDecodeError(
                f"{record.image_path} (record {record.image_id!r}) is not a JPEG file: "
                "train.decode_device=cuda decodes JPEG only; use decode_device=cpu for this dataset"
            )
        labels = torch.zeros(self.dataset.num_classes, dtype=torch.float32)
        labels[list(record.labels)] = 1.0
        return {"jpeg": data, "labels": labels, "index": index}


def collate_encoded(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Encoded images stay a list (their lengths differ); labels and indices are stacked."""
    return {
        "jpeg": [item["jpeg"] for item in items],
        "labels": torch.stack([item["labels"] for item in items]),
        "index": torch.tensor([item["index"] for item in items]),
    }


class GpuBatchDecoder:
    """Decode a list of JPEG byte tensors on ``device`` and apply ``transform`` to each image.

    ``transform`` is the dataset's (PIL-or-tensor) torchvision v2 train transform; it receives a
    ``uint8 [3, H, W]`` CUDA tensor and returns ``float [3, S, S]``. Decoding is one batched nvJPEG
    call; the per-image transform calls launch small kernels (crops differ in size per image).
    """

    def __init__(self, transform: Callable[[Any], Tensor], device: torch.device, max_pixels: int | None = None) -> None:
        if device.type != "cuda" or not torch.cuda.is_available():
            raise GpuDecodeError(f"GPU JPEG decoding needs a CUDA device, got {device}")
        self.transform = transform
        self.device = device
        self.max_pixels = max_pixels

    def __call__(self, jpegs: list[Tensor]) -> Tensor:
        images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device, apply_exif_orientation=True)
        if self.max_pixels is not None:
            for i, image in enumerate(images):
                if image.shape[1] * image.shape[2] > self.max_pixels:
                    raise GpuDecodeError(f"batch image {i} has {image.shape[1]}x{image.shape[2]} pixels (> max_pixels)")
        return torch.stack([self.transform(image) for image in images])
