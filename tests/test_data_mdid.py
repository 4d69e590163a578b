"""MDID: compact split derivation from the official layout, bundled splits, image resolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mccl_core.data import AnnotationError, DataConfig, ImageLoadError, load_split
from mccl_core.data.mdid import (
    MDID_DESCRIPTIONS,
    MDID_INTENTS,
    compact_mdid_splits,
    read_mdid_splits,
    write_mdid_splits,
)

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "mdid"


@pytest.fixture()
def compact_file(tmp_path: Path) -> Path:
    path = tmp_path / "mdid_splits.json"
    write_mdid_splits(compact_mdid_splits(FIXTURE / "master_metadata.json", FIXTURE / "splits"), path)
    return path


def test_compact_splits_reproduce_official_files(compact_file: Path) -> None:
    compact = read_mdid_splits(compact_file)
    posts = compact["posts"]
    master = json.loads((FIXTURE / "master_metadata.json").read_text())
    assert posts == [[p["id"], list(MDID_INTENTS).index(p["intent"])] for p in master]
    for k in range(5):
        for part in ("train", "val"):
            official = json.loads((FIXTURE / "splits" / f"{part}_split_{k}.json").read_text())
            assert [posts[i][0] for i in compact["splits"][k][part]] == [p["id"] for p in official]
    val_folds = [i for split in compact["splits"] for i in split["val"]]
    assert sorted(val_folds) == list(range(len(posts)))


def test_load_split_one_hot_and_image_extensions(tmp_path: Path, compact_file: Path) -> None:
    compact = read_mdid_splits(compact_file)
    images = tmp_path / "images"
    images.mkdir()
    val_ids = [compact["posts"][i][0] for i in compact["splits"][2]["val"]]
    # One post as .jpg, one as .png, one as .jpeg: all are found.
    for post_id, suffix in zip(val_ids, [".jpg", ".png", ".jpeg"], strict=True):
        Image.new("RGB", (12, 10), (10, 200, 30)).save(
            images / f"{post_id}{suffix}", format="PNG" if suffix == ".png" else "JPEG"
        )
    cfg = DataConfig(source="mdid", root=images, mdid_split_index=2, mdid_splits_file=compact_file)
    dataset = load_split(cfg, "val")
    assert [r.image_id for r in dataset.records] == val_ids
    assert [r.image_path.suffix for r in dataset.records] == [".jpg", ".png", ".jpeg"]
    matrix = dataset.label_matrix()
    assert matrix.shape == (3, 7) and (matrix.sum(axis=1) == 1).all()
    expected = [compact["posts"][i][1] for i in compact["splits"][2]["val"]]
    assert matrix.argmax(axis=1).tolist() == expected
    assert dataset.class_names == list(MDID_INTENTS) and dataset.class_descriptions == list(MDID_DESCRIPTIONS)
    assert dataset[1]["image"].shape == (3, 10, 12)
    train = load_split(cfg, "train")
    assert len(train) == 14 - 3 and not {r.image_id for r in train.records} & set(val_ids)


def test_missing_post_image_fails_at_read_time(
    tmp_path: Path, compact_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = DataConfig(source="mdid", root=tmp_path, mdid_split_index=0, mdid_splits_file=compact_file)
    dataset = load_split(cfg, "val")
    assert "3 of 3 post images are missing" in caplog.text
    with pytest.raises(ImageLoadError, match=rf"image '{dataset.records[0].image_id}' file .*\.jpg'?: file not found"):
        dataset[0]


def test_ambiguous_post_image_is_an_annotation_error(tmp_path: Path, compact_file: Path) -> None:
    compact = read_mdid_splits(compact_file)
    post_id = compact["posts"][compact["splits"][0]["val"][0]][0]
    for suffix in (".jpg", ".png"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{post_id}{suffix}")
    cfg = DataConfig(source="mdid", root=tmp_path, mdid_split_index=0, mdid_splits_file=compact_file)
    with pytest.raises(AnnotationError, match=f"image '{post_id}'.*several image files for one post"):
        load_split(cfg, "val")


def test_no_test_split_and_bad_index(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MDID has only 'train' and 'val'"):
        load_split(DataConfig(source="mdid", root=tmp_path), "test")
    with pytest.raises(ValueError, match="mdid_split_index must be 0..4"):
        DataConfig(source="mdid", root=tmp_path, mdid_split_index=5)


def test_bundled_splits_match_published_statistics(tmp_path: Path) -> None:
    compact = read_mdid_splits()
    assert compact["intents"] == list(MDID_INTENTS)
    posts = compact["posts"]
    assert len(posts) == 1299 and len({p[0] for p in posts}) == 1299
    counts = np.bincount([p[1] for p in posts], minlength=7)
    assert dict(zip(MDID_INTENTS, counts.tolist(), strict=True)) == {
        "provoke": 97,
        "inform": 140,
        "advocate": 123,
        "entertain": 361,
        "expose": 275,
        "express": 111,
        "promote": 192,
    }
    val_folds = [i for split in compact["splits"] for i in split["val"]]
    assert len(compact["splits"]) == 5 and sorted(val_folds) == list(range(1299))
    for split in compact["splits"]:
        assert sorted(split["train"] + split["val"]) == list(range(1299))
    dataset = load_split(DataConfig(source="mdid", root=tmp_path, mdid_split_index=4), "val")
    assert len(dataset) == 260 and dataset.num_classes == 7


def test_compact_rejects_inconsistent_files(tmp_path: Path) -> None:
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    for path in (FIXTURE / "splits").iterdir():
        (split_dir / path.name).write_text(path.read_text())
    val = json.loads((split_dir / "val_split_1.json").read_text())
    val[0]["intent"] = "promote" if val[0]["intent"] != "promote" else "inform"
    val.append({"id": "not-a-post", "intent": "inform"})
    (split_dir / "val_split_1.json").write_text(json.dumps(val))
    train = json.loads((split_dir / "train_split_3.json").read_text())
    val3 = json.loads((split_dir / "val_split_3.json").read_text())
    (split_dir / "train_split_3.json").write_text(json.dumps(train + val3[:1]))
    with pytest.raises(AnnotationError) as info:
        compact_mdid_splits(FIXTURE / "master_metadata.json", split_dir)
    problems = info.value.problems
    assert len(problems) == 3
    assert "val_split_1.json: intent" in problems[0] and "differs from master metadata" in problems[0]
    assert problems[1] == "image 'not-a-post': val_split_1.json: post not in master metadata"
    assert problems[2] == "split 3: 1 posts in both train and val"
