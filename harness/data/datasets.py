"""Image sets: the real benchmarks' folder layouts, pretraining layouts, generic folders and the
built-in synthesizer, registered in ``DATASETS`` by name. Each builder checks its layout and count
and raises a one-line ``HarnessError`` saying what it found and what it expected.
"""

import contextvars
import hashlib
import json
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Iterator, Literal

import numpy as np
from PIL import Image
from pydantic import Field
from rich.console import Console
from rich.markup import escape
from rich.progress import track

from harness.data import photos, synth
from harness.data.io import MIN_SIDE, image_problem, list_images, read_image, write_image
from harness.errors import HarnessError
from harness.registry import DATASETS, PositiveInt

OnCorrupt = Literal["fail", "skip"]
_HASH_BLOCK = 1 << 16
_SYNTH_VERSION = 1  # bump when the synthesizer's output for the same parameters changes


@dataclass(frozen=True)
class ImagePair:
    """One hazy image and, when the set has ground truth, its clear counterpart."""

    name: str
    hazy: Path
    clear: Path | None = None


@dataclass
class ImageSet:
    """A named, ordered list of image pairs under ``root``."""

    name: str
    root: Path
    pairs: list[ImagePair] = field(default_factory=list)

    @property
    def has_reference(self) -> bool:
        """True when every pair has a clear image."""
        return bool(self.pairs) and all(p.clear is not None for p in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode pair ``i`` as ``(hazy, clear or None)`` HxWx3 float32 arrays."""
        pair = self.pairs[i]
        return read_image(pair.hazy), (read_image(pair.clear) if pair.clear is not None else None)

    def fingerprint(self) -> str:
        """A stable hash of every file's name relative to ``root``, byte size and sampled content.

        The content hash reads the first, middle and last 64 KiB of each file (fast on thousands of
        photos; catches re-encodes, edits and swaps, which change size or those blocks).
        """
        h = hashlib.blake2b(digest_size=16)
        for pair in self.pairs:
            for path in (pair.hazy, pair.clear):
                if path is None:
                    continue
                h.update(_relative(path, self.root).encode())
                h.update(_file_digest(path))
        return h.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _file_digest(path: Path) -> bytes:
    size = path.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - _HASH_BLOCK // 2), max(0, size - _HASH_BLOCK)}):
            f.seek(offset)
            h.update(f.read(_HASH_BLOCK))
    return h.digest()


# ------------------------------------------------------------------ layout checks


def _listing(folder: Path) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:8]
    return ", ".join(names) if names else "nothing"


def _root(name: str, root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise HarnessError(f"{name}: dataset folder {root} does not exist", f"point {name}'s root at its folder")
    return root


def _subdir(name: str, root: Path, *candidates: str, required: bool = True) -> Path | None:
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    if required:
        raise HarnessError(f"{name}: expected {'/ or '.join(candidates)}/ under {root} (found: {_listing(root)})",
                           f"point root at the folder that contains {candidates[0]}/")
    return None


def _images(name: str, folder: Path) -> list[Path]:
    files = list_images(folder)
    if not files:
        raise HarnessError(f"{name}: no images in {folder} (found: {_listing(folder)})",
                           "point root at the dataset folder")
    return files


def _check_count(name: str, folder: Path, found: int, expected: int | None, expect_count: bool) -> None:
    if expect_count and expected is not None and found != expected:
        raise HarnessError(f"{name}: expected {expected} images in {folder}, found {found}",
                           "complete the download, or set expect_count: false for a subset")


_HEADERS_ONLY = contextvars.ContextVar("screen_headers_only", default=False)
_WARNED: set[tuple[str, frozenset[Path]]] = set()


@contextmanager
def screen_headers_only() -> Iterator[None]:
    """Datasets built inside are screened by their headers (format, size) only, not decoded: cheap
    enough for recipe validation; a file truncated after its header is found by the full screening."""
    token = _HEADERS_ONLY.set(True)
    try:
        yield
    finally:
        _HEADERS_ONLY.reset(token)


def _problems(name: str, files: list[Path]) -> dict[Path, str]:
    """``{file: why it is unusable}``: decoded (threads: Pillow releases the GIL), or headers only."""
    from harness.launch.threads import thread_share

    decode = not _HEADERS_ONLY.get()
    with ThreadPoolExecutor(max_workers=thread_share().threads if decode else 1) as pool:
        found = pool.map(lambda p: image_problem(p, decode=decode), files)
        found = track(found, total=len(files), description=f"checking {name}", transient=True,
                      disable=len(files) < 500 or not decode)
        return {p: why for p, why in zip(files, found) if why is not None}


def _finish(name: str, root: Path, pairs: list[ImagePair], on_corrupt: OnCorrupt, limit: int | None) -> ImageSet:
    """Screen files (undecodable or under ``MIN_SIDE`` px: fail, or skip with one warning), then apply ``limit``."""
    if on_corrupt not in ("fail", "skip"):
        raise HarnessError(f"{name}: on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
    if limit is not None and limit < 1:
        raise HarnessError(f"{name}: limit must be at least 1, got {limit}")
    files = list(dict.fromkeys(p for pair in pairs for p in (pair.hazy, pair.clear) if p is not None))
    bad = _problems(name, files)
    if bad:
        shown = sorted(bad, key=lambda p: _relative(p, root))
        names = ", ".join(f"{_relative(p, root)} ({bad[p]})" for p in shown[:5]) + (" ..." if len(bad) > 5 else "")
        if on_corrupt == "fail":
            raise HarnessError(f"{name}: {len(bad)} corrupt image(s) under {root}: {names}",
                               "replace or remove them, or set on_corrupt: skip on this dataset")
        key = (name, frozenset(bad))
        if key not in _WARNED:  # validation, then the run, screen the same set: say it once
            _WARNED.add(key)
            message = f"{name}: skipped {len(bad)} corrupt image(s): {names}"
            Console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
        pairs = [p for p in pairs if p.hazy not in bad and p.clear not in bad]
        if not pairs:
            raise HarnessError(f"{name}: every image under {root} is unusable ({names})",
                               "point root at a folder of readable images")
    if limit is not None:
        pairs = pairs[:limit]
    return ImageSet(name, root, pairs)


def _hazy_only(name: str, root: Path, folder: Path, expected: int | None, expect_count: bool,
               on_corrupt: OnCorrupt, limit: int | None) -> ImageSet:
    files = _images(name, folder)
    _check_count(name, folder, len(files), expected, expect_count)
    return _finish(name, root, [ImagePair(p.name, p) for p in files], on_corrupt, limit)


def _pair_by_key(name: str, hazy: list[Path], clear: list[Path], clear_dir: Path) -> list[ImagePair]:
    """Pair each hazy file with the clear file of the same stem, else of its id prefix (ITS/OTS/Haze4K
    naming ``id_A_beta``)."""
    by_stem = {p.stem: p for p in clear}
    pairs, missing = [], []
    for h in hazy:
        c = by_stem.get(h.stem) or by_stem.get(h.stem.split("_")[0])
        if c is None:
            missing.append(h.name)
        pairs.append(ImagePair(h.name, h, c))
    if missing:
        raise HarnessError(f"{name}: no clear image in {clear_dir} for {len(missing)} hazy image(s): "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                           "add the ground truth, or load the hazy images alone with type: folder")
    return pairs


def _hazy_clear(name: str, root: Path, expected: int | None, expect_count: bool, on_corrupt: OnCorrupt,
                limit: int | None, clear_required: bool = True) -> ImageSet:
    hazy_dir = _subdir(name, root, "hazy", "haze")
    clear_dir = _subdir(name, root, "clear", "gt", "GT", required=clear_required)
    hazy = _images(name, hazy_dir)
    _check_count(name, hazy_dir, len(hazy), expected, expect_count)
    if clear_dir is None:
        return _finish(name, root, [ImagePair(p.name, p) for p in hazy], on_corrupt, limit)
    pairs = _pair_by_key(name, hazy, _images(name, clear_dir), clear_dir)
    return _finish(name, root, pairs, on_corrupt, limit)


def _numbered_pairs(name: str, root: Path, hazy_re: str, clear_re: str, expected: int, expect_count: bool,
                    on_corrupt: OnCorrupt, limit: int | None) -> ImageSet:
    """NTIRE-style ``NN_<hazy>``/``NN_<GT>`` files, flat or in hazy/ and GT/ subfolders."""
    folders = [root] + [d for d in (root / "hazy", root / "GT", root / "gt") if d.is_dir()]
    files = [p for d in folders for p in list_images(d)]
    hazy = {m.group(1): p for p in files if (m := re.fullmatch(hazy_re, p.name, re.IGNORECASE))}
    clear = {m.group(1): p for p in files if (m := re.fullmatch(clear_re, p.name, re.IGNORECASE))}
    if not hazy:
        raise HarnessError(f"{name}: no files named like {hazy_re} under {root} (found: {_listing(root)})",
                           "point root at the folder holding the hazy images (or hazy/ and GT/)")
    missing = sorted(set(hazy) - set(clear))
    if missing:
        raise HarnessError(f"{name}: no ground truth for image(s) {', '.join(missing[:5])} under {root}",
                           f"add the files named like {clear_re}")
    _check_count(name, root, len(hazy), expected, expect_count)
    pairs = [ImagePair(hazy[k].name, hazy[k], clear[k]) for k in sorted(hazy)]
    return _finish(name, root, pairs, on_corrupt, limit)


# ------------------------------------------------------------------ real benchmarks


@DATASETS.register("rtts")
def rtts(root: Path, expect_count: bool = True, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """RESIDE RTTS: ``JPEGImages/`` with 4,322 real hazy images (VOC ``Annotations/`` optional, unused)."""
    root = _root("rtts", root)
    return _hazy_only("rtts", root, _subdir("rtts", root, "JPEGImages"), 4322, expect_count, on_corrupt, limit)


@DATASETS.register("urhi")
def urhi(root: Path, expect_count: bool = True, on_corrupt: OnCorrupt = "fail", limit: int | None = None,
         subset: Path | None = None, count: int | None = None) -> ImageSet:
    """RESIDE URHI: ``UnannotatedHazyImages/`` with 4,807 real hazy images.

    Papers often score a subset (BiLaLoRA: 150 images). ``subset``: a text file of image names, one
    a line (``#`` starts a comment), picked from the folder; every listed name must be there and
    the count check expects exactly them. ``count``: the number of images the folder holds (default
    4,807; 150 for a folder that holds only the published subset); with ``subset`` it must match the list.
    """
    root = _root("urhi", root)
    folder = _subdir("urhi", root, "UnannotatedHazyImages")
    if subset is None:
        return _hazy_only("urhi", root, folder, 4807 if count is None else count, expect_count, on_corrupt, limit)
    names = _subset_names("urhi", Path(subset).expanduser())
    if count is not None and count != len(names):
        raise HarnessError(f"urhi: count {count} differs from the {len(names)} names in {subset}",
                           "drop count, or make the list and the count agree")
    by_name = {p.name: p for p in _images("urhi", folder)}
    missing = [n for n in names if n not in by_name]
    if missing and expect_count:
        raise HarnessError(f"urhi: {len(missing)} of the {len(names)} images listed in {subset} are not in {folder}: "
                           f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                           "complete the download, or set expect_count: false to score the ones present")
    pairs = [ImagePair(n, by_name[n]) for n in names if n in by_name]
    return _finish("urhi", root, pairs, on_corrupt, limit)


def _subset_names(name: str, path: Path) -> list[str]:
    """Image names from a list file: one a line, blank lines and ``#`` comments skipped, no repeats."""
    if not path.is_file():
        raise HarnessError(f"{name}: subset list {path} not found", "point subset at a text file of image names")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    names = [Path(n).name for n in names if n]
    if not names:
        raise HarnessError(f"{name}: subset list {path} names no image", "write one image name a line")
    repeated = sorted(n for n, times in Counter(names).items() if times > 1)
    if repeated:
        raise HarnessError(f"{name}: subset list {path} names {', '.join(repeated[:5])} more than once",
                           "list each image once")
    return names


@DATASETS.register("fattal")
def fattal(root: Path, expect_count: bool = True, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """Fattal's real hazy images: a flat folder of 31."""
    root = _root("fattal", root)
    return _hazy_only("fattal", root, root, 31, expect_count, on_corrupt, limit)


@DATASETS.register("hazydet")
def hazydet(root: Path, split: Literal["train", "val", "test", "rddts"] = "test", expect_count: bool = True,
            on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """HazyDet: ``{train,val,test}/{hazy images,clean images,labels}`` pairs, or the real ``RDDTS/`` set."""
    root = _root("hazydet", root)
    name = f"hazydet-{split}"
    if split == "rddts":
        base = _subdir(name, root, "RDDTS")
        folder = _subdir(name, base, "hazy images", required=False) or base
        return _hazy_only(name, root, folder, None, expect_count, on_corrupt, limit)
    base = _subdir(name, root, split)
    hazy_dir = _subdir(name, base, "hazy images")
    clear_dir = _subdir(name, base, "clean images")
    pairs = _pair_by_key(name, _images(name, hazy_dir), _images(name, clear_dir), clear_dir)
    return _finish(name, root, pairs, on_corrupt, limit)


@DATASETS.register("dense_haze")
def dense_haze(root: Path, expect_count: bool = True, on_corrupt: OnCorrupt = "fail",
               limit: int | None = None) -> ImageSet:
    """Dense-Haze (NTIRE'19): 55 pairs ``NN_hazy.png`` / ``NN_GT.png``, flat or in hazy/ and GT/."""
    root = _root("dense_haze", root)
    return _numbered_pairs("dense_haze", root, r"(\d+)_hazy\.\w+", r"(\d+)_GT\.\w+", 55, expect_count,
                           on_corrupt, limit)


@DATASETS.register("o_haze")
def o_haze(root: Path, expect_count: bool = True, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """O-HAZE (NTIRE'18): 45 pairs ``NN_outdoor_hazy.jpg`` / ``NN_outdoor_GT.jpg``, flat or in hazy/ and GT/."""
    root = _root("o_haze", root)
    return _numbered_pairs("o_haze", root, r"(\d+)_outdoor_hazy\.\w+", r"(\d+)_outdoor_GT\.\w+", 45,
                           expect_count, on_corrupt, limit)


@DATASETS.register("nh_haze")
def nh_haze(root: Path, expect_count: bool = True, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """NH-HAZE (NTIRE'20): 55 pairs ``NN_hazy.png`` / ``NN_GT.png``, flat or in hazy/ and GT/."""
    root = _root("nh_haze", root)
    return _numbered_pairs("nh_haze", root, r"(\d+)_hazy\.\w+", r"(\d+)_GT\.\w+", 55, expect_count,
                           on_corrupt, limit)


# ------------------------------------------------------------------ pretraining and generic layouts


def _generic(name: str, root: Path, on_corrupt: OnCorrupt, limit: int | None) -> ImageSet:
    """``hazy/`` (+ optional ``clear/`` or ``gt/``) subfolders, or a flat folder of hazy images."""
    root = _root(name, root)
    if _subdir(name, root, "hazy", "haze", required=False) is not None:
        return _hazy_clear(name, root, None, False, on_corrupt, limit, clear_required=False)
    return _hazy_only(name, root, root, None, False, on_corrupt, limit)


@DATASETS.register("its")
def its(root: Path, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """RESIDE ITS: ``hazy/id_k_A.png`` paired with ``clear/id.png``."""
    return _hazy_clear("its", _root("its", root), None, False, on_corrupt, limit)


@DATASETS.register("ots")
def ots(root: Path, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """RESIDE OTS: ``hazy/id_A_beta.jpg`` paired with ``clear/id.jpg`` (or .png)."""
    return _hazy_clear("ots", _root("ots", root), None, False, on_corrupt, limit)


@DATASETS.register("haze4k")
def haze4k(root: Path, split: Literal["train", "test"] = "train", on_corrupt: OnCorrupt = "fail",
           limit: int | None = None) -> ImageSet:
    """Haze4K: ``<split>/haze/id_A_beta.png`` paired with ``<split>/gt/id.png`` (root may be the split folder)."""
    root = _root("haze4k", root)
    base = _subdir("haze4k", root, split, required=False) or root
    return _hazy_clear(f"haze4k-{split}", base, None, False, on_corrupt, limit)


@DATASETS.register("ridcp")
def ridcp(root: Path, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """RIDCP-style pretraining pairs already rendered to ``hazy/`` + ``clear/`` (pair by stem or id prefix)."""
    return _generic("ridcp", root, on_corrupt, limit)


@DATASETS.register("thaze")
def thaze(root: Path, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """THaze (layout unpublished): ``hazy/`` + ``clear/`` folders, paired by stem or id prefix."""
    return _generic("thaze", root, on_corrupt, limit)


@DATASETS.register("nhrw")
def nhrw(root: Path, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """NHRW (layout unpublished): a flat folder of hazy images, or ``hazy/`` (+ ``clear/``)."""
    return _generic("nhrw", root, on_corrupt, limit)


@DATASETS.register("folder")
def folder(root: Path, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """Any folder: flat hazy images, or ``hazy/`` with optional ``clear/`` (or ``gt/``) subfolders."""
    return _generic("folder", root, on_corrupt, limit)


# ------------------------------------------------------------------ the built-in synthesizer


def cache_root() -> Path:
    """``$HARNESS_CACHE/synthetic`` or ``~/.cache/dehaze-harness/synthetic``."""
    base = os.environ.get("HARNESS_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "dehaze-harness") / "synthetic"


def skimage_photos() -> list[tuple[np.ndarray, np.ndarray | None]]:
    """scikit-image's five shipped colour photos (the legacy ``skimage`` source; never downloads)."""
    return photos.pool("skimage")


def _resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    if arr.ndim == 2:
        return np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    return np.stack([_resize(arr[..., c], h, w) for c in range(arr.shape[2])], axis=2)


def _random_crop(image: np.ndarray, depth: np.ndarray | None, size: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Rescale so the short side is in [size, 2 size] (never upscale beyond need), then crop size x size."""
    h, w = image.shape[:2]
    short = rng.uniform(size, max(size, min(min(h, w), 2 * size)))
    scale = short / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    image = np.clip(_resize(image, nh, nw), 0, 1)
    depth = _resize(depth, nh, nw) if depth is not None else None
    y, x = int(rng.integers(0, nh - size + 1)), int(rng.integers(0, nw - size + 1))
    crop = image[y:y + size, x:x + size]
    return crop, (depth[y:y + size, x:x + size] if depth is not None else None)


POOL_SOURCES = {f"photos-{name}": name for name in photos.DISJOINT}  # source name -> photo pool


def _source_key(source: str, on_corrupt: OnCorrupt) -> tuple[str, list[Path]]:
    """A key identifying the clean sources (for the cache) and, for a folder, its image files."""
    if source in ("skimage", "scenes"):
        return source, []
    if source in POOL_SOURCES:  # the pool's files by content, so a changed package photo re-renders
        files = photos.pool_files(POOL_SOURCES[source])
        return f"{source}:" + hashlib.blake2b(b"".join(_file_digest(f) for f in files), digest_size=8).hexdigest(), []
    path = Path(source).expanduser()
    if not path.is_dir():
        raise HarnessError(f"synthetic: source {source!r} is neither a photo pool, 'scenes' nor a folder",
                           f"use source: {', '.join(POOL_SOURCES)}, skimage, scenes, or a folder of clean images")
    found = _hazy_only("synthetic-source", path, path, None, False, on_corrupt, None)
    return found.fingerprint(), [p.hazy for p in found.pairs]


def _load_sources(source: str, files: list[Path]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    if source == "skimage":
        return skimage_photos()
    if source in POOL_SOURCES:
        return photos.pool(POOL_SOURCES[source])
    return [(read_image(p), None) for p in files]


@DATASETS.register("synthetic")
def synthetic(source: str = "skimage", kind: Literal[tuple(synth.KINDS)] = "asm",  # type: ignore[valid-type]
              count: PositiveInt = 16, size: Annotated[int, Field(ge=MIN_SIDE)] = 128, seed: int = 0,
              cache_dir: Path | None = None, on_corrupt: OnCorrupt = "fail", limit: int | None = None) -> ImageSet:
    """Hazy/clear PNG pairs made by :mod:`harness.data.synth`, cached by their parameters.

    ``source``: a photo pool of :mod:`harness.data.photos` (``photos-pretrain``, ``photos-target``,
    ``photos-test``, ``photos-guide``: photos shipped with installed packages, no photo in two
    pools), "skimage" (scikit-image's five colour photos; overlaps the pools), "scenes" (procedural
    scenes with exact depth) or a folder of clean images. ``kind``: a key of ``synth.KINDS``.
    Files go to ``cache_dir`` or ``cache_root()/<hash of the parameters>`` and are reused. A
    ``cache_dir`` must be new, empty, or made by this dataset with the same parameters: a folder
    with other files is never written into or removed, and one made with other parameters is an
    error naming them.
    """
    if kind not in synth.KINDS:
        raise HarnessError(f"synthetic: unknown kind {kind!r}", f"use one of: {', '.join(synth.KINDS)}")
    if count < 1 or size < 16:
        raise HarnessError(f"synthetic: count must be >= 1 and size >= 16 (got count={count}, size={size})")
    source_key, files = _source_key(source, on_corrupt)
    params = {"version": _SYNTH_VERSION, "source": source_key, "kind": kind, "count": count, "size": size,
              "seed": seed}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / key
    if not _synthetic_cached(folder, params):
        _render(folder, [] if source == "scenes" else _load_sources(source, files), params)
    names = [f"{i:05d}.png" for i in range(count)]
    pairs = [ImagePair(n, folder / "hazy" / n, folder / "clear" / n) for n in names]
    return _finish(f"synthetic-{kind}", folder, pairs, on_corrupt, limit)


def _synthetic_cached(folder: Path, params: dict) -> bool:
    """True when ``folder`` holds pairs made with ``params``, False when it is absent or empty;
    an error when it holds pairs of other parameters or files the harness did not write."""
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            made = json.loads(meta.read_text())
        except (OSError, ValueError):
            made = None
        if made == params:
            return True
        if isinstance(made, dict):
            differ = ", ".join(f"{k} {made.get(k)!r} there, {params.get(k)!r} here"
                               for k in sorted(set(made) | set(params)) if made.get(k) != params.get(k))
            raise HarnessError(f"synthetic: cache_dir {folder} holds pairs made with other parameters ({differ})",
                               "point cache_dir at another folder, or delete that one to remake it")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise HarnessError(f"synthetic: cache_dir {folder} exists and holds files the harness did not write",
                           "point cache_dir at a new or empty folder (the harness never writes into or removes it)")
    return False


def _render(folder: Path, sources: list, params: dict) -> None:
    """Write the pairs to a temporary sibling folder, then move it into place (safe under races).

    Only the temporary folder (named with this process's id) is ever removed; ``folder`` is new or
    empty here (see ``_synthetic_cached``), and a rename never replaces a non-empty folder.
    """
    rng = np.random.default_rng(params["seed"])
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in track(range(params["count"]), description=f"synthesizing {params['kind']} haze", transient=True):
        if sources:
            image, depth = sources[int(rng.integers(len(sources)))]
            clear, depth = _random_crop(image, depth, params["size"], rng)
        else:
            clear, depth = synth.procedural_scene(params["size"], rng)
        hazy = synth.synthesize(clear, params["kind"], rng, depth=depth)
        write_image(tmp / "clear" / f"{i:05d}.png", clear)
        write_image(tmp / "hazy" / f"{i:05d}.png", hazy)
    (tmp / "meta.json").write_text(json.dumps(params, indent=1))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first (its files are checked like any cache)
        shutil.rmtree(tmp, ignore_errors=True)
        if not _synthetic_cached(folder, params):
            raise HarnessError(f"synthetic: could not move the pairs into {folder}",
                               "check that the folder's parent is writable") from None

