"""report.html: one static page (tables, figures, the image comparison view), rendered in headless
Chromium where it can start."""

import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from harness.report.writer import write_report
from tests.report_fixtures import demo_run


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.tables = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        if tag == "table":
            self.tables.append(attrs.get("id"))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    run = demo_run(tmp_path_factory.mktemp("html") / "run", seeds=(0,), pretrains=("thaze",))
    return write_report(run, ("html",), with_published=True)["html"]


def test_page_is_static_and_every_image_it_shows_is_in_the_run_folder(page):
    text = page.read_text()
    links = Links()
    links.feed(text)
    assert {"tab-comparison", "tab-cross_model", "tab-cost"} <= set(links.tables)
    assert any(t.startswith("tab-published_") for t in links.tables)
    assert links.sources and all((page.parent / src).is_file() for src in links.sources)
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # nothing fetched from anywhere
    assert text.count('type="range"') == 2 and "⚠ full_ft" in text  # a wipe slider per sample, the collapse named
    assert 'class="flagged"' in text


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")


@pytest.mark.slow
def test_page_renders_in_headless_chromium(page, tmp_path):
    shot = tmp_path / "shot.png"
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2400"]
    try:
        done = subprocess.run(args + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True,
                              timeout=120)
        dom = subprocess.run(args + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"chromium could not start: {err}")
    if not shot.is_file():
        pytest.skip(f"chromium could not start: {done.stderr.strip().splitlines()[-1:]}")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert pixels.shape[0] >= 2000 and pixels.std() > 20  # not blank
    assert (pixels.mean(axis=2) < 100).mean() > 0.01  # text and table rules drawn in dark ink
    assert dom.stdout.count("<table") >= 5 and 'id="tab-comparison"' in dom.stdout
    # the slider script ran: each wipe layer got a width
    assert re.search(r'class="top" style="width: 50%;"', dom.stdout)
