"""Your own data: CSV / JSONL manifests and class lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mccl_core.data import AnnotationError, DataConfig, load_split
from mccl_core.data.manifest import ManifestFileError, read_class_list, read_manifest
from mccl_core.data.sources import data_source


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
    assert problems[5].endswith("line 8: missing 'image'")  # the column name the file uses
    assert str(tmp_path / "b.jpg") in problems[1]


def test_bad_jsonl_lines(tmp_path: Path, class_list_txt: Path) -> None:
    (tmp_path / "m.jsonl").write_text(
        '{"image": "a.jpg", "labels": ["Happy"], "split": "train"}\n{not json\n["a"]\n'
        '{"image": "b.jpg", "labels": "Happy", "split": "train"}\n'
    )
    cfg = DataConfig(source="manifest", root=Path("."), manifest=tmp_path / "m.jsonl", class_list=class_list_txt)
    with pytest.raises(AnnotationError) as info:
        load_split(cfg, "train")
    assert [p.split(":")[0] for p in info.value.problems] == ["line 2", "line 3", "line 4"]
    assert "'labels' must be a list of class names" in info.value.problems[2]


def test_csv_without_required_columns_names_the_file_and_the_columns_found(
    tmp_path: Path, class_list_txt: Path
) -> None:
    (tmp_path / "m.csv").write_text("path,label,split\na.jpg,Happy,train\n")
    cfg = DataConfig(source="manifest", root=Path("."), manifest=tmp_path / "m.csv", class_list=class_list_txt)
    with pytest.raises(ManifestFileError) as info:
        load_split(cfg, "train")
    assert info.value.problems == [
        "missing column(s) 'image_path' (or its alias 'image'), 'labels'; columns found: ['path', 'label', 'split']"
    ]
    assert str(tmp_path / "m.csv") in str(info.value)


@pytest.mark.parametrize("column", ["image_path", "image"])
def test_image_path_column_and_its_alias_image(tmp_path: Path, class_list_txt: Path, column: str) -> None:
    """The README documents ``image_path``; ``image`` (the older name) keeps working."""
    _image(tmp_path / "img" / "a.jpg")
    (tmp_path / "m.csv").write_text(f"{column},labels,split\nimg/a.jpg,Happy,train\n")
    cfg = DataConfig(source="manifest", manifest=tmp_path / "m.csv", class_list=class_list_txt)
    train = load_split(cfg, "train")
    assert [(r.image_id, r.image_path, r.labels) for r in train.records] == [
        ("img/a.jpg", tmp_path / "img" / "a.jpg", (0,))
    ]


def test_both_path_columns_are_ambiguous(tmp_path: Path, class_list_txt: Path) -> None:
    (tmp_path / "m.csv").write_text("image_path,image,labels,split\na.jpg,b.jpg,Happy,train\n")
    cfg = DataConfig(source="manifest", manifest=tmp_path / "m.csv", class_list=class_list_txt)
    with pytest.raises(ManifestFileError, match="has both 'image_path' and its alias 'image' columns"):
        load_split(cfg, "train")


def test_missing_split_column_is_one_file_level_problem(tmp_path: Path, class_list_txt: Path) -> None:
    """Read for every split (the validate step), a manifest without split column cannot say which
    rows are test: one problem naming the column - not one duplicate-id error per row."""
    (tmp_path / "m.csv").write_text("image_path,labels\na.jpg,Happy\nb.jpg,NatBeauty\n")
    cfg = DataConfig(source="manifest", manifest=tmp_path / "m.csv", class_list=class_list_txt)
    with pytest.raises(ManifestFileError) as info:
        data_source(cfg).read_checked(cfg, ["train", "val", "test"])  # type: ignore[misc]
    assert len(info.value.problems) == 1 and str(tmp_path / "m.csv") in str(info.value)
    assert info.value.problems[0].startswith("missing column(s) 'split'")
    assert "columns found: ['image_path', 'labels']" in info.value.problems[0]
    # Asked for ONE split (load_split, `mccl data verify`), the file is taken whole.
    assert [r.image_id for r in load_split(cfg, "train").records] == ["a.jpg", "b.jpg"]
    # One file per split ({split} in the path) needs no split column; one, if given, must agree.
    (tmp_path / "m_train.csv").write_text("image_path,labels\na.jpg,Happy\n")
    templated = DataConfig(source="manifest", manifest=tmp_path / "m_{split}.csv", class_list=class_list_txt)
    assert [r.image_id for r in load_split(templated, "train").records] == ["a.jpg"]
    (tmp_path / "m_train.csv").write_text("image_path,labels,split\na.jpg,Happy,val\n")
    with pytest.raises(AnnotationError, match="split 'val' in the 'train' manifest"):
        load_split(templated, "train")


def test_non_utf8_manifest_names_the_file_and_the_byte_offset(tmp_path: Path, class_list_txt: Path) -> None:
    text = "image_path,labels,split\ncaf\u00e9.jpg,Happy,train\n"
    (tmp_path / "m.csv").write_bytes(text.encode("cp1252"))  # a spreadsheet export
    cfg = DataConfig(source="manifest", manifest=tmp_path / "m.csv", class_list=class_list_txt)
    offset = text.index("\u00e9")
    with pytest.raises(ManifestFileError) as info:
        load_split(cfg, "train")
    assert str(tmp_path / "m.csv") in str(info.value)
    assert info.value.problems == [
        f"not UTF-8 text: byte 0xe9 at byte offset {offset} (invalid continuation byte); save the file as UTF-8"
    ]
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("cp1252"))  # offsets count the BOM
    with pytest.raises(ManifestFileError, match=f"at byte offset {offset + 3} "):
        load_split(DataConfig(source="manifest", manifest=tmp_path / "bom.csv", class_list=class_list_txt), "train")


def test_read_manifest_returns_every_row_with_its_problems(tmp_path: Path, class_list_txt: Path) -> None:
    """The lenient reader behind quarantine: no row is dropped, each carries its own problems."""
    (tmp_path / "m.csv").write_text(
        "image_path,labels,split\na.jpg,Happy,train\na.jpg,Hapy,train\nc.jpg,,val\nd.jpg,Happy,valid\n"
    )
    rows = read_manifest(tmp_path / "m.csv", ["Happy", "WorkILike", "NatBeauty"])
    assert [(r.line_number, r.image_id, r.split, r.label_ids) for r in rows] == [
        (2, "a.jpg", "train", (0,)), (3, "a.jpg", "train", ()), (4, "c.jpg", "val", ()), (5, "d.jpg", "valid", (0,))
    ]  # fmt: skip
    assert rows[0].ok
    assert [len(r.problems) for r in rows[1:]] == [2, 1, 1]
    assert "duplicate image id (first on line 2)" in rows[1].problems[0]
    assert "unknown label name(s) ['Hapy']" in rows[1].problems[1]
    assert "line 4: no labels" in rows[2].problems[0] and "split 'valid' is not one of" in rows[3].problems[0]


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
