"""Image reading: every bad file is a clear ImageLoadError naming it; conversions are logged."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFile

from mccl_core.data import ImageLoadError, ImageRecord, IntentDataset, load_rgb_image, verify_images
from mccl_core.data.images import (
    RGB_CONVERTIBLE_MODES,
    ImageLimits,
    _limit_issues,
    inspect_image,
    load_rgb_image_bytes,
)


def _jpeg_bytes(size: tuple[int, int] = (40, 30), colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    rng = np.random.default_rng(0)
    array = np.clip(np.asarray(colour)[None, None, :] + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(
        np.uint8
    )
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that *claims* width x height (IHDR) but has no pixel data: a decompression-bomb probe
    that costs nothing to create."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_valid_jpeg_loads_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg_bytes())
    image = load_rgb_image(path)
    assert image.mode == "RGB" and image.size == (40, 30)
    red, green, blue = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    assert red > 150 and green < 80 and blue < 80


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="file not found") as info:
        load_rgb_image(path, image_id="img-7")
    assert info.value.path == path and "img-7" in str(info.value) and str(path) in str(info.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="zero-byte file") as info:
        load_rgb_image(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_rgb_image(tmp_path / "dir.jpg")


def test_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "page.jpg"
    path.write_text("<html><body>403 Forbidden</body></html>")
    with pytest.raises(ImageLoadError, match="not a recognised image format") as info:
        load_rgb_image(path)
    assert str(path) in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = _jpeg_bytes((64, 64))
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="corrupt or truncated") as info:
        load_rgb_image(path)
    assert "truncated" in str(info.value)


def test_corrupt_jpeg_body(tmp_path: Path) -> None:
    data = bytearray(_jpeg_bytes((64, 64)))
    # Keep the SOI marker and header, then garble everything after the quantisation tables.
    garbage = np.random.default_rng(1).integers(0, 256, len(data) - 200, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(bytes(data[:20]) + garbage)
    with pytest.raises(ImageLoadError) as info:
        load_rgb_image(path)
    assert str(path) in str(info.value)
    assert "corrupt" in info.value.problem or "not a recognised image format" in info.value.problem


def test_decompression_bomb_default_limit_without_pil_warning(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    # 10,000 x 10,000 = 100 MP: above the default 89.5 MP limit, below PIL's hard 2x limit
    # (where PIL only *warns*). We must raise instead of warning.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10_000, 10_000))
    with pytest.raises(ImageLoadError, match="above the limit of 89,478,485") as info:
        load_rgb_image(path)
    assert "decompression bomb" in str(info.value)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_decompression_bomb_beyond_pil_hard_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(20_000, 20_000))
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_rgb_image(path, max_pixels=None)


def test_configurable_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg_bytes((40, 30)))
    with pytest.raises(ImageLoadError, match="1,200 pixels, above the limit of 1,000"):
        load_rgb_image(path, max_pixels=1000)
    assert load_rgb_image(path, max_pixels=1200).size == (40, 30)


@pytest.mark.parametrize(
    ("mode", "fill", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("RGBA", (0, 0, 255, 0), (255, 255, 255)),  # fully transparent -> white, not the hidden blue
        ("LA", (0, 255), (0, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I", 1000, (255, 255, 255)),
        ("F", 2.0, (255, 255, 255)),
    ],
)
def test_mode_conversions_to_rgb(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, fill: object, expected: tuple[int, int, int]
) -> None:
    suffix = {"CMYK": ".jpg", "F": ".tif", "I": ".tif"}.get(mode, ".png")
    path = tmp_path / f"image_{mode.replace(';', '_')}{suffix}"
    Image.new(mode, (8, 6), fill).save(path, quality=100) if suffix == ".jpg" else Image.new(mode, (8, 6), fill).save(
        path
    )
    with caplog.at_level(logging.DEBUG, logger="mccl_core.data.images"):
        image = load_rgb_image(path)
    assert image.mode == "RGB" and image.size == (8, 6)
    assert np.abs(np.asarray(image, dtype=int)[3, 4] - np.asarray(expected)).max() <= 3
    assert any(f"converted {mode} to RGB" in message for message in caplog.messages)


def test_palette_with_transparency_composited_over_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.info["transparency"] = 0
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    rgb = np.asarray(load_rgb_image(path))
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # transparent index -> white
    assert tuple(rgb[1, 1]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red in the stored (landscape) pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)
    with caplog.at_level(logging.DEBUG, logger="mccl_core.data.images"):
        image = load_rgb_image(path)
    assert image.size == (20, 40)  # displayed portrait
    upright = np.asarray(image, dtype=int)
    assert upright[5, 10, 0] > 200 and upright[35, 10, 0] < 60  # stored left half is now on top
    assert any("EXIF orientation" in message for message in caplog.messages)


def _dataset(paths: list[Path]) -> IntentDataset:
    records = [ImageRecord(f"id{i}", p, (i % 2,), None) for i, p in enumerate(paths)]
    return IntentDataset(records, ["a", "b"], ["first", "second"], name="t")


def test_verify_images_reports_every_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes())
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    grey = tmp_path / "grey.png"
    Image.new("L", (5, 5), 7).save(grey)
    dataset = _dataset([good, empty, tmp_path / "missing.jpg", text, grey])
    problems = verify_images(dataset, show_progress=False)
    assert [(p.index, p.image_id) for p in problems] == [(1, "id1"), (2, "id2"), (3, "id3")]
    assert "zero-byte" in problems[0].problem and "not found" in problems[1].problem
    assert problems[2].to_dict()["path"] == str(text)


def test_dataset_item_and_bad_image_error_names_record(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes((16, 12)))
    dataset = _dataset([good, tmp_path / "gone.jpg"])
    item = dataset[0]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 12, 16)
    assert float(item["image"].max()) <= 1.0
    assert item["labels"].tolist() == [1.0, 0.0] and item["index"] == 0 and "soft_labels" not in item
    with pytest.raises(ImageLoadError, match=r"image 'id1' file .*gone\.jpg.*: file not found"):
        dataset[1]


def test_dataset_respects_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes((50, 50)))
    dataset = IntentDataset([ImageRecord("x", path, (0,), None)], ["a"], max_pixels=100)
    with pytest.raises(ImageLoadError, match="above the limit"):
        dataset[0]


# --------------------------------------------------------------------------------------------
# One inspector: the loader, `mccl data verify` and the validation suite agree on every case
# --------------------------------------------------------------------------------------------

RAW_MAGIC = b"MCCLRAW\0"


class _RawModeImageFile(ImageFile.ImageFile):
    """Test-only format: a header naming any PIL mode, then raw pixels. Lets a *file* open with a
    mode no standard decoder produces (``I;16N``, ``RGBa``, premultiplied ``La``)."""

    format = "MCCLRAW"
    format_description = "test-only raw pixels with a chosen PIL mode"

    def _open(self) -> None:
        header = self.fp.read(24)
        if header[:8] != RAW_MAGIC:
            raise SyntaxError("not an MCCLRAW file")
        mode = header[8:16].rstrip(b"\0").decode()
        width, height = struct.unpack("<II", header[16:24])
        self._mode = mode
        self._size = (width, height)
        self.tile = [ImageFile._Tile("raw", (0, 0, width, height), 24, (mode, 0, 1))]


@pytest.fixture(scope="module")
def raw_mode_format():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "ID", list(Image.ID))
        patch.setattr(Image, "OPEN", dict(Image.OPEN))
        Image.register_open(_RawModeImageFile.format, _RawModeImageFile, lambda prefix: prefix[:8] == RAW_MAGIC)
        yield


def _raw(mode: str, fill: object, size: tuple[int, int] = (20, 20)) -> bytes:
    pixels = Image.new(mode, size, fill).tobytes()  # type: ignore[arg-type]
    return RAW_MAGIC + mode.encode().ljust(8, b"\0") + struct.pack("<II", *size) + pixels


def _saved(mode: str, fill: object, suffix: str, size: tuple[int, int] = (20, 20), **save: object):
    def write(path: Path) -> None:
        Image.new(mode, size, fill).save(path.with_suffix(suffix), **save)  # type: ignore[arg-type]
        path.with_suffix(suffix).rename(path)

    return write


def _palette_with_transparency(path: Path) -> None:
    image = Image.new("P", (20, 20), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(path.with_suffix(".png"), transparency=0)
    path.with_suffix(".png").rename(path)


def _truncated(path: Path) -> None:
    data = _jpeg_bytes((64, 64))
    path.write_bytes(data[: len(data) // 2])


#: Validation-style limits, applied on every path (sides 16..128, at most 10,000 pixels).
SHARED_LIMITS = ImageLimits(min_side=16, max_side=128, max_pixels=10_000)

# name -> (write the file at the given path (None: leave it missing), source mode when accepted,
#          the reason when refused)
SHARED_CASES: dict[str, tuple] = {
    "RGB jpeg": (lambda p: p.write_bytes(_jpeg_bytes((40, 30))), "RGB", None),
    "L png": (_saved("L", 128, ".png"), "L", None),
    "1 png": (_saved("1", 1, ".png"), "1", None),
    "P png": (_saved("P", 3, ".png"), "P", None),
    "P png with transparency": (_palette_with_transparency, "P", None),
    "RGBA png": (_saved("RGBA", (0, 0, 255, 0), ".png"), "RGBA", None),
    "LA png": (_saved("LA", (0, 255), ".png"), "LA", None),
    "I;16 png": (_saved("I;16", 65535, ".png"), "I;16", None),
    "I;16B tiff": (_saved("I;16B", 300, ".tif"), "I;16B", None),
    "I;16N raw": (lambda p: p.write_bytes(_raw("I;16N", 300)), "I;16N", None),
    "I tiff": (_saved("I", 1000, ".tif"), "I", None),
    "F tiff": (_saved("F", 2.0, ".tif"), "F", None),
    "CMYK jpeg": (_saved("CMYK", (0, 255, 255, 0), ".jpg", quality=100), "CMYK", None),
    "YCbCr tiff": (_saved("YCbCr", (76, 85, 255), ".tif"), "YCbCr", None),
    "LAB tiff": (_saved("LAB", (50, 128, 128), ".tif"), "LAB", None),
    "RGBa raw": (lambda p: p.write_bytes(_raw("RGBa", (10, 20, 30, 255))), "RGBa", None),
    "La raw (no conversion in Pillow)": (
        lambda p: p.write_bytes(_raw("La", (10, 255))), None, "image mode 'La' cannot be converted to RGB",
    ),
    "truncated jpeg": (_truncated, None, "corrupt or truncated image data"),
    "zero-byte file": (lambda p: p.write_bytes(b""), None, "zero-byte file"),
    "not an image": (lambda p: p.write_text("<html>403</html>"), None, "not a recognised image format"),
    "missing file": (None, None, "file not found"),
    "too small": (_saved("RGB", (1, 2, 3), ".png", size=(8, 40)), None, "width 8 outside [16, 128]"),
    "too wide": (_saved("RGB", (1, 2, 3), ".png", size=(200, 20)), None, "width 200 outside [16, 128]"),
    # Header only: decoding would fail, so the exact reason also proves it is never decoded.
    "too many pixels": (
        lambda p: p.write_bytes(_png_header_only(110, 110)), None,
        "image is 110x110 = 12,100 pixels, above the limit of 10,000 (possible decompression bomb",
    ),
    "beyond PIL's hard limit": (
        lambda p: p.write_bytes(_png_header_only(20_000, 20_000)), None, "decompression bomb refused by PIL",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def shared_cases(tmp_path_factory: pytest.TempPathFactory, raw_mode_format) -> dict:
    """Every case written once, run through the validation suite (once) and `verify_images`."""
    from mccl_core.validation import validate_manifest

    root = tmp_path_factory.mktemp("shared_cases")
    paths: dict[str, Path] = {}
    for number, (name, (write, _, _)) in enumerate(SHARED_CASES.items()):
        paths[name] = root / f"case{number:02d}.img"
        if write is not None:
            write(paths[name])
    for good in ("good0", "good1"):  # every class keeps a valid train image
        (root / f"{good}.jpg").write_bytes(_jpeg_bytes((40, 30)))
    rows = [{"image_id": f"good{i}", "image_path": f"good{i}.jpg", "split": "train", "label_ids": [i]} for i in (0, 1)]
    rows += [
        {"image_id": name, "image_path": path.name, "split": "train", "label_ids": [0]} for name, path in paths.items()
    ]
    report = validate_manifest(
        pd.DataFrame(rows), 2, ["a", "b"], "quarantine", True, SHARED_LIMITS,
        image_root=root, quarantine_path=root / "quarantine.csv", workers=2,
    )  # fmt: skip
    records = [ImageRecord(name, path, (0,), None) for name, path in paths.items()]
    dataset = IntentDataset(records, ["a", "b"], name="cases")
    verified = verify_images(dataset, limits=SHARED_LIMITS, show_progress=False)
    return {
        "paths": paths,
        "validation": {record.image_id: record for record in report.offending},
        "modes": dict(zip(report.checked_rows["image_id"], report.checked_rows["mode"])),
        "verify": {problem.image_id: problem for problem in verified},
    }


@pytest.mark.parametrize("case", list(SHARED_CASES))
def test_loader_verify_and_validation_agree(case: str, shared_cases: dict) -> None:
    _, source_mode, reason = SHARED_CASES[case]
    path = shared_cases["paths"][case]
    validation = shared_cases["validation"].get(case)
    verified = shared_cases["verify"].get(case)
    if reason is None:  # accepted everywhere, and the loader really decodes it to RGB
        image = load_rgb_image(path, limits=SHARED_LIMITS)
        assert image.mode == "RGB" and image.size == Image.open(path).size
        assert validation is None and verified is None
        assert shared_cases["modes"][case] == source_mode
    else:  # refused everywhere, for the very same reason
        with pytest.raises(ImageLoadError) as caught:
            load_rgb_image(path, limits=SHARED_LIMITS, image_id=case)
        assert reason in caught.value.problem and str(path) in str(caught.value)
        assert validation is not None and verified is not None
        assert validation.problem == caught.value.problem == verified.problem
        assert validation.image_path == path.name and verified.path == path


def test_mode_rule() -> None:
    """Every mode Pillow knows is either converted (and really converts) or refused with a reason."""
    from mccl_core.data.images import _to_rgb

    assert set(RGB_CONVERTIBLE_MODES) | {"La"} == set(Image.MODES)
    for mode in Image.MODES:
        inspection_reason = [i.reason for i in _limit_issues(20, 20, mode, ImageLimits.decode_only())]
        if mode in RGB_CONVERTIBLE_MODES:
            assert inspection_reason == []
            assert _to_rgb(Image.new(mode, (3, 2)), Path("x")).mode == "RGB"
        else:
            assert inspection_reason == [f"image mode {mode!r} cannot be converted to RGB"]


def test_i16n_converts_like_i16(raw_mode_format, tmp_path: Path) -> None:
    native = tmp_path / "native.raw"
    native.write_bytes(_raw("I;16N", 32768))
    png = tmp_path / "i16.png"
    Image.new("I;16", (20, 20), 32768).save(png)
    assert Image.open(native).mode == "I;16N"
    assert np.array_equal(np.asarray(load_rgb_image(native)), np.asarray(load_rgb_image(png)))
    assert np.asarray(load_rgb_image(native))[0, 0].tolist() == [127, 127, 127]


def test_loader_default_limits_only_cap_pixels(tmp_path: Path) -> None:
    """The training loader has no side limits by default (the validate step adds them)."""
    path = tmp_path / "thin.png"
    Image.new("RGB", (8, 40)).save(path)
    assert load_rgb_image(path).size == (8, 40)
    assert inspect_image(path).ok and not inspect_image(path, SHARED_LIMITS).ok
    assert inspect_image(path, ImageLimits(min_side=16, max_side=None)).problem == "width 8 below min_side 16"


def test_bytes_go_through_the_same_inspector(tmp_path: Path) -> None:
    data = _jpeg_bytes((40, 30))
    assert load_rgb_image_bytes(data).size == (40, 30)
    with pytest.raises(ImageLoadError, match="request row 2.*zero-byte image data"):
        load_rgb_image_bytes(b"", source="request row 2")
    with pytest.raises(ImageLoadError, match="width 40 outside \\[16, 32\\]"):
        load_rgb_image_bytes(data, limits=ImageLimits(min_side=16, max_side=32))
    inspection = inspect_image(data[: len(data) // 2], name="upload")
    assert inspection.path == Path("upload") and inspection.issues[0].kind == "decode"


def test_verify_cli_applies_side_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mccl_core.data.cli import main as data_cli

    Image.new("RGB", (8, 40)).save(tmp_path / "thin.png")
    (tmp_path / "ok.jpg").write_bytes(_jpeg_bytes((40, 30)))
    (tmp_path / "m.csv").write_text("image,labels\nthin.png,a\nok.jpg,b\n")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    args = ["verify", "--source", "manifest", "--manifest", str(tmp_path / "m.csv"), "--split", "train",
            "--class-list", str(tmp_path / "classes.txt"), "--report", str(tmp_path / "r.json")]  # fmt: skip
    assert data_cli(args) == 0
    assert data_cli([*args, "--min-side", "16", "--max-side", "128"]) == 1
    problems = json.loads((tmp_path / "r.json").read_text())
    assert [(p["image_id"], p["problem"]) for p in problems] == [("thin.png", "width 8 outside [16, 128]")]
    assert "1 of 2 images refused" in capsys.readouterr().err
