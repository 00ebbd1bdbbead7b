"""The wheel ships the prompt data and the installed package reads it from inside itself."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_prompts_and_uses_them(tmp_path):
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    wheel = next(tmp_path.glob("zeroshot-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for data in ("templates/openai-80.txt", "templates/openai-7.txt", "classes/imagenet.txt",
                 "classes/imagenet-wnids.txt", "classes/cifar10.txt", "classes/cifar100.txt"):
        assert f"zeroshot/prompts/{data}" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import zeroshot.prompts as p; print(p.prompts_dir()); "
            "print(len(p.resolve_templates('80'))); print(len(p.resolve_labels('imagenet')))")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout.split()
    assert Path(out[0]).is_relative_to(target) and out[1:] == ["80", "1000"]


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "zeroshot", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("zeroshot ")
