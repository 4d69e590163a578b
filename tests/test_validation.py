"""Manifest validation with Great Expectations on real image files written to tmp_path."""

from __future__ import annotations

import csv
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mccl_core.data.images as data_images
from mccl_core.data import DataConfig, load_split
from mccl_core.tracking.steps import TrackingOptions
from mccl_core.validation import (
    DataValidationError,
    ImageLimits,
    inspect_image,
    validate_manifest,
)

CLASSES = ["Attractive", "Curious", "Happy", "Health"]
LIMITS = ImageLimits(min_side=16, max_side=128, max_pixels=128 * 128)
NO_TRACKING = TrackingOptions(enabled=False)


def _write_jpeg(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path, "JPEG", quality=90)
    return path


def _good_frame(root: Path) -> pd.DataFrame:
    """8 decodable images; train covers every class, val/test rows all labelled."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    layout = [
        ("train", [0, 1]), ("train", [2]), ("train", [3, 0]), ("train", []),
        ("val", [1]), ("val", [2, 3]), ("test", [0]), ("test", [3]),
    ]  # fmt: skip
    for i, (split, labels) in enumerate(layout):
        name = f"img_{i}.jpg"
        _write_jpeg(root / name, seed=i)
        rows.append({"image_id": f"id{i}", "image_path": name, "split": split, "label_ids": labels})
    return pd.DataFrame(rows)


def _add_row(frame: pd.DataFrame, **row) -> pd.DataFrame:
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True)


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    return tmp_path / "images"


def _validate(frame: pd.DataFrame, root: Path, **kwargs):
    kwargs.setdefault("policy", "fail")
    kwargs.setdefault("check_images", True)
    kwargs.setdefault("image_limits", LIMITS)
    return validate_manifest(frame, len(CLASSES), CLASSES, image_root=root, **kwargs)


def test_good_manifest_passes_and_reports(images: Path, tmp_path: Path) -> None:
    frame = _good_frame(images)
    report = _validate(frame, images)
    assert report.success and report.usable
    assert report.n_records == report.n_clean == 8
    assert report.offending == [] and report.missing_classes == []
    pd.testing.assert_frame_equal(report.clean_manifest, frame)
    checks = {e.check for e in report.expectations}
    assert {"required_columns", "image_id_unique", "labels_in_range", "eval_rows_labelled",
            "image_readable", "image_width", "image_mode", "every_class_in_train"} <= checks  # fmt: skip
    assert all(e.success for e in report.expectations)
    rows = report.checked_rows
    assert rows["readable"].all() and set(rows["width"]) == {48.0} and set(rows["mode"]) == {"RGB"}

    data = json.loads(report.to_json(tmp_path / "out" / "report.json").read_text())
    assert data["success"] is True and data["counts"]["records"] == 8
    assert data["counts"]["failed_expectations"] == 0 and data["offending_records"] == []
    assert "PASSED" in report.to_markdown()


# (name, how to break the manifest, id of the offending record, expected text in the problem)
def _missing(frame, root):
    return _add_row(frame, image_id="bad", image_path="nope.jpg", split="train", label_ids=[1])


def _zero_byte(frame, root):
    (root / "empty.jpg").write_bytes(b"")
    return _add_row(frame, image_id="bad", image_path="empty.jpg", split="train", label_ids=[1])


def _truncated(frame, root):
    data = _write_jpeg(root / "full.jpg", seed=99, size=(96, 96)).read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    return _add_row(frame, image_id="bad", image_path="cut.jpg", split="val", label_ids=[1])


def _text_file(frame, root):
    (root / "notes.jpg").write_text("this is not an image\n")
    return _add_row(frame, image_id="bad", image_path="notes.jpg", split="test", label_ids=[2])


def _too_wide(frame, root):
    Image.new("RGB", (200, 20), (10, 20, 30)).save(root / "wide.png")
    return _add_row(frame, image_id="bad", image_path="wide.png", split="train", label_ids=[0])


def _too_small(frame, root):
    Image.new("RGB", (8, 40), (10, 20, 30)).save(root / "thin.png")
    return _add_row(frame, image_id="bad", image_path="thin.png", split="train", label_ids=[0])


def _label_out_of_range(frame, root):
    _write_jpeg(root / "extra.jpg", seed=7)
    return _add_row(frame, image_id="bad", image_path="extra.jpg", split="train", label_ids=[1, 4, -1])


def _label_not_int(frame, root):
    _write_jpeg(root / "extra.jpg", seed=7)
    return _add_row(frame, image_id="bad", image_path="extra.jpg", split="train", label_ids="Happy")


def _val_without_labels(frame, root):
    _write_jpeg(root / "extra.jpg", seed=7)
    return _add_row(frame, image_id="bad", image_path="extra.jpg", split="val", label_ids=[])


def _unknown_split(frame, root):
    _write_jpeg(root / "extra.jpg", seed=7)
    return _add_row(frame, image_id="bad", image_path="extra.jpg", split="valid", label_ids=[1])


BAD_CASES = {
    "missing file": (_missing, "file not found"),
    "zero-byte": (_zero_byte, "zero-byte file"),
    "truncated jpeg": (_truncated, "corrupt or truncated image data"),
    "text file": (_text_file, "not a recognised image format (corrupt file or not an image)"),
    "too wide": (_too_wide, "width 200 outside [16, 128]"),
    "too small": (_too_small, "width 8 outside [16, 128]"),
    "label out of range": (_label_out_of_range, "label ids out of range [0, 4): [4,-1]"),
    "labels not a list": (_label_not_int, "label_ids is not a list of integers: 'Happy'"),
    "val without labels": (_val_without_labels, "val record has no labels"),
    "unknown split": (_unknown_split, "split 'valid' is not one of"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_record_fails_naming_the_record(case: str, images: Path, tmp_path: Path) -> None:
    corrupt, expected = BAD_CASES[case]
    frame = corrupt(_good_frame(images), images)
    with pytest.raises(DataValidationError) as caught:
        _validate(frame, images)
    message = str(caught.value)
    bad_path = frame.iloc[-1]["image_path"]
    assert "image_id='bad'" in message and f"path={bad_path!r}" in message and expected in message
    assert "1 offending record(s) in total" in message
    report = caught.value.report
    assert not report.success and not report.usable and report.n_clean == 0
    assert [(r.image_id, r.row_number) for r in report.offending] == [("bad", 8)]
    assert expected in report.offending[0].problem
    data = json.loads(report.to_json(tmp_path / "report.json").read_text())
    assert data["success"] is False
    assert data["offending_records"][0]["image_id"] == "bad"
    assert data["offending_records"][0]["image_path"] == bad_path
    assert expected in data["offending_records"][0]["problem"]
    failed = [e for e in data["expectations"] if not e["success"]]
    assert failed and all(e["failing_rows"] == [8] for e in failed)
    assert "bad" in report.to_markdown() and "FAIL" in report.to_markdown()


def test_duplicate_ids_flag_the_later_copies(images: Path) -> None:
    """Only the second and later copies fail: quarantining the first too would lose a good record."""
    frame = _good_frame(images)
    frame.loc[5, "image_id"] = "id4"  # both val rows now share id4
    frame.loc[7, "image_id"] = "id0"  # a test row reuses a train id
    with pytest.raises(DataValidationError) as caught:
        _validate(frame, images)
    report = caught.value.report
    assert [r.image_id for r in report.offending] == ["id4", "id0"]
    by_check = {e.check: e for e in report.expectations}
    assert by_check["image_id_unique"].failing_rows == [5, 7]
    assert by_check["image_id_unique_per_split"].failing_rows == [5]
    assert "duplicate image_id 'id4' within split 'val'" in report.offending[0].problem
    assert "duplicate image_id 'id0' (2 records share it; the first, row 0, is kept)" in str(caught.value)


def test_decompression_bomb_guard_does_not_decode(images: Path) -> None:
    images.mkdir()
    path = _png_header_only(images / "big.png", 400, 300)  # decoding it would fail
    inspection = inspect_image(path, ImageLimits(max_side=1000, max_pixels=100_000))
    assert not inspection.ok and (inspection.width, inspection.height, inspection.mode) == (400, 300, "RGB")
    assert [issue.kind for issue in inspection.issues] == ["pixels"]  # refused from the header, not decoded
    assert "400x300 = 120,000 pixels, above the limit of 100,000" in inspection.problem
    decoded = inspect_image(path, ImageLimits(max_side=1000, max_pixels=200_000))
    assert [issue.kind for issue in decoded.issues] == ["decode"]  # under the limit it is decoded


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces width x height pixels but holds no pixel data (a bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_in_manifest(images: Path) -> None:
    frame = _good_frame(images)
    _png_header_only(images / "bomb.png", 20000, 20000)  # PIL itself refuses (> 2x its limit)
    _png_header_only(images / "huge.png", 9000, 9000)  # under PIL's limit, over ours
    frame = _add_row(frame, image_id="bomb", image_path="bomb.png", split="train", label_ids=[0])
    frame = _add_row(frame, image_id="huge", image_path="huge.png", split="train", label_ids=[0])
    with pytest.raises(DataValidationError) as caught:
        _validate(frame, images)
    problems = {r.image_id: r.problem for r in caught.value.report.offending}
    assert set(problems) == {"bomb", "huge"}
    assert problems["bomb"].startswith("decompression bomb")
    assert problems["huge"] == (
        "width 9000 outside [16, 128]; height 9000 outside [16, 128]; image is 9000x9000 = 81,000,000 pixels, "
        "above the limit of 16,384 (possible decompression bomb; raise max_pixels if intended)"
    )
    failed = {e.check for e in caught.value.report.expectations if not e.success}
    assert failed == {"image_width", "image_height", "image_pixels"}


def test_parquet_round_trip_label_arrays(images: Path, tmp_path: Path) -> None:
    frame = _good_frame(images)
    frame.to_parquet(tmp_path / "manifest.parquet")
    loaded = pd.read_parquet(tmp_path / "manifest.parquet")  # label_ids come back as numpy arrays
    assert isinstance(loaded.loc[0, "label_ids"], np.ndarray)
    report = _validate(loaded, images)
    assert report.success and report.n_clean == 8
    loaded.at[5, "label_ids"] = np.array([2, 9])
    with pytest.raises(DataValidationError, match=r"image_id='id5'.*out of range \[0, 4\): \[9\]"):
        _validate(loaded, images)


def test_mode_not_allowed_is_reported(images: Path) -> None:
    frame = _good_frame(images)
    Image.new("L", (32, 32), 128).save(images / "grey.png")
    frame = _add_row(frame, image_id="grey", image_path="grey.png", split="train", label_ids=[0])
    with pytest.raises(DataValidationError, match=r"image mode 'L' is not among the allowed modes \['RGB'\]"):
        _validate(frame, images, image_limits=ImageLimits(min_side=16, max_side=128, allowed_modes=("RGB",)))
    report = _validate(frame, images)  # L converts to RGB with the default mode list
    assert report.success


def test_class_absent_from_train_is_a_table_failure(images: Path, tmp_path: Path) -> None:
    frame = _good_frame(images)
    frame.at[2, "label_ids"] = [0]  # the only train image of "Health" (3) loses it
    for policy in ("fail", "quarantine"):
        with pytest.raises(DataValidationError, match=r"\['Health'\]") as caught:
            _validate(frame, images, policy=policy, quarantine_path=tmp_path / "q.csv")
        report = caught.value.report
        assert report.missing_classes == ["Health"] and report.offending == []
        outcome = next(e for e in report.expectations if e.check == "every_class_in_train")
        assert not outcome.success and outcome.details["missing_classes"] == ["Health"]
    assert not (tmp_path / "q.csv").exists()


def test_class_whose_only_train_image_is_bad_is_missing(images: Path, tmp_path: Path) -> None:
    frame = _good_frame(images)
    (images / "img_1.jpg").write_bytes(b"")  # the only train image of "Happy" (2)
    with pytest.raises(DataValidationError) as caught:
        _validate(frame, images, policy="quarantine", quarantine_path=tmp_path / "q.csv")
    report = caught.value.report
    assert report.missing_classes == ["Happy"]
    assert [r.image_id for r in report.offending] == ["id1"]
    assert "image_id='id1'" in str(caught.value)


def test_missing_columns_fail_before_row_checks(images: Path) -> None:
    frame = _good_frame(images).drop(columns=["split"])
    with pytest.raises(DataValidationError, match=r"missing required columns \['split'\]") as caught:
        _validate(frame, images, policy="quarantine", quarantine_path=images / "q.csv")
    assert [e.check for e in caught.value.report.expectations] == ["required_columns"]


def test_quarantine_removes_exactly_the_bad_rows(images: Path, tmp_path: Path, caplog) -> None:
    frame = _good_frame(images)
    frame = _missing(frame, images)
    frame.loc[frame.index[-1], "image_id"] = "missing"
    frame = _text_file(frame, images)
    frame.loc[frame.index[-1], "image_id"] = "text"
    frame = _label_out_of_range(frame, images)
    frame.loc[frame.index[-1], "image_id"] = "range"
    frame = frame.set_index(pd.Index([f"r{i}" for i in range(len(frame))]))  # any index survives
    quarantine = tmp_path / "quarantine" / "bad.csv"
    with caplog.at_level(logging.WARNING, logger="mccl_core.validation"):
        report = _validate(frame, images, policy="quarantine", quarantine_path=quarantine)
    assert not report.success and report.usable
    assert report.n_records == 11 and report.n_clean == 8 and report.n_quarantined == 3
    pd.testing.assert_frame_equal(report.clean_manifest, frame.iloc[:8])
    assert report.quarantine_path == quarantine

    written = pd.read_csv(quarantine)
    assert written["image_id"].tolist() == ["missing", "text", "range"]
    assert written["row_number"].tolist() == [8, 9, 10]
    assert "file not found" in written["reason"][0] and "not an image" in written["reason"][1]
    assert "out of range [0, 4): [4,-1]" in written["reason"][2]
    assert json.loads(written["label_ids"][2]) == [1, 4, -1]
    assert "quarantined 3 of 11 manifest records" in caplog.text and "missing" in caplog.text

    data = report.to_dict()
    assert data["counts"] == {"records": 11, "clean": 8, "offending": 3, "quarantined": 3,
                              "expectations": len(report.expectations),
                              "failed_expectations": 2}  # fmt: skip
    assert "PASSED after quarantine" in report.to_markdown()

    as_json = tmp_path / "bad.json"
    _validate(frame, images, policy="quarantine", quarantine_path=as_json)
    assert [r["image_id"] for r in json.loads(as_json.read_text())] == ["missing", "text", "range"]


def test_message_lists_first_twenty_and_total(images: Path) -> None:
    frame = _good_frame(images)
    for i in range(25):
        frame = _add_row(frame, image_id=f"gone{i}", image_path=f"gone{i}.jpg", split="train", label_ids=[0])
    with pytest.raises(DataValidationError) as caught:
        _validate(frame, images)
    message = str(caught.value)
    assert "gone19.jpg" in message and "gone20.jpg" not in message
    assert "... and 5 more" in message and "25 offending record(s) in total" in message
    assert len(caught.value.report.offending) == 25


def test_without_image_checks_files_are_not_opened(images: Path) -> None:
    frame = _missing(_good_frame(images), images)
    report = _validate(frame, images, check_images=False)
    assert report.success and report.n_clean == 9
    assert "image_readable" not in {e.check for e in report.expectations}


def test_argument_errors(images: Path) -> None:
    frame = _good_frame(images)
    with pytest.raises(ValueError, match="quarantine_path"):
        _validate(frame, images, policy="quarantine")
    with pytest.raises(ValueError, match="policy"):
        _validate(frame, images, policy="drop")
    with pytest.raises(ValueError, match="num_classes=3 but 4"):
        validate_manifest(frame, 3, CLASSES, "fail", True, LIMITS, image_root=images)


def test_public_names_and_one_image_inspector() -> None:
    """What other code imports from mccl_core.validation keeps working, and the image pieces *are*
    the loader's (not copies that could drift apart)."""
    import mccl_core.validation as validation
    from mccl_core.steps.validate import ValidateConfig

    for name in ("REQUIRED_COLUMNS", "DataValidationError", "ImageLimits", "ValidationReport", "validate_manifest",
                 "write_quarantine", "OffendingRecord", "ExpectationOutcome", "RGB_CONVERTIBLE_MODES"):  # fmt: skip
        assert hasattr(validation, name), name
    assert validation.REQUIRED_COLUMNS == ("image_id", "image_path", "split", "label_ids")
    assert validation.ImageLimits is data_images.ImageLimits
    assert validation.inspect_image is data_images.inspect_image
    assert validation.RGB_CONVERTIBLE_MODES is data_images.RGB_CONVERTIBLE_MODES
    assert ValidateConfig(min_side=8, max_side=64, max_pixels=1000).limits() == ImageLimits(8, 64, 1000)


def test_image_limits_are_checked() -> None:
    assert ImageLimits() == ImageLimits(16, 16384, 89_478_485)  # the suite's defaults are unchanged
    with pytest.raises(ValueError, match="0 < min_side <= max_side"):
        ImageLimits(min_side=64, max_side=32)
    with pytest.raises(ValueError, match="max_pixels must be positive"):
        ImageLimits(max_pixels=0)
    with pytest.raises(ValueError, match=r"allowed_modes \['La'\] cannot be converted to RGB"):
        ImageLimits(allowed_modes=("RGB", "La"))


def test_image_columns_carry_the_inspector_verdicts(images: Path) -> None:
    frame = _too_wide(_good_frame(images), images)
    with pytest.raises(DataValidationError) as caught:
        _validate(frame, images)
    rows = caught.value.report.checked_rows.set_index("image_id")
    assert rows.loc["bad", "readable"] and not rows.loc["bad", "width_ok"] and rows.loc["bad", "height_ok"]
    assert rows.loc["bad", "problem"] == "width 200 outside [16, 128]"
    assert rows.loc["id0", ["readable", "width_ok", "height_ok", "pixels_ok", "mode_ok"]].all()


# ------------------------------------------------------------------------------------------------
# The validate step: one rule for record-level problems, whoever finds them
# ------------------------------------------------------------------------------------------------

STEP_CLASSES = ["A", "B"]
#: Per split: (image id, labels); train as soft probabilities (the Intentonomy train format).
STEP_LAYOUT = {
    "train": [("t0", [1.0, 0.0]), ("t1", [0.0, 1.0]), ("t2", [1.0, 0.333]), ("t3", [0.0, 0.666])],
    "val": [("v0", [0]), ("v1", [1])],
    "test": [("s0", [0]), ("s1", [0, 1])],
}
STEP_IDS = {image_id for rows in STEP_LAYOUT.values() for image_id, _ in rows}


def _ann_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"intentonomy_{split}2020.json"


def _intentonomy_dataset(root: Path) -> DataConfig:
    """A tiny Intentonomy-schema dataset: 2 classes, 2 train images per class."""
    (root / "low").mkdir(parents=True)
    (root / "annotations").mkdir()
    categories = [{"id": i, "name": n} for i, n in enumerate(STEP_CLASSES)]
    for split, rows in STEP_LAYOUT.items():
        images, annotations = [], []
        for n, (image_id, labels) in enumerate(rows):
            _write_jpeg(root / "low" / f"{image_id}.jpg", seed=n, size=(24, 24))
            images.append({"id": image_id, "filename": f"low/{image_id}.jpg"})
            key = "category_ids_softprob" if split == "train" else "category_ids"
            annotations.append({"id": n, "image_id": image_id, key: labels})
        document = {"categories": categories, "images": images, "annotations": annotations}
        _ann_file(root, split).write_text(json.dumps(document))
    _write_jpeg(root / "low" / "bad.jpg", seed=9, size=(24, 24))  # the image of the record a case adds
    return DataConfig(source="intentonomy", root=root)


def _add_record(root: Path, split: str, annotation: dict, image_entries: int = 1) -> str:
    path = _ann_file(root, split)
    document = json.loads(path.read_text())
    document["images"] += [{"id": annotation["image_id"], "filename": f"low/{annotation['image_id']}.jpg"}] * (
        image_entries
    )
    document["annotations"].append({"id": len(document["annotations"]), **annotation})
    path.write_text(json.dumps(document))  # NaN is written as the (non-standard) literal NaN
    return path.name


def _softprob(values: list[float]):
    return lambda root: ("bad", _add_record(root, "train", {"image_id": "bad", "category_ids_softprob": values}))


def _duplicate_annotation(root: Path) -> tuple[str, str]:
    path = _ann_file(root, "train")
    document = json.loads(path.read_text())
    document["annotations"].append({"id": 99, "image_id": "t0", "category_ids_softprob": [1.0, 0.0]})
    path.write_text(json.dumps(document))
    return "t0", path.name


MANIFEST_HEADER = "image_path,labels,split\n"


def _manifest_dataset(root: Path, extra_rows: str = "") -> DataConfig:
    """The same layout as a CSV manifest with a class list (no ``root``: paths are relative to
    the manifest's folder)."""
    (root / "img").mkdir(parents=True)
    lines = []
    for split, rows in STEP_LAYOUT.items():
        for n, (image_id, labels) in enumerate(rows):
            _write_jpeg(root / "img" / f"{image_id}.jpg", seed=n, size=(24, 24))
            names = "|".join(STEP_CLASSES[i] for i, v in enumerate(labels) if v > 0) if split == "train" else (
                "|".join(STEP_CLASSES[i] for i in labels))  # fmt: skip
            lines.append(f"img/{image_id}.jpg,{names},{split}\n")
    _write_jpeg(root / "img" / "bad.jpg", seed=9, size=(24, 24))
    (root / "m.csv").write_text(MANIFEST_HEADER + "".join(lines) + extra_rows)
    (root / "classes.txt").write_text("\n".join(STEP_CLASSES) + "\n")
    return DataConfig.from_dict({"source": "manifest", "manifest": str(root / "m.csv"),
                                 "class_list": str(root / "classes.txt")})  # fmt: skip


def _manifest_case(row: str):
    return lambda root: ("img/bad.jpg", row)


# case -> (source, how to add the bad record, expected text in the problem)
STEP_CASES = {
    "manifest duplicate id": ("manifest", _manifest_case("img/bad.jpg,A,train\nimg/bad.jpg,B,train\n"),
                              "duplicate image id (first on line"),
    "manifest unknown label": ("manifest", _manifest_case("img/bad.jpg,A|Hapy,train\n"),
                               "unknown label name(s) ['Hapy']"),
    "manifest empty val label": ("manifest", _manifest_case("img/bad.jpg,,val\n"), "no labels (every val image"),
    "manifest bad split": ("manifest", _manifest_case("img/bad.jpg,A,valid\n"), "split 'valid' is not one of"),
    "softprob NaN": ("intentonomy", _softprob([float("nan"), 1.0]), "values must be numbers in [0, 1]"),
    "softprob negative": ("intentonomy", _softprob([-0.5, 1.0]), "values must be numbers in [0, 1]"),
    "softprob above one": ("intentonomy", _softprob([1.5, 0.0]), "values must be numbers in [0, 1]"),
    "softprob wrong length": ("intentonomy", _softprob([1.0, 0.0, 0.0]), "must be a list of 2 numbers, got 3"),
    "json duplicate annotation": ("intentonomy", _duplicate_annotation, "more than one annotation"),
    "json image listed twice": (
        "intentonomy",
        lambda root: ("bad", _add_record(root, "val", {"image_id": "bad", "category_ids": [1]}, image_entries=2)),
        "duplicate image id (first listed as images[2])",
    ),
    "json category id out of range": (
        "intentonomy",
        lambda root: ("bad", _add_record(root, "val", {"image_id": "bad", "category_ids": [0, 5]})),
        "unknown category id(s) [5]",
    ),
    "json empty val label": (
        "intentonomy",
        lambda root: ("bad", _add_record(root, "val", {"image_id": "bad", "category_ids": []})),
        "no labels (every val image",
    ),
}  # fmt: skip


def _broken_dataset(case: str, root: Path) -> tuple[DataConfig, str, str, str]:
    """(config, id of the bad record, the file that holds it, expected problem text)."""
    source, add, expected = STEP_CASES[case]
    if source == "manifest":
        bad_id, row = add(root)
        return _manifest_dataset(root, row), bad_id, "m.csv", expected
    cfg = _intentonomy_dataset(root)
    bad_id, file_name = add(root)
    return cfg, bad_id, file_name, expected


def _validated_ids(out: Path) -> dict[str, list[str]]:
    from mccl_core.steps.common import ValidatedData

    handle = ValidatedData.load(out)
    return {split: [r.image_id for r in load_split(handle.data, split).records] for split in handle.splits}


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_step_fail_policy_names_the_file_and_the_record(case: str, tmp_path: Path) -> None:
    from mccl_core.steps import StepError
    from mccl_core.steps.validate import ValidateConfig, run_validate

    cfg, bad_id, file_name, expected = _broken_dataset(case, tmp_path / "data")
    out = tmp_path / "validate"
    with pytest.raises(StepError) as caught:
        run_validate(ValidateConfig(policy="fail", workers=1), cfg, out, NO_TRACKING)
    message = str(caught.value)
    assert f"image_id={bad_id!r}" in message and file_name in message and expected in message
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is False and {r["image_id"] for r in report["offending_records"]} == {bad_id}
    assert not (out / "validated_data.json").exists()


@pytest.mark.parametrize("case", sorted(STEP_CASES))
def test_step_quarantine_policy_sets_exactly_the_bad_record_aside(case: str, tmp_path: Path) -> None:
    from mccl_core.steps.validate import ValidateConfig, run_validate

    cfg, bad_id, file_name, expected = _broken_dataset(case, tmp_path / "data")
    out = tmp_path / "validate"
    result = run_validate(ValidateConfig(policy="quarantine", workers=1), cfg, out, NO_TRACKING)
    with (out / "quarantine.csv").open() as handle:
        quarantined = list(csv.DictReader(handle))
    assert {r["image_id"] for r in quarantined} == {bad_id} and result.n_quarantined == len(quarantined)
    assert all(
        expected in r["reason"] and file_name in r["reason"] for r in quarantined if "annotation_valid" in r["checks"]
    )
    assert any("annotation_valid" in r["checks"] for r in quarantined)  # the reader's problem is reported
    report = json.loads((out / "report.json").read_text())
    assert report["usable"] is True and {r["image_id"] for r in report["offending_records"]} == {bad_id}
    kept = _validated_ids(out)
    # A duplicate sets only its later copy aside: the first record is good and stays (issue 21).
    first_stays = case in ("manifest duplicate id", "json duplicate annotation")
    assert all(bad_id not in ids for ids in kept.values()) or first_stays
    expected_ids = {s: [i for i, _ in rows if i != bad_id or first_stays] for s, rows in STEP_LAYOUT.items()}
    if cfg.source == "manifest":
        expected_ids = {s: [f"img/{i}.jpg" for i in ids] for s, ids in expected_ids.items()}
        if first_stays:
            expected_ids["train"].append(bad_id)
    assert kept == expected_ids  # every other record is there, in order


# ------------------------------------------------------------------------------------------------
# File-level problems: one message naming the file, a report written, under either policy
# ------------------------------------------------------------------------------------------------


def _run_step_expecting_file_failure(cfg: DataConfig, out: Path, policy: str = "quarantine") -> tuple[str, dict]:
    from mccl_core.steps import StepError
    from mccl_core.steps.validate import ValidateConfig, run_validate

    with pytest.raises(StepError) as caught:
        run_validate(ValidateConfig(policy=policy, workers=1), cfg, out, NO_TRACKING)  # type: ignore[arg-type]
    report = json.loads((out / "report.json").read_text())
    assert report["success"] is False and report["usable"] is False and report["stage"] == "annotations"
    assert (out / "summary.md").is_file() and (out / "quarantine.csv").is_file()
    return str(caught.value), report


def test_step_non_utf8_manifest_names_the_file_and_the_offset(tmp_path: Path) -> None:
    cfg = _manifest_dataset(tmp_path / "data")
    manifest = tmp_path / "data" / "m.csv"
    text = manifest.read_text() + "img/caf\u00e9.jpg,A,train\n"
    manifest.write_bytes(text.encode("cp1252"))
    message, report = _run_step_expecting_file_failure(cfg, tmp_path / "validate")
    offset = len(text.split("\u00e9")[0].encode())
    expected = f"not UTF-8 text: byte 0xe9 at byte offset {offset}"
    assert str(manifest) in message and expected in message
    assert report["annotation_problems"] == [
        f"manifest {str(manifest)!r}: {expected} (invalid continuation byte); save the file as UTF-8"
    ]


def test_step_missing_split_column_is_reported_once(tmp_path: Path) -> None:
    cfg = _manifest_dataset(tmp_path / "data")
    manifest = tmp_path / "data" / "m.csv"
    manifest.write_text("\n".join(line.rsplit(",", 1)[0] for line in manifest.read_text().splitlines()) + "\n")
    message, report = _run_step_expecting_file_failure(cfg, tmp_path / "validate", policy="fail")
    assert "duplicate" not in message and message.count("missing column(s) 'split'") == 1
    (problem,) = report["annotation_problems"]
    assert problem.startswith(f"manifest {str(manifest)!r}: missing column(s) 'split'")
    assert "columns found: ['image_path', 'labels']" in problem


def test_step_missing_annotations_key_is_one_file_level_problem(tmp_path: Path) -> None:
    cfg = _intentonomy_dataset(tmp_path / "data")
    path = _ann_file(tmp_path / "data", "val")
    document = json.loads(path.read_text())
    del document["annotations"]
    path.write_text(json.dumps(document))
    message, report = _run_step_expecting_file_failure(cfg, tmp_path / "validate")
    assert report["annotation_problems"] == [f"{path}: missing or non-list 'annotations'"]
    assert "image has no annotation" not in message and str(path) in message


# ------------------------------------------------------------------------------------------------
# Your own data as the README writes it: {source: manifest, manifest: m.csv, class_list: classes.txt}
# ------------------------------------------------------------------------------------------------


def test_manifest_without_root_as_the_readme_writes_it(tmp_path: Path, monkeypatch) -> None:
    """No ``data.root``: image paths resolve against the manifest's folder, wherever the step runs."""
    from mccl_core.steps.validate import ValidateConfig, run_validate

    project = tmp_path / "project"
    _manifest_dataset(project / "data" / "mine")
    monkeypatch.chdir(project)
    for manifest, class_list in (("data/mine/m.csv", "data/mine/classes.txt"), ("m.csv", "classes.txt")):
        if manifest == "m.csv":  # the README's literal form: manifest and class list in the working directory
            monkeypatch.chdir(project / "data" / "mine")
        cfg = DataConfig.from_dict({"source": "manifest", "manifest": manifest, "class_list": class_list})
        train = load_split(cfg, "train")
        assert [r.image_id for r in train.records] == [f"img/{i}.jpg" for i, _ in STEP_LAYOUT["train"]]
        assert train.records[0].image_path.resolve() == (project / "data" / "mine" / "img" / "t0.jpg")
        assert train.class_names == STEP_CLASSES
        out = tmp_path / f"validate_{manifest.replace('/', '_')}"
        result = run_validate(ValidateConfig(workers=1), cfg, out, NO_TRACKING)
        assert result.n_records == 8 and result.n_quarantined == 0
        assert _validated_ids(out) == {s: [f"img/{i}.jpg" for i, _ in rows] for s, rows in STEP_LAYOUT.items()}
        assert result.validated.data_hash.startswith("sha256:")
