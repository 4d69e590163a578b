"""Image reading: every bad file is a clear ImageLoadError naming it; conversions are logged."""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mccl_core.data import ImageLoadError, ImageRecord, IntentDataset, load_rgb_image, verify_images


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
