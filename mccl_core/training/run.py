"""From configs to a training run: datasets, label embeddings, co-occurrence, CPI prototypes.

The pipeline hands in the artifacts of earlier steps (prototype bank, initial backbone weights,
label embeddings); run stand-alone, the missing ones are computed here the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mccl_core.data import DataConfig, build_transforms, cooccurrence_counts, load_split
from mccl_core.models import Backbone, ModelConfig, PrototypeBank, build_label_embeddings
from mccl_core.training.config import TrainConfig
from mccl_core.training.loop import TrainInputs
from mccl_core.training.token_shards import ExtractConfig, run_cpi

log = logging.getLogger(__name__)


@dataclass
class TrainArtifacts:
    """Optional inputs produced by earlier pipeline steps."""

    prototype_bank: Path | None = None
    backbone_init: Path | None = None
    label_embeddings: Path | None = None


def eval_transform(model_cfg: ModelConfig, image_size: int):
    """The deterministic transform (the backbone's geometry and normalisation): val, CPI."""
    mean, std = model_cfg.backbone.normalization()
    return build_transforms(image_size, train=False, geometry=model_cfg.backbone.geometry, mean=mean, std=std)


def train_transform(model_cfg: ModelConfig, cfg: TrainConfig):
    if not cfg.augment:
        return eval_transform(model_cfg, cfg.image_size)
    mean, std = model_cfg.backbone.normalization()
    return build_transforms(
        cfg.image_size,
        train=True,
        geometry=model_cfg.backbone.geometry,
        mean=mean,
        std=std,
        crop_scale=(cfg.crop_scale_min, 1.0),
        randaugment=cfg.randaugment,
        randaugment_ops=cfg.randaugment_ops,
        randaugment_magnitude=cfg.randaugment_magnitude,
        erase_prob=cfg.erase_prob,
    )


def model_needs_prototypes(model_cfg: ModelConfig) -> bool:
    return model_cfg.variant == "mccl" and model_cfg.mcc.enabled and model_cfg.use_cpi


def initial_backbone(model_cfg: ModelConfig, seed: int) -> Backbone:
    """The backbone "as it stands before training" (seeded for random init)."""
    torch.manual_seed(seed)
    return Backbone.from_config(model_cfg.backbone)


def prepare_inputs(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    artifacts: TrainArtifacts | None = None,
    extract_cfg: ExtractConfig | None = None,
) -> TrainInputs:
    artifacts = artifacts or TrainArtifacts()
    train_set = load_split(data_cfg, "train", transform=train_transform(model_cfg, train_cfg))
    val_set = load_split(data_cfg, "val", transform=eval_transform(model_cfg, train_cfg.image_size))
    if val_set.class_names != train_set.class_names:
        raise ValueError(f"val classes {val_set.class_names} differ from train classes {train_set.class_names}")
    cooccurrence = cooccurrence_counts(train_set.label_matrix())

    embeddings = None
    if model_cfg.variant == "mccl":
        cache = artifacts.label_embeddings or Path(train_cfg.output_dir) / "label_embeddings.npz"
        embeddings = build_label_embeddings(
            model_cfg.pki.label_text, train_set.class_names, train_set.class_descriptions, cache
        )

    backbone_state = None
    if artifacts.backbone_init is not None:
        backbone_state = torch.load(artifacts.backbone_init, map_location="cpu", weights_only=True)

    bank = None
    if model_needs_prototypes(model_cfg):
        if artifacts.prototype_bank is not None:
            bank = PrototypeBank.load(artifacts.prototype_bank)
        else:
            log.info("no prototype bank given: running CPI on the training images now")
            backbone = initial_backbone(model_cfg, train_cfg.seed)
            if backbone_state is not None:
                backbone.load_state_dict(backbone_state)
            else:
                backbone_state = backbone.state_dict()
            cpi_set = load_split(data_cfg, "train", transform=eval_transform(model_cfg, train_cfg.image_size))
            device = torch.device("cuda" if torch.cuda.is_available() and train_cfg.device != "cpu" else "cpu")
            bank = run_cpi(backbone, cpi_set, model_cfg.cpi, extract_cfg or ExtractConfig(seed=train_cfg.seed), device)
    return TrainInputs(
        train_set=train_set,
        val_set=val_set,
        class_names=list(train_set.class_names),
        class_descriptions=list(train_set.class_descriptions),
        label_embeddings=embeddings,
        cooccurrence=cooccurrence,
        prototype_bank=bank,
        backbone_state=backbone_state,
    )
