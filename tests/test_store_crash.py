"""Crash safety and concurrency of the store with real processes: ``kill -9`` of ``zeroshot
index`` at several points leaves a store that passes ``check`` and a rerun that completes with
every image exactly once; readers never see a half-written batch; two processes indexing the
same folder into the same store both finish, without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from zeroshot.encode.embed import EmbedSettings
from zeroshot.store import Store

from conftest import make_image

N_IMAGES = 40
BATCH = 4
FAST = EmbedSettings(batch_size=BATCH, workers=0, fast_decode=True)  # the CLI's default decode

# Runs `zeroshot index` and stops at the point ZS_HOLD names, writing ZS_MARKER when there, until
# killed: "hash:NAME" while computing NAME's content hash, "tx:N" inside the N-th write
# transaction after its statements and before COMMIT, "barrier:DIR" before encoding, waiting
# until ZS_PEERS processes got there.
_CHILD = textwrap.dedent("""
    import contextlib, os, sys, time
    hold = os.environ.get("ZS_HOLD", "")
    marker = os.environ.get("ZS_MARKER", "")

    def stop_here():
        open(marker, "w").close()
        while True:
            time.sleep(0.05)

    import zeroshot.store.index as index
    import zeroshot.store.db as db
    if hold.startswith("hash:"):
        real_hash = index.content_hash
        def content_hash(path, *args):
            if os.path.basename(path) == hold[5:]:
                stop_here()
            return real_hash(path, *args)
        index.content_hash = content_hash
    elif hold.startswith("tx:"):
        real_tx, count = db.Store._transaction, [0]
        @contextlib.contextmanager
        def transaction(self):
            with real_tx(self) as conn:
                yield conn
                count[0] += 1
                if count[0] == int(hold[3:]):
                    stop_here()
        db.Store._transaction = transaction
    elif hold.startswith("barrier:"):
        real_embed, folder = index.embed_images, hold[8:]
        def embed_images(*args, **kwargs):
            open(os.path.join(folder, str(os.getpid())), "w").close()
            deadline = time.monotonic() + 60
            while len(os.listdir(folder)) < int(os.environ["ZS_PEERS"]) and time.monotonic() < deadline:
                time.sleep(0.02)
            return real_embed(*args, **kwargs)
        index.embed_images = embed_images
    from zeroshot.cli import main
    sys.argv[0] = "zeroshot"
    main()
""")


def colour(i: int) -> tuple[int, int, int]:
    return ((i * 37) % 256, (i * 91 + 40) % 256, (i * 53 + 80) % 256)


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    for i in range(N_IMAGES):
        make_image(root / f"img{i}.png", colour(i), size=(40, 30))
    return root


def index_args(root, ckpt, store_dir):
    return ["index", str(root), "-m", "zs-tiny", "-p", str(ckpt), "-d", "cpu", "-j", "0", "-b", str(BATCH),
            "--store", str(store_dir)]


def start(args, tmp_path, hold="", **env):
    marker = tmp_path / "held"
    environ = dict(os.environ, ZS_HOLD=hold, ZS_MARKER=str(marker), ZEROSHOT_PROGRESS_INTERVAL="0", **env)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, *args], env=environ, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    return child, marker


def wait_for(marker, child, timeout=120):
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"the run ended before the kill point: {child.stderr.read()}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("the run never reached the kill point")
        time.sleep(0.05)


def kill9(child):
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert child.returncode == -signal.SIGKILL


def assert_complete(store_dir, root, loaded):
    """The store passes check; a rerun completes with every image exactly once."""
    with Store.open(store_dir) as store:
        assert store.check() == []
        before = store.count()
        stats = store.index(loaded, [root], FAST)
        assert store.check() == []
        paths, matrix = store.matrix(stats.key)
        on_disk = sorted(os.path.realpath(p) for p in root.iterdir())
        assert sorted(paths) == on_disk and len(paths) == len(set(paths)) == store.count(stats.key)
        rows = store.conn.execute("SELECT count(*), count(DISTINCT path) FROM files").fetchone()
        assert rows[0] == rows[1] == len(on_disk)
    return before, stats


@pytest.mark.parametrize("hold, committed", [
    ("hash:img30.png", 0),  # while checking files, before anything is written
    ("tx:1", 0),  # inside the first batch's transaction
    ("tx:4", 3 * BATCH),  # inside the fourth: three batches committed
])
def test_kill_9_during_first_index(tiny_ckpt, tiny_loaded, photos, tmp_path, hold, committed):
    store_dir = tmp_path / "store"
    child, marker = start(index_args(photos, tiny_ckpt, store_dir), tmp_path, hold)
    try:
        wait_for(marker, child)
        if hold.startswith("tx:"):  # a reader meanwhile sees whole batches only
            with Store.open(store_dir) as reader:
                assert reader.count() == committed
    finally:
        kill9(child)
    before, stats = assert_complete(store_dir, photos, tiny_loaded)
    assert before == committed
    assert (stats.encoded, stats.reused) == (N_IMAGES - committed, committed)


def test_kill_9_inside_the_bookkeeping_transaction_of_an_incremental_run(tiny_ckpt, tiny_loaded, photos, tmp_path):
    store_dir = tmp_path / "store"
    with Store.open(store_dir) as store:
        key = store.index(tiny_loaded, [photos], FAST).key
        old = dict(zip(*store.matrix(key)))
    (photos / "img1.png").rename(photos / "moved.png")
    (photos / "img2.png").unlink()
    (photos / "img3.png").unlink()
    for i in range(100, 105):
        make_image(photos / f"new{i}.png", colour(i), size=(40, 30))
    child, marker = start(index_args(photos, tiny_ckpt, store_dir), tmp_path, "tx:1")
    try:
        wait_for(marker, child)
        with Store.open(store_dir) as reader:  # the rename and drops are not visible half-done
            assert reader.count() == N_IMAGES
            assert os.path.realpath(photos / "img1.png") in reader.matrix(key)[0]
    finally:
        kill9(child)
    before, stats = assert_complete(store_dir, photos, tiny_loaded)
    assert before == N_IMAGES
    assert (stats.renamed, stats.dropped, stats.encoded) == (1, 2, 5)
    with Store.open(store_dir) as store:
        assert dict(zip(*store.matrix(key)))[os.path.realpath(photos / "moved.png")].equal(
            old[os.path.realpath(photos / "img1.png")])


def test_kill_9_after_some_progress_lines(tiny_ckpt, tiny_loaded, photos, tmp_path):
    """Not held anywhere: killed wherever the run is after its third encoding line."""
    store_dir = tmp_path / "store"
    child, _ = start(index_args(photos, tiny_ckpt, store_dir), tmp_path)
    try:
        seen = 0
        for line in child.stderr:
            seen += line.startswith("encoding: ")
            if seen == 3:
                break
        else:
            pytest.fail("no progress lines")
    finally:
        kill9(child)
    before, stats = assert_complete(store_dir, photos, tiny_loaded)
    assert before % BATCH == 0 and before >= 2 * BATCH  # whole batches only
    assert stats.encoded == N_IMAGES - before


def test_two_processes_index_the_same_folder_into_one_store(tiny_ckpt, tiny_loaded, photos, tmp_path):
    """Both plan before either writes (a barrier), so both encode and write every image."""
    store_dir = tmp_path / "store"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    children = [start(index_args(photos, tiny_ckpt, store_dir), tmp_path, f"barrier:{barrier}", ZS_PEERS="2")[0]
                for _ in range(2)]
    outputs = []
    for child in children:
        _, err = child.communicate(timeout=180)
        outputs.append(err)
        assert child.returncode == 0, err
    assert len(os.listdir(barrier)) == 2  # both really ran at the same time
    for err in outputs:
        assert f"index: {N_IMAGES} encoded, 0 reused" in err
    before, stats = assert_complete(store_dir, photos, tiny_loaded)
    assert before == N_IMAGES and (stats.encoded, stats.reused) == (0, N_IMAGES)
