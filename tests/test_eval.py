"""``zeroshot eval``: metrics, datasets, parity with open_clip and CLIP_benchmark, the CLI."""

from __future__ import annotations

import csv
import json
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.data.datasets import csv_dataset, folder_dataset, imagenet_dataset, imagenet_wnids
from zeroshot.encode.embed import EmbedSettings
from zeroshot.errors import UsageError
from zeroshot.metrics import compute_metrics, mean_per_class_recall
from zeroshot.prompts import load_builtin
from zeroshot.tasks.evaluate import evaluate

from conftest import make_image

COLOUR_CLASSES = ["red", "green", "blue", "yellow", "purple", "black"]


def make_folder_dataset(root: Path, classes=COLOUR_CLASSES, per_class: int = 4, seed: int = 0) -> Path:
    """Class folders of distinct random-colour images of varying size (so a random model does not
    predict one class for everything)."""
    rng = random.Random(seed)
    for ci, name in enumerate(classes):
        for j in range(per_class):
            colour = tuple(rng.randrange(256) for _ in range(3))
            make_image(root / name / f"img{j}.png", colour, size=(40 + 7 * j, 36 + 5 * ci))
    return root


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def tiny_args(ckpt: Path) -> list[str]:
    return ["--model", "zs-tiny", "--pretrained", str(ckpt), "--device", "cpu", "--workers", "0", "-q"]


# ------------------------------------------------------------------------------ pure metrics


def test_topk_and_recall_on_known_logits():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],  # true 0: top-1 hit
        [0.1, 0.2, 0.9, 0.0, 0.0, 0.0],  # true 1: rank 2
        [0.5, 0.6, -1.0, 0.2, 0.3, 0.9],  # true 2: rank 6 (miss in top-5)
        [0.0, 0.0, 0.0, 0.9, 0.0, 0.0],  # true 3: hit
    ])
    targets = torch.tensor([0, 1, 2, 3])
    assert compute_metrics(logits[:, :4], targets).acc5 is None  # fewer than 5 classes: not applicable
    m = compute_metrics(logits, targets)
    assert (m.acc1, m.acc5, m.mean_per_class_recall) == (0.5, 0.75, 0.5)


def test_failed_images_count_as_wrong():
    logits = torch.eye(3)
    targets = torch.tensor([0, 1, 2])
    valid = torch.tensor([True, True, False])  # the third image could not be read
    m = compute_metrics(logits, targets, valid)
    assert m.acc1 == pytest.approx(2 / 3)
    assert m.acc5 is None
    assert m.mean_per_class_recall == pytest.approx(2 / 3)


def test_mean_per_class_recall_matches_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        targets = torch.randint(0, 7, (50,), generator=gen)
        preds = torch.randint(0, 7, (50,), generator=gen)
        ours = mean_per_class_recall(preds, targets, 7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
            ref = balanced_accuracy_score(targets.numpy(), preds.numpy())
        assert ours == pytest.approx(ref, abs=1e-12)


# ------------------------------------------------------------------------ reference parity


def test_metrics_match_open_clip_and_clip_benchmark(tmp_path, tiny_loaded, monkeypatch):
    """Same weights, images and templates: our acc1/acc5/mean-per-class recall equal open_clip's
    zero-shot classifier with plain top-k counting and CLIP_benchmark's evaluate (fp32)."""
    import builtins

    import clip_benchmark.metrics.zeroshot_classification as cb_module
    from clip_benchmark.metrics.zeroshot_classification import evaluate as cb_evaluate
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from sklearn.metrics import balanced_accuracy_score
    from torchvision.datasets import ImageFolder

    # clip_benchmark 1.6.2's accuracy() calls float() on a 1-element array, which NumPy 2 rejects;
    # shim only that conversion in its module namespace and leave its code as it is.
    monkeypatch.setattr(cb_module, "float", lambda x: builtins.float(np.asarray(x).reshape(-1)[0] if np.ndim(x) else x),
                        raising=False)
    root = make_folder_dataset(tmp_path / "ds")
    sets = ["photo", "openai-7"]
    ours = evaluate(tiny_loaded, folder_dataset(root), sets, EmbedSettings(workers=0), cache=False)
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    reference = ImageFolder(str(root), transform=tiny_loaded.preprocess)
    assert reference.classes == list(ours.classnames)
    assert reference.targets == ours.targets.tolist()
    loader = torch.utils.data.DataLoader(reference, batch_size=5, shuffle=False, num_workers=0)

    with torch.no_grad():
        features = torch.cat([torch.nn.functional.normalize(model.encode_image(x), dim=-1) for x, _ in loader])
    targets = torch.tensor(reference.targets)
    for result, name in zip(ours.results, sets):
        templates = load_builtin("templates", name)
        weights = build_zero_shot_classifier(model, tokenizer, reference.classes, templates, device="cpu")
        logits = 100.0 * features @ weights
        top5 = logits.topk(5, dim=1).indices
        acc1 = (top5[:, 0] == targets).sum().item() / len(targets)
        acc5 = (top5 == targets[:, None]).any(dim=1).sum().item() / len(targets)
        recall = balanced_accuracy_score(targets.numpy(), logits.argmax(dim=1).numpy())
        assert 0 < acc1 < 1 and 0 < recall < 1  # not a degenerate case
        assert result.acc1 == pytest.approx(acc1, abs=1e-6)
        assert result.acc5 == pytest.approx(acc5, abs=1e-6)
        assert result.mean_per_class_recall == pytest.approx(recall, abs=1e-6)
        assert result.predictions.tolist() == logits.argmax(dim=1).tolist()

        cb = cb_evaluate(model, loader, tokenizer, reference.classes, [t.replace("{}", "{c}") for t in templates],
                         "cpu", amp=False)
        assert result.acc1 == pytest.approx(cb["acc1"], abs=1e-6)
        assert result.acc5 == pytest.approx(cb["acc5"], abs=1e-6)
        assert result.mean_per_class_recall == pytest.approx(cb["mean_per_class_recall"], abs=1e-6)


# ------------------------------------------------------------------------------------ datasets


def test_imagenet_subset_scores_against_true_wnid_class(tmp_path, tiny_loaded, monkeypatch):
    """Folders n01440764, n01443537, n15075141 are classes 0, 1 and 999 (not 0, 1, 2), images are
    scored among all 1000 CLIP names, and several template sets encode the images once."""
    import zeroshot.encode.embed as embed_module
    import zeroshot.tasks.evaluate as ev
    from zeroshot.encode.embed import EmbedSettings

    root = tmp_path / "imagenet"
    wnids = ["n01440764", "n01443537", "n15075141"]
    for k, wnid in enumerate(wnids):
        make_image(root / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG", (60 * k, 200 - 50 * k, 90), fmt="PNG")
    data = imagenet_dataset(root)
    names = load_builtin("classes", "imagenet")
    assert data.targets == [0, 1, 999] == [imagenet_wnids().index(w) for w in wnids]
    assert data.classnames == tuple(names) and len(names) == 1000
    assert data.classnames[999] == names[-1] and data.classnames[0] == "tench"

    # Class weights that put each image's own embedding on its true class: only a correct
    # wnid -> index mapping gives 100% top-1.
    features, valid, _ = ev.encode_dataset(tiny_loaded, data, EmbedSettings(workers=0))
    assert valid.all()
    base = torch.nn.functional.normalize(torch.randn(1000, features.shape[1], generator=torch.Generator().manual_seed(1)), dim=-1)
    base[[0, 1, 999]] = features
    calls = {"text": 0, "images": 0}

    def fake_weights(loaded, labels, templates, *args, **kwargs):
        calls["text"] += 1
        assert list(labels) == names
        return base

    encode = embed_module.encode_images

    def counting(loaded, pixels, *a, **k):
        calls["images"] += pixels.shape[0]
        return encode(loaded, pixels, *a, **k)

    monkeypatch.setattr(ev, "build_class_weights", fake_weights)
    monkeypatch.setattr(embed_module, "encode_images", counting)
    result = evaluate(tiny_loaded, data, ["photo", "openai-7", "none"], EmbedSettings(workers=0), cache=False)
    assert calls == {"text": 3, "images": 3}  # three template sets, each image encoded once
    assert [r.acc1 for r in result.results] == [1.0, 1.0, 1.0]
    rows = result.prediction_rows()
    assert rows[2]["true_label"] == names[-1] and rows[2]["correct"]


def test_cli_imagenet_subset(tmp_path, tiny_ckpt):
    for k, wnid in enumerate(["n01443537", "n15075141"]):
        for j in range(2):
            make_image(tmp_path / "in" / wnid / f"ILSVRC2012_val_{k}{j}.JPEG", (90 * k, 50 * j, 200), fmt="PNG")
    out, preds = tmp_path / "r.json", tmp_path / "p.csv"
    result = run("eval", "imagenet", "--root", str(tmp_path / "in"), "-t", "photo", "--limit", "1",
                 "-o", str(out), "--predictions", str(preds), *tiny_args(tiny_ckpt))
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert body["dataset"] == "imagenet1k" and body["classes"] == 1000
    assert (body["images"], body["classes_with_images"]) == (2, 2)
    with open(preds, newline="", encoding="utf-8") as f:
        assert [r["true_label"] for r in csv.DictReader(f)] == ["goldfish", load_builtin("classes", "imagenet")[-1]]


def test_imagenet_layout_errors(tmp_path):
    make_image(tmp_path / "in" / "val" / "n01440764" / "a.png")
    make_image(tmp_path / "in" / "val" / "dogs" / "b.png")
    with pytest.raises(UsageError, match=r"'dogs'.*not ImageNet-1k WordNet ids.*val/<wnid>"):
        imagenet_dataset(tmp_path / "in")
    make_image(tmp_path / "flat" / "ILSVRC2012_val_00000001.JPEG", fmt="PNG")
    with pytest.raises(UsageError, match="no WordNet-id folders"):
        imagenet_dataset(tmp_path / "flat")
    with pytest.raises(UsageError, match="no such folder"):
        imagenet_dataset(tmp_path / "missing")


def test_folder_classnames_mapping_and_limit(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", ["cat_dir", "dog_dir"], per_class=3)
    mapping = tmp_path / "names.csv"
    mapping.write_text("# folder,class\ndog_dir,a dog\ncat_dir,a cat\nbird_dir,a bird\n", encoding="utf-8")
    data = folder_dataset(root, mapping)
    assert data.classnames == ("a dog", "a cat", "a bird")  # mapping order; bird competes too
    assert data.targets == [1, 1, 1, 0, 0, 0]
    assert data.limit(2).targets == [1, 1, 0, 0]
    mapping.write_text("cat_dir,a cat\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no class name for folder 'dog_dir'"):
        folder_dataset(root, mapping)


def test_csv_manifest(tmp_path):
    make_image(tmp_path / "imgs" / "a.png")
    make_image(tmp_path / "imgs" / "b.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,extra\nimgs/a.png,zebra,1\nimgs/b.png,ant,2\n", encoding="utf-8")
    data = csv_dataset(manifest)
    assert data.classnames == ("ant", "zebra") and data.targets == [1, 0]
    assert data.fs_paths["imgs/a.png"] == str(tmp_path / "imgs" / "a.png")
    manifest.write_text("file,class\nx.png,a\n", encoding="utf-8")
    with pytest.raises(UsageError, match="'path' and 'label' columns"):
        csv_dataset(manifest)


def _fake_cifar10(root: Path, n: int = 20) -> Path:
    """A tiny cifar-10-batches-py in torchvision's pickle format (md5s will not match)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [i % 10 for i in range(n)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": load_builtin("classes", "cifar10")}, f)
    return root


def test_cifar_via_torchvision(tmp_path, tiny_ckpt, monkeypatch):
    result = run("eval", "cifar10", "--root", str(tmp_path / "nothing"), *tiny_args(tiny_ckpt))
    assert result.exit_code == 2
    assert "cifar-10-batches-py" in result.output and "--download" in result.output

    # Happy path on a fabricated batch: only torchvision's md5 check is bypassed (test-only).
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    root = _fake_cifar10(tmp_path / "cifar")
    out = tmp_path / "r.json"
    result = run("eval", "cifar10", "--root", str(root), "--limit", "1", "-t", "photo", "-o", str(out), *tiny_args(tiny_ckpt))
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert body["dataset"] == "cifar10" and body["images"] == 10 and body["classes"] == 10


def test_cifar_download_failure_is_one_line(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets.cifar as tv_cifar

    from zeroshot.data.datasets import cifar_dataset
    from zeroshot.errors import ZeroshotError

    def offline(self):
        raise URLError("no network")

    monkeypatch.setattr(tv_cifar.CIFAR10, "download", offline)
    with pytest.raises(ZeroshotError, match=r"could not download CIFAR-100 \(no network\).*cifar-100-python.tar.gz"):
        cifar_dataset("cifar100", tmp_path, download=True)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_folder_outputs(tmp_path, tiny_ckpt):
    root = make_folder_dataset(tmp_path / "ds", per_class=3)
    out, preds, per_class = tmp_path / "results.json", tmp_path / "preds.csv", tmp_path / "classes.csv"
    result = run("eval", "folder", str(root), "-t", "photo", "-t", "openai-7", "-o", str(out),
                 "--predictions", str(preds), "--per-class", str(per_class), *tiny_args(tiny_ckpt))
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split("\t") == ["template set", "templates", "top-1 (fraction)", "top-5 (fraction)",
                                     "mean per-class recall (fraction)"]
    assert [line.split("\t")[:2] for line in lines[1:]] == [["photo", "1"], ["openai-7", "7"]]

    body = json.loads(out.read_text())
    assert body["task"] == "zeroshot_classification" and body["dataset"] == "folder"
    assert body["model"] == "zs-tiny" and body["pretrained"] == str(tiny_ckpt)
    assert set(body["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert [s["templates"] for s in body["template_sets"]] == ["photo", "openai-7"]
    assert body["template_sets"][0]["metrics"] == body["metrics"]
    assert (body["images"], body["classes"], body["skipped"]) == (18, 6, 0)
    assert body["seconds"] > 0

    with open(preds, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "true_label", "predicted_label", "score", "correct", "templates", "error"]
    assert len(rows) == 36
    photo = [r for r in rows if r["templates"] == "photo"]
    acc1 = sum(r["correct"] == "true" for r in photo) / len(photo)
    assert acc1 == pytest.approx(body["metrics"]["acc1"])
    assert all(r["true_label"] == Path(r["path"]).parent.name for r in photo)

    with open(per_class, newline="", encoding="utf-8") as f:
        classes = [r for r in csv.DictReader(f) if r["templates"] == "photo"]
    accuracies = [float(r["accuracy"]) for r in classes]
    assert len(classes) == 6 and accuracies == sorted(accuracies)  # worst first


def test_cli_csv_manifest_few_classes_limit_and_skips(tmp_path, tiny_ckpt):
    rows = ["path,label"]
    for k, label in enumerate(["cat", "dog", "cat", "dog", "fish", "cat"]):
        make_image(tmp_path / "imgs" / f"{k}.png", (40 * k, 255 - 40 * k, 100))
        rows.append(f"imgs/{k}.png,{label}")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    rows.append("imgs/broken.png,fish")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "r.json"

    result = run("eval", "csv", str(manifest), "-t", "photo", "-o", str(out), *tiny_args(tiny_ckpt)[:-1])
    assert result.exit_code == 3, result.output  # finished, but an image was skipped
    assert "skipping imgs/broken.png: not_an_image" in result.stderr
    assert "n/a" in result.stdout.splitlines()[1]  # top-5 with 3 classes
    body = json.loads(out.read_text())
    assert body["metrics"]["acc5"] is None and body["classes"] == 3
    assert body["images"] == 7 and body["skipped"] == 1  # the broken image stays in the denominator
    assert body["skipped_images"][0]["path"] == "imgs/broken.png"
    assert body["metrics"]["acc1"] * 7 == pytest.approx(round(body["metrics"]["acc1"] * 7))

    result = run("eval", "csv", str(manifest), "-t", "photo", "--limit", "1", "-o", str(out), *tiny_args(tiny_ckpt))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["images"] == 3


@pytest.mark.parametrize("args, message", [
    (["imagenet", "--root", "{tmp}/nope"], "--root {tmp}/nope: no such folder"),
    (["imagenet", "{tmp}/bad"], "not ImageNet-1k WordNet ids"),
    (["imagenet"], "say where the dataset is"),
    (["folder", "{tmp}/bad", "--download"], "--download is only for cifar10 and cifar100"),
    (["imagenet", "{tmp}/bad", "--classnames", "{tmp}/x.txt"], "--classnames is for folder and csv"),
    (["csv", "{tmp}/missing.csv"], "manifest not found"),
    (["folder", "{tmp}/bad", "-o", "{tmp}/no/such/r.json"], "--output {tmp}/no/such/r.json: folder"),
    (["folder", "{tmp}/bad", "--labels", "{tmp}/labels.txt"], "has 3 labels but folder has 1 classes"),
    (["folder", "{tmp}/bad", "-t", "nonsense"], "--templates 'nonsense'"),
])
def test_cli_usage_errors(tmp_path, tiny_ckpt, args, message):
    make_image(tmp_path / "bad" / "dogs" / "a.png")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n", encoding="utf-8")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run("eval", *args, *tiny_args(tiny_ckpt))
    assert result.exit_code == 2, result.output
    assert message.replace("{tmp}", str(tmp_path)) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
