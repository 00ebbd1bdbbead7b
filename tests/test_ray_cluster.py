"""A two-node Ray cluster on this machine (``ray start --head`` plus a second ``ray start
--address`` on the loopback address, both started and stopped here) runs ``classify --ray
ADDRESS`` in a real subprocess to the local run's result. Only this cluster is stopped: its
processes carry a marker in their environment."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import COLOURS, make_image

pytest.importorskip("ray")  # the test extra installs it: CI runs this
pytestmark = pytest.mark.ray

RAY = Path(sys.executable).with_name("ray")
MARKER = "ZEROSHOT_TEST_RAY_CLUSTER"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def marked(value: str) -> list[int]:
    """The processes started by this test's cluster (their environment holds MARKER=value)."""
    found = []
    needle = f"{MARKER}={value}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def stop(value: str) -> None:
    """Stop this cluster only (``ray stop`` would stop every Ray on the machine)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in marked(value):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while marked(value) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def two_nodes():
    if not RAY.exists() or not Path("/proc/self/environ").exists():
        pytest.skip("Ray cannot start here: no ray command or no /proc to find its processes")
    temp = tempfile.mkdtemp(prefix="zsray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, MARKER: temp, "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    common = ["--num-cpus", "1", "--temp-dir", temp, "--object-store-memory", str(96 * 1024 ** 2),
              "--disable-usage-stats"]
    head = [str(RAY), "start", "--head", "--port", str(port), "--include-dashboard=false",
            "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--metrics-export-port", str(free_port()), *common]
    worker = [str(RAY), "start", "--address", f"127.0.0.1:{port}", "--dashboard-agent-listen-port",
              str(free_port()), "--metrics-export-port", str(free_port()), *common]
    try:
        for command in (head, worker):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                pytest.skip(f"Ray cannot start here: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        yield f"127.0.0.1:{port}", env
    finally:
        stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


def test_classify_on_two_nodes_matches_local(tmp_path, tiny_ckpt, two_nodes):
    import pandas as pd

    address, env = two_nodes
    images = tmp_path / "imgs"
    for i in range(9):
        make_image(images / f"im{i}.png", COLOURS[i % len(COLOURS)], size=(32 + 4 * i, 48))
    (images / "broken.jpg").write_bytes(b"no image here")
    args = [sys.executable, "-m", "zeroshot", "classify", str(images), "-m", "zs-tiny", "-p", str(tiny_ckpt),
            "-d", "cpu", "-b", "2", "-l", "red", "-l", "green", "-t", "photo", "-k", "2", "-q"]
    local = subprocess.run([*args, "-j", "0", "-o", str(tmp_path / "local.csv")], env=env, capture_output=True,
                           text=True, timeout=300)
    remote = subprocess.run([*args, "--ray", address, "-o", str(tmp_path / "ray.csv")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert local.returncode == remote.returncode == 3, (local.stderr, remote.stderr)
    a = pd.read_csv(tmp_path / "local.csv", keep_default_na=False)
    b = pd.read_csv(tmp_path / "ray.csv", keep_default_na=False)
    assert a["path"].tolist() == b["path"].tolist() and len(a) == 10
    assert a["error"].tolist() == b["error"].tolist() and a["label"].tolist() == b["label"].tolist()
    good = a["error"] == ""
    for column in ("score", "score_2"):
        assert (a[column][good].astype(float) - b[column][good].astype(float)).abs().max() <= 1e-6
