"""Target images that also appear in a benchmark are found by decoded content, whatever their name or format."""

import numpy as np
import pytest
from PIL import Image

from harness.data.io import write_image
from harness.data.overlap import find_overlaps, overlap_error


def scene(seed: int) -> np.ndarray:
    """A smooth photo-like image (gradients and discs), HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:80] / 64.0
    image = np.stack([yy * rng.random(), xx * rng.random(), (yy + xx) / 2], axis=2)
    for _ in range(4):
        cy, cx, r = rng.random() * 64, rng.random() * 80, 5 + rng.random() * 12
        image[(np.mgrid[0:64, 0:80][0] - cy) ** 2 + (np.mgrid[0:64, 0:80][1] - cx) ** 2 < r * r] = rng.random(3)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def folders(tmp_path):
    target, bench = tmp_path / "target", tmp_path / "bench"
    target.mkdir(), bench.mkdir()
    images = [scene(i) for i in range(5)]
    for i, image in enumerate(images[:4]):
        Image.fromarray(image).save(target / f"t{i}.png")
    Image.fromarray(images[1]).save(bench / "copy_of_t1.bmp")  # same pixels, other name and format
    edited = images[2].copy()
    edited[10, 10] = 255 - edited[10, 10]  # one pixel differs: not identical
    Image.fromarray(edited).save(bench / "edited_t2.png")
    # two neighbouring pixels of one 4 x 5 thumbnail block swapped: other pixels, the same thumbnail
    swapped, (r, c) = images[3].copy(), next((r, c) for r in range(64) for c in range(0, 80, 5)
                                             if (images[3][r, c] != images[3][r, c + 1]).any())
    swapped[r, c], swapped[r, c + 1] = images[3][r, c + 1], images[3][r, c]
    Image.fromarray(swapped).save(bench / "swapped_t3.png")
    Image.fromarray(images[4]).save(bench / "unrelated.png")
    write_image(bench / "t0.png", scene(99).astype(np.float32) / 255)  # same *name* as a target, other content
    return target, bench


def test_identical_content_is_found_across_names_and_formats(folders):
    target, bench = folders
    overlaps = find_overlaps(sorted(target.iterdir()), {"b": sorted(bench.iterdir())}, workers=2)
    identical = [(o.target.name, o.image.name) for o in overlaps if o.identical]
    assert identical == [("t1.png", "copy_of_t1.bmp")]
    assert all(o.image.name != "t0.png" and o.image.name != "unrelated.png" for o in overlaps)
    near = [(o.target.name, o.image.name) for o in overlaps if not o.identical]
    assert ("t3.png", "swapped_t3.png") in near  # found by its thumbnail, and not called identical
    # a one-pixel edit keeps the thumbnail or not; never identical
    assert set(near) - {("t3.png", "swapped_t3.png")} <= {("t2.png", "edited_t2.png")}
    error = overlap_error(overlaps, "target")
    assert "t1.png = b:copy_of_t1.bmp" in str(error) and "allow_overlap: true" in str(error)


def test_one_thread_and_many_agree_and_disjoint_sets_give_nothing(folders):
    target, bench = folders
    files = sorted(target.iterdir()), {"b": sorted(bench.iterdir())}
    assert find_overlaps(*files, workers=1) == find_overlaps(*files, workers=4)
    assert find_overlaps(sorted(target.iterdir())[2:], {"b": [bench / "unrelated.png", bench / "t0.png"]}) == []


def test_images_of_a_size_the_other_side_lacks_are_never_decoded(folders, tmp_path, monkeypatch):
    import harness.data.overlap as overlap

    target, bench = folders
    Image.fromarray(scene(1)[:48]).save(bench / "cropped_t1.png")  # 48 x 80: no target has this size
    decoded = []
    real = overlap.content_digests
    monkeypatch.setattr(overlap, "content_digests", lambda p: decoded.append(p.name) or real(p))
    overlaps = find_overlaps(sorted(target.iterdir()), {"b": sorted(bench.iterdir())}, workers=1)
    assert "cropped_t1.png" not in decoded and len(decoded) == 4 + 5  # 4 targets, the 5 benchmark images of their size
    assert [o.image.name for o in overlaps if o.identical] == ["copy_of_t1.bmp"]
