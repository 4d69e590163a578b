"""The trained-model bundle: one folder that rebuilds an MCCL model with no training inputs.

Written by training, read by evaluation, the MLflow pyfunc model and serving::

    bundle/
      bundle.json             format, model config, class names/descriptions, image size, input
                              normalisation (mean/std of the backbone's weights), backbone origin,
                              threshold
      model.pt                state dict (plain tensors: loads with ``weights_only=True``)
      label_embeddings.npy    [C, 384] PKI label embeddings (no text encoder needed at serving)
      cooccurrence.npy        [C, C] training label co-occurrence counts (the GCN graph)
      prototypes.safetensors  CPI prototype bank (owners and allocation; values are in model.pt)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mccl_core.models import BaselineModel, MCCLModel, ModelConfig, PrototypeBank, build_model

BUNDLE_FORMAT = "mccl-bundle/2"
META_FILE = "bundle.json"
WEIGHTS_FILE = "model.pt"
EMBEDDINGS_FILE = "label_embeddings.npy"
COOCCURRENCE_FILE = "cooccurrence.npy"
PROTOTYPES_FILE = "prototypes.safetensors"


class BundleError(ValueError):
    """A model bundle folder is missing files or does not match its model config."""


@dataclass
class BundleMeta:
    model_config: dict[str, Any]
    class_names: list[str]
    class_descriptions: list[str]
    image_size: int
    #: Input normalisation of the backbone's weights: training, CPI extraction, evaluation and
    #: serving must all feed the network the same values, so the bundle carries them.
    mean: list[float]
    std: list[float]
    #: :meth:`mccl_core.models.Backbone.describe`: arch, stages, weights and where they came from.
    backbone: dict[str, Any] = field(default_factory=dict)
    #: Decision threshold chosen by the evaluate step on val (official protocol); None before it.
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_model(
        cls,
        model: MCCLModel | BaselineModel,
        model_config: ModelConfig,
        class_names: list[str],
        class_descriptions: list[str] | None,
        image_size: int,
        extra: dict[str, Any] | None = None,
    ) -> BundleMeta:
        """Metadata of ``model``, normalisation and backbone record taken from its backbone."""
        backbone = model.backbone
        return cls(
            model_config=model_config.to_dict(),
            class_names=list(class_names),
            class_descriptions=list(class_descriptions or [""] * len(class_names)),
            image_size=int(image_size),
            mean=list(backbone.mean),
            std=list(backbone.std),
            backbone=backbone.describe(),
            extra=dict(extra or {}),
        )

    @property
    def geometry(self) -> str:
        """The backbone's input geometry (bundles written before it existed: ``center_crop``)."""
        return str(self.model_config.get("backbone", {}).get("geometry", "center_crop"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "model_config": self.model_config,
            "class_names": self.class_names,
            "class_descriptions": self.class_descriptions,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "backbone": self.backbone,
            "threshold": self.threshold,
            "extra": self.extra,
        }


def save_bundle(
    out_dir: Path,
    model: nn.Module,
    meta: BundleMeta,
    label_embeddings: np.ndarray | None,
    cooccurrence: np.ndarray | None,
    prototype_bank: PrototypeBank | None,
) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _atomic_torch_save(state, out_dir / WEIGHTS_FILE)
    for name, array in ((EMBEDDINGS_FILE, label_embeddings), (COOCCURRENCE_FILE, cooccurrence)):
        path = out_dir / name
        if array is None:
            path.unlink(missing_ok=True)
        else:
            np.save(path, np.asarray(array))
    if prototype_bank is None:
        (out_dir / PROTOTYPES_FILE).unlink(missing_ok=True)
    else:
        prototype_bank.save(out_dir / PROTOTYPES_FILE)
    write_meta(out_dir, meta)
    return out_dir


def write_meta(out_dir: Path, meta: BundleMeta) -> None:
    tmp = Path(out_dir) / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta.to_dict(), indent=2))
    os.replace(tmp, Path(out_dir) / META_FILE)


def read_meta(bundle_dir: Path) -> BundleMeta:
    path = Path(bundle_dir) / META_FILE
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a model bundle: {META_FILE} is missing")
    data = json.loads(path.read_text())
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}: format {data.get('format')!r}, expected {BUNDLE_FORMAT!r} (bundles of format 1 do "
            "not record the input normalisation; retrain or re-export the model)"
        )
    return BundleMeta(
        model_config=data["model_config"],
        class_names=list(data["class_names"]),
        class_descriptions=list(data.get("class_descriptions") or [""] * len(data["class_names"])),
        image_size=int(data["image_size"]),
        mean=[float(v) for v in data["mean"]],
        std=[float(v) for v in data["std"]],
        backbone=dict(data.get("backbone") or {}),
        threshold=data.get("threshold"),
        extra=dict(data.get("extra") or {}),
    )


def load_bundle(bundle_dir: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, BundleMeta]:
    """Rebuild the model (eval mode) and its metadata from a bundle folder."""
    bundle_dir = Path(bundle_dir)
    meta = read_meta(bundle_dir)
    weights = bundle_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{weights} is missing")

    def optional_array(name: str) -> np.ndarray | None:
        path = bundle_dir / name
        return np.load(path, allow_pickle=False) if path.is_file() else None

    bank_path = bundle_dir / PROTOTYPES_FILE
    model_cfg = ModelConfig.from_dict(meta.model_config)
    model_cfg.backbone.weights = "none"  # the weights come from model.pt, never re-downloaded
    model = build_model(
        model_cfg,
        num_classes=len(meta.class_names),
        label_embeddings=optional_array(EMBEDDINGS_FILE),
        cooccurrence=optional_array(COOCCURRENCE_FILE),
        prototype_bank=PrototypeBank.load(bank_path) if bank_path.is_file() else None,
    )
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{weights} does not match the bundle's model config: {exc}") from exc
    return model.to(device).eval(), meta


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
