"""The HTML report, looked at by a real browser: headless Chromium (Debian's ``chromium``) renders
the page to a screenshot and dumps the DOM after the page's scripts ran. Skipped only where no
Chromium is installed (.ci/run installs it)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat

from zeroshot.output.report import EvalSection, ReportItem, write_report

from conftest import make_image

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "make_screenshots.py"
_spec = importlib.util.spec_from_file_location("make_screenshots", SCRIPT)
browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser)

pytestmark = pytest.mark.skipif(browser.find_chromium() is None, reason="no chromium installed (apt-get install chromium)")

MAGENTA = (255, 0, 255)
HOSTILE = ['<script>document.body.setAttribute("data-pwned","script")</script>',
           '<img src=x onerror="document.body.setAttribute(\'data-pwned\',\'img\')">']


def data_images(dom: str) -> list[str]:
    return re.findall(r'<img\b[^>]*\bsrc="(data:image/jpeg;base64,[^"]+)"', dom)


def visible_tiles(dom: str) -> list[str]:
    """The file names of the tiles the script left visible."""
    return re.findall(r'<figure class="item"(?![^>]*\bhidden)[^>]*\bdata-name="([^"]*)"', dom)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, int]:
    """A report of 7 pictures (one solid magenta) in 3 groups, hostile labels, one broken file."""
    tmp = tmp_path_factory.mktemp("browser")
    items = [ReportItem(str(make_image(tmp / "magenta.png", MAGENTA, size=(400, 300), fmt="PNG")), "pink", 0.99)]
    for i in range(6):
        path = make_image(tmp / f"photo{i}.jpg", (40 * i, 120, 200 - 30 * i), size=(160 + 30 * i, 120))
        items.append(ReportItem(str(path), HOSTILE[i % 2] if i < 4 else "tree", 0.1 * i))
    broken = tmp / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    items.append(ReportItem(str(broken), "tree", 0.05))
    section = EvalSection(["pink", "tree", HOSTILE[0]], [0, 1, 2, 2], [0, 2, 2, 1], [("photo", [("top-1", 0.5)])])
    out = tmp / "report.html"
    stats = write_report(out, items, [(HOSTILE[1], "decode_error: " + HOSTILE[0])], title=HOSTILE[0],
                         evaluation=section)
    assert stats.thumbnails == 7
    return out, stats.thumbnails


def test_the_browser_shows_every_thumbnail_and_runs_no_injected_code(page):
    html, thumbnails = page
    dom = browser.dump_dom(html)
    assert len(data_images(dom)) == thumbnails == 7
    assert len(re.findall(r"<img\b", dom)) == thumbnails  # no other image: the hostile one is text
    assert 'id="shown">8<' in dom  # the page's script ran: 8 tiles shown (the broken file has a placeholder)
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]  # the body was never touched
    assert len(re.findall(r"<script\b", dom)) == 1
    assert "no preview" in dom


def test_the_filter_in_the_url_hides_the_other_tiles(page):
    html, _ = page
    dom = browser.dump_dom(html, "q=PHOTO")  # case-insensitive, on file names and labels
    assert sorted(Path(n).name for n in visible_tiles(dom)) == [f"photo{i}.jpg" for i in range(6)]
    assert 'id="shown">6<' in dom


def test_the_screenshot_is_not_blank_and_shows_the_thumbnails(page, tmp_path):
    html, _ = page
    png = browser.screenshot(html, tmp_path / "shot.png", width=1000, height=2400)
    with Image.open(png) as shot:
        rgb = shot.convert("RGB")
        assert rgb.size == (1000, 2400)
        spread = ImageStat.Stat(rgb.convert("L")).stddev[0]
        assert spread > 20, f"a nearly uniform screenshot (stddev {spread:.1f})"
        pixels = np.asarray(rgb).astype(int)
        magenta = int((np.abs(pixels - MAGENTA).sum(axis=2) < 60).sum())
    # The magenta picture's thumbnail (128 x 96 px) is on screen.
    assert magenta > 0.8 * 128 * 96, magenta


def test_the_docs_demo_renders(tmp_path):
    classify_page, eval_page = browser.demo_reports(tmp_path)
    assert len(data_images(browser.dump_dom(classify_page))) == 20
    dom = browser.dump_dom(eval_page)
    assert len(data_images(dom)) == 2 and dom.count("<svg") == 2
