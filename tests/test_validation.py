"""Manifest validation with Great Expectations on real image files written to tmp_path."""

from __future__ import annotations

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
from mccl_core.validation import (
    DataValidationError,
    ImageLimits,
    inspect_image,
    validate_manifest,
)

CLASSES = ["Attractive", "Curious", "Happy", "Health"]
LIMITS = ImageLimits(min_side=16, max_side=128, max_pixels=128 * 128)


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


def test_duplicate_ids_flag_every_copy(images: Path) -> None:
    frame = _good_frame(images)
    frame.loc[5, "image_id"] = "id4"  # both val rows now share id4
    frame.loc[7, "image_id"] = "id0"  # a test row reuses a train id
    with pytest.raises(DataValidationError) as caught:
        _validate(frame, images)
    report = caught.value.report
    assert [r.image_id for r in report.offending] == ["id0", "id4", "id4", "id0"]
    by_check = {e.check: e for e in report.expectations}
    assert by_check["image_id_unique"].failing_rows == [0, 4, 5, 7]
    assert by_check["image_id_unique_per_split"].failing_rows == [4, 5]
    assert "duplicate image_id 'id4' within split 'val'" in report.offending[1].problem
    assert "duplicate image_id 'id0' (2 records share it)" in str(caught.value)


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
