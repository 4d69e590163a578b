"""torchvision ResNet trunk that returns feature maps of selected residual stages.

MCCL reads patch tokens from several stages (layer3 + layer4 by default), so the trunk exposes
``forward_features(images) -> list[Tensor[B, C_s, H_s, W_s]]`` (timm convention) instead of logits.
Stages deeper than the deepest requested one, and the classifier (avgpool/fc), are dropped, so
every remaining parameter receives a gradient (a requirement for DDP without
``find_unused_parameters``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from .config import RESNET_STAGES, BackboneConfig

logger = logging.getLogger(__name__)

_STEM_KEYS = ("conv1", "bn1")


class BackboneWeightsError(RuntimeError):
    """Backbone weights could not be obtained or do not fit the architecture."""


def _stage_out_channels(resnet: torchvision.models.ResNet, stage: str) -> int:
    last_block = getattr(resnet, stage)[-1]
    # Bottleneck blocks end in bn3, BasicBlocks in bn2.
    bn = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
    return int(bn.num_features)


class ResNetBackbone(nn.Module):
    """ResNet stem + stages up to the deepest requested one; returns the requested stage maps.

    Args:
        depth: 18, 34, 50, 101 or 152 (torchvision ``resnet{depth}``).
        stages: residual stages to return, shallow -> deep (e.g. ``("layer3", "layer4")``).
        weights: ``"none"``, ``"imagenet"`` (torchvision download) or a local state-dict path.
    """

    def __init__(
        self,
        depth: int = 101,
        stages: Sequence[str] = ("layer3", "layer4"),
        weights: str | Path = "none",
    ) -> None:
        super().__init__()
        cfg = BackboneConfig(depth=depth, stages=tuple(stages), weights=str(weights))
        self.depth = cfg.depth
        self.stage_names: tuple[str, ...] = cfg.stages
        resnet = _build_torchvision_resnet(cfg.depth, cfg.weights)
        deepest = max(RESNET_STAGES.index(s) for s in self.stage_names)
        self.kept_stages: tuple[str, ...] = RESNET_STAGES[: deepest + 1]

        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        for name in self.kept_stages:
            self.add_module(name, getattr(resnet, name))
        self.stage_channels: tuple[int, ...] = tuple(
            _stage_out_channels(resnet, s) for s in self.stage_names
        )
        self.stage_strides: tuple[int, ...] = tuple(
            4 * 2 ** RESNET_STAGES.index(s) for s in self.stage_names
        )

    @property
    def stages(self) -> tuple[str, ...]:
        """Alias of ``stage_names`` (the names of the returned stages)."""
        return self.stage_names

    @classmethod
    def from_config(cls, cfg: BackboneConfig) -> "ResNetBackbone":
        return cls(depth=cfg.depth, stages=cfg.stages, weights=cfg.weights)

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Feature maps ``[B, C_s, H_s, W_s]`` for each configured stage, shallow -> deep."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        outputs: list[Tensor] = []
        for name in self.kept_stages:
            x = getattr(self, name)(x)
            if name in self.stage_names:
                outputs.append(x)
        return outputs

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.forward_features(images)


def _build_torchvision_resnet(depth: int, weights: str) -> torchvision.models.ResNet:
    builder = getattr(torchvision.models, f"resnet{depth}")
    spec = weights.strip()
    if spec.lower() == "none":
        return builder(weights=None)
    if spec.lower() == "imagenet":
        enum = torchvision.models.get_model_weights(f"resnet{depth}").DEFAULT
        try:
            return builder(weights=enum)
        except Exception as exc:  # network / cache problems surface as many exception types
            raise BackboneWeightsError(
                f"could not obtain torchvision ImageNet weights {enum} for resnet{depth} "
                f"(needs internet or a populated torch hub cache): {exc}. "
                "Set backbone.weights to a local state-dict file or 'none'."
            ) from exc
    model = builder(weights=None)
    load_local_resnet_weights(model, Path(spec))
    return model


def load_local_resnet_weights(model: torchvision.models.ResNet, path: Path) -> None:
    """Load a torchvision-format ResNet state dict from ``path`` into ``model`` (strict on the trunk).

    The classifier (``fc.*``) is ignored: the trunk is what MCCL uses and the file may come from a
    model with any number of classes. A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and a
    ``module.`` prefix (DDP checkpoints) are unwrapped. Missing or unexpected trunk keys and shape
    mismatches raise :class:`BackboneWeightsError` naming the file.
    """
    if not path.is_file():
        raise BackboneWeightsError(
            f"backbone weights file {path} does not exist (backbone.weights must be 'none', "
            "'imagenet' or an existing state-dict file)"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(
            f"backbone weights file {path} could not be loaded as a tensor-only state dict "
            f"(torch.load weights_only=True): {exc}"
        ) from exc
    state = _unwrap_state_dict(loaded, path)
    trunk_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(trunk_state))
    unexpected = sorted(set(trunk_state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(trunk_state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in trunk_state and tuple(trunk_state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise BackboneWeightsError(
            f"backbone weights file {path} does not fit this ResNet (is it a torchvision resnet "
            "state dict of the configured depth?) - "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}, {len(mismatched)} shape mismatches {mismatched[:3]}"
        )
    model.load_state_dict(trunk_state, strict=False)
    logger.info("loaded backbone weights from %s (%d tensors, fc ignored)", path, len(trunk_state))


def _unwrap_state_dict(loaded: object, path: Path) -> Mapping[str, Tensor]:
    if isinstance(loaded, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = loaded.get(wrapper)
            if isinstance(inner, Mapping):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise BackboneWeightsError(f"backbone weights file {path} does not contain a state dict")
    bad = [k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise BackboneWeightsError(
            f"backbone weights file {path}: entries {bad[:5]} are not name -> tensor pairs"
        )
    if all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module.") :]: v for k, v in loaded.items()}
    return loaded
