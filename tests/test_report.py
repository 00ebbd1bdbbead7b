"""The HTML report (``--report``): grouping, counts, thumbnails, skipped files, escaping, the eval
section, atomic writes, and the option on classify, search and eval. What a browser makes of the
page is tests/test_report_browser.py."""

from __future__ import annotations

import base64
import csv
import io
import os
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from zeroshot.errors import OutputError, UsageError
from zeroshot.output.report import EvalSection, ReportItem, check_report_path, render_report, write_report
from zeroshot.output.rows import Prediction, round_score
from zeroshot.tasks.report import prediction_items

from conftest import LABELS, classify_cli, make_image, tiny_cli_args


class Page(HTMLParser):
    """What a report page holds: tiles (figure attributes, their group, their picture), tags, rows."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tiles: list[dict] = []
        self.tags: Counter = Counter()
        self.attributes: list[tuple[str, str, str | None]] = []
        self.groups: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._section: str | None = None
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        self.attributes += [(tag, k, v) for k, v in attrs]
        if tag == "section":
            self._section = a.get("id") or ("group" if "group" in (a.get("class") or "") else None)
            if self._section == "group":
                self.groups.append(a["data-label"])
        if tag == "figure":
            self.tiles.append({**a, "group": self.groups[-1], "img": None})
        if tag == "img" and self.tiles:
            self.tiles[-1]["img"] = a.get("src")
        if tag == "table":
            self._table = a.get("id") or self._section or "?"
            self.tables.setdefault(self._table, [])
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def by_group(self) -> dict[str, list[dict]]:
        groups: dict[str, list[dict]] = {}
        for tile in self.tiles:
            groups.setdefault(tile["group"], []).append(tile)
        return groups


def jpeg_of(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


@pytest.fixture()
def pictures(tmp_path) -> list[Path]:
    colours = [(230, 20, 20), (20, 220, 30), (30, 40, 230), (240, 240, 20), (200, 30, 200)]
    return [make_image(tmp_path / "pics" / f"p{i}.jpg", c, size=(300 + 40 * i, 200)) for i, c in enumerate(colours)]


# --------------------------------------------------------------------------------- the page


def test_groups_by_label_biggest_first_best_score_first(pictures):
    scores = [0.2, 0.9, 0.5, 0.7, 0.6]
    labels = ["cat", "dog", "cat", "cat", "dog"]
    items = [ReportItem(str(p), label, s) for p, label, s in zip(pictures, labels, scores)]
    html, stats = render_report(items, group_title="predicted label")
    page = Page(html)
    groups = page.by_group()
    assert list(groups) == ["cat", "dog"]  # 3 images before 2
    assert [t["data-name"] for t in groups["cat"]] == [str(pictures[i]) for i in (3, 2, 0)]  # by score
    assert [float(t["data-score"]) for t in groups["dog"]] == [0.9, 0.6]
    assert (stats.items, stats.groups, stats.shown, stats.thumbnails) == (5, 2, 5, 5)
    text = "".join(page.text)
    assert "cat 3 shown of 3 images" in text and "dog 2 shown of 2 images" in text
    counts = {row[0]: int(row[1]) for row in page.tables["counts"][1:]}
    assert counts == Counter(labels)


def test_thumbnails_are_small_jpegs_of_the_original(pictures):
    items = [ReportItem(str(p), "x", 0.5) for p in pictures]
    page = Page(render_report(items)[0])
    for tile in page.tiles:
        thumb = jpeg_of(tile["img"])
        assert thumb.format == "JPEG" and max(thumb.size) == 128
        with Image.open(tile["data-name"]) as original:
            reference = original.convert("RGB").resize(thumb.size)  # Pillow directly: the same picture
        for got, want in zip(ImageStat.Stat(thumb.convert("RGB")).mean, ImageStat.Stat(reference).mean):
            assert got == pytest.approx(want, abs=8)
        assert thumb.size[0] / thumb.size[1] == pytest.approx(reference.size[0] / reference.size[1], rel=0.02)


def test_undecodable_files_get_no_preview_not_an_error(tmp_path, pictures):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    items = [ReportItem(str(pictures[0]), "a", 0.9), ReportItem(str(broken), "a", 0.8),
             ReportItem(str(tmp_path / "gone.jpg"), "a", 0.7), ReportItem("<memory>", "a", 0.1, image=Image.new("RGB", (9, 9)))]
    html, stats = render_report(items)
    page = Page(html)
    assert [t["img"] is not None for t in page.tiles] == [True, False, False, True]
    assert stats.thumbnails == 2 and [p for p, _ in stats.no_preview] == [str(broken), str(tmp_path / "gone.jpg")]
    assert stats.no_preview[1][1].startswith("not_found")
    assert html.count("no preview") == 2


def test_skipped_files_are_listed_with_their_reasons():
    skipped = [("a.jpg", "truncated: image file is truncated"), ("b.png", "not_an_image: not a recognised image format"),
               ("c.jpg", "truncated: cut short")]
    page = Page(render_report([], skipped)[0])
    rows = page.tables["skipped"]
    assert rows[0] == ["file", "reason", "detail"]
    assert rows[1:] == [["a.jpg", "truncated", "image file is truncated"],
                        ["b.png", "not_an_image", "not a recognised image format"], ["c.jpg", "truncated", "cut short"]]
    assert "3: 2 truncated, 1 not_an_image" in "".join(page.text)


HOSTILE = ['<script>document.title="pwned"</script>', '"><img src=x onerror="document.title=1">',
           "</style><b onmouseover=alert(1)>x</b>", "a & b ' c"]


def test_every_user_string_is_escaped(tmp_path):
    files = []
    for i, name in enumerate(HOSTILE[1:3]):  # file names may hold < > " ' & too
        path = tmp_path / name.replace("/", "%")
        make_image(path, (10 * i, 90, 90), fmt="PNG")
        files.append(str(path))
    items = [ReportItem(files[0], HOSTILE[0], 0.9, note=HOSTILE[2]), ReportItem(files[1], HOSTILE[1], 0.5),
             ReportItem(HOSTILE[3], HOSTILE[3], 0.1)]
    section = EvalSection(HOSTILE, [0, 1, 2, 3], [1, 1, 3, 3], [(HOSTILE[0], [("top-1", 0.5)])])
    html, _ = render_report(items, [(HOSTILE[1], "decode_error: " + HOSTILE[0])], title=HOSTILE[0],
                            meta=[(HOSTILE[2], HOSTILE[1])], evaluation=section)
    for hostile in HOSTILE:
        assert hostile not in html
    page = Page(html)
    assert page.tags["script"] == 1 and page.tags["style"] == 1  # only the page's own
    assert page.tags["b"] == 2  # only the page's own bold facts in the heading
    assert not [(t, k) for t, k, _ in page.attributes if k.startswith("on")]
    assert all(src.startswith("data:image/jpeg;base64,") for t, k, src in page.attributes if t == "img" and k == "src")
    text = "".join(page.text)
    for hostile in HOSTILE:  # shown as text, intact
        assert hostile in text or hostile in {v for _, _, v in page.attributes}
    assert sorted(t["data-label"] for t in page.tiles) == sorted([HOSTILE[0], HOSTILE[1], HOSTILE[3]])


def test_lone_surrogates_are_shown_as_escapes_in_valid_utf8(tmp_path):
    name = "caf\udce9.jpg"  # a file name whose bytes are not UTF-8
    out = tmp_path / "r.html"
    write_report(out, [ReportItem(name, "l\udcff", 0.5)], [(name, "decode_error: x")])
    html = out.read_bytes().decode("utf-8")  # strict: valid UTF-8
    assert "caf\\udce9.jpg" in html and "l\\udcff" in html


def test_per_group_and_page_limits_keep_the_counts(tmp_path):
    img = make_image(tmp_path / "one.png", (50, 60, 70), fmt="PNG")
    items = [ReportItem(str(img), f"l{i % 4}", i / 100) for i in range(40)]
    html, stats = render_report(items, per_group=6)
    page = Page(html)
    assert {k: len(v) for k, v in page.by_group().items()} == {f"l{i}": 6 for i in range(4)}
    text = "".join(page.text)
    assert text.count("4 more not shown") == 4 and text.count("6 shown of 10 images") == 4
    assert [float(t["data-score"]) for t in page.by_group()["l0"]] == [0.36, 0.32, 0.28, 0.24, 0.2, 0.16]
    _, stats = render_report(items, per_group=6, max_thumbnails=8)  # 8 for 4 groups: 2 each
    assert (stats.shown, stats.thumbnails) == (8, 8)


def test_ordered_keeps_the_order_given(pictures):
    items = [ReportItem(str(p), None, s, f"#{i + 1}") for i, (p, s) in enumerate(zip(pictures, [0.3, 0.9, 0.1, 0.5, 0.2]))]
    page = Page(render_report(items, ordered=True)[0])
    assert [t["data-name"] for t in page.tiles] == [str(p) for p in pictures]
    assert page.groups == [""]


def test_eval_section_per_class_accuracy_and_confusion():
    import pandas as pd

    names = ["ant", "bee", "cat", "dog", "eel"]
    targets = [0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4]
    preds = [0, 1, 1, 1, 2, 2, 1, -1, 2, 0, 3, 3, 4]
    section = EvalSection(names, targets, preds, [("photo", [("top-1", 0.5), ("top-5", None)])], charts_for="photo")
    # Reference: a pandas crosstab of the same pairs.
    frame = pd.DataFrame({"t": targets, "p": preds})
    frame["right"] = frame.t == frame.p
    truth = frame.groupby("t")["right"].agg(["size", "sum"])
    want = sorted(((int(c), int(n), int(k)) for c, n, k in truth.itertuples()), key=lambda r: (r[2] / r[1], r[0]))
    assert section.per_class() == want
    wrong = frame[(frame.p >= 0) & (frame.t != frame.p)]
    crosstab = pd.crosstab(wrong.t, wrong.p)
    assert dict(section.confusions()) == {(t, p): int(n) for (t, p), n in crosstab.stack().items() if n}
    assert section.most_confused(3) == [1, 0, 2]  # bee in 4 confusions, ant in 3, cat in 2 (dog 1: left out)

    page = Page(render_report([], evaluation=section)[0])
    assert page.tables["eval"][0] == ["template set", "top-1", "top-5"]
    assert page.tables["eval"][1] == ["photo", "50.0%", "n/a"]
    per_class = [r for r in page.tables["eval"] if len(r) == 4 and r[0] in names]
    assert [(r[0], r[1], r[2], r[3]) for r in per_class] == [
        (names[c], str(n), str(k), f"{100 * k / n:.1f}%") for c, n, k in want]
    pairs = page.tables["pairs"][1:]
    assert pairs == [["ant", "bee", "2"], ["bee", "cat", "2"], ["dog", "ant", "1"]]  # most first, ties by class
    assert page.tags["svg"] == 2 and page.tags["rect"] > 0
    assert "true bee, predicted cat: 2" in "".join(page.text)


def test_eval_section_without_mistakes():
    section = EvalSection(["a", "b"], [0, 1], [0, 1])
    html = render_report([], evaluation=section)[0]
    assert "No image was misclassified" in html and Page(html).tags["svg"] == 1


def test_written_atomically(tmp_path, pictures, monkeypatch):
    out = tmp_path / "report.html"
    out.write_text("old report")
    items = [ReportItem(str(pictures[0]), "a", 0.5)]

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OutputError, match=r"--report .*report.html: cannot write: No space left on device"):
        write_report(out, items)
    assert out.read_text() == "old report" and sorted(os.listdir(tmp_path)) == ["pics", "report.html"]
    monkeypatch.undo()
    stats = write_report(out, items)
    assert stats.thumbnails == 1 and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_path_is_checked_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="folder .*nowhere does not exist"):
        check_report_path(tmp_path / "nowhere" / "r.html")
    with pytest.raises(UsageError, match="name it .html"):
        check_report_path(tmp_path / "r.csv")
    (tmp_path / "d.html").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        check_report_path(tmp_path / "d.html")
    check_report_path(tmp_path / "R.HTM")


def test_prediction_items_notes_and_skips():
    preds = [Prediction("a.jpg", ("cat", "dog", "eel"), (0.6, 0.3, 0.1)),
             Prediction("b.jpg", ("dog", "cat"), (0.4, 0.35), label="unknown"),
             Prediction("c.jpg", error="truncated: cut")]
    items, skipped = prediction_items(preds)
    assert [(i.path, i.label, i.score, i.note) for i in items] == [
        ("a.jpg", "cat", 0.6, "dog 0.300 · eel 0.100"), ("b.jpg", "unknown", 0.4, "best: dog 0.400 · cat 0.350")]
    assert skipped == [("c.jpg", "truncated: cut")]


# ---------------------------------------------------------------------------------------- CLI


def test_classify_report(tmp_path, tiny_ckpt, image_dir):
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    out, report = tmp_path / "out.csv", tmp_path / "report.html"
    result = classify_cli([str(image_dir), "-l", LABELS[0], "-l", LABELS[1], "-l", LABELS[2], "-k", "2",
                           "-o", str(out), "--report", str(report), *tiny_cli_args(tiny_ckpt)])
    assert result.exit_code == 3, result.output  # one skipped file
    assert f"wrote {out}, {report}" in result.output
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    page = Page(report.read_text(encoding="utf-8"))
    good = [r for r in rows if not r["error"]]
    assert len(page.tiles) == len(good) == 6 and all(t["img"] for t in page.tiles)
    assert {k: len(v) for k, v in page.by_group().items()} == Counter(r["label"] for r in good)
    assert {(t["data-name"], t["data-label"], round_score(float(t["data-score"]))) for t in page.tiles} == {
        (r["path"], r["label"], float(r["score"])) for r in good}
    bad = [r for r in rows if r["error"]]
    assert [row[:2] for row in page.tables["skipped"][1:]] == [[r["path"], r["error"].split(": ")[0]] for r in bad]
    assert bad[0]["path"] == str(image_dir / "broken.jpg")


def test_classify_report_to_a_missing_folder_fails_before_the_model_loads(tmp_path, image_dir):
    result = classify_cli([str(image_dir), "-l", "a", "-l", "b", "--report", str(tmp_path / "no" / "r.html"),
                           "-m", "zs-tiny", "-p", str(tmp_path / "missing.pt")])
    assert result.exit_code == 2 and "--report" in result.output and "does not exist" in result.output


def test_search_report(tmp_path, tiny_ckpt, image_dir):
    from typer.testing import CliRunner

    from zeroshot.cli import app

    out, report = tmp_path / "hits.csv", tmp_path / "search.html"
    result = CliRunner().invoke(app, ["search", "a red square", str(image_dir), "-n", "4", "-o", str(out),
                                      "--report", str(report), "--no-cache", *tiny_cli_args(tiny_ckpt)])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as f:
        hits = list(csv.DictReader(f))
    page = Page(report.read_text(encoding="utf-8"))
    assert [t["data-name"] for t in page.tiles] == [h["path"] for h in hits] and len(hits) == 4
    assert [float(t["data-score"]) for t in page.tiles] == pytest.approx([float(h["score"]) for h in hits], abs=1e-5)
    assert "'a red square'" in "".join(page.text)


def test_eval_report(tmp_path, tiny_ckpt):
    from test_eval import make_folder_dataset, run, tiny_args

    root = make_folder_dataset(tmp_path / "ds", per_class=3)
    (root / "red" / "zz_broken.png").write_bytes(b"\x89PNG nope")
    preds, per_class, report = tmp_path / "preds.csv", tmp_path / "classes.csv", tmp_path / "eval.html"
    result = run("eval", "folder", str(root), "-t", "photo", "--predictions", str(preds), "--per-class", str(per_class),
                 "--report", str(report), *tiny_args(tiny_ckpt))
    assert result.exit_code == 3, result.output
    page = Page(report.read_text(encoding="utf-8"))
    with open(per_class, newline="", encoding="utf-8") as f:
        classes = list(csv.DictReader(f))
    shown = [r for r in page.tables["eval"] if len(r) == 4 and r[0] in {c["class"] for c in classes}]
    assert [(r[0], int(r[1]), int(r[2])) for r in shown] == [(c["class"], int(c["images"]), int(c["correct"]))
                                                           for c in classes]  # worst first, like --per-class
    with open(preds, newline="", encoding="utf-8") as f:
        wrong = [r for r in csv.DictReader(f) if r["correct"] == "false" and not r["error"]]
    assert sorted(t["data-name"] for t in page.tiles) == sorted(r["path"] for r in wrong)
    assert all(t["data-label"] == Path(t["data-name"]).parent.name and t["img"] for t in page.tiles)
    assert page.tables["skipped"][1][0] == str(root / "red" / "zz_broken.png")
    assert page.tables["eval"][1][0] == "photo"


def test_classify_to_file_report_holds_the_rows_kept_by_resume(clf, tmp_path):
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.tasks.classify import classify_to_file

    from conftest import colour

    folder = tmp_path / "many"
    for i in range(8):
        make_image(folder / f"img{i}.png", colour(i), fmt="PNG")
    out, report = tmp_path / "out.csv", tmp_path / "r.html"
    settings = EmbedSettings(batch_size=2, workers=0)
    calls = []

    def stop_after_two_batches(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        classify_to_file(clf, [str(folder)], out, settings=settings, on_progress=stop_after_two_batches,
                         report=report)
    assert not report.exists()
    stats = classify_to_file(clf, [str(folder)], out, settings=settings, resume=True, report=report)
    assert stats.kept == 4 and stats.classified == 4
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    tiles = Page(report.read_text(encoding="utf-8")).tiles
    assert sorted((t["data-name"], t["data-label"]) for t in tiles) == sorted((r["path"], r["label"]) for r in rows)
    assert len(tiles) == 8


def test_eval_report_of_in_memory_images_has_their_thumbnails(tiny_loaded, tmp_path):
    import numpy as np

    from zeroshot.data.datasets import EvalDataset
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.tasks.evaluate import evaluate
    from zeroshot.tasks.report import write_eval_report

    from conftest import colour

    pixels = np.stack([np.full((32, 32, 3), colour(i), dtype=np.uint8) for i in range(12)])
    pixels[:, ::4, ::3] = 255 - pixels[:, ::4, ::3]
    data = EvalDataset("cifar-like", ("red", "green", "blue"), [(i, i % 3) for i in range(12)], images=pixels)
    result = evaluate(tiny_loaded, data, ["photo"], EmbedSettings(workers=0), cache=False)
    stats = write_eval_report(tmp_path / "e.html", result, data)
    wrong = int(((result.results[0].predictions != result.targets) & result.encoded).sum())
    assert 0 < wrong and stats.shown == stats.thumbnails == wrong
    page = Page((tmp_path / "e.html").read_text(encoding="utf-8"))
    assert sorted(t["data-name"] for t in page.tiles) == sorted(
        p for p, t, k in zip(result.paths, result.targets.tolist(), result.results[0].predictions.tolist()) if t != k)
    thumb = jpeg_of(page.tiles[0]["img"])
    index = int(page.tiles[0]["data-name"].rsplit("/", 1)[1])
    want = ImageStat.Stat(Image.fromarray(pixels[index])).mean
    assert ImageStat.Stat(thumb.convert("RGB")).mean == pytest.approx(want, abs=8)
