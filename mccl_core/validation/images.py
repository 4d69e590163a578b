"""GX-facing adapter over the one image inspector, :func:`mccl_core.data.images.inspect_image`.

Nothing here decides whether an image is acceptable: the inspector does (the same function the
training loader uses), and this module only lays its verdicts out as per-row columns that the
suite's image expectations assert on, and hands back the inspector's reason for each failed check.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mccl_core.data.images import ImageInspection, ImageIssue, ImageLimits, inspect_image

#: Image check of the suite -> (the boolean column it asserts is all true, the issue kinds it reports).
IMAGE_CHECKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "image_readable": ("readable", ("file", "format", "decode")),
    "image_width": ("width_ok", ("width",)),
    "image_height": ("height_ok", ("height",)),
    "image_pixels": ("pixels_ok", ("pixels",)),
    "image_mode": ("mode_ok", ("mode",)),
}


def inspect_paths(paths: list[Path | None], limits: ImageLimits, workers: int) -> list[ImageInspection]:
    """Inspect every path (``None``: the row has no image_path) with a thread pool."""

    def inspect(path: Path | None) -> ImageInspection:
        if path is None:
            return ImageInspection(Path(""), None, None, None, issues=(ImageIssue("file", "no image_path"),))
        return inspect_image(path, limits)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(tqdm(pool.map(inspect, paths), total=len(paths), desc="checking images", unit="img", leave=False))


def add_image_columns(rows: pd.DataFrame, inspections: list[ImageInspection]) -> None:
    """Add the inspector's facts (``width``, ``height``, ``pixels``, ``mode``, ``problem``) and
    verdicts (one boolean column per image check) to ``rows``, in place."""
    rows["width"] = np.array([np.nan if r.width is None else r.width for r in inspections], dtype=np.float64)
    rows["height"] = np.array([np.nan if r.height is None else r.height for r in inspections], dtype=np.float64)
    rows["pixels"] = rows["width"] * rows["height"]
    rows["mode"] = np.array([r.mode for r in inspections], dtype=object)
    rows["problem"] = [r.problem for r in inspections]
    for column, kinds in IMAGE_CHECKS.values():
        rows[column] = [not r.reasons(*kinds) for r in inspections]


def image_problem(check: str, inspection: ImageInspection) -> str:
    """The inspector's reason(s) behind a failed image check."""
    _, kinds = IMAGE_CHECKS[check]
    return "; ".join(inspection.reasons(*kinds)) or f"failed check {check}"
