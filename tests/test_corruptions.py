"""Robustness corruptions: deterministic, the expected kind of change, sizes, no files touched."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from mccl_core.data.corruptions import (
    DEFAULT_CORRUPTIONS,
    Corruption,
    corrupted_transform,
    get_corruption,
)


def _image(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((0.7 * base + 0.3 * rng.integers(0, 256, base.shape)).astype(np.uint8))


def _px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_names_round_trip_and_bad_names():
    assert DEFAULT_CORRUPTIONS[0] == "clean" and len(DEFAULT_CORRUPTIONS) == 10
    for name in DEFAULT_CORRUPTIONS:
        assert get_corruption(name).name == name
    for bad in ("blur3", "jpeg", "jpeg0", "down1.5", "noise2", ""):
        with pytest.raises(ValueError):
            get_corruption(bad)


@pytest.mark.parametrize("name", DEFAULT_CORRUPTIONS)
def test_deterministic(name):
    a, b = get_corruption(name)(_image()), get_corruption(name)(_image())
    assert np.array_equal(_px(a), _px(b))


def test_clean_is_identity():
    assert np.array_equal(_px(get_corruption("clean")(_image())), _px(_image()))


def test_jpeg_error_grows_as_quality_drops():
    original = _px(_image())
    errors = [np.abs(_px(get_corruption(f"jpeg{q}")(_image())) - original).mean() for q in (90, 50, 10)]
    assert 0 < errors[0] < errors[1] < errors[2]
    assert get_corruption("jpeg10")(_image()).size == (64, 48)


def test_downscale_sizes():
    assert get_corruption("down2")(_image()).size == (32, 24)
    assert get_corruption("down4")(_image()).size == (16, 12)
    assert get_corruption("down4")(_image(size=(3, 3))).size == (1, 1)


def test_noise_sigma_seeded_by_content():
    original = _px(_image())
    delta = _px(get_corruption("noise0.10")(_image())) - original
    assert 15 < delta.std() < 30  # sigma 0.10 * 255 = 25.5, a bit less after clipping
    small = (_px(get_corruption("noise0.05")(_image())) - original).std()
    assert small < delta.std()
    other = _px(get_corruption("noise0.10")(_image(seed=1))) - _px(_image(seed=1))
    assert not np.array_equal(delta, other)  # another image, another draw
    assert not np.array_equal(delta, _px(Corruption("noise", 0.10, seed=1)(_image())) - original)


def test_transform_chain_and_no_file_writes(tmp_path):
    path = tmp_path / "a.png"
    _image().save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    seen = []
    transform = corrupted_transform("down2", lambda im: seen.append(im.size) or "tensor")
    with Image.open(path) as image:
        assert transform(image) == "tensor"
    assert seen == [(32, 24)]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    import pickle

    assert pickle.loads(pickle.dumps(corrupted_transform("jpeg30", str))).corruption.name == "jpeg30"


def test_severity_is_set_at_the_models_input_resolution():
    """With the model's input size, a 4x downscale leaves the model a quarter of its resolution
    whatever the photo's size; at source resolution a large photo would lose nothing."""
    seen = []
    for width in (64, 640):
        photo = Image.new("RGB", (width, width * 3 // 4))
        corrupted_transform("down4", lambda im: seen.append(im.size), input_size=32)(photo)
    assert seen == [(10, 8), (10, 8)]  # short side 32 / 4 = 8 for both photos
    seen.clear()
    corrupted_transform("down4", lambda im: seen.append(im.size))(Image.new("RGB", (640, 480)))
    assert seen == [(160, 120)]  # source resolution: 160 px left, more than a 32 px model takes in
    # noise at input scale: the eval resize no longer averages it away on a large photo
    base = Image.fromarray(np.full((480, 640, 3), 128, dtype=np.uint8))
    at_input = corrupted_transform("noise0.10", lambda im: _px(im.resize((32, 32))), input_size=32)(base)
    at_source = corrupted_transform("noise0.10", lambda im: _px(im.resize((32, 32))))(base)
    assert (at_input - 128).std() > 3 * (at_source - 128).std()
    with pytest.raises(ValueError, match="input_size"):
        corrupted_transform("clean", str, input_size=0)
