"""``--ray`` on a local Ray (``ray.init`` with 2 CPUs, once for the module): the same rows, vectors
and metrics as the local run, bad files reported alike, a killed encoding actor costing nothing,
and a one-line error without Ray. The two-node cluster is tests/test_ray_cluster.py."""

from __future__ import annotations

import builtins
import json
import os
import sqlite3

import pytest

from conftest import COLOURS, make_image, tiny_cli_args

ray = pytest.importorskip("ray")  # the test extra installs it: CI runs these
pytestmark = pytest.mark.ray

from zeroshot.scale.workers import FAULT_ENV  # noqa: E402

# Ray kept light for a shared 2-core machine: no dashboard, a small object store, no log copying.
LIGHT = {"include_dashboard": False, "object_store_memory": 96 * 1024 ** 2, "log_to_driver": False,
         "logging_level": "ERROR"}


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    """Where the fault hook looks: it only fires while the folder exists (test_killed_actor)."""
    return tmp_path_factory.mktemp("fault") / "armed"


@pytest.fixture(scope="module", autouse=True)
def local_ray(fault_dir):
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ[FAULT_ENV] = str(fault_dir)  # inherited by every Ray worker started below
    try:
        ray.init(address="local", num_cpus=2, **LIGHT)
    except Exception as err:  # noqa: BLE001 - e.g. no shared memory in a sandbox
        pytest.skip(f"Ray cannot start here: {type(err).__name__}: {err}")
    yield
    ray.shutdown()
    os.environ.pop(FAULT_ENV, None)


def folder_with_broken_files(root):
    """Eleven good images (several batches of 4, one cut short by the bad files) and four bad ones."""
    for i in range(11):
        make_image(root / f"img{i:02d}.png", COLOURS[i % len(COLOURS)], size=(40 + 3 * i, 30 + 2 * i))
    (root / "img03b.jpg").write_bytes(b"this is not an image")
    (root / "img05b.png").write_bytes(b"")
    (root / "img07b.jpg").write_bytes((root / "img00.png").read_bytes()[:60])  # truncated PNG named .jpg
    (root / "zz_missing.jpg").symlink_to(root / "nowhere.jpg")  # a dangling link
    return root


def run(*args):
    from typer.testing import CliRunner

    from zeroshot.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def csv_rows(path):
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False)


def test_classify_ray_matches_local(tmp_path, tiny_ckpt):
    """Same rows, same order, probabilities within 1e-6, bad files with the same reason codes."""
    images = folder_with_broken_files(tmp_path / "imgs")
    common = [*tiny_cli_args(tiny_ckpt), "-l", "red", "-l", "green", "-l", "blue", "-t", "photo", "-k", "3"]
    local = run("classify", images, *common, "-o", tmp_path / "local.csv")
    remote = run("classify", images, *common, "-o", tmp_path / "ray.csv", "--ray", "auto", "--ray-actors", "1")
    assert local.exit_code == remote.exit_code == 3, (local.output, remote.output)  # partial: bad files
    a, b = csv_rows(tmp_path / "local.csv"), csv_rows(tmp_path / "ray.csv")
    assert list(a.columns) == list(b.columns)
    assert a["path"].tolist() == b["path"].tolist() and len(a) == 15
    assert a["error"].tolist() == b["error"].tolist()
    assert sum(bool(e) for e in a["error"]) == 4
    for column in [c for c in a.columns if c.startswith("label")]:
        assert a[column].tolist() == b[column].tolist()
    for column in [c for c in a.columns if c.startswith("score")]:
        good = a["error"] == ""
        assert (a[column][good].astype(float) - b[column][good].astype(float)).abs().max() <= 1e-6


def stored(folder):
    """(path, key digest, vector bytes) of every entry of a store, in path order."""
    from zeroshot.store.files import DB_NAME

    with sqlite3.connect(folder / DB_NAME) as conn:
        return conn.execute("SELECT f.path, k.digest, f.vector FROM files f JOIN keys k ON k.id = f.key_id "
                            "ORDER BY f.path").fetchall()


def test_index_ray_stores_identical_vectors(tmp_path, tiny_ckpt):
    images = folder_with_broken_files(tmp_path / "imgs")
    local = run("index", images, *tiny_cli_args(tiny_ckpt), "--store", tmp_path / "local")
    remote = run("index", images, *tiny_cli_args(tiny_ckpt), "--store", tmp_path / "ray", "--ray", "auto")
    assert local.exit_code == remote.exit_code == 3, (local.output, remote.output)
    a, b = stored(tmp_path / "local"), stored(tmp_path / "ray")
    assert len(a) == 11 and a == b  # same paths, same key, byte-identical vectors
    assert remote.output.count("skipping") == local.output.count("skipping") == 4
    # The store works the same under --ray: what it holds is read, not encoded again.
    again = run("classify", images, *tiny_cli_args(tiny_ckpt), "-l", "red", "-l", "blue", "--store", tmp_path / "ray",
                "--ray", "auto", "-o", tmp_path / "out.csv")
    assert again.exit_code == 3 and "encoded 0, 11 from the store" in again.output, again.output


def test_eval_ray_gives_identical_metrics(tmp_path, tiny_ckpt):
    root = tmp_path / "set"
    for c, name in enumerate(["red", "green", "blue"]):
        for i in range(3):
            make_image(root / name / f"{i}.png", COLOURS[c], size=(30 + 5 * i, 40))
    (root / "green" / "broken.jpg").write_bytes(b"not an image at all")
    args = ["eval", "folder", root, *tiny_cli_args(tiny_ckpt), "-t", "photo"]
    local = run(*args, "-o", tmp_path / "local.json")
    remote = run(*args, "-o", tmp_path / "ray.json", "--ray", "auto")
    assert local.exit_code == remote.exit_code == 3, (local.output, remote.output)
    a = json.loads((tmp_path / "local.json").read_text())
    b = json.loads((tmp_path / "ray.json").read_text())
    assert a["template_sets"] == b["template_sets"] and a["metrics"] == b["metrics"]
    assert a["skipped_images"] == b["skipped_images"] and a["skipped"] == 1
    assert a["images"] == b["images"] == 10


def test_killed_actor_costs_nothing(tmp_path, tiny_ckpt, fault_dir):
    """An encoding actor SIGKILLs itself on its second batch (once): Ray restarts it and runs
    the batch again; every input comes out exactly once, as in the local run."""
    from zeroshot.models import load_model
    from zeroshot.scale import RayEncoder, RaySettings
    from zeroshot.tasks.classify import ZeroShotClassifier

    images = folder_with_broken_files(tmp_path / "imgs")
    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="fp32")
    local = ZeroShotClassifier(["red", "green"], templates="photo", model=loaded, cache=False)
    expected = local.classify([str(images)], batch_size=2, workers=0)
    remote = ZeroShotClassifier(["red", "green"], templates="photo", model=loaded, cache=False,
                                encoder=RayEncoder(RaySettings(actors=1)))
    fault_dir.mkdir()
    try:
        got = remote.classify([str(images)], batch_size=2)
    finally:
        killed = (fault_dir / "killed").exists()
        (fault_dir / "killed").unlink(missing_ok=True)
        fault_dir.rmdir()
    assert killed, "the fault hook never fired: the test tested nothing"
    assert [p.path for p in got] == [p.path for p in expected]  # each input once, in order
    assert len({p.path for p in got}) == len(got) == 15
    for a, b in zip(expected, got):
        assert a.error == b.error and a.labels == b.labels
        assert all(abs(x - y) <= 1e-6 for x, y in zip(a.scores, b.scores))


def test_without_ray_a_one_line_error(tmp_path, tiny_ckpt, monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    image = make_image(tmp_path / "set" / "a" / "a.png")
    make_image(tmp_path / "set" / "b" / "b.png")
    for command in (["classify", image, "-l", "x", "-l", "y"], ["index", image], ["eval", "folder", tmp_path / "set"]):
        result = run(*command, *tiny_cli_args(tiny_ckpt), "--ray", "auto")
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and 'pip install "zeroshot[ray]"' in lines[0], result.output


def test_an_address_nobody_answers_is_refused_in_seconds():
    import socket

    from zeroshot.errors import UsageError
    from zeroshot.scale.cluster import _reachable

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UsageError, match=f"--ray 127.0.0.1:{port}: cannot connect to a Ray cluster"):
        _reachable(f"127.0.0.1:{port}")


def test_resume_under_ray_continues_a_crashed_run(tmp_path, tiny_ckpt, monkeypatch):
    """A run stopped after a few rows leaves its journal; ``--ray --resume`` continues it to exactly
    the uninterrupted local output (the journal and the writer are the driver's, as locally)."""
    from zeroshot.output.journal import Journal, journal_path, read_journal

    images = folder_with_broken_files(tmp_path / "imgs")
    common = [*tiny_cli_args(tiny_ckpt), "-l", "red", "-l", "green", "-l", "blue", "-t", "photo", "-k", "3"]
    reference = run("classify", images, *common, "-o", tmp_path / "reference.csv", "--no-cache")
    assert reference.exit_code == 3, reference.output
    out = tmp_path / "out.csv"
    real_record = Journal.record
    recorded = []

    def record_then_crash(self, pred):
        if len(recorded) == 6:
            self.sync(force=True)
            raise KeyboardInterrupt  # the driver dies here: six rows are in the journal
        recorded.append(pred.path)
        real_record(self, pred)

    monkeypatch.setattr(Journal, "record", record_then_crash)
    crashed = run("classify", images, *common, "-o", out, "--no-cache")
    monkeypatch.setattr(Journal, "record", real_record)
    assert crashed.exit_code != 0 and not out.exists()
    done = len(read_journal(journal_path(out)).rows)
    assert done == 6
    resumed = run("classify", images, *common, "-o", out, "--no-cache", "--resume", "--ray", "auto")
    assert resumed.exit_code == 3, resumed.output
    assert f"{done} of 15 inputs already done" in resumed.output
    assert out.read_text() == (tmp_path / "reference.csv").read_text()
    assert not journal_path(out).exists()
