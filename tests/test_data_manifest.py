"""Your own data: CSV / JSONL manifests and class lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mccl_core.data import AnnotationError, DataConfig, load_split
from mccl_core.data.manifest import read_class_list


def _image(path: Path, colour: tuple[int, int, int] = (0, 0, 255)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 8), colour).save(path)


@pytest.fixture()
def class_list_txt(tmp_path: Path) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("# my intents\nHappy\n\nWorkILike\nNatBeauty\n")
    return path


def test_csv_manifest_with_split_column(tmp_path: Path, class_list_txt: Path) -> None:
    data = tmp_path / "mydata"
    _image(data / "img" / "a.jpg")
    _image(data / "img" / "b.png")
    absolute = tmp_path / "elsewhere" / "c.jpg"
    _image(absolute, (255, 0, 0))
    (data / "manifest.csv").write_text(
        "image,labels,split\n"
        "img/a.jpg,Happy|NatBeauty,train\n"
        f"{absolute},WorkILike,val\n"
        "img/b.png, NatBeauty ,train\n"
        "img/d.jpg,,train\n"
    )
    cfg = DataConfig(source="manifest", root=Path("."), manifest=data / "manifest.csv", class_list=class_list_txt)
    train = load_split(cfg, "train")
    assert train.class_names == ["Happy", "WorkILike", "NatBeauty"] and train.class_descriptions == ["", "", ""]
    assert [r.image_id for r in train.records] == ["img/a.jpg", "img/b.png", "img/d.jpg"]
    assert train.records[0].image_path == data / "img" / "a.jpg"
    np.testing.assert_array_equal(train.label_matrix(), [[1, 0, 1], [0, 0, 1], [0, 0, 0]])
    val = load_split(cfg, "val")
    assert len(val) == 1 and val.records[0].image_path == absolute and val.records[0].labels == (1,)
    assert float(val[0]["image"][0].mean()) == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="no rows for split 'test'"):
        load_split(cfg, "test")


def test_jsonl_manifest_per_split_template_and_json_class_list(tmp_path: Path) -> None:
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps([{"name": "Calm", "description": "Feeling at peace."}, {"name": "Busy"}, "Proud"]))
    for split, rows in {
        "train": [
            {"image": "x1.jpg", "labels": ["Calm", "Proud"], "image_id": "x1"},
            {"image": "x2.jpg", "labels": ["Busy"]},
        ],
        "val": [{"image": "y1.jpg", "labels": ["Proud"]}],
    }.items():
        (tmp_path / f"set_{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    cfg = DataConfig(source="manifest", root=Path("."), manifest=tmp_path / "set_{split}.jsonl", class_list=classes)
    train = load_split(cfg, "train")
    assert train.class_names == ["Calm", "Busy", "Proud"]
    assert train.class_descriptions == ["Feeling at peace.", "", ""]
    assert [(r.image_id, r.labels) for r in train.records] == [("x1", (0, 2)), ("x2.jpg", (1,))]
    assert [r.image_id for r in load_split(cfg, "val").records] == ["y1.jpg"]


def test_manifest_problems_are_all_reported(tmp_path: Path, class_list_txt: Path) -> None:
    (tmp_path / "m.csv").write_text(
        "image,labels,split\n"
        "a.jpg,Happy,train\n"
        "a.jpg,WorkILike,train\n"  # duplicate image id
        "b.jpg,Hapy,train\n"  # unknown label name
        "c.jpg,Happy|Happy,val\n"  # repeated label
        "d.jpg,,val\n"  # no labels in val
        "e.jpg,Happy,validation\n"  # unknown split value
        ",Happy,train\n"  # no image
    )
    cfg = DataConfig(source="manifest", root=Path("."), manifest=tmp_path / "m.csv", class_list=class_list_txt)
    with pytest.raises(AnnotationError) as info:
        load_split(cfg, "train")
    problems = info.value.problems
    assert len(problems) == 6
    assert "image 'a.jpg'" in problems[0] and "line 3: duplicate image id (first on line 2)" in problems[0]
    assert "image 'b.jpg'" in problems[1] and "unknown label name(s) ['Hapy']" in problems[1]
    assert "label listed more than once" in problems[2]
    assert "image 'd.jpg'" in problems[3] and "no labels" in problems[3]
    assert "split 'validation' is not one of ['train', 'val', 'test']" in problems[4]
    assert problems[5].endswith("line 8: missing 'image'")
    assert str(tmp_path / "b.jpg") in problems[1]


def test_bad_jsonl_lines(tmp_path: Path, class_list_txt: Path) -> None:
    (tmp_path / "m.jsonl").write_text(
        '{"image": "a.jpg", "labels": ["Happy"]}\n{not json\n["a"]\n{"image": "b.jpg", "labels": "Happy"}\n'
    )
    cfg = DataConfig(source="manifest", root=Path("."), manifest=tmp_path / "m.jsonl", class_list=class_list_txt)
    with pytest.raises(AnnotationError) as info:
        load_split(cfg, "train")
    assert [p.split(":")[0] for p in info.value.problems] == ["line 2", "line 3", "line 4"]
    assert "'labels' must be a list of class names" in info.value.problems[2]


def test_csv_without_required_columns(tmp_path: Path, class_list_txt: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label\na.jpg,Happy\n")
    cfg = DataConfig(source="manifest", root=Path("."), manifest=tmp_path / "m.csv", class_list=class_list_txt)
    with pytest.raises(AnnotationError, match="missing \\['image', 'labels'\\]"):
        load_split(cfg, "train")


def test_class_list_errors(tmp_path: Path) -> None:
    duplicate = tmp_path / "dup.txt"
    duplicate.write_text("A\nB\nA\n")
    with pytest.raises(AnnotationError, match="duplicate class names \\['A'\\]"):
        read_class_list(duplicate)
    piped = tmp_path / "piped.json"
    piped.write_text(json.dumps(["A|B", {"description": "no name"}]))
    with pytest.raises(AnnotationError) as info:
        read_class_list(piped)
    assert "entry #1 must be a name" in info.value.problems[0] and "must not contain '|'" in info.value.problems[1]
    with pytest.raises(FileNotFoundError):
        read_class_list(tmp_path / "none.txt")


def test_manifest_config_requires_paths() -> None:
    with pytest.raises(ValueError, match="needs both 'manifest' and 'class_list'"):
        DataConfig(source="manifest", root=Path("."))
    with pytest.raises(ValueError, match="source must be one of"):
        DataConfig(source="coco", root=Path("."))  # type: ignore[arg-type]
