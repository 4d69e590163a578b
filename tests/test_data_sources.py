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
    assert [p.name for p in annotation_files(demo, splits_of(demo))] == [
        "intentonomy_train2020.json", "intentonomy_val2020.json", "intentonomy_test2020.json"]  # fmt: skip
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
