"""Interpretability for MCCL: maps in original-image pixels, the pointing game on the demo's clue
boxes, the prototype gallery and per-image explanations (``mccl explain``). See docs/explain.md.

The names below are imported on first use (PEP 562), so importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mccl_core.explain.gallery import GalleryResult, build_gallery, prototype_flags
    from mccl_core.explain.maps import CropGeometry, ExplainError, ExplanationMaps, IntentMaps
    from mccl_core.explain.pointing import PointingDataError, PointingResult, pointing_game
    from mccl_core.explain.render import ImageExplanation, explain_image, write_explanation

_EXPORTS: dict[str, str] = {
    "GalleryResult": "mccl_core.explain.gallery",
    "build_gallery": "mccl_core.explain.gallery",
    "prototype_flags": "mccl_core.explain.gallery",
    "CropGeometry": "mccl_core.explain.maps",
    "ExplainError": "mccl_core.explain.maps",
    "ExplanationMaps": "mccl_core.explain.maps",
    "IntentMaps": "mccl_core.explain.maps",
    "PointingDataError": "mccl_core.explain.pointing",
    "PointingResult": "mccl_core.explain.pointing",
    "pointing_game": "mccl_core.explain.pointing",
    "ImageExplanation": "mccl_core.explain.render",
    "explain_image": "mccl_core.explain.render",
    "write_explanation": "mccl_core.explain.render",
}

__all__ = [
    "CropGeometry",
    "ExplainError",
    "ExplanationMaps",
    "GalleryResult",
    "ImageExplanation",
    "IntentMaps",
    "PointingDataError",
    "PointingResult",
    "build_gallery",
    "explain_image",
    "pointing_game",
    "prototype_flags",
    "write_explanation",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
