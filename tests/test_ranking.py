"""--min-score and --top-k: the ranking columns keep the model's true ranking; ``label`` holds the
decision (the best label, or --unknown-label below the threshold); ``top_label`` (only with
--min-score) names the best label whatever the threshold. Every format, the DataFrame, the
journal and --resume agree."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.encode.embed import EmbedSettings
from zeroshot.output.journal import Journal, fingerprint, journal_path, read_journal
from zeroshot.output.rows import Prediction, columns, flat_row, to_dataframe
from zeroshot.output.writers import FORMATS, write_predictions
from zeroshot.scoring import top_k
from zeroshot.tasks.classify import RankSettings, ZeroShotClassifier, classify_to_file

from conftest import LABELS, make_image

BELOW = Prediction("low.jpg", ("cat", "dog", "bird"), (0.4, 0.35, 0.25), label="unknown")
ABOVE = Prediction("high.jpg", ("dog", "cat", "bird"), (0.8, 0.15, 0.05))
BROKEN = Prediction("broken.jpg", error="truncated: x")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------------------------------ library


def test_threshold_changes_the_decision_never_the_ranking():
    probs = torch.tensor([[0.40, 0.35, 0.25], [0.05, 0.80, 0.15]])
    plain = top_k(probs, ("cat", "dog", "bird"), k=2)
    ranked = top_k(probs, ("cat", "dog", "bird"), k=2, min_score=0.5, unknown_label="unknown")
    assert [r.labels for r in ranked] == [r.labels for r in plain] == [("cat", "dog"), ("dog", "bird")]
    assert [r.scores for r in ranked] == [r.scores for r in plain]
    assert [r.label for r in ranked] == ["unknown", "dog"]
    assert [r.label for r in plain] == ["cat", "dog"]


def test_prediction_label_is_the_decision_and_top_label_the_best():
    assert (BELOW.label, BELOW.top_label, BELOW.score) == ("unknown", "cat", 0.4)
    assert (ABOVE.label, ABOVE.top_label) == ("dog", "dog")  # defaults to the best label
    assert (BROKEN.label, BROKEN.top_label, BROKEN.score) == (None, None, None)


def test_columns_add_top_label_only_with_a_threshold():
    assert columns(2) == ["path", "label", "score", "label_2", "score_2", "error"]
    assert columns(2, thresholded=True) == ["path", "label", "score", "top_label", "label_2", "score_2", "error"]
    assert columns(1, thresholded=True) == ["path", "label", "score", "top_label", "error"]
    assert flat_row(BELOW, 2, thresholded=True) == ["low.jpg", "unknown", 0.4, "cat", "dog", 0.35, None]
    assert flat_row(BELOW, 3) == ["low.jpg", "unknown", 0.4, "dog", 0.35, "bird", 0.25, None]
    assert flat_row(BROKEN, 2, thresholded=True) == ["broken.jpg", None, None, None, None, None, "truncated: x"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_tabular_formats_keep_the_best_label(tmp_path, fmt):
    out = tmp_path / f"out{FORMATS[fmt].extensions[0]}"
    write_predictions([BELOW, ABOVE, BROKEN], FORMATS[fmt], top_k=2, output=out, thresholded=True)
    df = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out, sep="," if fmt == "csv" else "\t")
    assert list(df.columns) == columns(2, thresholded=True)
    assert df["label"].tolist()[:2] == ["unknown", "dog"]
    assert df["top_label"].tolist()[:2] == ["cat", "dog"]
    assert df["label_2"].tolist()[:2] == ["dog", "cat"]
    assert df["score"].tolist()[:2] == [0.4, 0.8]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_rows_carry_the_decision_next_to_the_true_ranking(tmp_path, fmt):
    out = tmp_path / f"out.{fmt}"
    write_predictions([BELOW, ABOVE, BROKEN], FORMATS[fmt], top_k=2, output=out, thresholded=True)
    text = out.read_text(encoding="utf-8")
    rows = json.loads(text) if fmt == "json" else [json.loads(line) for line in text.splitlines()]
    assert [r["label"] for r in rows] == ["unknown", "dog", None]
    assert [p["label"] for p in rows[0]["predictions"]] == ["cat", "dog", "bird"]
    assert list(rows[0]) == ["path", "label", "predictions", "error"]


def test_table_shows_top_label(tmp_path):
    stream = io.StringIO()
    write_predictions([BELOW], FORMATS["table"], top_k=2, stream=stream, thresholded=True)
    header, row = stream.getvalue().splitlines()[:3:2]
    assert "top label" in header and "unknown" in row and "cat" in row


def test_dataframe_has_top_label_with_min_score(tiny_loaded, image_dir):
    clf = ZeroShotClassifier(LABELS, templates="photo", model=tiny_loaded, cache=False)
    df = clf.classify_dataframe([image_dir], top_k=2, min_score=1.0, unknown_label="?", workers=0)
    assert list(df.columns) == columns(2, thresholded=True)
    assert set(df["label"]) == {"?"} and set(df["top_label"]) <= set(LABELS)
    assert (df["top_label"] != df["label_2"]).all()
    plain = clf.classify_dataframe([image_dir], top_k=2, workers=0)
    assert list(plain.columns) == columns(2)
    assert plain["label"].tolist() == df["top_label"].tolist()
    assert plain["label_2"].tolist() == df["label_2"].tolist()
    assert to_dataframe([BELOW], 1, thresholded=True)["top_label"].tolist() == ["cat"]


# ---------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def base(tiny_ckpt, labels_file):
    return ["classify", "--labels", labels_file, "--model", "zs-tiny", "--pretrained", tiny_ckpt,
            "--device", "cpu", "--templates", "photo", "--workers", "0"]


def test_cli_min_score_with_top_k_keeps_the_best_label(base, image_dir):
    plain = pd.read_csv(io.StringIO(run(*base, image_dir, "-k", "2").stdout))
    result = run(*base, image_dir, "-k", "2", "--min-score", "0.99", "--unknown-label", "none of these")
    assert result.exit_code == 0, result.output
    df = pd.read_csv(io.StringIO(result.stdout))
    assert list(df.columns) == ["path", "label", "score", "top_label", "label_2", "score_2", "error"]
    assert set(df["label"]) == {"none of these"}
    assert df["top_label"].tolist() == plain["label"].tolist()  # the best label is still in the row
    assert df["label_2"].tolist() == plain["label_2"].tolist()
    assert df["score"].tolist() == plain["score"].tolist()
    assert (df["score"] >= df["score_2"]).all()


def test_cli_min_score_jsonl_and_a_threshold_everyone_passes(base, image_dir):
    result = run(*base, image_dir, "-k", "2", "--min-score", "0.99", "-f", "jsonl")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["label"] for r in rows} == {"unknown"}
    assert all(r["predictions"][0]["label"] in LABELS for r in rows)
    passed = pd.read_csv(io.StringIO(run(*base, image_dir, "--min-score", "0").stdout))
    assert list(passed.columns) == ["path", "label", "score", "top_label", "error"]
    assert (passed["label"] == passed["top_label"]).all()


# ------------------------------------------------------------------------------ journal/resume


def test_journal_restores_the_decision_exactly(tmp_path):
    path = tmp_path / ".out.csv.zeroshot-journal"
    journal = Journal.create(path, fingerprint("m", "w", ["cat", "dog", "bird"], ["{}"], 2, 0.5, "unknown"))
    for pred in (BELOW, ABOVE, BROKEN):
        journal.record(pred)
    journal.close()
    assert list(read_journal(path).rows.values()) == [BELOW, ABOVE, BROKEN]


def test_journal_of_the_previous_format_is_refused(tiny_ckpt, labels_file, image_dir, tmp_path):
    """Format 1 rows held the unknown label in place of the best one: never resumed from."""
    out = tmp_path / "out.csv"
    journal_path(out).write_text(json.dumps({"zeroshot_journal": 1, "fingerprint": {}}) + "\n"
                                 + json.dumps({"path": "x.jpg", "labels": ["unknown"], "scores": [0.3],
                                               "error": None}) + "\n")
    result = run("classify", image_dir, "-L", labels_file, "-m", "zs-tiny", "-p", tiny_ckpt, "-d", "cpu",
                 "-o", out, "--resume")
    assert result.exit_code == 1
    assert "another version of zeroshot" in result.stderr and "without --resume" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_interrupted_thresholded_run_resumes_to_identical_output(tiny_loaded, tmp_path):
    folder = tmp_path / "many"
    for i in range(10):
        make_image(folder / f"img{i}.png", ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256), size=(40, 30))
    (folder / "img3.png").write_bytes(b"broken")
    clf = ZeroShotClassifier(LABELS, templates="photo", model=tiny_loaded, cache=False)
    # A threshold in the middle of the first rows' best scores: kept rows hold both decisions.
    best = sorted(p.score for p in clf.classify([folder], workers=0)[:5] if p.ok)
    threshold = (best[1] + best[2]) / 2
    rank = RankSettings(top_k=2, min_score=threshold, unknown_label="unknown")
    settings = EmbedSettings(batch_size=2, workers=0)

    for fmt in ("csv", "jsonl"):
        reference, out = tmp_path / f"reference.{fmt}", tmp_path / f"out.{fmt}"
        classify_to_file(clf, [folder], reference, settings=settings, rank=rank)
        seen = []

        def stop_at_seven(pred, seen=seen):
            seen.append(pred)
            if len(seen) == 7:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            classify_to_file(clf, [folder], out, settings=settings, rank=rank, on_prediction=stop_at_seven)
        kept = read_journal(journal_path(out)).rows  # whole batches only: 3 batches of 2
        assert len(kept) == 6 and {p.label for p in kept.values() if p.ok} > {"unknown"}
        stats = classify_to_file(clf, [folder], out, settings=settings, rank=rank, resume=True)
        assert stats.kept == 6
        assert out.read_bytes() == reference.read_bytes()
        assert not journal_path(out).exists()
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if not r["error"]]
    assert {r["label"] for r in rows} > {"unknown"} and all(r["top_label"] in LABELS for r in rows)
