"""A model bundle with the real MCCL architecture and random weights, built in about a second.

Why: checking a serving deployment (the pyfunc model, the scoring server, the registry flow) or
measuring serving latency does not need a trained model - the forward pass costs the same - but
training one takes minutes. The bundle has every file a trained one has (weights, a CPI-format
prototype bank with the frequency-aware allocation, label embeddings, co-occurrence), so loading
and serving it exercises the same code. Its scores are meaningless; never register it as a
product model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mccl_core.models import Backbone, ModelConfig, build_model, random_prototype_bank
from mccl_core.models.bundle import BundleMeta, save_bundle

logger = logging.getLogger(__name__)


def build_untrained_bundle(
    out_dir: Path,
    model_cfg: ModelConfig,
    class_names: Sequence[str],
    label_embeddings: np.ndarray,
    cooccurrence: np.ndarray,
    image_size: int,
    class_descriptions: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised (seeded) MCCL bundle to ``out_dir`` and return it.

    Args:
        model_cfg: architecture (``backbone.weights`` must not need a download).
        class_names / class_descriptions: stored in ``bundle.json``.
        label_embeddings: ``[C, 384]`` PKI label embeddings.
        cooccurrence: ``[C, C]`` label co-occurrence counts (its diagonal sizes the prototype allocation).
        image_size: the eval resolution stored in the bundle.
    """
    num_classes = len(class_names)
    torch.manual_seed(seed)
    bank = None
    if model_cfg.variant == "mccl" and model_cfg.mcc.enabled and model_cfg.use_cpi:
        backbone = Backbone.from_config(model_cfg.backbone)
        channels = dict(zip(model_cfg.backbone.stages, backbone.stage_channels))
        bank = random_prototype_bank(channels, np.diag(np.asarray(cooccurrence)), model_cfg.cpi, list(class_names))
    model = build_model(model_cfg, num_classes, label_embeddings, cooccurrence, bank)
    meta = BundleMeta.for_model(
        model,
        model_cfg,
        list(class_names),
        list(class_descriptions or [""] * num_classes),
        image_size,
        extra={"untrained": True, "seed": seed},
    )
    logger.info("writing an UNTRAINED (random weights) bundle to %s", out_dir)
    return save_bundle(Path(out_dir), model, meta, label_embeddings, cooccurrence, bank)
