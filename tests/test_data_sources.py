"""The data-source registry: one table drives load_split, the validate step's splits and
manifest path, and the files the data hash covers."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from mccl_core.data import DataConfig, load_split
from mccl_core.data.config import Source
from mccl_core.data.sources import SOURCES, data_source
from mccl_core.steps.common import annotation_files
from mccl_core.steps.validate import splits_of


def test_the_config_literal_and_the_registry_name_the_same_sources():
    assert typing.get_args(Source) == tuple(SOURCES)
    assert [s.name for s in SOURCES.values()] == list(SOURCES)


def test_splits_and_label_files_come_from_the_registry(tiny_demo, tmp_path):
    demo = DataConfig(source="demo", root=tiny_demo)
    assert splits_of(demo) == ["train", "val", "test"] and data_source(demo).intentonomy_schema
    assert [p.name for p in annotation_files(demo, splits_of(demo))] == ["train.json", "val.json", "test.json"]
    mdid = DataConfig(source="mdid", root=tmp_path)
    assert splits_of(mdid) == ["train", "val"] and not data_source(mdid).intentonomy_schema
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "m_train.csv").write_text("image_path,labels\n")
    manifest = DataConfig(source="manifest", root=tmp_path, manifest=tmp_path / "m_{split}.csv",
                          class_list=tmp_path / "classes.txt")  # fmt: skip
    assert annotation_files(manifest, ["train", "val"]) == [tmp_path / "m_train.csv", tmp_path / "classes.txt"]


def test_load_split_dispatches_through_the_registry(tiny_demo, tmp_path):
    train = load_split(DataConfig(source="demo", root=tiny_demo), "train")
    assert len(train) > 0 and train.split == "train"
    with pytest.raises(FileNotFoundError, match="demo dataset not found"):
        load_split(DataConfig(source="demo", root=Path(tmp_path)), "train")


def test_data_hash_covers_the_manifest_and_class_list(tmp_path):
    """Editing a label in the manifest (or the class list) changes the data hash; a DVC-tracked
    manifest folder gives its DVC hash, plus a SHA-256 of label files kept outside it."""
    from mccl_core.steps.validate import data_hash_of

    mine = tmp_path / "data" / "mine"
    mine.mkdir(parents=True)
    (mine / "m.csv").write_text("image_path,labels,split\na.jpg,A,train\n")
    (mine / "classes.txt").write_text("A\nB\n")
    cfg = DataConfig(source="manifest", manifest=mine / "m.csv", class_list=mine / "classes.txt")
    assert data_source(cfg).data_dir(cfg) == mine  # images resolve against the manifest's folder
    assert annotation_files(cfg, splits_of(cfg)) == [mine / "m.csv", mine / "classes.txt"]
    before = data_hash_of(cfg, splits_of(cfg), tmp_path)
    (mine / "m.csv").write_text("image_path,labels,split\na.jpg,B,train\n")  # one label edited
    after = data_hash_of(cfg, splits_of(cfg), tmp_path)
    assert before.startswith("sha256:") and after.startswith("sha256:") and before != after

    (tmp_path / "dvc.lock").write_text("stages:\n  get:\n    outs:\n      - path: data/mine\n        md5: abc.dir\n")
    assert data_hash_of(cfg, splits_of(cfg), tmp_path) == "dvc:abc.dir"  # DVC's hash covers the folder
    (tmp_path / "classes.txt").write_text("A\nB\n")
    outside = DataConfig(source="manifest", manifest=mine / "m.csv", class_list=tmp_path / "classes.txt")
    assert data_hash_of(outside, splits_of(outside), tmp_path).startswith("dvc:abc.dir+sha256:")


def test_mdid_lenient_reader_keeps_an_ambiguous_post_as_a_record(tmp_path):
    """MDID's one record-level problem (a post with two image files) comes back with the record,
    so the validate step can quarantine it; load_split (strict) still raises it."""
    from PIL import Image

    from mccl_core.data import AnnotationError
    from mccl_core.data.mdid import compact_mdid_splits, read_mdid_splits, write_mdid_splits

    fixture = Path(__file__).parent / "fixtures" / "data" / "mdid"
    compact_file = tmp_path / "mdid_splits.json"
    write_mdid_splits(compact_mdid_splits(fixture / "master_metadata.json", fixture / "splits"), compact_file)
    compact = read_mdid_splits(compact_file)
    post_id = compact["posts"][compact["splits"][0]["val"][0]][0]
    for suffix in (".jpg", ".png"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{post_id}{suffix}")
    cfg = DataConfig(source="mdid", root=tmp_path, mdid_split_index=0, mdid_splits_file=compact_file)
    reader = data_source(cfg).read_checked
    assert reader is not None
    records, names, _ = reader(cfg, ["train", "val"])
    assert len(records) == len(compact["splits"][0]["train"]) + len(compact["splits"][0]["val"])
    (bad,) = [r for r in records if r.problems]
    assert bad.image_id == str(post_id) and bad.split == "val" and len(names) == 7
    assert bad.problems[0].startswith(f"MDID split 0 val: image '{post_id}'")
    assert "several image files for one post" in bad.problems[0]
    with pytest.raises(AnnotationError, match="several image files"):
        load_split(cfg, "val")
