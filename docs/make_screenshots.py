"""Make the README's report screenshots: a small demo report, rendered by headless Chromium.

    python docs/make_screenshots.py            # writes docs/report.png and docs/report-eval.png

The demo needs no model and no network: it draws coloured shapes with Pillow and scores them
with a colour heuristic (a softmax over the distance to each label's colour), so the pages show
real thumbnails, groups, scores, a broken file and, for the eval page, per-class accuracy and a
confusion matrix. The browser helpers here (:func:`find_chromium`, :func:`screenshot`,
:func:`dump_dom`) are also what tests/test_report_browser.py uses to look at the reports.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

SHAPES = {  # label -> (colour, shape)
    "red square": ((205, 40, 40), "square"),
    "green circle": ((40, 170, 70), "circle"),
    "blue triangle": ((45, 80, 210), "triangle"),
    "orange star": ((240, 150, 30), "star"),
}


# ------------------------------------------------------------------------------------ browser


def find_chromium() -> str | None:
    """The Chromium (or Chrome) executable: $ZEROSHOT_CHROMIUM, else the first on PATH."""
    configured = os.environ.get("ZEROSHOT_CHROMIUM")
    if configured:
        return configured
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_chromium(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no chromium on PATH: apt-get install -y chromium (or set ZEROSHOT_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="zs-chromium-") as profile:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                   "--disable-background-networking", "--disable-component-update", "--mute-audio",
                   "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",  # no network, ever
                   "--virtual-time-budget=5000",  # run the page's scripts before the dump/screenshot
                   f"--user-data-dir={profile}", *args]
        env = {**os.environ, "HOME": profile}
        result = subprocess.run(command, capture_output=True, timeout=timeout, env=env, cwd=profile)
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr.decode(errors='replace')[-2000:]}")
    return result


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 900) -> Path:
    """A ``width`` x ``height`` screenshot of the page ``html`` (after its scripts ran)."""
    png = Path(png).resolve()
    _run_chromium([f"--screenshot={png}", f"--window-size={width},{height}", Path(html).resolve().as_uri()])
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot {png}")
    return png


def dump_dom(html: Path, fragment: str = "") -> str:
    """The page's DOM as HTML, serialised after its scripts ran (``fragment``: the URL's ``#...``)."""
    url = Path(html).resolve().as_uri() + (f"#{fragment}" if fragment else "")
    return _run_chromium(["--dump-dom", url]).stdout.decode("utf-8")


# --------------------------------------------------------------------------------------- demo


def draw(label: str, seed: int, size: int = 240):
    """A picture of ``label``'s shape in its colour on a soft background (deterministic)."""
    from PIL import Image, ImageDraw

    (r, g, b), shape = SHAPES[label]
    shade = 215 + (seed * 37) % 35
    img = Image.new("RGB", (size, size), (shade, shade - 8, shade - 20))
    pen = ImageDraw.Draw(img)
    for y in range(0, size, 12):  # a little texture
        pen.line([(0, y), (size, y + (seed % 5) * 6)], fill=(shade - 18, shade - 22, shade - 30), width=2)
    m = 40 + (seed * 13) % 30
    colour = (min(255, r + (seed * 17) % 40), min(255, g + (seed * 11) % 40), min(255, b + (seed * 7) % 40))
    box = [m, m, size - m, size - m]
    if shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "triangle":
        pen.polygon([(size / 2, m), (size - m, size - m), (m, size - m)], fill=colour)
    else:
        c, outer, inner = size / 2, size / 2 - m, (size / 2 - m) * 0.45
        points = [(c + (outer if k % 2 == 0 else inner) * math.sin(k * math.pi / 5),
                   c - (outer if k % 2 == 0 else inner) * math.cos(k * math.pi / 5)) for k in range(10)]
        pen.polygon(points, fill=colour)
    return img


def colour_scores(path: Path) -> list[tuple[str, float]]:
    """Demo scores: a softmax over how close the picture's centre colour is to each label's."""
    from PIL import Image

    with Image.open(path) as img:
        r, g, b = img.convert("RGB").resize((5, 5)).getpixel((2, 2))
    logits = {label: -math.dist((r, g, b), colour) / 25 for label, (colour, _) in SHAPES.items()}
    top = max(logits.values())
    total = sum(math.exp(v - top) for v in logits.values())
    return sorted(((k, math.exp(v - top) / total) for k, v in logits.items()), key=lambda kv: -kv[1])


def demo_images(folder: Path, per_label: int = 5) -> list[tuple[Path, str]]:
    """``(file, true label)`` for ``per_label`` pictures of each label; a few are drawn in the
    colour of another label (so the demo has mistakes); plus one broken file."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(SHAPES)
    made = []
    for i, label in enumerate(labels):
        for k in range(per_label):
            img = draw(label, seed=i * 10 + k)
            if k == per_label - 1 and i % 2 == 0:  # a square painted blue, a triangle painted red
                img = _recolour(img, SHAPES[labels[(i + 2) % len(labels)]][0])
            path = folder / f"{label.replace(' ', '_')}_{k + 1}.jpg"
            img.save(path, quality=90)
            made.append((path, label))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return made


def _recolour(img, paint):
    """The picture with its shape (the saturated pixels) painted ``paint``: a shape of one
    label in another label's colour."""
    from PIL import Image

    mask = img.convert("HSV").getchannel("S").point(lambda v: 255 if v > 100 else 0)
    return Image.composite(Image.new("RGB", img.size, paint), img, mask)


def demo_reports(folder: Path) -> tuple[Path, Path]:
    """The demo classify and eval reports in ``folder``."""
    from zeroshot.output.report import EvalSection, ReportItem, write_report

    images = demo_images(folder / "photos")
    labels = list(SHAPES)
    items, targets, predictions = [], [], []
    for path, truth in images:
        ranked = colour_scores(path)
        note = " · ".join(f"{label} {score:.3f}" for label, score in ranked[1:3])
        shown = f"photos/{path.name}"
        items.append(ReportItem(shown, ranked[0][0], ranked[0][1], note, file=str(path)))
        targets.append(labels.index(truth))
        predictions.append(labels.index(ranked[0][0]))
    skipped = [("photos/broken.jpg", "truncated: image file is truncated")]
    meta = [("model", "demo colour heuristic (no CLIP model)"), ("labels", str(len(labels)))]
    write_report(folder / "report.html", items, skipped, title="zeroshot classify photos/", meta=meta,
                 group_title="predicted label")
    correct = sum(t == p for t, p in zip(targets, predictions))
    section = EvalSection(labels, targets, predictions, [("openai-7", [("top-1", correct / len(targets)),
                          ("top-5", 1.0), ("mean per-class recall", correct / len(targets))])], charts_for="openai-7")
    wrong = [ReportItem(i.path, labels[t], i.score, f"predicted: {i.label}", file=i.file)
             for i, t, p in zip(items, targets, predictions) if t != p]
    write_report(folder / "report-eval.html", wrong, skipped, title="zeroshot eval folder photos/",
                 meta=[("model", "demo colour heuristic"), ("images", str(len(items)))], evaluation=section,
                 group_title="true class")
    return folder / "report.html", folder / "report-eval.html"


def small_png(png: Path, colours: int = 128) -> Path:
    """The screenshot with an adaptive palette (a fraction of the size, same look)."""
    from PIL import Image

    with Image.open(png) as img:
        img.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    return png


def main() -> int:
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="zs-demo-") as tmp:
        classify_page, eval_page = demo_reports(Path(tmp))
        for page, png, height in ((classify_page, DOCS / "report.png", 860), (eval_page, DOCS / "report-eval.png", 900)):
            small_png(screenshot(page, png, width=1200, height=height))
            print(f"wrote {png.relative_to(ROOT)} ({png.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
