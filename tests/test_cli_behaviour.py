"""CLI behaviours of the foundation issue, one section per behaviour: row order, one-line usage
errors, -h and flag help, `models FILTER`, plain progress lines, the summary line, output formats
from file names, eval's files and piped table, and the one decode-size setting.

Everything runs the tiny random 'zs-tiny' model through typer's CliRunner, plus a few real
subprocesses of `python -m zeroshot` where the terminal matters."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from zeroshot.cli import app

from conftest import make_image

runner = CliRunner()
BOX = set("╭╮╰╯│─━┃")
WIDE = {"COLUMNS": "200", "LINES": "100"}


def run(*args, input=None, env=None):
    return runner.invoke(app, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def tiny(ckpt) -> list[str]:
    return ["--model", "zs-tiny", "--pretrained", str(ckpt), "--device", "cpu", "--workers", "0"]


@pytest.fixture()
def base(tiny_ckpt, labels_file):
    return ["classify", "--labels", labels_file, *tiny(tiny_ckpt), "--templates", "7"]


def rows_of(text: str, fmt: str) -> list[dict]:
    if fmt == "csv":
        return pd.read_csv(io.StringIO(text), keep_default_na=False).to_dict("records")
    return [json.loads(line) for line in text.splitlines()]


def error_of(row: dict) -> str:
    return row["error"] or ""


# ======================================================================== 1. row order


@pytest.fixture()
def mixed(tmp_path):
    """Given order b, nope (missing), broken (not an image), a: neither sorted nor errors-first."""
    folder = tmp_path / "in"
    make_image(folder / "b.jpg", (30, 200, 40))
    make_image(folder / "a.jpg", (220, 30, 30))
    (folder / "broken.jpg").write_bytes(b"<html>not an image</html>")
    return [str(folder / name) for name in ("b.jpg", "nope.jpg", "broken.jpg", "a.jpg")]


def _check_order(rows: list[dict], given: list[str]) -> None:
    assert [r["path"] for r in rows] == given
    errors = [error_of(r) for r in rows]
    assert errors[0] == "" and errors[3] == ""
    assert errors[1].startswith("not_found") and errors[2].startswith("not_an_image")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("to_file", [False, True], ids=["stdout", "file"])
def test_rows_in_the_order_given_with_missing_and_broken_inputs(base, mixed, tmp_path, fmt, to_file):
    out = tmp_path / f"out.{fmt}"
    result = run(*base, *mixed, "--format", fmt, *(["--output", out] if to_file else []))
    assert result.exit_code == 3, result.output
    _check_order(rows_of(out.read_text("utf-8") if to_file else result.stdout, fmt), mixed)
    # The 'skipping' lines come in the same order too.
    skipped = [line.split(":")[0].removeprefix("skipping ") for line in result.stderr.splitlines()
               if line.startswith("skipping ")]
    assert skipped == [mixed[1], mixed[2]]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_rows_in_the_order_of_paths_read_from_stdin(base, mixed, fmt):
    result = run(*base, "-", "--format", fmt, input="\n".join(mixed) + "\n")
    assert result.exit_code == 3, result.output
    _check_order(rows_of(result.stdout, fmt), mixed)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("decode", [["--workers", "0", "--batch-size", "1"], ["--workers", "1", "--batch-size", "2"]],
                         ids=["in-process", "worker"])
def test_folder_with_broken_files_between_good_ones(base, tmp_path, fmt, decode):
    folder = tmp_path / "shots"
    make_image(folder / "img1.jpg", (220, 30, 30))
    (folder / "img2.jpg").write_bytes(b"GIF89a truncated")  # fails while decoding
    make_image(folder / "img3.png", (30, 200, 40))
    (folder / "img4.jpg").symlink_to(tmp_path / "gone.jpg")  # fails already at discovery
    make_image(folder / "img5.jpg", (40, 60, 220))
    make_image(folder / "img10.jpg", (240, 240, 20))
    result = run(*base, folder, "--format", fmt, *decode)
    assert result.exit_code == 3, result.output
    rows = rows_of(result.stdout, fmt)
    assert [os.path.basename(r["path"]) for r in rows] == ["img1.jpg", "img2.jpg", "img3.png", "img4.jpg",
                                                          "img5.jpg", "img10.jpg"]
    assert [bool(error_of(r)) for r in rows] == [False, True, False, True, False, False]


# ================================================================= 2. one-line usage errors


USAGE_ERRORS = [
    (["classify", "x.jpg", "--lables", "l.txt"],
     ["No such option: --lables", "Did you mean --labels?", "zeroshot classify --help"]),
    (["classify", "x.jpg", "-l", "a", "--format", "xml"], ["--format", "'xml' is not one of", "csv"]),
    (["classify"], ["Missing argument", "zeroshot classify --help"]),
    (["classify", "x.jpg", "-l", "a", "--top-k", "0"], ["--top-k", "greater than or equal to 1"]),
    (["classify", "x.jpg", "-l"], ["'-l' requires an argument", "zeroshot classify --help"]),
    (["eval"], ["Missing argument 'dataset'", "imagenet, imagenetv2", "cifar100, food101", "folder, csv, wds, retrieval"]),
    (["eval", "imagenet", "--limit", "many"], ["--limit", "integer"]),
    (["models", "--cahed"], ["No such option: --cahed", "Did you mean --cached?"]),
    (["templates", "show"], ["Missing argument", "zeroshot templates show --help"]),
    (["clasify"], ["No such command", "classify"]),
]


@pytest.mark.parametrize("args, fragments", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_from_option_parsing_are_one_line(args, fragments):
    result = run(*args, env={"COLUMNS": "60"})  # narrow: a boxed panel would wrap
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert not BOX & set(result.stderr) and "\\n" not in result.stderr and "\t" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_zeroshot_alone_prints_the_help_once():
    result = run(env=WIDE)
    assert result.exit_code == 2
    assert result.output.count("Usage: zeroshot") == 1
    for command in ("classify", "eval", "models", "templates"):
        assert command in result.stdout
    assert result.stderr.strip() == ""


def test_usage_errors_in_a_real_process(tmp_path):
    env = {**os.environ, "COLUMNS": "50", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "zeroshot", "classify", "x.jpg", "--lables", "l.txt"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and not BOX & set(proc.stderr), proc.stderr
    assert proc.stderr.startswith("error: No such option: --lables")
    assert "Did you mean --labels?" in proc.stderr
    bare = subprocess.run([sys.executable, "-m", "zeroshot"], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert bare.returncode == 2
    assert (bare.stdout + bare.stderr).count("Usage: zeroshot") == 1


# ======================================================================== 3. -h and flags


HELP_COMMANDS = [[], ["classify"], ["eval"], ["models"], ["templates"], ["templates", "show"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "zeroshot")
def test_dash_h_is_help(command):
    short = run(*command, "-h", env=WIDE)
    long = run(*command, "--help", env=WIDE)
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout
    assert f"Usage: zeroshot {' '.join(command)}".rstrip() in short.stdout
    assert "-h" in short.stdout and "--help" in short.stdout


FLAGS = {
    (): ["--version", "--help"],
    ("classify",): ["--resume", "--quiet", "--no-cache", "--hidden", "--raw-csv", "--help"],
    ("eval",): ["--quiet", "--no-cache", "--hidden", "--raw-csv", "--download", "--help"],
    ("models",): ["--cached", "--help"],
    ("templates", "show"): ["--help"],
}


@pytest.mark.parametrize("command", list(FLAGS), ids=lambda c: " ".join(c) or "zeroshot")
def test_flags_show_no_type_in_help(command):
    text = run(*command, "--help", env=WIDE).stdout
    lines = text.splitlines()
    for flag in FLAGS[command]:
        line = next((x for x in lines if re.search(rf"{flag}\b(?!-)", x)), None)
        assert line is not None, f"{flag} not in the help of {command}"
        assert "bool" not in line.lower(), line
    assert "<bool>" not in text
    if command == ("classify",):  # options that take values still show their type
        assert re.search(r"--top-k\s+-k\s+<int", text)


# ================================================================== 4. models [FILTER]


def models_rows(*args) -> list[tuple[str, str, str]]:
    result = run("models", *args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "model\tpretrained\tcached"
    return [tuple(line.split("\t")) for line in lines[1:]]


def test_models_filter_by_architecture_case_insensitive():
    everything = models_rows()
    assert ("zs-tiny", "", "no") in everything and ("ViT-B-32", "openai", "no") in everything
    assert {r[0] for r in models_rows("zs-tiny")} == {"zs-tiny", "zs-tiny-sigmoid", "zs-tiny-wide"}
    assert models_rows("ZS-Tiny-W") == [("zs-tiny-wide", "", "no")]
    assert models_rows("no such model anywhere") == []


def test_models_filter_by_tag():
    rows = models_rows("LAION2B")
    assert ("ViT-B-32", "laion2b_s34b_b79k", "no") in rows
    assert all("laion2b" in arch.lower() or "laion2b" in tag.lower() for arch, tag, _ in rows)
    assert not any(arch.startswith("zs-tiny") for arch, _, _ in rows)
    assert len(rows) < len(models_rows())


def test_models_cached_with_a_filter(tmp_path, monkeypatch):
    assert models_rows("--cached") == []  # a cold cache
    repo = tmp_path / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "open_clip_model.safetensors").write_bytes(b"x")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert ("ViT-B-32", "laion2b_s34b_b79k", "yes") in models_rows("--cached")
    assert models_rows("vit-b-32", "--cached") == [("ViT-B-32", "laion2b_s34b_b79k", "yes")]
    assert models_rows("--cached", "zs-tiny") == []
    assert ("ViT-B-32", "laion2b_s34b_b79k", "yes") in models_rows("ViT-B-32")


# ============================================================ 5. plain progress lines


def progress_lines(stderr: str, task: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{task}: ")]


def counts(lines: list[str]) -> list[tuple[int, int]]:
    return [tuple(int(n) for n in re.match(r"[^:]+: (\d+)/(\d+)", line).groups()) for line in lines]


@pytest.fixture()
def four_images(tmp_path):
    folder = tmp_path / "four"
    for i, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 60, 220), (240, 240, 20)]):
        make_image(folder / f"img{i}.png", colour)
    return folder


def test_classify_progress_is_plain_lines_when_stderr_is_not_a_terminal(tiny_ckpt, four_images, monkeypatch):
    monkeypatch.setenv("ZEROSHOT_PROGRESS_INTERVAL", "0")
    labels = ["-l", "cat", "-l", "dog", "-l", "bird", "-l", "fish"]  # x 80 templates: two text batches
    args = ["classify", four_images, *labels, *tiny(tiny_ckpt), "-t", "80", "--no-cache", "--batch-size", "1"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and not BOX & set(result.stderr)
    assert counts(progress_lines(result.stderr, "encoding prompts")) == [(256, 320), (320, 320)]
    assert counts(progress_lines(result.stderr, "classifying")) == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert progress_lines(result.stderr, "classifying")[-1].startswith("classifying: 4/4, 100%")

    # A long interval: only the final line of each task.
    monkeypatch.setenv("ZEROSHOT_PROGRESS_INTERVAL", "3600")
    result = run(*args)
    assert counts(progress_lines(result.stderr, "encoding prompts")) == [(320, 320)]
    assert counts(progress_lines(result.stderr, "classifying")) == [(4, 4)]

    monkeypatch.setenv("ZEROSHOT_PROGRESS_INTERVAL", "0")
    quiet = run(*args, "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_eval_progress_is_plain_lines(tiny_ckpt, tmp_path, monkeypatch):
    make_dataset(tmp_path / "ds", per_class=1)
    monkeypatch.setenv("ZEROSHOT_PROGRESS_INTERVAL", "0")
    args = ["eval", "folder", tmp_path / "ds", *tiny(tiny_ckpt), "-t", "7", "-t", "1", "--no-cache", "-b", "2"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "\r" not in result.stderr and not BOX & set(result.stderr)
    assert counts(progress_lines(result.stderr, "prompts openai-7")) == [(42, 42)]  # 6 classes x 7
    assert counts(progress_lines(result.stderr, "prompts photo")) == [(6, 6)]
    assert counts(progress_lines(result.stderr, "images"))[-3:] == [(2, 6), (4, 6), (6, 6)]
    quiet = run(*args, "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


# ==================================================================== 6. summary line

SUMMARY = re.compile(r"^classified (\d+) of (\d+) images in ([\d.]+)s \(model ([\d.]+)s, prompts ([\d.]+)s, "
                     r"images ([\d.]+)s, ([\d.]+) img/s\)$", re.M)


def test_summary_reports_the_whole_run(base, image_dir, monkeypatch):
    import zeroshot.models

    real_load = zeroshot.models.load_model

    def slow_load(*args, **kwargs):  # at least 0.5 s of model time, whatever the machine
        time.sleep(0.5)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(zeroshot.models, "load_model", slow_load)
    result = run(*base, image_dir, "--no-cache")
    assert result.exit_code == 0, result.output
    match = SUMMARY.search(result.stderr)
    assert match, result.stderr
    classified, total_images = int(match[1]), int(match[2])
    total, model, prompts, images, rate = (float(x) for x in match.groups()[2:])
    assert (classified, total_images) == (6, 6)
    assert model >= 0.5
    assert total >= images and total >= model
    assert model + prompts + images <= total + 0.15  # the parts fit in the total (each rounded to 0.1 s)
    assert rate > 0


# ====================================================== 7. output format from the file name


@pytest.mark.parametrize("name", ["x.txt", "results", "out.table", "x.CSVX"])
def test_output_extension_without_a_format_is_a_usage_error(base, image_dir, tmp_path, name):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run(*base, image_dir, "--output", out_dir / name)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --output")
    listed = result.stderr.split("use one of", 1)[1]
    for fmt in ("csv", "tsv", "jsonl", "json", "parquet", "--format"):
        assert fmt in listed
    assert "table" not in listed
    assert list(out_dir.iterdir()) == []  # nothing written, no journal, no temporary


def test_output_with_an_explicit_format(base, image_dir, tmp_path):
    out = tmp_path / "x.txt"
    result = run(*base, image_dir, "--output", out, "--format", "csv")
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    assert list(df.columns) == ["path", "label", "score", "error"] and len(df) == 6


def test_table_is_never_chosen_from_a_file_name(tmp_path):
    from zeroshot.errors import UsageError
    from zeroshot.output.writers import FORMATS, choose_format

    assert FORMATS["table"].extensions == ()
    for name in ("x.table", "x.txt", "x"):
        with pytest.raises(UsageError, match="give --format"):
            choose_format("auto", tmp_path / name, stdout_is_tty=True)
    assert choose_format("auto", None, stdout_is_tty=True).name == "table"
    assert choose_format("auto", None, stdout_is_tty=False).name == "csv"
    assert choose_format("auto", tmp_path / "x.tab", stdout_is_tty=True).name == "tsv"


# ======================================================================== 8. eval files

CLASSES = ["red", "green", "blue", "yellow", "purple", "black"]


def make_dataset(root: Path, per_class: int = 3) -> Path:
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (240, 240, 20), (120, 30, 160), (20, 20, 20)]
    for ci, (name, colour) in enumerate(zip(CLASSES, colours)):
        for j in range(per_class):
            shade = tuple(min(255, c + 25 * j) for c in colour)
            make_image(root / name / f"img{j}.png", shade, size=(40 + 7 * j, 36 + 5 * ci))
    return root


@pytest.fixture()
def dataset(tmp_path):
    return make_dataset(tmp_path / "ds")


def test_eval_piped_table_equals_the_results_json(tiny_ckpt, dataset, tmp_path):
    out = tmp_path / "results.json"
    result = run("eval", "folder", dataset, *tiny(tiny_ckpt), "-t", "7", "-t", "1", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = lines[0].split("\t")
    assert header == ["template set", "templates", "top-1 (fraction)", "top-5 (fraction)",
                      "mean per-class recall (fraction)"]
    document = json.loads(out.read_text("utf-8"))
    sets = document["template_sets"]
    assert len(lines) == 1 + len(sets) == 3
    for line, expected in zip(lines[1:], sets):
        name, count, acc1, acc5, recall = line.split("\t")
        assert (name, int(count)) == (expected["templates"], expected["num_templates"])
        metrics = expected["metrics"]
        assert float(acc1) == metrics["acc1"]
        assert float(acc5) == metrics["acc5"]
        assert float(recall) == metrics["mean_per_class_recall"]
    assert document["metrics"] == sets[0]["metrics"]
    # Not all trivially 0 or 1, so the comparison sees real fractions.
    assert any(0 < s["metrics"]["mean_per_class_recall"] < 1 for s in sets)


def test_eval_predictions_and_per_class_formats_from_the_extension(tiny_ckpt, dataset, tmp_path):
    args = ["eval", "folder", dataset, *tiny(tiny_ckpt), "-t", "7", "-q"]
    keys = ["path", "true_label", "predicted_label", "score", "correct", "templates", "error"]
    tables = {}
    for ext in ("json", "jsonl", "csv", "parquet"):
        target = tmp_path / f"p.{ext}"
        result = run(*args, "--predictions", target, "--per-class", tmp_path / "x.tsv")
        assert result.exit_code == 0, result.output
        if ext == "json":
            rows = json.loads(target.read_text("utf-8"))
            assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
            df = pd.DataFrame(rows)
        elif ext == "jsonl":
            df = pd.DataFrame([json.loads(line) for line in target.read_text("utf-8").splitlines()])
        elif ext == "csv":
            assert target.read_text("utf-8").startswith(",".join(keys) + "\n")
            df = pd.read_csv(target)
        else:
            assert target.read_bytes()[:4] == b"PAR1"
            df = pd.read_parquet(target)
        assert list(df.columns) == keys and len(df) == 18
        tables[ext] = df
    for ext in ("jsonl", "csv", "parquet"):
        assert tables[ext]["path"].tolist() == tables["json"]["path"].tolist()
        assert tables[ext]["predicted_label"].tolist() == tables["json"]["predicted_label"].tolist()

    text = (tmp_path / "x.tsv").read_text("utf-8")
    assert text.splitlines()[0] == "class\tclass_index\timages\tcorrect\taccuracy\ttemplates"
    per_class = pd.read_csv(tmp_path / "x.tsv", sep="\t")
    assert sorted(per_class["class"]) == sorted(CLASSES) and (per_class["images"] == 3).all()


@pytest.mark.parametrize("name", ["results.csv", "results.jsonl", "results.txt"])
def test_eval_results_file_must_be_json(tiny_ckpt, dataset, tmp_path, name):
    result = run("eval", "folder", dataset, *tiny(tiny_ckpt), "--output", tmp_path / name)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --output")
    assert ".json" in result.stderr
    assert not (tmp_path / name).exists()


# ==================================================================== 10. decode size


@pytest.fixture()
def large_jpegs(tmp_path):
    root = tmp_path / "large"
    for name, colour in zip(("blue", "green", "red"), [(40, 60, 220), (30, 200, 40), (220, 30, 30)]):
        make_image(root / name / "photo.jpg", colour, size=(1200, 900))
    return root


def _classify_scores(tiny_ckpt, root, *decode) -> list[tuple[str, float]]:
    result = run("classify", root, "-l", "blue", "-l", "green", "-l", "red", *tiny(tiny_ckpt), "-t", "7",
                 "-k", "3", "-f", "csv", "-q", *decode)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(io.StringIO(result.stdout))
    return [tuple(row) for row in df[["path", "label", "score", "label_2", "score_2", "label_3", "score_3"]].values]


def _eval_scores(tiny_ckpt, root, tmp_path, *decode) -> list[tuple[str, str, float]]:
    out = tmp_path / "pred.json"
    result = run("eval", "folder", root, *tiny(tiny_ckpt), "-t", "7", "--predictions", out, "-q", *decode)
    assert result.exit_code == 0, result.output
    return [(r["path"], r["predicted_label"], r["score"]) for r in json.loads(out.read_text("utf-8"))]


def test_exact_decode_on_classify_equals_eval_default(tiny_ckpt, large_jpegs, tmp_path):
    exact = _classify_scores(tiny_ckpt, large_jpegs, "--exact-decode")
    fast = _classify_scores(tiny_ckpt, large_jpegs)  # classify's default
    assert _classify_scores(tiny_ckpt, large_jpegs, "--fast-decode") == fast
    assert exact != fast  # the setting matters for these images, so the comparisons below can fail

    assert _eval_scores(tiny_ckpt, large_jpegs, tmp_path) == [row[:3] for row in exact]  # eval's default
    assert _eval_scores(tiny_ckpt, large_jpegs, tmp_path, "--exact-decode") == [row[:3] for row in exact]
    assert _eval_scores(tiny_ckpt, large_jpegs, tmp_path, "--fast-decode") == [row[:3] for row in fast]


def test_decode_setting_has_one_name():
    import dataclasses

    from zeroshot.encode.embed import EmbedSettings

    names = {f.name for f in dataclasses.fields(EmbedSettings)}
    assert "fast_decode" in names and not names & {"exact_preprocess", "exact_decode", "draft", "fast_preprocess"}
    assert EmbedSettings(fast_decode=True).fast_decode is True
    for command, default in (("classify", "fast-decode"), ("eval", "exact-decode")):
        text = run(command, "--help", env=WIDE).stdout
        assert "--fast-decode" in text and "--exact-decode" in text and "-preprocess" not in text
        assert f"[default: {default}]" in text
    package = Path(__import__("zeroshot").__file__).parent
    for source in package.rglob("*.py"):  # no second name for it anywhere in the library
        assert not re.search(r"(exact|fast)[-_]preprocess", source.read_text("utf-8")), source
    old = run("classify", "x.jpg", "-l", "a", "--exact-preprocess")
    assert old.exit_code == 2 and "No such option: --exact-preprocess" in old.stderr
