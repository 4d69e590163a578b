"""The canonical annotation files: neutral names (``annotations/<split>.json``) for what the project
writes, Intentonomy's published names for Intentonomy, old layouts still loading, and a reader
that does not log as Intentonomy for other data."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mccl_core.data import DataConfig, DemoConfig, generate_demo, load_split
from mccl_core.data.annotations import (
    CANONICAL_FILENAMES,
    LEGACY_FILENAMES,
    canonical_annotation_file,
)
from mccl_core.data.intentonomy import OFFICIAL_ANNOTATION_FILENAMES
from mccl_core.steps.common import ValidatedData, annotation_files
from mccl_core.tracking.steps import TrackingOptions

SPLITS = ("train", "val", "test")
CANONICAL = ["test.json", "train.json", "val.json"]
NO_TRACKING = TrackingOptions(enabled=False)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _to_legacy_layout(root: Path) -> None:
    """Turn a freshly rendered folder into one rendered before the canonical names."""
    for split in SPLITS:
        (root / "annotations" / CANONICAL_FILENAMES[split]).rename(root / "annotations" / LEGACY_FILENAMES[split])


# ----------------------------------------------------------------------------- default names


def test_default_annotation_file_per_source(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    demo = DataConfig(source="demo", root=tmp_path)
    intentonomy = DataConfig(source="intentonomy", root=tmp_path)
    # Nothing there: the preferred name (what a "not found" message names).
    assert demo.annotation_file("train") == tmp_path / "annotations" / "train.json"
    assert intentonomy.annotation_file("val") == tmp_path / "annotations" / "intentonomy_val2020.json"
    # An old demo folder: the legacy name is found; once the canonical file exists it wins.
    (tmp_path / "annotations" / "intentonomy_train2020.json").write_text("{}")
    assert demo.annotation_file("train") == tmp_path / "annotations" / "intentonomy_train2020.json"
    (tmp_path / "annotations" / "train.json").write_text("{}")
    assert demo.annotation_file("train") == canonical_annotation_file(tmp_path, "train")
    # Intentonomy reads its published names only; an explicit file always wins.
    assert intentonomy.annotation_file("train") == tmp_path / "annotations" / OFFICIAL_ANNOTATION_FILENAMES["train"]
    explicit = DataConfig(source="demo", root=tmp_path, annotations={"train": tmp_path / "mine.json"})
    assert explicit.annotation_file("train") == tmp_path / "mine.json"


def test_the_reader_module_is_the_submodule_and_intentonomy_keeps_its_names() -> None:
    # In a fresh interpreter, `from mccl_core.data import annotations` is the submodule (the package
    # must not bind the name itself, as `from __future__ import annotations` would).
    check = "from mccl_core.data import annotations; print(annotations.__name__)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "mccl_core.data.annotations"
    from mccl_core.data.intentonomy import ANNOTATION_FILENAMES

    assert ANNOTATION_FILENAMES == OFFICIAL_ANNOTATION_FILENAMES


# ----------------------------------------------------------------------------- demo


def test_demo_writes_canonical_names_and_drops_legacy_copies(tmp_path: Path) -> None:
    cfg = DemoConfig(seed=1, n_train=6, n_val=3, n_test=3, image_size=32)
    (tmp_path / "annotations").mkdir()
    for name in LEGACY_FILENAMES.values():  # a folder rendered before the canonical names
        (tmp_path / "annotations" / name).write_text("{}")
    root = generate_demo(tmp_path, cfg, show_progress=False)
    assert _names(root / "annotations") == CANONICAL
    assert [p.name for p in annotation_files(DataConfig(source="demo", root=root), SPLITS)] == [
        "train.json", "val.json", "test.json"]  # fmt: skip


def test_old_layout_demo_still_loads_without_warnings(tiny_demo: Path, tmp_path: Path, caplog) -> None:
    old = shutil.copytree(tiny_demo, tmp_path / "old_demo")
    _to_legacy_layout(old)
    cfg = DataConfig(source="demo", root=old)
    with caplog.at_level(logging.DEBUG, logger="mccl_core"):
        for split in SPLITS:
            fresh = load_split(DataConfig(source="demo", root=tiny_demo), split).records
            loaded = load_split(cfg, split).records
            assert [(r.image_id, r.image_path.relative_to(old), r.labels, r.soft_labels) for r in loaded] == [
                (r.image_id, r.image_path.relative_to(tiny_demo), r.labels, r.soft_labels) for r in fresh
            ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [p.name for p in annotation_files(cfg, SPLITS)] == [LEGACY_FILENAMES[s] for s in SPLITS]


# ----------------------------------------------------------------------------- validate step


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (value, 255 - value, 90)).save(path, "JPEG")


@pytest.fixture(scope="module")
def validated_manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataConfig, Path]:
    """A user's own manifest dataset (2 classes) and the validate step's output folder for it."""
    from mccl_core.steps.validate import ValidateConfig, run_validate

    root = tmp_path_factory.mktemp("mine")
    rows = ["image_path,labels,split"]
    for n, (split, labels) in enumerate(
        [("train", "cat"), ("train", "dog"), ("train", "cat|dog"), ("val", "cat"), ("val", "dog"), ("test", "dog")]
    ):
        _jpeg(root / "img" / f"{n}.jpg", 30 * n)
        rows.append(f"img/{n}.jpg,{labels},{split}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    cfg = DataConfig(source="manifest", manifest=root / "m.csv", class_list=root / "classes.txt")
    out = tmp_path_factory.mktemp("validate")
    run_validate(ValidateConfig(workers=1), cfg, out, NO_TRACKING)
    return cfg, out


def test_validate_writes_canonical_files(validated_manifest: tuple[DataConfig, Path]) -> None:
    _, out = validated_manifest
    assert _names(out / "annotations") == CANONICAL
    handle = json.loads((out / "validated_data.json").read_text())
    assert handle["data"]["annotations"] == {s: f"@handle/annotations/{s}.json" for s in SPLITS}


def test_manifest_data_does_not_log_as_intentonomy(validated_manifest: tuple[DataConfig, Path], caplog) -> None:
    cfg, out = validated_manifest
    handle = ValidatedData.load(out)
    with caplog.at_level(logging.DEBUG, logger="mccl_core"):
        assert [len(load_split(c, "train")) for c in (cfg, handle.data)] == [3, 3]
    loggers = {r.name for r in caplog.records}
    assert not [name for name in loggers if "intentonomy" in name], loggers
    loaded = {r.name: r.getMessage() for r in caplog.records if "3 train images" in r.getMessage()}
    # The manifest itself, then the handle's clean file (read by the canonical-format reader).
    assert sorted(loaded) == ["mccl_core.data.annotations", "mccl_core.data.manifest"]
    assert loaded["mccl_core.data.annotations"].startswith(str(out / "annotations" / "train.json"))


def test_handle_written_before_the_canonical_names_still_loads(
    validated_manifest: tuple[DataConfig, Path], tmp_path: Path
) -> None:
    _, out = validated_manifest
    old = shutil.copytree(out, tmp_path / "validate")
    _to_legacy_layout(old)
    handle_path = old / "validated_data.json"
    handle = json.loads(handle_path.read_text())
    handle["data"]["annotations"] = {s: f"@handle/annotations/{LEGACY_FILENAMES[s]}" for s in SPLITS}
    handle_path.write_text(json.dumps(handle))
    loaded = ValidatedData.load(old)
    expected = ValidatedData.load(out)
    for split in SPLITS:
        assert [r.image_id for r in load_split(loaded.data, split).records] == [
            r.image_id for r in load_split(expected.data, split).records
        ]


def test_old_layout_demo_validates_into_canonical_files(tiny_demo: Path, tmp_path: Path) -> None:
    from mccl_core.steps.validate import ValidateConfig, run_validate

    old = shutil.copytree(tiny_demo, tmp_path / "old_demo")
    _to_legacy_layout(old)
    out = tmp_path / "validate"
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / LEGACY_FILENAMES["val"]).write_text("{}")  # a clean copy of an older run
    result = run_validate(
        ValidateConfig(check_images=False, workers=1), DataConfig(source="demo", root=old), out, NO_TRACKING
    )
    assert result.n_quarantined == 0
    assert _names(out / "annotations") == CANONICAL
    assert _names(old / "annotations") == sorted(LEGACY_FILENAMES.values())  # the data folder is left alone
    assert len(load_split(result.validated.data, "test")) == len(
        load_split(DataConfig(source="demo", root=old), "test")
    )
