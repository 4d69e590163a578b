"""The one image inspector: every image file (or in-memory upload) either becomes an upright RGB
``PIL.Image`` or is refused with a problem naming the file and the reason.

Everything that reads images goes through :func:`inspect_image`: the training / evaluation loader
(:func:`load_rgb_image`), the serving model (:func:`load_rgb_image_bytes`), ``mccl data verify``
(:func:`verify_images`) and the Great Expectations suite of the validate step
(:mod:`mccl_core.validation`). So a file the validation accepts is a file the loader decodes, with
the same pixels, and a file one refuses the other refuses for the same reason - given the same
:class:`ImageLimits`.

Why a wrapper around ``PIL.Image.open``: real photo collections (Intentonomy is scraped from
Unsplash, "your own data" is whatever the user has) contain missing files, zero-byte or truncated
downloads, HTML error pages saved as ``.jpg``, CMYK / palette / 16-bit files, rotated phone photos
and the occasional absurdly large image. PIL reports these inconsistently (``OSError``,
``UnidentifiedImageError``, a *warning* for large images, silent mode differences), and a crash
deep inside a DataLoader worker without the file name is hard to act on. Here each problem is a
clear record, and each silent-but-legitimate conversion is a logged, documented step:

* EXIF orientation is applied (``ImageOps.exif_transpose``), so phone photos are upright.
* The mode rule (decided here, once; :data:`RGB_CONVERTIBLE_MODES`):

  - ``RGB`` is used as is;
  - ``L``/``1``/``CMYK``/``YCbCr``/``LAB``/``HSV``/``RGBX`` and ``P`` without transparency ->
    ``convert("RGB")``;
  - ``RGBA``/``RGBa``/``LA``/``PA`` and ``P`` with transparency -> alpha-composited over white
    (dropping alpha would reveal whatever colour hides under transparent pixels);
  - 16-bit greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) -> rescaled by 255/65535;
    32-bit integer and float greyscale (``I``, ``F``) -> rescaled to 0..255 by the image's maximum;
  - every other mode is refused ("image mode 'X' cannot be converted to RGB"): in Pillow 13 that
    is premultiplied ``La`` (Pillow has no conversion from it) and any mode a future or
    third-party decoder may report.

* Limits (:class:`ImageLimits`): side lengths, pixel count and allowed modes are checked from the
  header, *before* decoding; an image above ``max_pixels`` is never decoded (a decompression bomb
  would otherwise exhaust memory in a data-loader worker). The loader's default limits only cap
  the pixel count (:meth:`ImageLimits.decode_only`); the validation suite adds side limits.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

#: PIL's own default warning limit (~89.5 megapixels); we turn it into a hard, configurable limit.
DEFAULT_MAX_PIXELS: int = 89_478_485

#: The mode rule: PIL modes :func:`inspect_image` converts to RGB (see the module docstring for
#: how). Every other mode is refused. All of Pillow 13's ``Image.MODES`` except premultiplied
#: ``La``, which Pillow cannot convert to anything.
RGB_CONVERTIBLE_MODES: tuple[str, ...] = (
    "1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
    "I", "I;16", "I;16B", "I;16L", "I;16N", "F",
)  # fmt: skip
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")

#: What an :class:`ImageIssue` is about. ``file``: missing / not a file / empty; ``format``: PIL
#: cannot identify it; ``decode``: the pixel data is corrupt, truncated or cannot be converted;
#: ``width``/``height``/``pixels``/``mode``: outside :class:`ImageLimits` (checked from the header).
IssueKind = Literal["file", "format", "decode", "width", "height", "pixels", "mode"]
ISSUE_KINDS: tuple[str, ...] = ("file", "format", "decode", "width", "height", "pixels", "mode")


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
class ImageLimits:
    """What an image must satisfy to be accepted, all checked from the header before decoding.

    The defaults are the validation suite's (16..16384 px a side, PIL's ~89.5 MP, every mode of the
    mode rule). The loader defaults to :meth:`decode_only` (no side limits). ``max_side=None`` /
    ``max_pixels=None``: no own limit (PIL's hard limit of 2 x ``Image.MAX_IMAGE_PIXELS`` still
    applies). ``allowed_modes`` may narrow the mode rule, never widen it.
    """

    min_side: int = 16
    max_side: int | None = 16384
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    allowed_modes: tuple[str, ...] = RGB_CONVERTIBLE_MODES

    def __post_init__(self) -> None:
        if self.min_side < 1 or (self.max_side is not None and self.max_side < self.min_side):
            raise ValueError(f"ImageLimits needs 0 < min_side <= max_side, got {self.min_side}, {self.max_side}")
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise ValueError(f"ImageLimits.max_pixels must be positive, got {self.max_pixels}")
        object.__setattr__(self, "allowed_modes", tuple(self.allowed_modes))
        if not self.allowed_modes:
            raise ValueError("ImageLimits.allowed_modes is empty: no image could be accepted")
        unsupported = [mode for mode in self.allowed_modes if mode not in RGB_CONVERTIBLE_MODES]
        if unsupported:
            raise ValueError(
                f"ImageLimits.allowed_modes {unsupported} cannot be converted to RGB; "
                f"allowed modes must be among {list(RGB_CONVERTIBLE_MODES)}"
            )

    @classmethod
    def decode_only(cls, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageLimits:
        """The loader's limits: any side length, at most ``max_pixels`` pixels, every convertible mode."""
        return cls(min_side=1, max_side=None, max_pixels=max_pixels)


@dataclass(frozen=True)
class ImageIssue:
    """One reason an image is refused."""

    kind: IssueKind
    reason: str


@dataclass(frozen=True)
class ImageInspection:
    """What :func:`inspect_image` found: the image facts, and the issues if it is refused.

    ``width``/``height`` are the stored size from the header (before EXIF orientation), ``mode``
    the source PIL mode; they are ``None`` when the header could not be read. ``image`` is the
    upright RGB image, only when asked for (``keep_image=True``) and the file was accepted.
    """

    path: Path
    width: int | None
    height: int | None
    mode: str | None
    format: str | None = None
    issues: tuple[ImageIssue, ...] = ()
    image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Accepted: the loader returns an RGB image for this file."""
        return not self.issues

    @property
    def problem(self) -> str:
        """All reasons, ``"; "``-joined (``""`` when accepted)."""
        return "; ".join(issue.reason for issue in self.issues)

    def reasons(self, *kinds: str) -> list[str]:
        """The reasons of the issues of the given kinds, in the order found."""
        return [issue.reason for issue in self.issues if issue.kind in kinds]

    @property
    def pixels(self) -> int | None:
        return None if self.width is None or self.height is None else self.width * self.height


@dataclass(frozen=True)
class ImageProblem:
    """One refused image of a dataset, found by :func:`verify_images`."""

    index: int
    image_id: str
    path: Path
    problem: str

    def to_dict(self) -> dict[str, str | int]:
        return {"index": self.index, "image_id": self.image_id, "path": str(self.path), "problem": self.problem}


# --------------------------------------------------------------------------------------------
# The inspector
# --------------------------------------------------------------------------------------------


def inspect_image(
    source: Path | str | bytes,
    limits: ImageLimits | None = None,
    *,
    name: str | None = None,
    keep_image: bool = False,
) -> ImageInspection:
    """Open an image file (or encoded bytes), check it against ``limits``, decode and convert it.

    Never raises for a bad image: the returned :class:`ImageInspection` lists the issues (file,
    format, size, pixel count, mode, corrupt data). Order of the checks: the file itself; the
    header (format, then side lengths, pixel count and mode against ``limits`` - an image failing
    any of these is *not* decoded); then the full decode, EXIF orientation and RGB conversion (so
    truncated and corrupt files are caught here, not in the middle of a training epoch).

    Args:
        source: a file path, or encoded image bytes (an upload).
        limits: defaults to :meth:`ImageLimits.decode_only` (the loader's limits).
        name: how to name ``bytes`` in the result (default ``"<bytes>"``); ignored for paths.
        keep_image: return the upright RGB image in ``.image`` when accepted.
    """
    limits = limits or ImageLimits.decode_only()
    if isinstance(source, (bytes, bytearray, memoryview)):
        path = Path(name or "<bytes>")
        if len(source) == 0:
            return _refused(path, "file", "zero-byte image data")
        return _inspect_stream(io.BytesIO(bytes(source)), path, limits, keep_image)
    path = Path(source)
    if not path.exists():
        return _refused(path, "file", "file not found")
    if not path.is_file():
        return _refused(path, "file", "not a regular file")
    if path.stat().st_size == 0:
        return _refused(path, "file", "zero-byte file")
    return _inspect_stream(path, path, limits, keep_image)


def _refused(path: Path, kind: IssueKind, reason: str) -> ImageInspection:
    return ImageInspection(path, None, None, None, issues=(ImageIssue(kind, reason),))


def _limit_issues(width: int, height: int, mode: str, limits: ImageLimits) -> list[ImageIssue]:
    issues: list[ImageIssue] = []
    sides: tuple[tuple[IssueKind, int], ...] = (("width", width), ("height", height))
    for kind, side in sides:
        if limits.max_side is not None and not limits.min_side <= side <= limits.max_side:
            issues.append(ImageIssue(kind, f"{kind} {side} outside [{limits.min_side}, {limits.max_side}]"))
        elif side < limits.min_side:
            issues.append(ImageIssue(kind, f"{kind} {side} below min_side {limits.min_side}"))
    pixels = width * height
    if limits.max_pixels is not None and pixels > limits.max_pixels:
        issues.append(
            ImageIssue(
                "pixels",
                f"image is {width}x{height} = {pixels:,} pixels, above the limit of {limits.max_pixels:,} "
                f"(possible decompression bomb; raise max_pixels if intended)",
            )
        )
    if mode not in RGB_CONVERTIBLE_MODES:
        issues.append(ImageIssue("mode", f"image mode {mode!r} cannot be converted to RGB"))
    elif mode not in limits.allowed_modes:
        allowed = list(limits.allowed_modes)
        issues.append(ImageIssue("mode", f"image mode {mode!r} is not among the allowed modes {allowed}"))
    return issues


def _error_text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _inspect_stream(source: Path | BinaryIO, path: Path, limits: ImageLimits, keep_image: bool) -> ImageInspection:
    width = height = None
    mode = image_format = None
    try:
        with warnings.catch_warnings():
            # We enforce our own (configurable) limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                width, height = opened.size
                mode, image_format = opened.mode, opened.format
                issues = _limit_issues(width, height, mode, limits)
                if issues:  # refused from the header alone: never decode (decompression-bomb guard)
                    return ImageInspection(path, width, height, mode, image_format, tuple(issues))
                opened.load()
                upright = ImageOps.exif_transpose(opened)
    except MemoryError:
        raise
    except Image.DecompressionBombError as error:
        return _refused(path, "pixels", f"decompression bomb refused by PIL: {error}")
    except UnidentifiedImageError:
        return _refused(path, "format", "not a recognised image format (corrupt file or not an image)")
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        issue = ImageIssue("decode", f"corrupt or truncated image data ({_error_text(error)})")
        return ImageInspection(path, width, height, mode, image_format, (issue,))
    if upright.size != (width, height):
        logger.debug("%s: applied EXIF orientation (%dx%d -> %dx%d)", path, width, height, *upright.size)
    try:
        rgb = _to_rgb(upright, path)
    except Exception as error:  # pragma: no cover - every mode of the rule converts; defensive
        issue = ImageIssue("decode", f"conversion of mode {mode!r} to RGB failed ({_error_text(error)})")
        return ImageInspection(path, width, height, mode, image_format, (issue,))
    return ImageInspection(path, width, height, mode, image_format, (), rgb if keep_image else None)


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert a mode of :data:`RGB_CONVERTIBLE_MODES` to RGB, logging what was done."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        result = Image.alpha_composite(background, rgba).convert("RGB")
        logger.debug("%s: converted %s to RGB (alpha composited over white)", path, mode)
        return result
    if image.mode in (*_SIXTEEN_BIT_MODES, "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if image.mode in _SIXTEEN_BIT_MODES else max(float(array.max()), 1.0)
        grey = np.clip(array / scale * 255.0, 0, 255).astype(np.uint8)
        result = Image.fromarray(grey, mode="L").convert("RGB")
        logger.debug("%s: converted %s to RGB (rescaled by 255/%g)", path, mode, scale)
        return result
    result = image.convert("RGB")
    logger.debug("%s: converted %s to RGB", path, mode)
    return result


# --------------------------------------------------------------------------------------------
# The loader (training, evaluation, serving)
# --------------------------------------------------------------------------------------------


def _loader_limits(max_pixels: int | None, limits: ImageLimits | None) -> ImageLimits:
    return limits if limits is not None else ImageLimits.decode_only(max_pixels)


def load_rgb_image(
    path: Path | str,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    image_id: str | None = None,
    limits: ImageLimits | None = None,
) -> Image.Image:
    """Read ``path`` fully into memory as an upright RGB image (see :func:`inspect_image`).

    Args:
        path: image file.
        max_pixels: refuse images with more than this many pixels (``None``: no own limit;
            PIL's hard limit of 2 x ``Image.MAX_IMAGE_PIXELS`` still applies).
        image_id: record id, only used to make error messages name the record.
        limits: full limits (sides, pixels, modes), e.g. the validation suite's; when given they
            replace ``max_pixels``.

    Raises:
        ImageLoadError: missing, zero-byte, non-image, corrupt, truncated, too large or
            unconvertible file (``problem`` is the inspector's reason).
    """
    inspection = inspect_image(path, _loader_limits(max_pixels, limits), keep_image=True)
    if not inspection.ok:
        raise ImageLoadError(path, inspection.problem, image_id)
    assert inspection.image is not None
    return inspection.image


def load_rgb_image_bytes(
    data: bytes,
    *,
    source: str = "<bytes>",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    image_id: str | None = None,
    limits: ImageLimits | None = None,
) -> Image.Image:
    """:func:`load_rgb_image` for encoded image bytes already in memory (an upload, a request body).

    Same checks, conversions and errors as for a file, so a served model sees exactly the pixels
    training saw for the same JPEG/PNG. ``source`` names the bytes in errors (e.g. ``"request row 3"``).

    Raises:
        ImageLoadError: empty, non-image, corrupt, truncated, too large or unconvertible data.
    """
    inspection = inspect_image(bytes(data or b""), _loader_limits(max_pixels, limits), name=source, keep_image=True)
    if not inspection.ok:
        raise ImageLoadError(source, inspection.problem, image_id)
    assert inspection.image is not None
    return inspection.image


# --------------------------------------------------------------------------------------------
# Checking a whole dataset up front (``mccl data verify``)
# --------------------------------------------------------------------------------------------


def verify_images(
    dataset: object,
    *,
    max_pixels: int | None = None,
    limits: ImageLimits | None = None,
    show_progress: bool = True,
) -> list[ImageProblem]:
    """Inspect every image of ``dataset`` and return one :class:`ImageProblem` per refused file.

    Meant for a check before training: a training run should not discover a broken file in epoch
    7. ``dataset`` is an :class:`~mccl_core.data.dataset.IntentDataset` (anything with ``records``
    of ``ImageRecord`` works). Mode conversions are counted and logged at INFO.

    Args:
        max_pixels: limit to apply; defaults to the dataset's own ``max_pixels``.
        limits: full limits (e.g. the validate step's side limits); when given they replace
            ``max_pixels``.
    """
    from tqdm.auto import tqdm

    records: Sequence = dataset.records  # type: ignore[attr-defined]
    if limits is None:
        pixel_limit = max_pixels if max_pixels is not None else getattr(dataset, "max_pixels", DEFAULT_MAX_PIXELS)
        limits = ImageLimits.decode_only(pixel_limit)
    problems: list[ImageProblem] = []
    modes: Counter[str] = Counter()
    for index, record in enumerate(tqdm(records, desc="verify images", unit="img", disable=not show_progress)):
        inspection = inspect_image(Path(record.image_path), limits)
        if inspection.ok:
            modes[str(inspection.mode)] += 1
        else:
            problems.append(ImageProblem(index, record.image_id, Path(record.image_path), inspection.problem))
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


# --------------------------------------------------------------------------------------------
# Decoding under a budget (serving): header first, then a reduced-scale decode where possible
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodePlan:
    """What decoding encoded image bytes will cost, read from the header alone (nothing decoded).

    Why: a server must refuse a request whose images would take too long or too much memory to
    decode *before* it decodes any of them (a 9400x9400 single-colour PNG is 86 KB on the wire and
    88 MP - 265 MB of RGB - once decoded). ``width``/``height`` are the stored size;
    ``decode_width``/``decode_height`` the size the decoder will actually produce: smaller only
    for a JPEG larger than needed, which libjpeg decodes at 1/2, 1/4 or 1/8 scale (DCT scaling,
    ``Image.draft``) - other formats decode at full size. ``issues``: why the image is refused
    from its header (format, mode, sides, decoded pixels against ``max_pixels``); sizes are
    ``None`` when the header could not be read.
    """

    name: str
    width: int | None
    height: int | None
    mode: str | None
    format: str | None
    decode_width: int | None
    decode_height: int | None
    issues: tuple[ImageIssue, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def problem(self) -> str:
        return "; ".join(issue.reason for issue in self.issues)

    @property
    def decode_pixels(self) -> int:
        """Pixels the decoder will produce (0 when the header could not be read)."""
        return (self.decode_width or 0) * (self.decode_height or 0)

    def describe(self) -> str:
        """``9400x9400 = 88,360,000 pixels``, plus the reduced decode size when there is one."""
        if self.width is None or self.height is None:
            return "unknown size"
        text = f"{self.width}x{self.height} = {self.width * self.height:,} pixels"
        if (self.decode_width, self.decode_height) != (self.width, self.height):
            text += f" (decoded at reduced scale as {self.decode_width}x{self.decode_height} = {self.decode_pixels:,})"
        return text


def _reduce_before_decode(opened: Image.Image, min_decode_side: int | None) -> None:
    """Ask the decoder for a smaller image whose shorter side stays >= ``min_decode_side``.

    Only JPEG implements this in Pillow (``draft``: DCT scaling by 1/2, 1/4 or 1/8, which is
    both faster and a fraction of the memory); for every other format ``draft`` does nothing. The
    mode is left alone (``draft("RGB", ...)`` never changes a JPEG's mode; only ``L``/``YCbCr``
    requests do), so the mode rule of :func:`inspect_image` applies unchanged.
    """
    if min_decode_side is not None and opened.format == "JPEG":
        opened.draft("RGB", (min_decode_side, min_decode_side))


def _plan_opened(opened: Image.Image, name: str, limits: ImageLimits, min_decode_side: int | None) -> DecodePlan:
    from dataclasses import replace  # (here: this section is appended; the module's imports stay as they are)

    width, height = opened.size
    mode, image_format = opened.mode, opened.format
    _reduce_before_decode(opened, min_decode_side)
    decode_width, decode_height = opened.size
    # Sides and mode are judged on the stored image, the pixel count on what will be decoded.
    issues = _limit_issues(width, height, mode, replace(limits, max_pixels=None))
    plan = DecodePlan(name, width, height, mode, image_format, decode_width, decode_height)
    if limits.max_pixels is not None and plan.decode_pixels > limits.max_pixels:
        issues.append(
            ImageIssue(
                "pixels",
                f"image is {plan.describe()}, above the limit of {limits.max_pixels:,} pixels per image "
                "(possible decompression bomb)",
            )
        )
    return replace(plan, issues=tuple(issues))


def plan_image_decode(
    data: bytes, limits: ImageLimits | None = None, *, min_decode_side: int | None = None, name: str = "<bytes>"
) -> DecodePlan:
    """Read the header of encoded image bytes and say what decoding them will cost; decode nothing.

    Args:
        data: the encoded file (JPEG, PNG, ...).
        limits: side, mode and pixel limits (default :meth:`ImageLimits.decode_only`); ``max_pixels``
            applies to the pixels that will be *decoded* (after a JPEG's reduced-scale decode).
        min_decode_side: decode a JPEG at the smallest DCT scale (1, 1/2, 1/4, 1/8) whose shorter
            side is still at least this; ``None``: full size.
        name: how the bytes are named in the plan.
    """
    limits = limits or ImageLimits.decode_only()
    if len(data) == 0:
        return DecodePlan(name, None, None, None, None, None, None, (ImageIssue("file", "zero-byte image data"),))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as opened:
                return _plan_opened(opened, name, limits, min_decode_side)
    except MemoryError:
        raise
    except Image.DecompressionBombError as error:
        issue = ImageIssue("pixels", f"decompression bomb refused by PIL: {error}")
    except UnidentifiedImageError:
        issue = ImageIssue("format", "not a recognised image format (corrupt file or not an image)")
    except Exception as error:  # a header PIL cannot parse
        issue = ImageIssue("decode", f"corrupt image header ({_error_text(error)})")
    return DecodePlan(name, None, None, None, None, None, None, (issue,))


def load_rgb_image_bytes_reduced(
    data: bytes,
    *,
    min_decode_side: int | None,
    source: str = "<bytes>",
    limits: ImageLimits | None = None,
) -> Image.Image:
    """:func:`load_rgb_image_bytes` with a reduced-scale JPEG decode (see :func:`plan_image_decode`).

    Why: a model that looks at ``image_size`` pixels does not need a 48 MP photo decoded at full
    size; DCT scaling decodes it up to 8 times smaller per side, with up to 64 times less memory
    and time. The header is checked again here (a caller need not have planned first); EXIF
    orientation and the mode rule are those of :func:`inspect_image`. With
    ``min_decode_side=None`` the pixels are exactly those of :func:`load_rgb_image_bytes`.

    Raises:
        ImageLoadError: empty, non-image, corrupt, truncated, too large or unconvertible data.
    """
    limits = limits or ImageLimits.decode_only()
    if len(data) == 0:
        raise ImageLoadError(source, "zero-byte image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as opened:
                plan = _plan_opened(opened, source, limits, min_decode_side)
                if not plan.ok:  # refused from the header alone: never decode
                    raise ImageLoadError(source, plan.problem)
                opened.load()
                upright = ImageOps.exif_transpose(opened)
    except (MemoryError, ImageLoadError):
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(source, f"decompression bomb refused by PIL: {error}") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(source, "not a recognised image format (corrupt file or not an image)") from error
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        raise ImageLoadError(source, f"corrupt or truncated image data ({_error_text(error)})") from error
    try:
        return _to_rgb(upright, Path(source))
    except Exception as error:  # pragma: no cover - every mode of the rule converts; defensive
        raise ImageLoadError(
            source, f"conversion of mode {plan.mode!r} to RGB failed ({_error_text(error)})"
        ) from error
