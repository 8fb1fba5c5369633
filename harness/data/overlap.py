"""Target images that also appear in a benchmark, found by decoded content (names and formats may differ).

Adapting on images that are then scored inflates the scores (the cross-model recipe once adapted
on the first 500 RTTS images and scored all 4,322). Each image is decoded once, as the harness
reads it (``io.read_image``: orientation, 16-bit, CMYK and alpha handled), into two digests: a
*key*, the hash of its size and a 16 x 16 grey thumbnail (box filter, quantised to 64 levels), and
an *exact* digest of every decoded pixel. Images with equal keys are candidates; equal exact
digests mean identical content. A candidate whose pixels differ (same thumbnail: typically the same
photo re-encoded or lightly edited) is reported too, marked ``identical=False``. Decoding runs in
a thread pool (Pillow releases the GIL while decoding), so thousands of photos take seconds.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.io import read_image
from harness.errors import HarnessError

THUMB = 16
LEVELS = 64


@dataclass(frozen=True)
class Overlap:
    target: Path  # the target (adaptation) image
    benchmark: str  # the benchmark's name
    image: Path  # the benchmark's image with the same content
    identical: bool  # every decoded pixel equal; False: the same thumbnail only (e.g. re-encoded)


def content_digests(path: Path) -> tuple[str, str] | None:
    """(thumbnail key, exact pixel digest) of an image; None when it cannot be decoded."""
    try:
        image = read_image(path)
    except Exception:  # corrupt files are the corruption screen's business, not this one's
        return None
    grey = Image.fromarray(image.mean(axis=2).astype(np.float32), mode="F").resize((THUMB, THUMB), Image.BOX)
    thumb = np.clip(np.asarray(grey) * (LEVELS - 1) + 0.5, 0, LEVELS - 1).astype(np.uint8)
    size = f"{image.shape[0]}x{image.shape[1]}".encode()
    key = hashlib.blake2b(size + thumb.tobytes(), digest_size=16).hexdigest()
    exact = hashlib.blake2b(size + np.ascontiguousarray(image).tobytes(), digest_size=16).hexdigest()
    return key, exact


def _digests(paths: list[Path], workers: int) -> list[tuple[str, str] | None]:
    if workers <= 1 or len(paths) < 8:
        return [content_digests(p) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(content_digests, paths, chunksize=16))


def find_overlaps(target: Sequence[Path], benchmarks: Mapping[str, Sequence[Path]],
                  workers: int | None = None) -> list[Overlap]:
    """Every (target image, benchmark image) pair with the same decoded content, identical ones first."""
    workers = workers or min(8, os.cpu_count() or 1)
    target = [Path(p) for p in target]
    bench = [(name, Path(p)) for name, paths in benchmarks.items() for p in paths]
    digests = _digests(target + [p for _, p in bench], workers)
    by_key: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for path, found in zip(target, digests):
        if found is not None:
            by_key[found[0]].append((path, found[1]))
    overlaps = []
    for (name, path), found in zip(bench, digests[len(target):]):
        if found is None:
            continue
        for source, exact in by_key.get(found[0], ()):
            overlaps.append(Overlap(source, name, path, exact == found[1]))
    return sorted(overlaps, key=lambda o: (not o.identical, o.benchmark, str(o.target)))


def overlap_error(overlaps: Sequence[Overlap], target_name: str) -> HarnessError:
    """One line naming the overlap (count and first examples) and the fix."""
    identical = [o for o in overlaps if o.identical]
    shown = ", ".join(f"{o.target.name} = {o.benchmark}:{o.image.name}" for o in (identical or overlaps)[:3])
    more = f" and {len(overlaps) - 3} more" if len(overlaps) > 3 else ""
    benches = sorted({o.benchmark for o in overlaps})
    return HarnessError(
        f"{len(overlaps)} target image(s) of {target_name} also appear in benchmark(s) {', '.join(benches)} "
        f"({len(identical)} pixel-identical): {shown}{more}",
        "adapt on images disjoint from the benchmarks, or set allow_overlap: true (it is recorded)")
