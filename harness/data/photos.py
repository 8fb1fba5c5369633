"""Clean photos that ship with installed packages, split into pools that share no photo.

The embedded default (quickstart, its ablation and analysis recipes, the embedded guide) needs clean
photos without downloads. scikit-image, matplotlib and pyiqa ship a few; each photo belongs to
exactly one pool, so the guide's training data, the pretraining data, the adaptation target and the
test benchmark never see the same scene (``tests/test_probe.py`` checks this by content):

- ``guide``: scikit-image astronaut, chelsea (cat), coffee; matplotlib grace_hopper; pyiqa's
  SPAQ_10241 (a street at night). The embedded guide also trains on procedural scenes.
- ``pretrain``: four of the five Kodak photos pyiqa ships for its calibration (kodim03, 04, 06,
  19) and pyiqa's frame_9ogwhvvy7gfj6jzh (a snowy road).
- ``target``: scikit-image rocket; pyiqa's frame_7gzdcz9sif0ekg31 (a beach at sunset).
- ``test``: scikit-image motorcycle_left (with the Middlebury disparity it ships, so haze follows
  true depth); pyiqa's frame_4wrwr48cdk6rbcjl (a garden); Kodak's kodim08 (houses).

The snowy road trains rather than tests: white snow under white haze barely changes, so its crops
scored the hazy input near 20 dB and any dehazer (which darkens what looks like haze) 12-15 dB,
and with half the test crops drawn from it the test mean said more about snow than about haze.

``skimage`` is the legacy pool (scikit-image's five colour photos) kept for older recipes; it
overlaps the pools above. Kodak photos appear in ``pretrain`` and ``test``, never in ``guide``: a
recipe that pretrains on Kodak elsewhere (e.g. ``../shared/data/clean_kodak24``) stays disjoint
from the guide, though not from the ``test`` pool.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from harness.data.io import read_image
from harness.errors import EXIT_BAD_INPUT, HarnessError

# (distribution, file inside it); the distribution's installed files are found through its RECORD
POOLS: dict[str, tuple[tuple[str, str], ...]] = {
    "guide": (("scikit-image", "skimage/data/astronaut.png"), ("scikit-image", "skimage/data/chelsea.png"),
              ("scikit-image", "skimage/data/coffee.png"),
              ("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
              ("pyiqa", "tests/test_efficiency_img_dir/SPAQ_10241.jpg")),
    "pretrain": tuple(("pyiqa", f"ResultsCalibra/ref_dir/I{n}.bmp") for n in ("03", "04", "06", "19"))
    + (("pyiqa", "tests/test_efficiency_img_dir/frame_9ogwhvvy7gfj6jzh.jpg"),),
    "target": (("scikit-image", "skimage/data/rocket.jpg"),
               ("pyiqa", "tests/test_efficiency_img_dir/frame_7gzdcz9sif0ekg31.jpg")),
    "test": (("scikit-image", "skimage/data/motorcycle_left.png"),
             ("pyiqa", "tests/test_efficiency_img_dir/frame_4wrwr48cdk6rbcjl.jpg"),
             ("pyiqa", "ResultsCalibra/ref_dir/I08.bmp")),
    "skimage": tuple(("scikit-image", f"skimage/data/{n}") for n in
                     ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")),
}
DISJOINT = ("guide", "pretrain", "target", "test")
_DISPARITY = {"skimage/data/motorcycle_left.png": "skimage/data/motorcycle_disp.npz"}


def locate(distribution: str, relpath: str) -> Path:
    """The installed file ``relpath`` of ``distribution``; one clear error when it is missing."""
    from importlib import metadata

    try:
        path = Path(metadata.distribution(distribution).locate_file(relpath))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise HarnessError(f"photo {relpath} of package {distribution} is not installed",
                           f"pip install {distribution} (the harness's dependencies), or use source: scenes")
    return path


def pool_files(name: str) -> list[Path]:
    """The photo files of pool ``name``."""
    if name not in POOLS:
        raise HarnessError(f"unknown photo pool {name!r}", f"use one of: {', '.join(POOLS)}")
    return [locate(dist, rel) for dist, rel in POOLS[name]]


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[tuple[np.ndarray, np.ndarray | None], ...]:
    out = []
    for (dist, rel), path in zip(POOLS[name], pool_files(name)):
        disparity = _DISPARITY.get(rel)
        out.append((read_image(path), depth_from_disparity(locate(dist, disparity)) if disparity else None))
    return tuple(out)


def pool(name: str) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``(image, depth or None)`` for each photo of pool ``name`` (depth 1 = far, where known)."""
    if name not in POOLS:
        raise HarnessError(f"unknown photo pool {name!r}", f"use one of: {', '.join(POOLS)}")
    return list(_load(name))


def depth_from_disparity(path: Path) -> np.ndarray:
    """Depth (1 = far) from a Middlebury disparity ``.npz``; holes take the nearest valid value."""
    disp = np.load(path)["arr_0"].astype(np.float32)
    invalid = ~np.isfinite(disp) | (disp <= 0)
    idx = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
    inv = 1.0 / disp[tuple(idx)]
    return (inv - inv.min()) / max(float(inv.max() - inv.min()), 1e-8)


def signature(image: np.ndarray, side: int = 32) -> np.ndarray:
    """A content signature: the high-passed, unit-norm grey thumbnail of the central square.

    Two copies of one photo (re-encoded, rescaled, hazed) have signatures whose dot product is near
    1; unrelated photos score far lower (the high-pass removes the sky-above-ground gradient that
    most outdoor photos share). Differently cropped copies are not recognised.
    """
    grey = image.mean(axis=2)
    h, w = grey.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = grey[top:top + s, left:left + s]
    thumb = ndimage.zoom(ndimage.gaussian_filter(square, s / (3 * side)), side / s, order=1)[:side, :side]
    detail = thumb - ndimage.gaussian_filter(thumb, side / 8)
    # divided by the local contrast, so haze (which scales detail by the transmission) leaves it alone
    thumb = detail / (np.sqrt(ndimage.gaussian_filter(detail ** 2, side / 8)) + 1e-3)
    thumb = thumb - thumb.mean()
    return (thumb / max(float(np.linalg.norm(thumb)), 1e-8)).ravel()


def split_by_content(files: list[Path], threshold: float = 0.45) -> tuple[list[Path], list[Path]]:
    """Split ``files`` into two halves that share no photo: files whose signatures match above
    ``threshold`` (low on purpose: a false match only ties two files to one half) stay together;
    groups are dealt alternately in name order, larger groups first."""
    files = sorted(files)
    sigs = np.stack([signature(read_image(f)) for f in files])
    group = list(range(len(files)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    close = sigs @ sigs.T
    for i in range(len(files)):
        for j in range(i + 1, len(files)):
            if close[i, j] > threshold:
                group[root(j)] = root(i)
    groups: dict[int, list[Path]] = {}
    for i, f in enumerate(files):
        groups.setdefault(root(i), []).append(f)
    halves: tuple[list[Path], list[Path]] = ([], [])
    for members in sorted(groups.values(), key=lambda m: (-len(m), m[0].name)):
        min(halves, key=len).extend(members)
    return sorted(halves[0]), sorted(halves[1])


def _split_command(argv: list[str]) -> None:
    """``python -m harness.data.photos split SRC DEST``: DEST/a and DEST/b, symlinks to two halves of SRC."""
    from harness.data.io import list_images

    if len(argv) != 3 or argv[0] != "split":
        raise HarnessError("usage: python -m harness.data.photos split SRC_FOLDER DEST_FOLDER")
    src, dest = Path(argv[1]).resolve(), Path(argv[2])
    if not src.is_dir():
        raise HarnessError(f"{argv[1]} is not a folder", "give the folder of photos to split in two")
    files = list_images(src)
    if not files:
        raise HarnessError(f"{argv[1]} has no images", "give the folder of photos to split in two")
    for name, half in zip("ab", split_by_content(files)):
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        for f in half:
            link = folder / f.name
            if not link.exists():
                link.symlink_to(f)
        print(f"{folder}: {len(half)} files")


if __name__ == "__main__":
    import sys

    try:
        _split_command(sys.argv[1:])
    except HarnessError as err:  # as the harness CLI reports one
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
