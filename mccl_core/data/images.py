"""Robust image reading: every file either becomes an RGB ``PIL.Image`` or raises
:class:`ImageLoadError` naming the file and the problem.

Why a wrapper around ``PIL.Image.open``: real photo collections (Intentonomy is scraped from
Unsplash, "your own data" is whatever the user has) contain missing files, zero-byte or truncated
downloads, HTML error pages saved as ``.jpg``, CMYK / palette / 16-bit files, rotated phone photos
and the occasional absurdly large image. PIL reports these inconsistently (``OSError``,
``UnidentifiedImageError``, a *warning* for large images, silent mode differences), and a crash
deep inside a DataLoader worker without the file name is hard to act on. Here each problem is a
clear exception, and each silent-but-legitimate conversion is a logged, documented step:

* EXIF orientation is applied (``ImageOps.exif_transpose``), so phone photos are upright.
* Mode conversions to RGB: ``L``/``1``/``CMYK``/``YCbCr``/``LAB``/``HSV`` -> ``convert("RGB")``;
  ``RGBA``/``LA``/``P`` with transparency -> alpha-composited over white (dropping alpha would
  reveal whatever colour hides under transparent pixels); 16/32-bit integer and float
  greyscale (``I;16``, ``I``, ``F``) -> rescaled to 0..255 by the type's range.
* Images above ``max_pixels`` (width x height, default PIL's 89,478,485) are refused: a
  decompression bomb would otherwise exhaust memory in a data-loader worker.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: PIL's own default warning limit (~89.5 megapixels); we turn it into a hard, configurable limit.
DEFAULT_MAX_PIXELS: int = 89_478_485


class ImageLoadError(RuntimeError):
    """An image file could not be turned into an RGB image.

    Attributes:
        path: the offending file.
        problem: short description of what is wrong with it.
        image_id: the dataset record it belongs to, when known.
    """

    def __init__(self, path: Path | str, problem: str, image_id: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.image_id = image_id
        record = f"image {image_id!r} " if image_id is not None else ""
        super().__init__(f"{record}file {str(self.path)!r}: {problem}")


@dataclass(frozen=True)
class ImageProblem:
    """One unreadable image found by :func:`verify_images`."""

    index: int
    image_id: str
    path: Path
    problem: str

    def to_dict(self) -> dict[str, str | int]:
        return {"index": self.index, "image_id": self.image_id, "path": str(self.path), "problem": self.problem}


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert any PIL mode to RGB, logging what was done (see module docstring)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        result = Image.alpha_composite(background, rgba).convert("RGB")
        logger.debug("%s: converted %s to RGB (alpha composited over white)", path, mode)
        return result
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        grey = np.clip(array / scale * 255.0, 0, 255).astype(np.uint8)
        result = Image.fromarray(grey, mode="L").convert("RGB")
        logger.debug("%s: converted %s to RGB (rescaled by 255/%g)", path, mode, scale)
        return result
    result = image.convert("RGB")
    logger.debug("%s: converted %s to RGB", path, mode)
    return result


def load_rgb_image(
    path: Path | str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, image_id: str | None = None
) -> Image.Image:
    """Read ``path`` fully into memory as an upright RGB image.

    Args:
        path: image file.
        max_pixels: refuse images with more than this many pixels (``None``: no own limit;
            PIL's hard limit of 2 x ``Image.MAX_IMAGE_PIXELS`` still applies).
        image_id: record id, only used to make error messages name the record.

    Raises:
        ImageLoadError: missing, zero-byte, non-image, corrupt, truncated or too large file.
    """
    return _load_rgb_with_mode(Path(path), max_pixels, image_id)[0]


def load_rgb_image_bytes(
    data: bytes, *, source: str = "<bytes>", max_pixels: int | None = DEFAULT_MAX_PIXELS, image_id: str | None = None
) -> Image.Image:
    """:func:`load_rgb_image` for encoded image bytes already in memory (an upload, a request body).

    Same checks, conversions and errors as for a file, so a served model sees exactly the pixels
    training saw for the same JPEG/PNG. ``source`` names the bytes in errors (e.g. ``"request row 3"``).

    Raises:
        ImageLoadError: empty, non-image, corrupt, truncated or too large data.
    """
    if not data:
        raise ImageLoadError(source, "zero-byte image data", image_id)
    return _decode_rgb(io.BytesIO(data), Path(source), max_pixels, image_id)[0]


def _load_rgb_with_mode(path: Path, max_pixels: int | None, image_id: str | None) -> tuple[Image.Image, str]:
    """:func:`load_rgb_image` plus the file's original PIL mode (for conversion summaries)."""
    if not path.exists():
        raise ImageLoadError(path, "file not found", image_id)
    if not path.is_file():
        raise ImageLoadError(path, "not a regular file", image_id)
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "zero-byte file", image_id)
    return _decode_rgb(path, path, max_pixels, image_id)


def _decode_rgb(
    source: Path | BinaryIO, path: Path, max_pixels: int | None, image_id: str | None
) -> tuple[Image.Image, str]:
    """Decode ``source`` (a file or a binary stream; ``path`` names it in errors) to RGB + source mode."""
    try:
        with warnings.catch_warnings():
            # We enforce our own (configurable) limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                width, height = opened.size
                source_mode = opened.mode
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageLoadError(
                        path,
                        f"image is {width}x{height} = {width * height:,} pixels, above the limit of "
                        f"{max_pixels:,} (possible decompression bomb; raise max_pixels if intended)",
                        image_id,
                    )
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(path, f"decompression bomb refused by PIL: {error}", image_id) from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(path, "not a recognised image format (corrupt file or not an image)", image_id) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(path, f"corrupt or truncated image data ({error})", image_id) from error
    if image.size != (width, height):
        logger.debug("%s: applied EXIF orientation (%dx%d -> %dx%d)", path, width, height, *image.size)
    return _to_rgb(image, path), source_mode


def verify_images(
    dataset: object,
    *,
    max_pixels: int | None = None,
    show_progress: bool = True,
) -> list[ImageProblem]:
    """Read every image of ``dataset`` and return one :class:`ImageProblem` per unreadable file.

    Meant for a validation step before training: a training run should not discover a broken file
    in epoch 7. ``dataset`` is an :class:`~mccl_core.data.dataset.IntentDataset` (anything with
    ``records`` of ``ImageRecord`` works). Mode conversions are counted and logged at INFO.

    Args:
        max_pixels: limit to apply; defaults to the dataset's own ``max_pixels``.
    """
    from tqdm.auto import tqdm

    records: Sequence = dataset.records
    limit = max_pixels if max_pixels is not None else getattr(dataset, "max_pixels", DEFAULT_MAX_PIXELS)
    problems: list[ImageProblem] = []
    modes: Counter[str] = Counter()
    for index, record in enumerate(tqdm(records, desc="verify images", unit="img", disable=not show_progress)):
        try:
            _, source_mode = _load_rgb_with_mode(Path(record.image_path), limit, record.image_id)
            modes[source_mode] += 1
        except ImageLoadError as error:
            problems.append(ImageProblem(index, record.image_id, record.image_path, error.problem))
    converted = {mode: n for mode, n in modes.items() if mode != "RGB"}
    logger.info(
        "verified %d images: %d problems; source modes converted to RGB: %s",
        len(records),
        len(problems),
        converted or "none",
    )
    return problems


def format_problems(problems: Iterable[ImageProblem], limit: int = 20) -> str:
    """Human-readable list of problems, truncated to ``limit`` lines with the total."""
    items = list(problems)
    lines = [f"  image {p.image_id!r} file {str(p.path)!r}: {p.problem}" for p in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more ({len(items)} problems in total)")
    return "\n".join(lines)
