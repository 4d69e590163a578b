"""Datasets for MCCL: one interface (:class:`IntentDataset`) over Intentonomy, MDID, your own
manifest and the synthetic demo, plus robust image loading, transforms and the demo generator.

Typical use::

    from mccl_core.data import DataConfig, build_transforms, load_split
    train = load_split(DataConfig(source="demo", root=Path("data/demo")), "train",
                       build_transforms(96, train=True, mean=backbone_mean, std=backbone_std))

(the normalisation belongs to the backbone's weights: ``ModelConfig.backbone.normalization()``)

The names below are imported on first use (PEP 562), so the torch-free modules of this package
(:mod:`mccl_core.data.intentonomy_json`, used by ``mccl score``) do not pull in torch.
"""

# No ``from __future__ import annotations`` here: it would bind the name ``annotations`` in this
# package, and ``from mccl_core.data import annotations`` would then return that flag instead of
# the submodule :mod:`mccl_core.data.annotations`.
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mccl_core.data.config import SOURCES, DataConfig, load_split
    from mccl_core.data.dataset import SPLITS, AnnotationError, ImageRecord, IntentDataset, cooccurrence_counts
    from mccl_core.data.demo import DEMO_CLASSES, DEMO_INTENTS, DemoConfig, ensure_demo, generate_demo
    from mccl_core.data.download import DownloadConfig, DownloadReport, download_intentonomy
    from mccl_core.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, ImageProblem, load_rgb_image, verify_images
    from mccl_core.data.intentonomy import INTENTONOMY_CLASSES
    from mccl_core.data.mdid import MDID_INTENTS
    from mccl_core.data.transforms import build_transforms

_EXPORTS: dict[str, str] = {
    "SOURCES": "mccl_core.data.config",
    "DataConfig": "mccl_core.data.config",
    "load_split": "mccl_core.data.config",
    "SPLITS": "mccl_core.data.dataset",
    "AnnotationError": "mccl_core.data.dataset",
    "ImageRecord": "mccl_core.data.dataset",
    "IntentDataset": "mccl_core.data.dataset",
    "cooccurrence_counts": "mccl_core.data.dataset",
    "DEMO_CLASSES": "mccl_core.data.demo",
    "DEMO_INTENTS": "mccl_core.data.demo",
    "DemoConfig": "mccl_core.data.demo",
    "ensure_demo": "mccl_core.data.demo",
    "generate_demo": "mccl_core.data.demo",
    "DownloadConfig": "mccl_core.data.download",
    "DownloadReport": "mccl_core.data.download",
    "download_intentonomy": "mccl_core.data.download",
    "DEFAULT_MAX_PIXELS": "mccl_core.data.images",
    "ImageLoadError": "mccl_core.data.images",
    "ImageProblem": "mccl_core.data.images",
    "load_rgb_image": "mccl_core.data.images",
    "verify_images": "mccl_core.data.images",
    "INTENTONOMY_CLASSES": "mccl_core.data.intentonomy",
    "MDID_INTENTS": "mccl_core.data.mdid",
    "build_transforms": "mccl_core.data.transforms",
}

__all__ = [
    "AnnotationError",
    "DEFAULT_MAX_PIXELS",
    "DEMO_CLASSES",
    "DEMO_INTENTS",
    "DataConfig",
    "DemoConfig",
    "DownloadConfig",
    "DownloadReport",
    "INTENTONOMY_CLASSES",
    "ImageLoadError",
    "ImageProblem",
    "ImageRecord",
    "IntentDataset",
    "MDID_INTENTS",
    "SOURCES",
    "SPLITS",
    "build_transforms",
    "cooccurrence_counts",
    "download_intentonomy",
    "ensure_demo",
    "generate_demo",
    "load_rgb_image",
    "load_split",
    "verify_images",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mccl_core.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
