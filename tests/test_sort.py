"""``zeroshot sort``: filing images into OUT/<label>/ by copy, move, hard link or symlink, never
overwriting, never losing a file, never writing outside OUT, with a manifest that resumes an
interrupted sort or undoes it byte for byte.

The tiny random model's labels are arbitrary, so tests with it assert invariants (every image is
in the folder of the label it got, exactly once, byte-identical); tests that need a known label
per file use ``NameClassifier``, which decides by file name and goes through the same planner."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.data.discover import Discovery
from zeroshot.encode.embed import EmbedSettings
from zeroshot.errors import UsageError
from zeroshot.output.rows import Prediction
from zeroshot.tasks import sort as sort_mod
from zeroshot.tasks.sort import (
    execute_sort,
    folder_name,
    folder_names,
    numbered,
    plan_sort,
    read_manifest,
    undo_sort,
)

from conftest import COLOURS, LABELS, examples, make_image

SETTINGS = EmbedSettings(batch_size=4, workers=0)
runner = CliRunner()


# ------------------------------------------------------------------------------------ helpers


class NameClassifier:
    """Decides by file name: ``<label>_...`` gets that label (else the first), names containing
    ``low`` score 0.1 (else 0.9); files whose bytes start with ``broken`` are skipped."""

    def __init__(self, labels):
        self.labels = tuple(labels)
        self.templates = ("{}",)
        self.loaded = SimpleNamespace(name="by-name", weights_id="none")

    def predict(self, found, settings=None, rank=None, on_progress=None, **_):
        for source in found.items:
            if source.error is not None:
                yield Prediction(source.path, error=str(source.error))
                continue
            with open(source.fs_path, "rb") as handle:
                if handle.read(6) == b"broken":
                    yield Prediction(source.path, error="not_an_image: cannot identify image file")
                    continue
            name = os.path.basename(source.path)
            label = next((lab for lab in self.labels if name.startswith(lab + "_")), self.labels[0])
            score = 0.1 if "low" in name else 0.9
            below = rank is not None and rank.min_score is not None and score < rank.min_score
            yield Prediction(source.path, (label,), (score,), label=rank.unknown_label if below else label)
        if on_progress:
            on_progress(len(found.items), len(found.items))


def snapshot(root: Path) -> dict[str, object]:
    """Every folder, file (SHA-256 and mtime) and link (target) under ``root``."""
    tree: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        tree[os.path.relpath(folder, root) + "/"] = "dir"
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                tree[rel] = "link -> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    tree[rel] = (hashlib.sha256(handle.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return tree


def digest(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def files_under(root: Path) -> list[Path]:
    """Every file or link under ``root`` except manifests."""
    return sorted(p for p in root.rglob("*") if (p.is_file() or p.is_symlink())
                  and not p.name.startswith(".zeroshot-sort-"))


@pytest.fixture(scope="module")
def clf(tiny_loaded):
    from zeroshot.tasks.classify import ZeroShotClassifier

    return ZeroShotClassifier(LABELS, templates="photo", model=tiny_loaded, cache=False)


@pytest.fixture()
def work(tmp_path) -> Path:
    """``work/photos``: seven images, two of them called ``x.jpg`` in different folders."""
    root = tmp_path / "work"
    names = ["a/x.jpg", "b/x.jpg", "img1.png", "sub/ünïcode name.jpg", "img2.webp", "deep/er/img3.jpg", "img4.bmp"]
    for i, name in enumerate(names):
        make_image(root / "photos" / name, COLOURS[i % len(COLOURS)], size=(48 + i, 40))
    return root


def sources(work: Path) -> dict[str, str]:
    """SHA-256 of every photo, by path."""
    return {str(p): digest(p) for p in files_under(work / "photos")}


def check_sorted(result, before: dict[str, str], out: Path, op: str) -> None:
    """Every image exactly once in OUT/<its label's folder>/, byte-identical, as ``op`` leaves it."""
    folders = read_manifest(result.manifest).header["folders"]
    done = [item for item in result.items if item.status == "done"]
    assert len(done) == len(before) and not result.failed
    dests = [item.destination for item in done]
    assert len(set(dests)) == len(dests)
    for item in done:
        dest = Path(item.destination)
        assert dest.parent == out / folders[item.label]
        assert dest.name.split(" (")[0].split(".")[0] == Path(item.source).name.split(".")[0]
        assert digest(dest) == before[item.source]
        src = Path(item.source)
        if op == "move":
            assert not src.exists()
        else:
            assert digest(src) == before[item.source]
        if op == "copy":
            assert not dest.is_symlink() and not os.path.samefile(src, dest)
        elif op == "link":
            assert os.path.samefile(src, dest) and not dest.is_symlink()
        elif op == "symlink":
            assert dest.is_symlink() and os.readlink(dest) == os.path.abspath(src)
    assert len(files_under(out)) == len(before)


def cli(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


@pytest.fixture()
def base(tiny_ckpt, labels_file):
    return ["-L", labels_file, "-m", "zs-tiny", "-p", tiny_ckpt, "-d", "cpu", "-t", "photo", "-j", "0", "-b", "4"]


@pytest.fixture()
def cross_device(monkeypatch):
    """``install(out)``: os.rename / os.replace / os.link between OUT and anywhere else raise
    EXDEV, as between two file systems (inside one side they work)."""

    def install(out: Path) -> None:
        top = os.path.abspath(out) + os.sep

        def side(path) -> bool:
            return os.path.abspath(path).startswith(top)

        def wrap(real):
            def fake(src, dst, *args, **kwargs):
                if side(src) != side(dst):
                    raise OSError(errno.EXDEV, "Invalid cross-device link", src, None, dst)
                return real(src, dst, *args, **kwargs)
            return fake

        for name in ("rename", "replace", "link"):
            monkeypatch.setattr(os, name, wrap(getattr(os, name)))

    return install


# ------------------------------------------------------------------------- the four operations


@pytest.mark.parametrize("op", ["copy", "move", "link", "symlink"])
def test_each_operation_files_every_image_once_and_undo_restores_the_tree(clf, work, op):
    before, tree = sources(work), snapshot(work)
    inodes = {p: os.stat(p).st_ino for p in before}
    out = work / "sorted"
    result = plan_sort(clf, [work / "photos"], out, op, settings=SETTINGS).execute()
    check_sorted(result, before, out, op)
    state = read_manifest(result.manifest)
    assert state.finished and result.manifest.parent == out
    if op == "move":  # on one file system a move is a rename: the very same file
        assert all(os.stat(item.destination).st_ino == inodes[item.source] for item in result.items)

    undone = undo_sort(result.manifest)
    assert undone.complete and len(undone.items) == len(before)
    assert undone.manifest_removed and not out.exists()
    assert snapshot(work) == tree  # every file byte-identical, same mtime, nothing left over


@pytest.mark.parametrize("op", ["copy", "move", "link", "symlink"])
def test_cli_each_operation_reports_every_file_on_stdout(base, work, op):
    out = work / "sorted"
    result = cli("sort", work / "photos", "--into", out, f"--{op}", "--format", "jsonl", *base)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 7 and {r["status"] for r in rows} == {"done"}
    assert set(rows[0]) == {"source", "destination", "label", "score", "status", "error"}
    assert all(r["label"] in LABELS and Path(r["destination"]).parent.name == folder_name(r["label"]) for r in rows)
    assert all(os.path.lexists(r["destination"]) for r in rows)
    summary = [line for line in result.stderr.splitlines() if "images into" in line]
    assert len(summary) == 1 and "7 of 7" in summary[0] and "--undo" in summary[0]


# ------------------------------------------------------------------------------------ dry run


def test_dry_run_writes_nothing_and_prints_the_plan(base, work, clf, tmp_path):
    tree = snapshot(work)
    plan = plan_sort(clf, [work / "photos"], work / "sorted", "move", settings=SETTINGS)
    assert len(plan.items) == 7 and {i.status for i in plan.items} == {"planned"}
    assert snapshot(work) == tree

    result = cli("sort", work / "photos", "--into", work / "sorted", "--move", "--dry-run", "--format", "csv", *base)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "source,destination,label,score,status,error" and len(lines) == 8
    assert all(",planned," in line for line in lines[1:])
    assert "dry run: would move 7 of 7 images" in result.stderr and "nothing was changed" in result.stderr
    assert snapshot(work) == tree

    plan_file = tmp_path / "plan.jsonl"
    result = cli("sort", work / "photos", "--into", work / "sorted", "--copy", "-n", "-o", plan_file, *base)
    assert result.exit_code == 0 and result.stdout == ""
    rows = [json.loads(line) for line in plan_file.read_text().splitlines()]
    assert len(rows) == 7 and len({r["destination"] for r in rows}) == 7
    twins = [Path(r["destination"]) for r in rows if Path(r["source"]).name == "x.jpg"]
    assert [p.name for p in twins] == (["x.jpg", "x (2).jpg"] if twins[0].parent == twins[1].parent else ["x.jpg"] * 2)
    assert snapshot(work) == tree  # only the plan file, outside work/, was written


# ------------------------------------------------------------------------------- name clashes


def test_name_clashes_get_numbers_and_nothing_is_overwritten(work):
    clf = NameClassifier(["cat", "dog"])
    out = work / "sorted"
    (out / "cat").mkdir(parents=True)
    (out / "cat" / "x.jpg").write_bytes(b"already here")
    (out / "cat" / "x (2).jpg").write_bytes(b"and this")
    before = sources(work)
    result = plan_sort(clf, [work / "photos"], out, "copy", settings=SETTINGS).execute()
    names = sorted(Path(i.destination).name for i in result.items if Path(i.source).name == "x.jpg")
    assert names == ["x (3).jpg", "x (4).jpg"]
    assert (out / "cat" / "x.jpg").read_bytes() == b"already here"
    assert (out / "cat" / "x (2).jpg").read_bytes() == b"and this"
    assert {digest(i.destination) for i in result.items if Path(i.source).name == "x.jpg"} == \
        {before[str(work / "photos" / d / "x.jpg")] for d in "ab"}
    undo_sort(result.manifest)
    assert sorted(p.name for p in (out / "cat").iterdir()) == ["x (2).jpg", "x.jpg"]  # only theirs left


def test_a_name_taken_after_planning_gets_the_next_number(work):
    clf = NameClassifier(["cat"])
    out = work / "sorted"
    plan = plan_sort(clf, [work / "photos" / "img1.png", work / "photos" / "a"], out, "move", settings=SETTINGS)
    first = Path(plan.items[0].destination)
    first.parent.mkdir(parents=True)
    first.write_bytes(b"appeared meanwhile")
    result = plan.execute()
    assert first.read_bytes() == b"appeared meanwhile"
    assert Path(result.items[0].destination).name == "img1 (2).png" and not result.failed


def test_names_differing_only_in_case_are_numbered(tmp_path):
    make_image(tmp_path / "in" / "one" / "cat_A.jpg")
    make_image(tmp_path / "in" / "two" / "cat_a.jpg")
    plan = plan_sort(NameClassifier(["cat"]), [tmp_path / "in"], tmp_path / "out", "copy", settings=SETTINGS)
    assert [Path(i.destination).name for i in plan.items] == ["cat_A.jpg", "cat_a (2).jpg"]  # same on any file system


def test_numbered_names_stay_within_255_bytes():
    assert numbered("photo.jpg", 1) == "photo.jpg"
    assert numbered("photo.jpg", 12) == "photo (12).jpg"
    assert numbered(".jpg", 2) == ".jpg (2)"
    long = "é" * 125 + ".jpg"  # 254 bytes
    assert len(os.fsencode(numbered(long, 3))) <= 255 and numbered(long, 3).endswith(" (3).jpg")


# ------------------------------------------------------------------------ hostile label names


@pytest.mark.parametrize("label, folder", [
    ("../../etc", "_.._etc"),
    ("a/b", "a_b"),
    ("a\\b", "a_b"),
    (".", "_"),
    ("..", "_"),
    ("", "_"),
    ("   ", "_"),
    (".hidden", "hidden"),
    ("cat. ", "cat"),
    ("/etc/passwd", "_etc_passwd"),
    ("C:\\Windows", "C__Windows"),
    ("what?*<>|\"", "what______"),
    ("CON", "_CON"),
    ("nul.txt", "_nul.txt"),
    ("Com1", "_Com1"),
    ("lpt9 ", "_lpt9"),
    ("console", "console"),
    ("tab\there\nnew\x00line\x7f", "tab_here_new_line_"),
    ("\u202eevil\u200b", "_evil_"),
    ("a\u00a0\u3000b", "a b"),
    ("cafe\u0301", "café"),
    ("family 👨\u200d👩\u200d👧", "family 👨\u200d👩\u200d👧"),
    ("Katze", "Katze"),
])
def test_folder_name_mapping(label, folder):
    assert folder_name(label) == folder


def test_long_labels_are_cut_with_a_hash_and_stay_distinct():
    a, b = "x" * 300, "x" * 299 + "y"
    fa, fb = folder_name(a), folder_name(b)
    assert fa != fb and len(fa.encode()) <= 100 and len(fb.encode()) <= 100
    assert re.fullmatch(r"x{91}~[0-9a-f]{8}", fa)
    assert len(folder_name("ü" * 200).encode()) <= 100


@settings(max_examples=examples(300))
@given(st.text(max_size=300))
def test_any_label_maps_to_one_safe_folder_name(label):
    name = folder_name(label)
    assert name and name not in (".", "..") and not name.startswith((".", " ")) and not name.endswith((".", " "))
    assert not set(name) & set('/\\<>:"|?*\x00')
    assert not [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in "\u200c\u200d"]
    assert len(name.encode("utf-8")) <= 100  # strict UTF-8: valid on every file system
    assert name.split(".")[0].upper() not in ("CON", "PRN", "AUX", "NUL", "COM1", "LPT1")
    assert folder_name(label) == name


def test_labels_mapping_to_one_folder_never_merge(tmp_path):
    folders = folder_names(["cat", "Cat", "a/b", "a_b", "a\\b", "CAT (2)", "unsorted"], tmp_path)
    assert folders == {"cat": "cat", "Cat": "Cat (2)", "a/b": "a_b", "a_b": "a_b (2)", "a\\b": "a_b (3)",
                       "CAT (2)": "CAT (2) (2)", "unsorted": "unsorted"}
    # a name in OUT taken by a file or a link (that could lead outside OUT) is never written into
    (tmp_path / "dog").write_text("a file")
    (tmp_path / "bird").symlink_to(tmp_path.parent)
    (tmp_path / "fish").mkdir()
    assert folder_names(["dog", "bird", "fish"], tmp_path) == {"dog": "dog (2)", "bird": "bird (2)", "fish": "fish"}


HOSTILE = ["../../etc", "a/b", ".", "..", "CON", "x" * 300, "/abs/path", "..\\..\\win", "nul.txt", "A/B"]


@pytest.mark.parametrize("min_score", [None, 1.0])
def test_hostile_labels_never_write_outside_out(tiny_loaded, tmp_path, min_score):
    from zeroshot.tasks.classify import ZeroShotClassifier

    hostile = ZeroShotClassifier(HOSTILE, templates="photo", model=tiny_loaded, cache=False)
    root = tmp_path / "w"
    for i in range(8):
        make_image(root / "deep" / "er" / "photos" / f"p{i}.jpg", COLOURS[i % len(COLOURS)], size=(40 + 3 * i, 30))
    (root / "deep" / "er" / "out").mkdir()
    outside = {k: v for k, v in snapshot(root).items() if not k.startswith("deep/er/out")}
    out = root / "deep" / "er" / "out"
    result = plan_sort(hostile, [root / "deep/er/photos"], out, "copy", min_score=min_score,
                       unknown_label="../../../escape", settings=SETTINGS).execute()
    assert result.done == 8
    real_out = os.path.realpath(out)
    created = [os.path.join(d, n) for d, dirs, files in os.walk(out) for n in dirs + files]
    assert created and all(os.path.realpath(p).startswith(real_out + os.sep) for p in created)
    assert all(os.path.dirname(p) == str(out) for p in created if os.path.isdir(p))  # one level of folders
    assert {k: v for k, v in snapshot(root).items() if not k.startswith("deep/er/out")} == outside
    folders = read_manifest(result.manifest).header["folders"]
    assert len(set(folders.values())) == len(folders)  # "a/b" and "A/B" did not merge
    if min_score == 1.0:
        assert {Path(i.destination).parent.name for i in result.items} == {"_.._.._escape"}
    assert not tmp_path.joinpath("escape").exists() and not Path("/abs/path").exists()


def test_cli_never_writes_through_a_label_folder_that_is_a_link(base, work, tmp_path):
    out = work / "sorted"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for label in LABELS:  # every label's folder name is a link leading out of OUT
        (out / folder_name(label)).symlink_to(elsewhere)
    result = cli("sort", work / "photos", "--into", out, "--copy", "--format", "jsonl", *base)
    assert result.exit_code == 0, result.output
    assert list(elsewhere.iterdir()) == []
    for row in map(json.loads, result.stdout.splitlines()):
        assert os.path.realpath(row["destination"]).startswith(os.path.realpath(out) + os.sep)
        assert not os.path.islink(os.path.dirname(row["destination"]))


# ------------------------------------------------------------------------ cross-device moves


def test_cross_device_move_copies_verifies_then_deletes(clf, work, cross_device):
    before, tree = sources(work), snapshot(work)
    inodes = {p: os.stat(p).st_ino for p in before}
    out = work / "sorted"
    cross_device(out)
    with pytest.raises(OSError) as info:
        os.replace(work / "photos" / "img1.png", out / "x.png")
    assert info.value.errno == errno.EXDEV  # the simulation is in force
    result = plan_sort(clf, [work / "photos"], out, "move", settings=SETTINGS).execute()
    check_sorted(result, before, out, "move")
    assert all(os.stat(i.destination).st_ino != inodes[i.source] for i in result.items)  # copied, not renamed
    assert all(os.stat(i.destination).st_mtime_ns == tree[os.path.relpath(i.source, work)][1] for i in result.items)
    assert not [p for p in out.rglob(".zeroshot-part-*")]
    undone = undo_sort(result.manifest)  # back across the simulated file systems
    assert undone.complete and snapshot(work) == tree


def test_cross_device_copy_that_fails_verification_keeps_the_source(clf, work, cross_device, monkeypatch):
    tree = snapshot(work)
    out = work / "sorted"
    cross_device(out)

    def corrupt(stage, n):
        if stage == "copied":  # the bytes on disk differ from what was read
            partial = next(out.rglob(".zeroshot-part-*"))
            with open(partial, "r+b") as handle:
                handle.seek(10)
                handle.write(b"\x00garbage")

    monkeypatch.setattr(sort_mod, "fault_hook", corrupt)
    result = plan_sort(clf, [work / "photos"], out, "move", settings=SETTINGS).execute()
    assert result.failed == 7 and result.done == 0
    assert all("read back differs" in i.error for i in result.items)
    assert files_under(out) == []  # no copy, no claim, no temporary left
    assert {k: v for k, v in snapshot(work).items() if not k.startswith("sorted")} == tree  # sources intact
    undone = undo_sort(result.manifest)
    assert undone.items == [] and snapshot(work) == tree


def test_cross_device_move_whose_source_cannot_be_deleted_keeps_one_copy(clf, work, cross_device, monkeypatch):
    tree = snapshot(work)
    out = work / "sorted"
    cross_device(out)
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if str(path).startswith(str(work / "photos")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    result = plan_sort(clf, [work / "photos"], out, "move", settings=SETTINGS).execute()
    assert result.failed == 7 and all("cannot delete the source" in i.error for i in result.items)
    assert files_under(out) == []
    monkeypatch.setattr(os, "unlink", real_unlink)
    undo_sort(result.manifest)
    assert snapshot(work) == tree


def test_hard_links_across_file_systems_fail_per_file(clf, work, cross_device):
    out = work / "sorted"
    cross_device(out)
    result = plan_sort(clf, [work / "photos"], out, "link", settings=SETTINGS).execute()
    assert result.failed == 7 and "cannot cross file systems" in result.items[0].error
    assert files_under(out) == []


# ------------------------------------------------------------------------------ interruption


class Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("op", ["copy", "move", "symlink"])
def test_interrupted_after_n_files_then_undo_restores_everything(clf, work, op):
    tree = snapshot(work)
    out = work / "sorted"
    plan = plan_sort(clf, [work / "photos"], out, op, settings=SETTINGS)
    seen = []

    def stop_after_three(item):
        seen.append(item)
        if len(seen) == 3:
            raise Stop()

    with pytest.raises(Stop):
        execute_sort(plan, on_item=stop_after_three)
    state = read_manifest(plan.manifest)
    assert not state.finished and len(state.done_sources) == 3
    assert len(files_under(out)) == 3
    undone = undo_sort(plan.manifest)
    assert undone.complete and len(undone.items) == 3
    assert snapshot(work) == tree


@pytest.mark.parametrize("op", ["copy", "move"])
def test_interrupted_after_n_files_then_rerun_finishes_each_image_once(clf, work, op):
    before, tree = sources(work), snapshot(work)
    out = work / "sorted"
    plan = plan_sort(clf, [work / "photos"], out, op, settings=SETTINGS)
    count = []

    def stop_after_four(item):
        count.append(item)
        if len(count) == 4:
            raise Stop()

    with pytest.raises(Stop):
        execute_sort(plan, on_item=stop_after_four)
    again = plan_sort(clf, [work / "photos"], out, op, settings=SETTINGS)  # the same command
    assert again.resume is not None and again.manifest == plan.manifest and again.resumed == 4
    assert len(again.items) == 3
    result = again.execute()
    assert result.done == 3 and result.resumed == 4 and read_manifest(plan.manifest).finished
    files = files_under(out)
    assert sorted(digest(p) for p in files) == sorted(before.values())  # every image exactly once
    undone = undo_sort(plan.manifest)
    assert undone.complete and len(undone.items) == 7 and snapshot(work) == tree


STAGES = ["started", "claimed", "copied", "replaced", "unlinked"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("then", ["resume", "undo"])
def test_interrupted_inside_a_cross_device_move_is_left_clean(clf, work, cross_device, monkeypatch, stage, then):
    before, tree = sources(work), snapshot(work)
    out = work / "sorted"
    cross_device(out)

    def interrupt(at, n):
        if at == stage and n == 2:
            raise Stop()

    monkeypatch.setattr(sort_mod, "fault_hook", interrupt)
    plan = plan_sort(clf, [work / "photos"], out, "move", settings=SETTINGS)
    with pytest.raises(Stop):
        plan.execute()
    monkeypatch.setattr(sort_mod, "fault_hook", None)
    assert not list(out.rglob(".zeroshot-part-*"))
    on_disk = [digest(p) for p in files_under(work)]  # every image exactly once, somewhere
    assert sorted(on_disk) == sorted(before.values())
    if then == "resume":
        result = plan_sort(clf, [work / "photos"], out, "move", settings=SETTINGS).execute()
        assert result.resumed + result.done == 7 and not result.failed
        assert sorted(digest(p) for p in files_under(out)) == sorted(before.values())
        assert not files_under(work / "photos")
    assert undo_sort(plan.manifest).complete
    assert snapshot(work) == tree


KILLER = textwrap.dedent("""
    import errno, os, signal, sys
    import zeroshot.tasks.sort as sort_mod

    stage, number, how = os.environ["ZS_KILL_AT"].split(":")
    def hook(at, n):
        if at == stage and n == int(number):
            os.kill(os.getpid(), getattr(signal, how))
    sort_mod.fault_hook = hook
    top = os.path.abspath(os.environ["ZS_OTHER_DEVICE"]) + os.sep
    def wrap(real):
        def fake(src, dst, *args, **kwargs):
            if os.path.abspath(src).startswith(top) != os.path.abspath(dst).startswith(top):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst, *args, **kwargs)
        return fake
    for name in ("rename", "replace", "link"):
        setattr(os, name, wrap(getattr(os, name)))
    from zeroshot.cli import main
    sys.argv = ["zeroshot", *sys.argv[1:]]
    main()
""")


def run_killed(args, kill_at: str, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ZS_KILL_AT=kill_at, ZS_OTHER_DEVICE=str(out))
    return subprocess.run([sys.executable, "-c", KILLER, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("stage, then", [("claimed", "resume"), ("copied", "undo"), ("replaced", "resume"),
                                         ("replaced", "undo"), ("unlinked", "undo")])
def test_kill_9_inside_a_move_then_rerun_or_undo(clf, base, work, stage, then):
    before, tree = sources(work), snapshot(work)
    out = work / "sorted"
    args = ["sort", work / "photos", "--into", out, "--move", *base]
    killed = run_killed(args, f"{stage}:3:SIGKILL", out)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    manifest = next(out.glob(".zeroshot-sort-*.jsonl"))
    state = read_manifest(manifest)
    assert state.ops[3]["status"] == "started" and not state.finished  # killed in the middle of image 3
    assert len(state.done_sources) == 3
    if then == "resume":
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert "resuming the interrupted sort" in result.stderr
        assert sorted(digest(p) for p in files_under(out)) == sorted(before.values())
        assert not files_under(work / "photos") and not list(work.rglob(".zeroshot-part-*"))
    result = cli("sort", "--undo", manifest)
    assert result.exit_code == 0, result.output
    assert snapshot(work) == tree


def test_kill_9_during_undo_then_undo_again(clf, base, work):
    tree = snapshot(work)
    out = work / "sorted"
    cross = plan_sort(clf, [work / "photos"], out, "move", settings=SETTINGS).execute()
    killed = run_killed(["sort", "--undo", cross.manifest], "copied:4:SIGKILL", out)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    result = cli("sort", "--undo", cross.manifest)
    assert result.exit_code == 0, result.output
    assert snapshot(work) == tree


def test_sigterm_exits_143_and_leaves_a_resumable_sort(base, work):
    before = sources(work)
    out = work / "sorted"
    args = ["sort", work / "photos", "--into", out, "--copy", *base]
    terminated = run_killed(args, "copied:2:SIGTERM", out)
    assert terminated.returncode == 143, terminated.stderr
    assert terminated.stderr.strip().splitlines()[-1].startswith("terminated; every finished file is recorded in")
    assert "zeroshot sort --undo" in terminated.stderr
    assert len(files_under(out)) == 2 and not list(out.rglob(".zeroshot-part-*"))  # image 2 rolled back
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert sorted(digest(p) for p in files_under(out)) == sorted(before.values())


def test_ctrl_c_exits_130_with_the_way_back(base, work, monkeypatch):
    def interrupt(at, n):
        if at == "started" and n == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(sort_mod, "fault_hook", interrupt)
    result = cli("sort", work / "photos", "--into", work / "sorted", "--move", *base)
    assert result.exit_code == 130
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted; every finished file is recorded in") and "--undo" in last


# -------------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize("args, message", [
    (["--copy"], "--into OUT is missing"),
    (["--into", "OUT"], "choose what to do with the images"),
    (["--into", "OUT", "--copy", "--move"], "not --copy and --move"),
    (["--into", "OUT", "--copy", "--min-score", "2"], "--min-score"),
])
def test_usage_errors_exit_2_in_one_line(base, work, args, message):
    result = cli("sort", work / "photos", *[a.replace("OUT", str(work / "o")) for a in args], *base)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (work / "o").exists()


def test_usage_errors_of_undo_and_missing_paths(work, tmp_path):
    result = cli("sort", "--into", work / "o", "--copy", "-l", "a", "-l", "b")
    assert result.exit_code == 2 and "give the images to sort" in result.stderr
    result = cli("sort", work / "photos", "--undo", tmp_path / "m.jsonl")
    assert result.exit_code == 2 and "--undo MANIFEST works from the manifest alone; remove PATH" in result.stderr
    result = cli("sort", "--undo", tmp_path / "missing.jsonl")
    assert result.exit_code == 2 and "no such file" in result.stderr
    (tmp_path / "other.jsonl").write_text('{"not": "a manifest"}\n')
    result = cli("sort", "--undo", tmp_path / "other.jsonl")
    assert result.exit_code == 2 and "is not a zeroshot sort manifest" in result.stderr


def test_skipped_images_are_reported_not_moved_and_exit_3(base, work):
    broken = work / "photos" / "broken.jpg"
    broken.write_bytes(b"broken, not an image")
    out = work / "sorted"
    result = cli("sort", work / "photos", "--into", out, "--move", "--format", "jsonl", *base)
    assert result.exit_code == 3, result.output
    rows = {r["source"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows[str(broken)]["status"] == "skipped" and rows[str(broken)]["error"].startswith("not_an_image: ")
    assert rows[str(broken)]["destination"] is None
    assert broken.read_bytes() == b"broken, not an image"
    assert f"skipping {broken}: not_an_image" in result.stderr and "skipped 1" in result.stderr
    assert len(files_under(out)) == 7


def test_into_that_cannot_be_created_exits_1(base, work):
    (work / "file").write_text("x")
    result = cli("sort", work / "photos", "--into", work / "file" / "sub", "--copy", *base)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: --into ")


def test_failed_operations_exit_3_and_leave_the_file(base, work, cross_device):
    cross_device(work / "sorted")
    result = cli("sort", work / "photos", "--into", work / "sorted", "--link", *base)
    assert result.exit_code == 3
    assert "could not link" in result.stderr and "failed 7" in result.stderr
    assert len(files_under(work / "photos")) == 7


# ------------------------------------------------------------------------------------- undo


def test_undo_never_overwrites_what_appeared_at_the_original_place(clf, work):
    tree = snapshot(work)
    out = work / "sorted"
    result = plan_sort(clf, [work / "photos"], out, "move", settings=SETTINGS).execute()
    intruder = work / "photos" / "img1.png"
    intruder.write_bytes(b"a new file with the old name")
    answer = cli("sort", "--undo", result.manifest, "--format", "jsonl")
    assert answer.exit_code == 3
    rows = list(map(json.loads, answer.stdout.splitlines()))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["source"] == str(intruder) and "now exists" in failed[0]["error"]
    assert intruder.read_bytes() == b"a new file with the old name"
    assert os.path.exists(failed[0]["destination"])  # the sorted file stays where it is
    assert "could not undo 1" in answer.stderr and result.manifest.exists()
    intruder.unlink()  # once the obstacle is gone, undo finishes the job
    again = cli("sort", "--undo", result.manifest)
    assert again.exit_code == 0, again.output
    assert snapshot(work) == tree


def test_undo_keeps_a_copy_changed_since_and_a_link_that_is_the_only_copy(clf, work):
    out = work / "sorted"
    copies = plan_sort(clf, [work / "photos"], out, "copy", settings=SETTINGS).execute()
    edited = Path(copies.items[0].destination)
    edited.write_bytes(b"edited by the user")
    undone = undo_sort(copies.manifest)
    assert [i.destination for i in undone.failed] == [str(edited)] and edited.exists()
    assert len(files_under(out)) == 1

    links_out = work / "linked"
    links = plan_sort(clf, [work / "photos"], links_out, "link", settings=SETTINGS).execute()
    original = Path(links.items[0].source)
    original.unlink()
    undone = undo_sort(links.manifest)
    assert len(undone.failed) == 1 and "only copy" in undone.failed[0].error
    assert Path(links.items[0].destination).exists()


def test_a_copy_or_link_removed_by_the_user_counts_as_undone(clf, work):
    tree = snapshot(work)
    out = work / "sorted"
    result = plan_sort(clf, [work / "photos"], out, "symlink", settings=SETTINGS).execute()
    os.unlink(result.items[0].destination)
    undone = undo_sort(result.manifest)
    assert undone.complete and [i.status for i in undone.items].count("gone") == 1
    assert snapshot(work) == tree


def test_a_second_undo_has_nothing_left(clf, work, tmp_path):
    manifest = tmp_path / "record.jsonl"  # outside OUT: kept after the undo
    result = plan_sort(clf, [work / "photos"], work / "sorted", "copy", settings=SETTINGS,
                       manifest=manifest).execute()
    assert result.manifest == manifest
    assert undo_sort(manifest).complete and manifest.exists()
    answer = cli("sort", "--undo", manifest)
    assert answer.exit_code == 0 and "nothing left to undo" in answer.stderr


# -------------------------------------------------------------------------- the other options


def test_min_score_sends_uncertain_images_to_the_unknown_folder(clf, work):
    result = plan_sort(clf, [work / "photos"], work / "sorted", "copy", min_score=0.999, settings=SETTINGS).execute()
    for item in result.items:
        folder = Path(item.destination).parent.name
        assert folder == ("unsorted" if item.score < 0.999 else folder_name(item.label))
    make_image(work / "photos" / "cat_low.jpg")
    by_name = plan_sort(NameClassifier(["cat"]), [work / "photos"], work / "s2", "copy", min_score=0.5,
                        unknown_label="maybe", settings=SETTINGS)
    placed = {Path(i.source).name: Path(i.destination).parent.name for i in by_name.items}
    assert placed["cat_low.jpg"] == "maybe" and placed["img1.png"] == "cat"


def test_resume_refuses_other_settings(clf, work):
    out = work / "sorted"
    plan = plan_sort(clf, [work / "photos"], out, "copy", settings=SETTINGS)

    def stop(item):
        raise Stop()

    with pytest.raises(Stop):
        execute_sort(plan, on_item=stop)
    with pytest.raises(UsageError, match="interrupted sort with other settings \\(operation differ"):
        plan_sort(clf, [work / "photos"], out, "move", settings=SETTINGS)
    with pytest.raises(UsageError, match="--min-score differ"):
        plan_sort(clf, [work / "photos"], out, "copy", min_score=0.5, settings=SETTINGS)


def test_sorting_a_folder_into_itself_leaves_sorted_images_alone(clf, work):
    photos = work / "photos"
    first = plan_sort(clf, [photos], photos, "move", settings=SETTINGS).execute()
    assert first.done == 7
    again = plan_sort(clf, [photos], photos, "move", settings=SETTINGS)
    assert again.items == [] and again.left_alone == 7


def test_manifest_records_every_operation(clf, work):
    work.joinpath("photos", "broken.png").write_bytes(b"broken")
    result = plan_sort(clf, [work / "photos"], work / "sorted", "copy", settings=SETTINGS).execute()
    lines = [json.loads(line) for line in result.manifest.read_text().splitlines()]
    header, *records = lines
    assert header["type"] == "header" and header["op"] == "copy" and header["into"] == str(work / "sorted")
    assert set(header["folders"]) == {*LABELS, "unsorted"}
    assert header["settings"]["labels"] == LABELS
    ops = [r for r in records if r["type"] == "op"]
    fields = {"op", "source", "destination", "size", "sha256", "label", "score", "status", "error"}
    assert all(fields <= set(r) for r in ops)
    done = [r for r in ops if r["status"] == "done"]
    assert len(done) == 7 and all(r["sha256"] == digest(r["destination"]) and r["size"] > 0 for r in done)
    assert [r["status"] for r in ops if r["op"] == "skip"] == ["skipped"]
    started = [r["n"] for r in ops if r["status"] == "started"]
    assert sorted(started) == sorted(r["n"] for r in done)  # recorded before, then done
    assert [r for r in records if r["type"] == "mkdir"][0]["destination"] == str(work / "sorted")
    assert records[-1]["type"] == "end" and records[-1]["done"] == 7


def test_plan_accepts_a_discovery_and_the_api_is_exported(work):
    import zeroshot

    assert zeroshot.plan_sort is plan_sort and zeroshot.undo_sort is undo_sort
    plan = plan_sort(NameClassifier(["cat"]), Discovery([]), work / "o", "copy")
    assert plan.items == [] and not (work / "o").exists()


def test_report_goes_to_output_and_stdout_stays_empty(base, work, tmp_path):
    report = tmp_path / "report.csv"
    result = cli("sort", work / "photos", "--into", work / "sorted", "--symlink", "-o", report, *base)
    assert result.exit_code == 0 and result.stdout == ""
    lines = report.read_text().splitlines()
    assert lines[0] == "source,destination,label,score,status,error" and len(lines) == 8
    assert all(",done," in line for line in lines[1:])
    assert f"wrote {report}" in result.stderr
