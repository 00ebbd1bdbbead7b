"""The CLI through typer's CliRunner on a tiny model, plus one real subprocess of the installed
command on ViT-B-32 (the README's main command)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from zeroshot.cli import app

from conftest import LABELS, make_image

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture()
def base(tiny_ckpt, labels_file):
    return ["classify", "--labels", labels_file, "--model", "zs-tiny", "--pretrained", tiny_ckpt,
            "--device", "cpu", "--templates", "7", "--workers", "0"]


def test_csv_to_stdout_when_piped(base, image_dir):
    result = run(*base, image_dir, "--top-k", "2")
    assert result.exit_code == 0, result.output
    df = pd.read_csv(io.StringIO(result.stdout))
    assert list(df.columns) == ["path", "label", "score", "label_2", "score_2", "error"]
    assert len(df) == 6 and set(df["label"]) <= set(LABELS)
    assert (df["score"] >= df["score_2"]).all()
    # Paths as given under the folder, natural order, recursive.
    rel = [os.path.relpath(p, image_dir) for p in df["path"]]
    assert rel == ["a.webp", "b.jpeg", "img2.jpg", "img10.png", "sub/deeper/img1.JPG", "sub/ünïcode name.jpg"]
    assert "classified 6 of 6 images" in result.stderr


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_every_format_to_a_file(base, image_dir, tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    result = run(*base, image_dir, "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    if fmt in ("csv", "tsv"):
        df = pd.read_csv(out, sep="," if fmt == "csv" else "\t")
    elif fmt == "parquet":
        df = pd.read_parquet(out)
    else:
        text = out.read_text(encoding="utf-8")
        rows = [json.loads(x) for x in text.splitlines()] if fmt == "jsonl" else json.loads(text)
        df = pd.DataFrame({"path": [r["path"] for r in rows], "label": [r["predictions"][0]["label"] for r in rows]})
    assert len(df) == 6 and df["path"].is_unique


def test_no_recursive_and_min_score(base, image_dir):
    result = run(*base, image_dir, "--no-recursive", "--min-score", "0.99", "--unknown-label", "none of these")
    df = pd.read_csv(io.StringIO(result.stdout))
    assert len(df) == 4 and set(df["label"]) == {"none of these"}


def test_inline_labels_and_sigmoid_model(tiny_sigmoid_ckpt, image_dir):
    result = run("classify", image_dir / "img2.jpg", "-l", "cat", "-l", "dog", "-m", "zs-tiny-sigmoid",
                 "-p", tiny_sigmoid_ckpt, "-d", "cpu", "-t", "1", "-f", "jsonl", "-k", "2", "-j", "0")
    row = json.loads(result.stdout)
    scores = [p["score"] for p in row["predictions"]]
    assert 0 < sum(scores) < 1.0  # independent sigmoids, not a softmax


def test_paths_from_stdin(base, image_dir):
    listing = f"{image_dir / 'img2.jpg'}\n{image_dir / 'b.jpeg'}\n"
    result = run(*base, "-", input=listing)
    df = pd.read_csv(io.StringIO(result.stdout))
    assert df["path"].tolist() == [str(image_dir / "img2.jpg"), str(image_dir / "b.jpeg")]


def test_glob_pattern(base, image_dir):
    result = run(*base, str(image_dir / "**" / "*.jpg"))
    df = pd.read_csv(io.StringIO(result.stdout))
    assert sorted(os.path.basename(p) for p in df["path"]) == ["img2.jpg", "ünïcode name.jpg"]


def test_broken_image_is_reported_and_exit_code_is_3(base, image_dir):
    (image_dir / "broken.jpg").write_bytes(b"<html>not an image</html>")
    result = run(*base, image_dir)
    assert result.exit_code == 3
    df = pd.read_csv(io.StringIO(result.stdout))
    assert len(df) == 7
    bad = df[df["path"].str.endswith("broken.jpg")]
    assert bad["error"].iloc[0].startswith("not_an_image") and pd.isna(bad["label"].iloc[0])
    assert f"skipping {image_dir / 'broken.jpg'}: not_an_image" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--labels", "missing.txt"], 2, "labels file not found: missing.txt"),
        (["-l", "cat", "-l", "cat"], 2, "duplicate label 'cat'"),
        (["-l", "cat", "-l", "dog", "--templates", "a photo"], 2, "--templates 'a photo' is not a built-in set"),
        (["-l", "cat", "-l", "dog", "--model", "ViT-B-23"], 2, "did you mean ViT-B-32"),
        (["-l", "cat", "-l", "dog", "--pretrained", "nope.pt"], 2, "--pretrained nope.pt: file not found"),
        (["-l", "cat", "-l", "dog", "--device", "tpu"], 2, "--device 'tpu' is not one of"),
        (["-l", "cat", "-l", "dog", "--output", "out.xyz"], 2, "cannot tell the format"),
        (["-l", "cat", "-l", "dog", "--output", "no/such/dir/out.csv"], 2, "does not exist"),
        (["-l", "cat", "-l", "dog", "--top-k", "0"], 2, "--top-k"),
        (["-l", "cat", "-l", "dog", "--format", "xml"], 2, "--format"),
        ([], 2, "no labels given"),
    ],
)
def test_usage_errors_are_one_line(tiny_ckpt, image_dir, extra, code, message):
    args = ["classify", image_dir, "-m", "zs-tiny", "-p", tiny_ckpt, "-d", "cpu", *extra]
    if "--model" in extra:
        args = ["classify", image_dir, "-p", tiny_ckpt, "-d", "cpu", *extra]
    result = run(*args)
    assert result.exit_code == code
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_empty_folder_is_an_error(base, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run(*base, tmp_path / "empty")
    assert result.exit_code == 2
    assert "found 0 images" in result.stderr and ".jpg" in result.stderr


def test_fatal_model_error_exit_code_1(tiny_ckpt, image_dir, labels_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = run("classify", image_dir, "--labels", labels_file, "-m", "zs-tiny", "-p", bad, "-d", "cpu")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: --pretrained") and result.stderr.count("\n") == 1


def test_single_label_warns_but_runs(base, image_dir):
    result = run("classify", image_dir / "img2.jpg", "-l", "cat", *base[3:])
    assert result.exit_code == 0
    assert "warning: only one label" in result.stderr


def test_quiet_silences_stderr(base, image_dir):
    result = run(*base, image_dir, "-q")
    assert result.exit_code == 0 and result.stderr == ""


def test_env_vars_choose_the_model(tiny_ckpt, labels_file, image_dir, monkeypatch):
    monkeypatch.setenv("ZEROSHOT_MODEL", "zs-tiny")
    monkeypatch.setenv("ZEROSHOT_PRETRAINED", str(tiny_ckpt))
    monkeypatch.setenv("ZEROSHOT_DEVICE", "cpu")
    result = run("classify", image_dir, "--labels", labels_file, "-t", "1", "-j", "0")
    assert result.exit_code == 0, result.stderr


def test_templates_commands():
    listing = run("templates")
    assert listing.exit_code == 0
    assert "openai-80, 80\t80 templates" in listing.stdout
    shown = run("templates", "show", "7")
    assert shown.stdout.splitlines()[0] == "itap of a {}."
    assert run("templates", "show", "nope").exit_code == 2


def test_models_command_lists_tags():
    result = run("models")
    assert result.exit_code == 0
    assert "ViT-B-32\topenai\tno" in result.stdout


def test_version():
    assert run("--version").stdout.startswith("zeroshot ")


def test_installed_command_end_to_end_on_vit_b_32(vitb32_ckpt, tmp_path):
    """The README's main command as a real subprocess: ViT-B-32, local checkpoint, 80 templates."""
    folder = tmp_path / "my photos"
    for i, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        make_image(folder / f"ph{i}, ü.jpg", colour, (320, 240))
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n", encoding="utf-8")
    exe = shutil.which("zeroshot", path=os.path.dirname(sys.executable)) or shutil.which("zeroshot")
    assert exe, "the zeroshot console script is not installed"
    proc = subprocess.run(
        [exe, "classify", str(folder), "--labels", str(labels), "--model", "ViT-B-32",
         "--pretrained", str(vitb32_ckpt), "--templates", "80", "--top-k", "3", "--format", "csv",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(io.StringIO(proc.stdout))
    assert list(df.columns) == ["path", "label", "score", "label_2", "score_2", "label_3", "score_3", "error"]
    assert df["path"].tolist() == [str(folder / f"ph{i}, ü.jpg") for i in range(3)]
    assert df[["score", "score_2", "score_3"]].sum(axis=1).round(4).eq(1.0).all()
    assert "classified 3 of 3 images" in proc.stderr
