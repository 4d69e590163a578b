"""Transforms, DataConfig round trip, DataLoader batching and the data CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mccl_core.data import DataConfig, build_transforms, load_split
from mccl_core.data.cli import main as data_cli
from mccl_core.data.mdid import read_mdid_splits
from mccl_core.models.archs import IMAGENET_MEAN, IMAGENET_STD

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def test_eval_transform_resizes_crops_and_normalises() -> None:
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    tensor = build_transforms(64, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)(image)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    expected = [
        (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        -IMAGENET_MEAN[1] / IMAGENET_STD[1],
        -IMAGENET_MEAN[2] / IMAGENET_STD[2],
    ]
    np.testing.assert_allclose(tensor.mean(dim=(1, 2)).numpy(), expected, atol=1e-3)


def test_train_transform_is_random_and_sized() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    transform = build_transforms(48, train=True, erase_prob=1.0, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.manual_seed(0)
    first, second = transform(image), transform(image)
    assert first.shape == second.shape == (3, 48, 48)
    assert not torch.equal(first, second)
    assert (first == 0).sum() > 0  # random erasing (Cutout) fills a patch with 0
    plain = build_transforms(
        48, train=True, crop_scale=(1.0, 1.0), hflip=False, randaugment=False, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    square = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    torch.testing.assert_close(
        plain(square), build_transforms(48, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)(square)
    )
    with pytest.raises(ValueError, match="crop_scale"):
        build_transforms(48, train=True, crop_scale=(0.0, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def test_data_config_round_trip() -> None:
    cfg = DataConfig(
        source="intentonomy", root=Path("/d"), annotations={"val": Path("/a/v.json")}, max_image_pixels=1000
    )
    again = DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.annotation_file("val") == Path("/a/v.json")
    assert again.annotation_file("test") == Path("/d/annotations/intentonomy_test2020.json")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) data.rot"):
        DataConfig.from_dict({"source": "demo", "rot": "x"})
    with pytest.raises(ValueError, match="annotations keys must be splits"):
        DataConfig(source="demo", annotations={"dev": Path("x")})


def test_demo_cli_then_verify_and_dataloader(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert (
        data_cli(
            [
                "demo",
                "--out",
                str(out),
                "--n-train",
                "12",
                "--n-val",
                "6",
                "--n-test",
                "6",
                "--image-size",
                "64",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    cfg = DataConfig(source="demo", root=out)
    loader = torch.utils.data.DataLoader(
        load_split(cfg, "train", build_transforms(48, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)), batch_size=5
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (5, 3, 48, 48) and batch["labels"].shape == (5, 10)
    assert batch["soft_labels"].shape == (5, 10) and batch["index"].tolist() == [0, 1, 2, 3, 4]
    report = tmp_path / "verify.json"
    assert data_cli(["verify", "--source", "demo", "--root", str(out), "--split", "val", "--report", str(report)]) == 0
    assert json.loads(report.read_text()) == []
    (out / "low" / "demo-val-00002.jpg").write_bytes(b"")
    assert data_cli(["verify", "--source", "demo", "--root", str(out), "--split", "val", "--report", str(report)]) == 1
    problems = json.loads(report.read_text())
    assert [(p["image_id"], p["problem"]) for p in problems] == [("demo-val-00002", "zero-byte file")]


def test_cli_reports_annotation_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,labels\na.jpg,Nope\n")
    classes = tmp_path / "c.txt"
    classes.write_text("Yes\n")
    code = data_cli(
        [
            "verify",
            "--source",
            "manifest",
            "--manifest",
            str(manifest),
            "--class-list",
            str(classes),
            "--split",
            "train",
        ]
    )
    assert code == 2
    assert "unknown label name(s) ['Nope']" in capsys.readouterr().err


def test_mdid_compact_cli(tmp_path: Path) -> None:
    out = tmp_path / "mdid_splits.json"
    code = data_cli(
        [
            "mdid-compact",
            "--metadata",
            str(FIXTURES / "mdid" / "master_metadata.json"),
            "--splits-dir",
            str(FIXTURES / "mdid" / "splits"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    compact = read_mdid_splits(out)
    assert len(compact["posts"]) == 14 and len(compact["splits"]) == 5


def _gradient_photo(width: int, height: int) -> Image.Image:
    """A photo whose red channel encodes x and green encodes y: what survives a view is readable."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).astype(np.uint8))


@pytest.mark.parametrize("geometry", ["center_crop", "resize"])
def test_geometry_decides_what_of_a_wide_photo_the_model_sees(geometry) -> None:
    """A 300x200 photo: ``center_crop`` keeps the central square (a third of the width is gone),
    ``resize`` squashes all of it; with no random crop the train view is the eval view."""
    photo = _gradient_photo(300, 200)
    plain = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    view = build_transforms(32, train=False, geometry=geometry, **plain)(photo)
    red = view[0].mean(0)  # x position across the output's columns, 0..1 of the source width
    if geometry == "center_crop":
        assert 0.14 < float(red[0]) < 0.22 and 0.78 < float(red[-1]) < 0.86  # columns 50..250 of 300
    else:
        assert float(red[0]) < 0.03 and float(red[-1]) > 0.97  # the whole width
    train_view = build_transforms(32, train=True, geometry=geometry, crop_scale=(1.0, 1.0), hflip=False,
                                  randaugment=False, **plain)(photo)  # fmt: skip
    torch.testing.assert_close(train_view, view)
    with pytest.raises(ValueError, match="geometry"):
        build_transforms(32, train=False, geometry="letterbox", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def test_resize_geometry_crops_keep_the_photos_aspect() -> None:
    """Under ``resize`` a random crop has the photo's aspect, so it is stretched exactly as the
    eval view is; RandomResizedCrop (``center_crop``) draws its own aspect in 3/4..4/3."""
    from mccl_core.data.transforms import AspectRandomCrop

    crop = AspectRandomCrop(16, (0.25, 0.5))
    torch.manual_seed(0)
    for _ in range(20):
        params = crop.make_params([torch.zeros(3, 200, 300)])
        assert params["width"] / params["height"] == pytest.approx(1.5, rel=0.02)
        assert 0.25 * 0.95 <= params["width"] * params["height"] / 60_000 <= 0.5 * 1.05
        assert params["top"] + params["height"] <= 200 and params["left"] + params["width"] <= 300
    assert build_transforms(
        16, train=True, geometry="resize", crop_scale=(0.5, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD
    )(_gradient_photo(90, 60)).shape == (3, 16, 16)


def test_randaugment_strength_reaches_the_transform() -> None:
    from torchvision.transforms import v2

    from mccl_core.models import ModelConfig
    from mccl_core.training.config import TrainConfig
    from mccl_core.training.run import train_transform

    cfg = TrainConfig(image_size=32, randaugment=True, randaugment_ops=2, randaugment_magnitude=9)
    transform = train_transform(ModelConfig(), cfg)
    (randaugment,) = [t for t in transform.transforms if isinstance(t, v2.RandAugment)]
    assert (randaugment.num_ops, randaugment.magnitude) == (2, 9)
    default = train_transform(ModelConfig(), TrainConfig(image_size=32))
    (light,) = [t for t in default.transforms if isinstance(t, v2.RandAugment)]
    assert (light.num_ops, light.magnitude) == (1, 5)  # the documented light default
    with pytest.raises(ValueError, match="randaugment"):
        TrainConfig(randaugment_magnitude=31)
