import os

import numpy as np
import pytest
from PIL import Image

from harness.data.io import image_problem, image_size, list_images, read_image, to_array, to_tensor, write_image
from harness.errors import HarnessError


def _pil_rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.float32) / 255


@pytest.mark.parametrize("name,real_format", [("aod_guogong.png", "BMP"), ("aod_test12.jpg", "BMP"),
                                              ("aod_test13.jpg", "PNG"), ("mountain-input.bmp", "BMP")])
def test_misleading_extensions_decode_by_content(shared_data, name, real_format):
    path = shared_data / "real_hazy" / name
    with Image.open(path) as im:
        assert im.format == real_format
    arr = read_image(path)
    assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[2] == 3
    assert np.array_equal(arr, _pil_rgb(path))


def test_rgba_drops_alpha(shared_data):
    path = shared_data / "real_hazy" / "trees.png"
    with Image.open(path) as im:
        assert im.mode == "RGBA"
        rgba = np.asarray(im, np.float32) / 255
    arr = read_image(path)
    assert arr.shape == rgba.shape[:2] + (3,)
    assert np.array_equal(arr, rgba[..., :3])


def test_grayscale_photo_becomes_three_equal_channels(shared_data):
    path = shared_data / "real_hazy" / "Foggy_Day_in_Brussels_by_BenHeine.jpg"
    arr = read_image(path)
    assert arr.shape == (598, 900, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    assert arr.std() > 0.05


def test_every_real_hazy_photo_decodes(shared_data):
    files = list_images(shared_data / "real_hazy")
    assert len(files) == 42
    for f in files:
        a = read_image(f)
        assert a.shape[2] == 3 and 0 <= a.min() and a.max() <= 1 and min(a.shape[:2]) >= 260


def test_16bit_png_keeps_precision(tmp_path):
    import cv2

    rgb16 = (np.random.default_rng(0).random((12, 10, 3)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    arr = read_image(tmp_path / "rgb16.png")
    assert np.abs(arr - rgb16 / 65535).max() < 1e-6  # an 8-bit decode would be off by up to 1/255
    gray16 = (np.random.default_rng(1).random((7, 9)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "gray16.png"), gray16)
    g = read_image(tmp_path / "gray16.png")
    assert g.shape == (7, 9, 3) and np.abs(g[..., 1] - gray16 / 65535).max() < 1e-6


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    arr = read_image(tmp_path / "rotated.jpg")
    assert arr.shape == (40, 20, 3)
    assert arr[:15].mean() > 0.9 and arr[-15:].mean() < 0.1  # white half now on top


def test_corrupt_files_raise_a_one_line_error_naming_the_file(tmp_path, shared_data):
    data = (shared_data / "real_hazy" / "Haze.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("truncated.jpg", "text.png"):
        with pytest.raises(HarnessError) as err:
            read_image(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value) and "on_corrupt" in str(err.value)


def test_write_read_roundtrip_and_tensor_conversion(tmp_path):
    a = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
    write_image(tmp_path / "sub" / "x.png", a)
    b = read_image(tmp_path / "sub" / "x.png")
    assert np.abs(a - b).max() <= 0.5 / 255 + 1e-6
    t = to_tensor(b)
    assert tuple(t.shape) == (3, 6, 5) and np.array_equal(to_array(t[None]), b)
    (tmp_path / "sub" / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path / "sub")] == ["x.png"]


def test_write_refuses_non_finite_pixels_and_leaves_nothing(tmp_path):
    a = np.full((20, 20, 3), 0.5, dtype=np.float32)
    a[:2] = np.nan  # 10% of the pixels: cast to uint8 they would become black
    with pytest.raises(HarnessError, match=r"refusing to write .*x.png: 10.0% of its pixels are not finite"):
        write_image(tmp_path / "x.png", a)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic_and_respects_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_image(tmp_path / "x.png", np.zeros((16, 16, 3), dtype=np.float32))
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
    assert (tmp_path / "x.png").stat().st_mode & 0o777 == 0o644


def test_image_problem_decodes_headers_only_on_request(tmp_path, shared_data):
    data = (shared_data / "real_hazy" / "Haze.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    assert image_problem(tmp_path / "cut.jpg", decode=False) is None
    assert image_problem(tmp_path / "cut.jpg") == "cannot decode: OSError"
    assert image_problem(shared_data / "real_hazy" / "Haze.jpg") is None
    write_image(tmp_path / "small.png", np.zeros((15, 40, 3), dtype=np.float32))
    assert image_problem(tmp_path / "small.png", decode=False) == "40x15 px, under 16 px"
    assert image_size(tmp_path / "small.png") == (15, 40)
