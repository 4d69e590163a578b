"""Datasets for MCCL: one interface (:class:`IntentDataset`) over Intentonomy, MDID, your own
manifest and the synthetic demo, plus robust image loading, transforms and the demo generator.

Typical use::

    from mccl_core.data import DataConfig, build_transforms, load_split
    train = load_split(DataConfig(source="demo", root=Path("data/demo")), "train",
                       build_transforms(96, train=True))
"""

from mccl_core.data.config import SOURCES, DataConfig, load_split
from mccl_core.data.dataset import (
    SPLITS,
    AnnotationError,
    ImageRecord,
    IntentDataset,
    cooccurrence_counts,
)
from mccl_core.data.demo import DEMO_CLASSES, DEMO_INTENTS, DemoConfig, ensure_demo, generate_demo
from mccl_core.data.download import DownloadConfig, DownloadReport, download_intentonomy
from mccl_core.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageProblem,
    load_rgb_image,
    verify_images,
)
from mccl_core.data.intentonomy import INTENTONOMY_CLASSES
from mccl_core.data.mdid import MDID_INTENTS
from mccl_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEMO_CLASSES",
    "DEMO_INTENTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTENTONOMY_CLASSES",
    "MDID_INTENTS",
    "SOURCES",
    "SPLITS",
    "AnnotationError",
    "DataConfig",
    "DemoConfig",
    "DownloadConfig",
    "DownloadReport",
    "ImageLoadError",
    "ImageProblem",
    "ImageRecord",
    "IntentDataset",
    "build_transforms",
    "cooccurrence_counts",
    "download_intentonomy",
    "ensure_demo",
    "generate_demo",
    "load_rgb_image",
    "load_split",
    "verify_images",
]
