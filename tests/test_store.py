"""The embedding store: keys, incremental index (exact counts), reuse by content, integrity
check, prune, export, portability, and the ``index`` / ``store`` commands. The subprocess
tests (kill -9, two concurrent writers) are in test_store_crash.py."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import sys

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import zeroshot.store.index as store_index
from zeroshot.cli import app
from zeroshot.data.discover import discover
from zeroshot.encode.embed import EmbedSettings, embed_images
from zeroshot.errors import UsageError
from zeroshot.models import load_model
from zeroshot.store import FileRecord, Store, StoreError, content_hash, default_store_dir, embedding_key
from zeroshot.store.files import HEAD_BYTES
from zeroshot.store.keys import preprocess_identity

from conftest import make_image, save_random_model

SETTINGS = EmbedSettings(batch_size=4, workers=0)  # exact decode
runner = CliRunner()


@pytest.fixture(autouse=True)
def isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROSHOT_STORE_DIR", str(tmp_path / "default-store"))


def colour(i: int) -> tuple[int, int, int]:
    return ((i * 37) % 256, (i * 91 + 40) % 256, (i * 53 + 80) % 256)


def make_folder(root, n, start=0, size=(40, 30)):
    return [make_image(root / f"img{i}.png", colour(i), size=size) for i in range(start, start + n)]


@pytest.fixture()
def counted(monkeypatch):
    """How many images went through the one embedding loop, per index run."""
    seen: list[int] = []

    def counting(loaded, inputs, settings=EmbedSettings(), preprocessor=None):
        seen.append(len(inputs))
        yield from embed_images(loaded, inputs, settings, preprocessor)

    monkeypatch.setattr(store_index, "embed_images", counting)
    return seen


def real(path) -> str:
    return os.path.realpath(path)


def as_dict(store, key) -> dict[str, torch.Tensor]:
    paths, matrix = store.matrix(key)
    return dict(zip(paths, matrix))


# ------------------------------------------------------------------------------------ keys


def test_key_covers_model_weights_preprocessing_decode_precision(tiny_loaded, tmp_path):
    base = embedding_key(tiny_loaded, fast_decode=True)
    assert base.decode == "fast" and base.precision == "fp32" and base.model == "zs-tiny"
    assert embedding_key(tiny_loaded, fast_decode=True).digest == base.digest
    changed = [
        embedding_key(tiny_loaded, fast_decode=False),
        embedding_key(dataclasses.replace(tiny_loaded, precision="bf16"), True),
        embedding_key(dataclasses.replace(tiny_loaded, weights_id=tiny_loaded.weights_id + "x"), True),
        embedding_key(dataclasses.replace(tiny_loaded, name="zs-tiny-wide"), True),
        embedding_key(dataclasses.replace(tiny_loaded, preprocess=lambda img: img), True),
    ]
    assert len({base.digest, *(k.digest for k in changed)}) == 1 + len(changed)
    # How the weights were spelled is shown, not part of the identity.
    assert embedding_key(dataclasses.replace(tiny_loaded, pretrained="other/spelling.pt"), True).digest == base.digest


def test_preprocess_identity_has_no_memory_addresses():
    def step(img):
        return img

    from torchvision.transforms import Compose

    text = preprocess_identity(Compose([step]))
    assert "step" in text and " at 0x" not in text


def test_random_weights_are_refused(tiny_loaded, tmp_path):
    with pytest.raises(UsageError, match="random weights"):
        embedding_key(dataclasses.replace(tiny_loaded, weights_id="random-init"), True)


def test_content_hash_head_tail_and_size(tmp_path):
    big = tmp_path / "big.bin"
    body = bytearray(os.urandom(16)) * (HEAD_BYTES // 8)  # 2 MiB
    big.write_bytes(body)
    first = content_hash(big)
    body[HEAD_BYTES + 100] ^= 0xFF  # the middle: not looked at (documented)
    big.write_bytes(body)
    assert content_hash(big) == first
    body[-1] ^= 0xFF  # the tail is
    big.write_bytes(body)
    assert content_hash(big) != first
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    other = tmp_path / "other.bin"
    other.write_bytes(b"abc")
    assert content_hash(small) == content_hash(other) and len(content_hash(small)) == 32
    other.write_bytes(b"abcd")
    assert content_hash(small) != content_hash(other)


def test_default_location(monkeypatch, tmp_path):
    assert default_store_dir() == tmp_path / "default-store"
    monkeypatch.delenv("ZEROSHOT_STORE_DIR")
    assert default_store_dir().parts[-2:] == ("zeroshot", "store")


# ------------------------------------------------------------------------- incremental index


def test_incremental_index_exact_counts_and_rename_keeps_the_vector(tiny_loaded, tmp_path, counted):
    root = tmp_path / "photos"
    make_folder(root, 20)
    store = Store.open(tmp_path / "store")
    first = store.index(tiny_loaded, [root], SETTINGS)
    assert (first.encoded, first.reused, first.total, counted) == (20, 0, 20, [20])
    key = first.key
    before = as_dict(store, key)
    assert set(before) == {real(p) for p in root.iterdir()}

    make_folder(root, 10, start=20)  # add 10
    make_image(root / "img3.png", colour(99), size=(48, 30))  # change 1 (other content and size)
    (root / "img4.png").unlink()  # delete 2
    (root / "img5.png").unlink()
    (root / "img6.png").rename(root / "renamed.png")  # rename 1

    stats = store.index(tiny_loaded, [root], SETTINGS)
    assert counted[1:] == [11]  # exactly 11 images through the model
    assert (stats.encoded, stats.dropped, stats.renamed, stats.copied, stats.skipped) == (11, 2, 1, 0, 0)
    assert stats.reused == 20 - 1 - 2 - 1 and stats.total == 28
    after = as_dict(store, key)
    assert set(after) == {real(p) for p in root.iterdir()}  # every file once, nothing stale
    assert torch.equal(after[real(root / "renamed.png")], before[real(root / "img6.png")])
    assert not torch.equal(after[real(root / "img3.png")], before[real(root / "img3.png")])
    assert store.count(key) == 28 and store.check() == []

    again = store.index(tiny_loaded, [root], SETTINGS)  # nothing to do
    assert (again.encoded, again.reused, again.dropped, counted[2:]) == (0, 28, 0, [0])


def test_stored_vectors_equal_the_embedding_loop(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    files = make_folder(root, 6)
    with Store.open(tmp_path / "store") as store:
        key = store.index(tiny_loaded, [root], SETTINGS).key
        found, stored = store.vectors(key, files)
    direct = torch.cat([b.embeddings for b in embed_images(tiny_loaded, discover(files).items, SETTINGS)])
    assert found.all()
    assert (stored - direct).abs().max() < 2e-3  # float16 storage
    assert torch.allclose(stored.norm(dim=1), torch.ones(6), atol=2e-3)


def test_copies_and_touched_files_reuse_vectors(tiny_loaded, tmp_path, counted):
    root = tmp_path / "photos"
    make_folder(root, 5)
    store = Store.open(tmp_path / "store")
    key = store.index(tiny_loaded, [root], SETTINGS).key
    before = as_dict(store, key)
    shutil.copy(root / "img1.png", root / "copy of img1.png")
    st = os.stat(root / "img2.png")
    os.utime(root / "img2.png", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same content
    stats = store.index(tiny_loaded, [root], SETTINGS)
    assert (stats.encoded, stats.copied, stats.reused, stats.renamed, counted[1:]) == (0, 1, 5, 0, [0])
    after = as_dict(store, key)
    assert torch.equal(after[real(root / "copy of img1.png")], before[real(root / "img1.png")])
    assert len(after) == 6
    # The touched file's new mtime was recorded: the next run's fast check passes.
    assert store.index(tiny_loaded, [root], SETTINGS).reused == 6 and counted[2:] == [0]


def test_other_checkpoint_or_decode_setting_never_returns_old_vectors(tiny_loaded, tiny_ckpt, tmp_path, counted):
    root = tmp_path / "photos"
    files = [make_image(root / f"p{i}.jpg", colour(i), size=(300, 200)) for i in range(4)]
    store = Store.open(tmp_path / "store")
    fast = dataclasses.replace(SETTINGS, fast_decode=True)
    key_a = store.index(tiny_loaded, [root], fast).key
    vectors_a = as_dict(store, key_a)

    other_ckpt = save_random_model("zs-tiny", tmp_path / "other.pt", seed=1)
    other = load_model("zs-tiny", str(other_ckpt), device="cpu", precision="fp32")
    key_b = embedding_key(other, True)
    assert key_b.digest != key_a.digest
    found, _ = store.vectors(key_b, files)
    assert not found.any()  # nothing of checkpoint A is offered for B
    stats_b = store.index(other, [root], fast)
    assert stats_b.key == key_b and (stats_b.encoded, stats_b.reused) == (4, 0)
    vectors_b = as_dict(store, key_b)
    assert all(not torch.equal(vectors_b[p], vectors_a[p]) for p in vectors_a)
    direct = torch.cat([b.embeddings for b in embed_images(other, discover(files).items, fast)])
    assert (store.vectors(key_b, files)[1] - direct).abs().max() < 2e-3

    stats_exact = store.index(tiny_loaded, [root], SETTINGS)  # same weights, exact decode: a new key
    assert stats_exact.key.decode == "exact" and (stats_exact.encoded, stats_exact.reused) == (4, 0)
    assert counted == [4, 4, 4]
    assert [k.entries for k in store.list_keys()] == [4, 4, 4]
    kept = as_dict(store, key_a)
    assert kept.keys() == vectors_a.keys() and all(torch.equal(kept[p], v) for p, v in vectors_a.items())


def test_no_recursive_and_hidden_runs_drop_nothing_they_did_not_look_at(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 3)
    make_image(root / "sub" / "deep.png", colour(7))
    make_image(root / ".hidden.png", colour(8))
    store = Store.open(tmp_path / "store")
    assert store.index(tiny_loaded, [root], SETTINGS, include_hidden=True).encoded == 5
    stats = store.index(tiny_loaded, [root], SETTINGS, recursive=False)
    assert (stats.dropped, stats.reused, store.count(stats.key)) == (0, 3, 5)
    shutil.rmtree(root / "sub")
    assert store.index(tiny_loaded, [root], SETTINGS).dropped == 1  # a deleted folder's files go


def test_broken_files_are_skipped_and_a_broken_change_drops_the_stale_vector(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 4)
    (root / "bad.png").write_bytes(b"not an image")
    store = Store.open(tmp_path / "store")
    skipped: list[tuple[str, str]] = []
    stats = store.index(tiny_loaded, [root], SETTINGS, on_skip=lambda p, r: skipped.append((p, r)))
    assert (stats.encoded, stats.skipped) == (4, 1)
    assert skipped == [(str(root / "bad.png"), skipped[0][1])] and skipped[0][1].startswith("not_an_image: ")
    (root / "img2.png").write_bytes(b"now broken")
    stats = store.index(tiny_loaded, [root], SETTINGS)
    assert stats.skipped == 2 and real(root / "img2.png") not in as_dict(store, stats.key)
    assert store.count(stats.key) == 3


def test_progress_stages(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 5)
    calls: list[tuple[str, int, int]] = []
    Store.open(tmp_path / "store").index(tiny_loaded, [root], SETTINGS, on_progress=lambda *a: calls.append(a))
    assert calls[0] == ("checking", 0, 5) and ("checking", 5, 5) in calls
    assert [c for c in calls if c[0] == "encoding"] == [("encoding", 0, 5), ("encoding", 4, 5), ("encoding", 5, 5)]


def test_portable_store_beside_the_photos(tiny_loaded, tmp_path, counted):
    library = tmp_path / "library"
    make_folder(library / "2024", 4)
    store_dir = library / ".zeroshot"
    with Store.open(store_dir) as store:
        key = store.index(tiny_loaded, [library], SETTINGS).key
        stored = [row[0] for row in store.conn.execute("SELECT path FROM files")]
    assert sorted(stored) == [f"2024/img{i}.png".encode() for i in range(4)]  # relative to the library
    moved = tmp_path / "elsewhere" / "library"
    moved.parent.mkdir()
    library.rename(moved)
    with Store.open(moved / ".zeroshot") as store:
        paths, _ = store.matrix(key)
        assert paths == [real(moved / "2024" / f"img{i}.png") for i in range(4)]
        assert store.vectors(key, [moved / "2024" / "img1.png"])[0].all()
        stats = store.index(tiny_loaded, [moved], SETTINGS)
    assert (stats.encoded, stats.reused, counted[1:]) == (0, 4, [0])


def test_moved_folder_with_a_central_store_is_renamed_not_reencoded(tiny_loaded, tmp_path, counted):
    make_folder(tmp_path / "a", 3)
    store = Store.open()  # the default location
    assert store.location == tmp_path / "default-store"
    store.index(tiny_loaded, [tmp_path / "a"], SETTINGS)
    (tmp_path / "a").rename(tmp_path / "b")
    stats = store.index(tiny_loaded, [tmp_path / "b"], SETTINGS)
    assert (stats.renamed, stats.encoded, counted[1:]) == (3, 0, [0])
    assert sorted(store.matrix(stats.key)[0]) == sorted(real(p) for p in (tmp_path / "b").iterdir())


@pytest.mark.skipif(sys.platform != "linux", reason="file names that are not UTF-8 need a Linux file system")
def test_file_names_that_are_not_utf8(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    root.mkdir()
    odd = os.path.join(os.fsencode(root), b"caf\xe9, \"x\"\n.png")
    os.rename(make_image(tmp_path / "tmp.png", colour(1)), odd)
    store = Store.open(tmp_path / "store")
    stats = store.index(tiny_loaded, [root], SETTINGS)
    paths, _ = store.matrix(stats.key)
    assert stats.encoded == 1 and os.fsencode(paths[0]) == odd
    assert store.index(tiny_loaded, [root], SETTINGS).reused == 1
    store.export_parquet(tmp_path / "e.parquet")
    assert pd.read_parquet(tmp_path / "e.parquet")["path"][0].endswith("caf\ufffd, \"x\"\n.png")


# ------------------------------------------------------------------- vectors / add / matrix


def test_vectors_add_and_matrix_for_later_consumers(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    files = make_folder(root, 3)
    key = embedding_key(tiny_loaded, fast_decode=False)
    store = Store.open(tmp_path / "store")
    found, matrix = store.vectors(key, files)
    assert not found.any() and matrix.shape == (3, 0)
    vectors = torch.nn.functional.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    assert store.add(key, [FileRecord.of(files[0], vectors[0]), FileRecord.of(files[2], vectors[1])]) == 2
    found, matrix = store.vectors(key, [files[2], files[1], files[0], tmp_path / "none.png"])
    assert found.tolist() == [True, False, True, False]
    assert torch.allclose(matrix[0], vectors[1], atol=1e-3) and matrix[1].abs().sum() == 0

    paths, m1 = store.matrix(key)
    assert paths == [real(files[0]), real(files[2])] and m1.dtype == torch.float32
    assert store.matrix(key)[1] is m1  # loaded once
    st = os.stat(files[0])
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same content, newer mtime
    assert store.vectors(key, [files[0]])[0].tolist() == [True]  # recognised by content
    assert store.vectors(key, [files[0]], by_content=False)[0].tolist() == [False]
    make_image(files[2], colour(50), size=(41, 30))  # changed: the stored vector no longer applies
    assert store.vectors(key, [files[2]])[0].tolist() == [False]
    store.add(key, [FileRecord.of(files[1], vectors[0])])
    assert len(store.matrix(key)[0]) == 3  # reloaded after a write

    other = Store.open(tmp_path / "store")  # another connection (as another process would)
    other.add(key, [FileRecord.of(make_image(root / "new.png", colour(9)), vectors[1])])
    assert len(store.matrix(key)[0]) == 4  # a write elsewhere is seen too


# ------------------------------------------------------------------------- check / errors


def test_check_reports_each_kind_of_problem(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 6)
    store = Store.open(tmp_path / "store")
    stats = store.index(tiny_loaded, [root], SETTINGS)
    assert store.check() == []
    conn = sqlite3.connect(store.database)
    rows = [r[0] for r in conn.execute("SELECT id FROM files ORDER BY id")]
    import numpy as np

    conn.execute("UPDATE files SET vector = ? WHERE id = ?", (b"\x00\x01", rows[0]))
    conn.execute("UPDATE files SET vector = ? WHERE id = ?", (np.full(32, np.nan, "<f2").tobytes(), rows[1]))
    conn.execute("UPDATE files SET vector = ? WHERE id = ?", (np.zeros(32, "<f2").tobytes(), rows[2]))
    conn.execute("UPDATE files SET hash = ? WHERE id = ?", (b"short", rows[3]))
    conn.execute("INSERT INTO files (key_id, path, size, mtime_ns, hash, vector, added) "
                 "SELECT 999, path, size, mtime_ns, hash, vector, added FROM files WHERE id = ?", (rows[4],))
    conn.commit()
    conn.close()
    problems = store.check()
    text = "\n".join(problems)
    assert len(problems) == 5, text
    for expected in ("vector of 2 bytes, expected 64", "NaN or infinity", "not unit length", "malformed content hash",
                     "1 entries belong to no key"):
        assert expected in text
    assert stats.key.id in text


def test_a_damaged_database_is_a_problem_or_a_one_line_error(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 40)
    store_dir = tmp_path / "store"
    with Store.open(store_dir) as store:
        store.index(tiny_loaded, [root], SETTINGS)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(store.database.read_bytes())
    for offset in range(4096 * 3, len(data), 4096 * 4):  # scribble over some pages (not the header)
        data[offset:offset + 64] = b"\xAB" * 64
    store.database.write_bytes(bytes(data))
    try:
        problems = Store.open(store_dir).check()
    except StoreError as err:
        assert "\n" not in str(err) and "damaged" in str(err)
    else:
        assert problems and all("\n" not in p for p in problems)
    result = cli("store", "check", "--store", store_dir)  # the command says so too, in lines, exit 1
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stdout.strip() or result.stderr.startswith("error: store ")


def test_open_refuses_what_is_not_a_store(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "embeddings.sqlite3").write_bytes(b"hello, not a database" * 100)
    with pytest.raises(StoreError, match="not a zeroshot store"):
        Store.open(junk)
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a zeroshot store"):
        Store.open(other)
    newer = Store.open(tmp_path / "newer")
    newer.conn.execute("PRAGMA user_version = 99")
    newer.close()
    with pytest.raises(StoreError, match="newer zeroshot"):
        Store.open(tmp_path / "newer")
    with pytest.raises(StoreError, match="no embedding store"):
        Store.open(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


# ------------------------------------------------------------------------- prune / export


def test_prune_missing_files_other_keys_and_gone_folders(tiny_loaded, tiny_ckpt, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 4)
    make_folder(root / "usb", 2, start=10)
    store = Store.open(tmp_path / "store")
    key_exact = store.index(tiny_loaded, [root], SETTINGS).key
    key_fast = store.index(tiny_loaded, [root], dataclasses.replace(SETTINGS, fast_decode=True)).key
    (root / "img1.png").unlink()
    shutil.rmtree(root / "usb")  # looks like an unmounted drive

    preview = store.prune(missing_files=True, dry_run=True)
    assert len(preview.files) == 2 and store.count() == 12
    removed = store.prune(missing_files=True)
    assert sorted(removed.files) == sorted([(key_exact.id, real(root / "img1.png")),
                                            (key_fast.id, real(root / "img1.png"))])
    assert len(removed.unreachable) == 4 and store.count() == 10
    assert len(store.prune(missing_files=True, gone_folders=True).files) == 4 and store.count() == 6

    with pytest.raises(UsageError, match="matches no key"):
        store.prune(keep=["ffffffffffff"])
    removed = store.prune(keep=[key_fast.id[:6]])
    assert [k.key for k in removed.keys] == [key_exact] and removed.entries_removed == 3
    assert [k.key for k in store.list_keys()] == [key_fast] and store.check() == []
    store.vacuum()


def test_export_parquet(tiny_loaded, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 5)
    store = Store.open(tmp_path / "store")
    key = store.index(tiny_loaded, [root], SETTINGS).key
    store.index(tiny_loaded, [root], dataclasses.replace(SETTINGS, fast_decode=True))
    out = tmp_path / "vectors.parquet"
    assert store.export_parquet(out) == 10
    df = pd.read_parquet(out)
    assert list(df.columns) == ["path", "model", "pretrained", "key", "embedding"]
    assert set(df["model"]) == {"zs-tiny"} and df["key"].nunique() == 2
    assert store.export_parquet(out, key) == 5
    df = pd.read_parquet(out)
    paths, matrix = store.matrix(key)
    got = dict(zip(df["path"], df["embedding"]))
    assert sorted(got) == sorted(paths)
    assert all(torch.equal(torch.tensor(got[p]), row) for p, row in zip(paths, matrix))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".vectors")]


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture()
def index_args(tiny_ckpt, tmp_path):
    return ["-m", "zs-tiny", "-p", str(tiny_ckpt), "-d", "cpu", "-j", "0", "-b", "4", "--store", str(tmp_path / "st")]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_index_summary_skips_and_exit_codes(index_args, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 5)
    (root / "bad.jpg").write_bytes(b"<html>")
    result = cli("index", root, *index_args)
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert f"skipping {root / 'bad.jpg'}: not_an_image: not a recognised image format" in lines
    summary = [line for line in lines if line.startswith("index: ")]
    assert len(summary) == 1 and summary[0].startswith(
        "index: 5 encoded, 0 reused, 0 renamed, 0 copied, 0 dropped, 1 skipped of 6 inputs in ")
    assert "holds 5 for zs-tiny" in summary[0]
    (root / "bad.jpg").unlink()
    (root / "img0.png").unlink()
    result = cli("index", root, *index_args, "-q")
    assert result.exit_code == 0 and result.stderr == ""
    result = cli("index", root, *index_args)
    assert "index: 0 encoded, 4 reused, 0 renamed, 0 copied, 0 dropped, 0 skipped of 4 inputs" in result.stderr


def test_cli_index_usage_errors(index_args, tiny_ckpt, tmp_path):
    empty = tmp_path / "nothing.jpg"
    result = cli("index", empty, *index_args)
    assert result.exit_code == 2 and result.stderr.startswith("error: found 0 images") and len(
        result.stderr.splitlines()) == 1
    make_folder(tmp_path / "photos", 1)
    result = cli("index", tmp_path / "photos", "-m", "zs-tiny", "-p", "", "--store", tmp_path / "st")
    assert result.exit_code == 2 and "--pretrained is empty" in result.stderr  # random weights: Python only
    (tmp_path / "file-store").write_text("x")
    result = cli("index", tmp_path / "photos", *index_args[:-2], "--store", tmp_path / "file-store")
    assert result.exit_code == 1 and result.stderr.startswith("error: store ") and "not a zeroshot store" in result.stderr


def test_cli_store_info_check_prune_export(index_args, tmp_path):
    root = tmp_path / "photos"
    make_folder(root, 4)
    store_dir = tmp_path / "st"
    assert cli("index", root, *index_args).exit_code == 0
    assert cli("index", root, *index_args, "--exact-decode").exit_code == 0

    info = cli("store", "info", "--store", store_dir)
    assert info.exit_code == 0
    lines = info.stdout.splitlines()
    assert lines[0] == f"location\t{store_dir}" and "entries\t8" in lines
    table = lines[lines.index("key\tmodel\tpretrained\tdecode\tprecision\tdim\tstored as\tentries") + 1:]
    assert [row.split("\t")[3] for row in table] == ["fast", "exact"]
    assert all(row.endswith("\t4") and "\tzs-tiny\t" in row for row in table)
    fast_id = table[0].split("\t")[0]

    check = cli("store", "check", "--store", store_dir)
    assert check.exit_code == 0 and check.stdout == "" and "ok (8 entries)" in check.stderr

    (root / "img2.png").unlink()
    pruned = cli("store", "prune", "--store", store_dir, "--missing")
    assert pruned.exit_code == 0
    assert sorted(pruned.stdout.splitlines()) == sorted(f"removed\t{k}\t{real(root / 'img2.png')}"
                                                         for k in (fast_id, table[1].split("\t")[0]))
    pruned = cli("store", "prune", "--store", store_dir, "--other-models", "--keep", fast_id)
    assert pruned.exit_code == 0 and pruned.stdout.startswith("removed key\t") and "3 entries" in pruned.stdout

    out = tmp_path / "v.parquet"
    exported = cli("store", "export", "--store", store_dir, "-o", out)
    assert exported.exit_code == 0 and len(pd.read_parquet(out)) == 3

    conn = sqlite3.connect(store_dir / "embeddings.sqlite3")
    conn.execute("UPDATE files SET vector = x'0000' WHERE rowid = (SELECT min(rowid) FROM files)")
    conn.commit()
    conn.close()
    check = cli("store", "check", "--store", store_dir)
    assert check.exit_code == 1 and len(check.stdout.splitlines()) == 1 and "vector of 2 bytes" in check.stdout


@pytest.mark.parametrize("args, message", [
    (["store", "prune"], "say what to prune"),
    (["store", "prune", "--other-models"], "--other-models needs --keep"),
    (["store", "prune", "--keep", "abc"], "--keep goes with --other-models"),
    (["store", "prune", "--other-models", "--keep", "zzz"], "matches no key"),
    (["store", "export", "-o", "x.csv"], "name the file .parquet"),
])
def test_cli_store_usage_errors(tmp_path, args, message):
    Store.open(tmp_path / "st").close()
    result = cli(*args, "--store", tmp_path / "st")
    assert result.exit_code == 2 and message in result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


def test_cli_store_without_a_store(tmp_path):
    result = cli("store", "info", "--store", tmp_path / "none")
    assert result.exit_code == 1 and result.stderr.startswith("error: no embedding store at ")
    assert not (tmp_path / "none").exists()
