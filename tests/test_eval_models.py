"""Several models in one ``eval``: per-model metrics equal single-model runs, images decoded once
per distinct preprocessing (counted through a wrapped decoder), -m/-p pairing, one table and
one JSON."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_eval import make_folder_dataset

from zeroshot.data.datasets import folder_dataset
from zeroshot.encode.embed import EmbedSettings
from zeroshot.errors import UsageError
from zeroshot.models import load_model
from zeroshot.tasks.evaluate import evaluate, evaluate_models

from conftest import cli_strict, save_random_model

SETS = ["photo", "openai-7"]
SETTINGS = EmbedSettings(workers=0, batch_size=5)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"a": save_random_model("zs-tiny", root / "a.pt", seed=0),
            "b": save_random_model("zs-tiny", root / "b.pt", seed=1),
            "s": save_random_model("zs-tiny-sigmoid", root / "s.safetensors", seed=2)}


@pytest.fixture(scope="module")
def models(ckpts):
    """Three models with one preprocessing and a fourth (model a again) with another mean/std."""
    from open_clip.transform import image_transform

    loaded = [load_model("zs-tiny", str(ckpts["a"]), device="cpu"),
              load_model("zs-tiny", str(ckpts["b"]), device="cpu"),
              load_model("zs-tiny-sigmoid", str(ckpts["s"]), device="cpu")]
    other = image_transform(32, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    loaded.append(dataclasses.replace(load_model("zs-tiny", str(ckpts["a"]), device="cpu"), preprocess=other))
    return loaded


@pytest.fixture()
def dataset(tmp_path):
    return folder_dataset(make_folder_dataset(tmp_path / "ds", per_class=3))


@pytest.fixture()
def decodes(monkeypatch) -> list[str]:
    """Every image decode in this process (workers=0), by path."""
    import zeroshot.data.loader as loader

    seen: list[str] = []
    real = loader.open_image

    def counting(path, *args, **kwargs):
        seen.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(loader, "open_image", counting)
    return seen


def assert_same(ours, single) -> None:
    assert (ours.model, ours.pretrained) == (single.model, single.pretrained)
    for a, b in zip(ours.results, single.results, strict=True):
        assert a.templates == b.templates
        assert a.metrics.as_dict() == b.metrics.as_dict()
        assert torch.equal(a.predictions, b.predictions)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0, equal_nan=True)
    assert ours.skipped == single.skipped


def test_metrics_per_model_equal_single_model_runs(models, dataset):
    results = evaluate_models(models, dataset, SETS, SETTINGS, cache=False)
    assert len(results) == len(models)
    for loaded, ours in zip(models, results):
        assert_same(ours, evaluate(loaded, dataset, SETS, SETTINGS, cache=False))
    assert results[0].results[0].acc1 != results[1].results[0].acc1 or \
        not torch.equal(results[0].results[0].predictions, results[1].results[0].predictions)


def test_images_are_decoded_once_per_distinct_preprocessing(models, dataset, decodes):
    n = len(dataset)
    evaluate_models(models, dataset, SETS, SETTINGS, cache=False)
    assert len(decodes) == 2 * n  # models 0-2 share one preprocessing, model 3 has its own
    assert sorted(decodes) == sorted(dataset.names * 2)
    decodes.clear()
    for loaded in models[:3]:
        evaluate(loaded, dataset, SETS, SETTINGS, cache=False)
    assert len(decodes) == 3 * n  # one model at a time: once per model


def test_with_a_store_decodes_once_then_reads_it(models, dataset, decodes, tmp_path):
    from zeroshot.store.db import Store

    store = Store.open(tmp_path / "store")
    try:
        first = evaluate_models(models[:2], dataset, SETS, SETTINGS, cache=False, store=store)
        assert len(decodes) == len(dataset)
        assert [r.images_encoded for r in first] == [len(dataset)] * 2
        decodes.clear()
        again = evaluate_models(models[:2], dataset, SETS, SETTINGS, cache=False, store=store)
        assert decodes == []
        assert [r.images_from_store for r in again] == [len(dataset)] * 2
        for a, b in zip(first, again):
            assert_same(a, b)
        # a third model missing from the store: only the images it needs are decoded, once
        decodes.clear()
        mixed = evaluate_models(models[:3], dataset, SETS, SETTINGS, cache=False, store=store)
        assert len(decodes) == len(dataset)
        assert [r.images_from_store for r in mixed] == [len(dataset), len(dataset), 0]
    finally:
        store.close()


def test_unreadable_images_count_as_wrong_for_every_model(models, dataset, tmp_path):
    broken = Path(dataset.names[0])
    broken.write_bytes(b"not an image")
    skips: list[str] = []
    results = evaluate_models(models[:2], dataset, SETS, SETTINGS, cache=False,
                              on_skip=lambda path, reason: skips.append(path))
    assert skips == [str(broken)]  # reported once, not once per model
    for loaded, ours in zip(models[:2], results):
        assert [p for p, _ in ours.skipped] == [str(broken)]
        assert_same(ours, evaluate(loaded, dataset, SETS, SETTINGS, cache=False))


# ---------------------------------------------------------------------------------- pairing


@pytest.mark.parametrize("argv, expected", [
    ([], [("ViT-B-32", "openai")]),
    (["-m", "A", "-p", "x", "-m", "B", "-p", "y"], [("A", "x"), ("B", "y")]),
    (["-m", "A", "-m", "B", "-p", "y"], [("A", "openai"), ("B", "y")]),
    (["--model=A", "--pretrained", "x", "-mB"], [("A", "x"), ("B", "openai")]),
    (["-p", "x", "-p", "y"], [("ViT-B-32", "x"), ("ViT-B-32", "y")]),
])
def test_pairing(argv, expected):
    from zeroshot.cli.evaluate import _flag_order, pair_models

    order = _flag_order(argv)
    values = {"m": [], "p": []}
    flag = None
    for token in argv:  # the values click would collect, in order
        if token in ("-m", "-p", "--pretrained"):
            flag = token[-1] if token != "--pretrained" else "p"
            continue
        if flag:
            values[flag].append(token)
            flag = None
        elif token.startswith("--model="):
            values["m"].append(token.split("=", 1)[1])
        elif token.startswith("-m"):
            values["m"].append(token[2:])
    assert len(order) == len(values["m"]) + len(values["p"])
    assert pair_models(values["m"], values["p"], argv) == expected


@pytest.mark.parametrize("models, pretrained, argv, message", [
    (["A"], ["x"], ["-p", "x", "-m", "A"], "right after the --model"),
    (["A"], ["x", "y"], ["-m", "A", "-p", "x", "-p", "y"], "right after the --model"),
    (["A", "A"], ["x", "x"], ["-m", "A", "-p", "x", "-m", "A", "-p", "x"], "given twice"),
])
def test_pairing_errors(models, pretrained, argv, message):
    from zeroshot.cli.evaluate import pair_models

    with pytest.raises(UsageError, match=message):
        pair_models(models, pretrained, argv)


# -------------------------------------------------------------------------------------- CLI


def test_cli_several_models_one_table_and_one_json(ckpts, tmp_path):
    root = make_folder_dataset(tmp_path / "ds", per_class=3)
    common = ["-t", "photo", "-t", "openai-7", "-d", "cpu", "-j", "0", "-q", "--no-cache"]
    out, preds = tmp_path / "all.json", tmp_path / "preds.csv"
    result = cli_strict("eval", "folder", root, "-m", "zs-tiny", "-p", ckpts["a"], "-m", "zs-tiny-sigmoid",
                        "-p", ckpts["s"], "-o", out, "--predictions", preds, *common)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split("\t")[:3] == ["model", "pretrained", "template set"]
    assert [line.split("\t")[:3] for line in lines[1:]] == [
        ["zs-tiny", str(ckpts["a"]), "photo"], ["zs-tiny", str(ckpts["a"]), "openai-7"],
        ["zs-tiny-sigmoid", str(ckpts["s"]), "photo"], ["zs-tiny-sigmoid", str(ckpts["s"]), "openai-7"]]
    body = json.loads(out.read_text())
    assert [m["model"] for m in body["models"]] == ["zs-tiny", "zs-tiny-sigmoid"]
    assert body["images"] == 18 and body["task"] == "zeroshot_classification"
    for key, model in (("a", "zs-tiny"), ("s", "zs-tiny-sigmoid")):
        single = tmp_path / f"{key}.json"
        assert cli_strict("eval", "folder", root, "-m", model, "-p", ckpts[key], "-o", single,
                          *common).exit_code == 0
        alone = json.loads(single.read_text())
        ours = next(m for m in body["models"] if m["model"] == model)
        assert ours["template_sets"] == alone["template_sets"] and ours["metrics"] == alone["metrics"]
    with open(preds, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["model", "pretrained", "path"] and len(rows) == 2 * 2 * 18


def test_cli_one_model_keeps_its_layout(ckpts, tmp_path):
    root = make_folder_dataset(tmp_path / "ds", per_class=2)
    out = tmp_path / "one.json"
    result = cli_strict("eval", "folder", root, "-m", "zs-tiny", "-p", ckpts["a"], "-t", "photo", "-d", "cpu",
                        "-j", "0", "-q", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith("template set\t")
    assert "models" not in json.loads(out.read_text()) and json.loads(out.read_text())["model"] == "zs-tiny"


def test_cli_pretrained_before_model_is_a_usage_error(ckpts, tmp_path):
    root = make_folder_dataset(tmp_path / "ds", per_class=1)
    result = cli_strict("eval", "folder", root, "-p", ckpts["a"], "-m", "zs-tiny", "-d", "cpu", "-q")
    assert result.exit_code == 2 and "right after the --model" in result.output
