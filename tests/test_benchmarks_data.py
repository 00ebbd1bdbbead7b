"""Benchmark datasets of ``zeroshot eval``: the CLIP class names and templates shipped as prompt
data (checked against CLIP_benchmark's JSON and the papers' counts), the ImageNet variants, and
the torchvision transfer sets (through fake torchvision classes: no download, no network)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.data import transfer
from zeroshot.data.catalog import DATASETS, DEFAULT_TEMPLATES, load_dataset
from zeroshot.data.datasets import imagenet_wnids
from zeroshot.encode.embed import EmbedSettings
from zeroshot.errors import UsageError, ZeroshotError
from zeroshot.prompts import load_builtin, resolve_templates
from zeroshot.tasks.evaluate import encode_dataset, evaluate

from conftest import make_image, tiny_cli_args

CB_DIR = Path(__import__("clip_benchmark").__file__).parent / "datasets"
CB_CLASSNAMES = json.loads((CB_DIR / "en_classnames.json").read_text())
CB_TEMPLATES = json.loads((CB_DIR / "en_zeroshot_classification_templates.json").read_text())

# Class counts of the CLIP paper (Table 9 / data/prompts.md) and CLIP_benchmark.
CLASS_COUNTS = {
    "food101": 101, "flowers": 102, "pets": 37, "dtd": 47, "eurosat": 10, "sun397": 397, "caltech101": 102,
    "fgvc_aircraft": 100, "cars": 196, "country211": 211, "gtsrb": 43, "stl10": 10, "mnist": 10, "fer2013": 7,
    "renderedsst2": 2, "pcam": 2,
}


# ---------------------------------------------------------------------------- prompt data files


@pytest.mark.parametrize("name", sorted(CLASS_COUNTS))
def test_class_names_and_templates_match_clip_benchmark(name):
    classes = load_builtin("classes", name)
    templates = resolve_templates(name).templates  # also validates: every template has {}
    assert len(classes) == CLASS_COUNTS[name]
    assert len(set(classes)) == len(classes)
    if name in CB_CLASSNAMES:  # CLIP_benchmark ships these; the others it takes from torchvision's metadata
        assert classes == CB_CLASSNAMES[name]
    assert list(templates) == [t.replace("{c}", "{}") for t in CB_TEMPLATES[name]]
    assert DEFAULT_TEMPLATES[name] == name and name in DATASETS


def test_every_transfer_set_has_its_data():
    assert set(transfer.TRANSFER) == set(CLASS_COUNTS)


def _cb_wnid_list(variable: str) -> list[str]:
    source = (CB_DIR / "builder.py").read_text()
    return list(ast.literal_eval(re.search(variable + r" = (\[.*?\]|\{.*?\})", source).group(1)))


@pytest.mark.parametrize("name, variable", [("imagenet-r", "imagenet_r_wnids"), ("imagenet-a", "imagenet_a_wnids")])
def test_imagenet_subsets_are_clip_benchmarks(name, variable):
    ours = load_builtin("classes", f"{name}-wnids")
    assert len(ours) == 200 and set(ours) == set(_cb_wnid_list(variable))
    everything = imagenet_wnids()
    assert ours == [w for w in everything if w in set(ours)]  # in ImageNet-1k class order


# ----------------------------------------------------------------------------- ImageNet variants


def _wnid_tree(root: Path, wnids: list[str]) -> None:
    for k, wnid in enumerate(wnids):
        make_image(root / wnid / f"img{k}.jpg", (40 * k % 256, 200 - 30 * k % 200, 90 + 20 * k % 150), size=(40 + k, 44))


@pytest.mark.parametrize("name", ["imagenet-r", "imagenet-a"])
def test_imagenet_subset_only_its_classes_compete(tmp_path, tiny_loaded, name):
    """Folders map to their index among the 200 classes; the class names are ImageNet's for
    those wnids; scoring is among the 200 only (same predictions as a direct argmax over them)."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    subset = load_builtin("classes", f"{name}-wnids")
    picked = [subset[0], subset[57], subset[199]]
    _wnid_tree(tmp_path / name, picked)
    data = load_dataset(name, tmp_path)  # ROOT/imagenet-r/<wnid>/ found under ROOT
    names = dict(zip(imagenet_wnids(), load_builtin("classes", "imagenet")))
    assert len(data.classnames) == 200 and data.classnames == tuple(names[w] for w in subset)
    assert data.targets == [0, 57, 199]
    assert [data.classnames[t] for t in data.targets] == [names[w] for w in picked]

    result = evaluate(tiny_loaded, data, ["photo"], EmbedSettings(workers=0), cache=False)
    features, _, _ = encode_dataset(tiny_loaded, data, EmbedSettings(workers=0))
    weights = build_zero_shot_classifier(tiny_loaded.model, tiny_loaded.tokenizer, list(data.classnames),
                                         ["a photo of a {}."], device="cpu")
    assert result.results[0].predictions.tolist() == (features @ weights).argmax(dim=1).tolist()
    assert result.results[0].class_total.shape[0] == 200

    other = next(w for w in imagenet_wnids() if w not in set(subset))
    _wnid_tree(tmp_path / "bad" / name, [other])
    with pytest.raises(UsageError, match=f"not among the 200 {name} classes"):
        load_dataset(name, tmp_path / "bad")


def test_imagenetv2_numeric_folders_map_to_wnids(tmp_path):
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    for index in (0, 17, 999):
        make_image(root / str(index) / "a1b2.jpeg", (index % 256, 90, 30))
    data = load_dataset("imagenetv2", tmp_path)
    assert data.targets == [0, 17, 999]
    wnids = imagenet_wnids()
    assert [wnids[t] for t in data.targets] == ["n01440764", wnids[17], "n15075141"]
    assert len(data.classnames) == 1000 and data.classnames[0] == "tench"
    make_image(tmp_path / "v2b" / "n01440764" / "x.jpeg")
    with pytest.raises(UsageError, match="not class indices 0..999"):
        load_dataset("imagenetv2", tmp_path / "v2b")


def test_imagenet_sketch_layout(tmp_path):
    _wnid_tree(tmp_path / "sketch", ["n01443537", "n15075141"])
    data = load_dataset("imagenet_sketch", tmp_path)
    assert data.targets == [1, 999] and len(data.classnames) == 1000 and data.name == "imagenet_sketch"


# --------------------------------------------------------------------------- torchvision sets


class FakeFiles:
    """Stands in for a torchvision dataset made of files (Food101's attributes)."""

    calls: list = []

    def __init__(self, root, split="train", download=False, **kwargs):
        FakeFiles.calls.append((root, split, download, kwargs))
        base = Path(root) / "food-101"
        if not base.is_dir():
            raise RuntimeError("Dataset not found. You can use download=True to download it")
        self._image_files = sorted(base.rglob("*.jpg"))
        self._labels = [int(p.parent.name) for p in self._image_files]


class FakeMemory:
    """Stands in for MNIST: images in memory, ``targets``, PIL images from ``__getitem__``."""

    def __init__(self, root, train=True, download=False):
        gen = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=gen)
        self.targets = torch.tensor([3, 1, 4, 1, 5, 9])

    def __getitem__(self, index):
        return Image.fromarray(self.data[index].numpy(), mode="L"), int(self.targets[index])

    def __len__(self):
        return len(self.targets)


def test_file_backed_torchvision_set_maps_to_files(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.Food101", FakeFiles)
    FakeFiles.calls.clear()
    for label in (0, 57, 100):
        make_image(tmp_path / "food-101" / "images" / str(label) / f"im{label}.jpg")
    data = load_dataset("food101", tmp_path)
    assert FakeFiles.calls == [(str(tmp_path), "test", False, {})]
    assert data.targets == [0, 100, 57] and data.images is None  # file samples: the store applies
    assert all(Path(p).is_file() for p in data.names)
    assert data.classnames == tuple(load_builtin("classes", "food101")) and data.classnames[0] == "apple pie"
    assert data.root == str(tmp_path / "food-101")
    assert load_dataset("food101", tmp_path / "food-101").targets == data.targets  # the set's own folder works too


def test_real_torchvision_food101_layout(tmp_path):
    """torchvision's own Food101 on a tiny fake copy of its layout: the attributes we read exist."""
    base = tmp_path / "food-101"
    (base / "meta").mkdir(parents=True)
    keys = [name.replace(" ", "_") for name in load_builtin("classes", "food101")]  # Food-101's folder names
    (base / "meta" / "test.json").write_text(json.dumps({key: [f"{key}/{k}"] for k, key in enumerate(keys[::-1])}))
    (base / "images").mkdir()
    data = load_dataset("food101", tmp_path)
    assert len(data) == 101 and data.root == str(base)
    for path, target in data.samples:  # each image's class name is its folder's
        assert Path(path).parent.name.replace("_", " ") == data.classnames[target]


def test_in_memory_torchvision_set_reads_items_in_workers(tmp_path, monkeypatch, tiny_loaded):
    monkeypatch.setattr("torchvision.datasets.MNIST", FakeMemory)
    data = load_dataset("mnist", tmp_path)
    assert data.targets == [3, 1, 4, 1, 5, 9] and data.names[0] == "mnist/test/00000"
    assert data.classnames == tuple(load_builtin("classes", "mnist"))
    first = data.inputs()[0].load()
    assert np.array_equal(np.asarray(first), FakeMemory(None).data[0].numpy())
    features, ok, _ = encode_dataset(tiny_loaded, data, EmbedSettings(workers=0))
    features2, ok2, _ = encode_dataset(tiny_loaded, data, EmbedSettings(workers=1))
    assert ok.all() and ok2.all() and torch.allclose(features, features2, atol=1e-6)


def test_fer2013_labels_follow_the_class_name_order(tmp_path, monkeypatch):
    """torchvision's FER2013 labels (Angry Disgust Fear Happy Sad Surprise Neutral) are remapped to
    the class-name order (CLIP_benchmark's sorted folders: ... happy neutral sad surprised)."""

    class FakeFer(FakeMemory):
        def __init__(self, root, split="train"):
            super().__init__(root)
            self.targets = None
            self._samples = [(torch.zeros(48, 48, dtype=torch.uint8), t) for t in range(7)]

        def __getitem__(self, index):
            return Image.fromarray(self._samples[index][0].numpy()), self._samples[index][1]

        def __len__(self):
            return 7

    monkeypatch.setattr("torchvision.datasets.FER2013", FakeFer)
    data = load_dataset("fer2013", tmp_path)
    assert [data.classnames[t] for t in data.targets] == ["angry", "disgusted", "fearful", "happy", "sad",
                                                           "surprised", "neutral"]
    for k, emotion in enumerate(["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]):
        make_image(tmp_path / "k" / "fer2013" / "test" / emotion / f"{k}.png", (30 * k, 40, 50), fmt="PNG")
    folders = load_dataset("fer2013", tmp_path / "k")
    assert [folders.classnames[t] for t in folders.targets] == list(load_builtin("classes", "fer2013"))


def test_caltech101_keeps_the_background_class(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.Caltech101", lambda root, **kw: object())
    folder = tmp_path / "caltech101" / "101_ObjectCategories"
    categories = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes"] + [f"c{i:03d}" for i in range(97)]
    for name in categories:
        (folder / name).mkdir(parents=True)
    make_image(folder / "BACKGROUND_Google" / "image_0001.jpg")
    make_image(folder / "Faces" / "image_0001.jpg")
    data = load_dataset("caltech101", tmp_path)
    assert [data.classnames[t] for t in data.targets] == ["background", "off-center face"]


@pytest.mark.parametrize("name, cls, folder", [("food101", "Food101", "food-101"), ("dtd", "DTD", "dtd"),
                                               ("sun397", "SUN397", "SUN397")])
def test_missing_files_error_is_one_line(tmp_path, monkeypatch, name, cls, folder):
    def missing(*args, **kwargs):
        raise RuntimeError("Dataset not found. You can use download=True to download it")

    monkeypatch.setattr(f"torchvision.datasets.{cls}", missing)
    with pytest.raises(UsageError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / folder) in message and "--download" in message

    result = CliRunner().invoke(app, ["eval", name, "--root", str(tmp_path), "-q", "-m", "zs-tiny", "-p", ""])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {message}"]


def test_missing_reader_package_is_named(tmp_path, monkeypatch):
    def needs_h5py(*args, **kwargs):
        raise RuntimeError("h5py is not found. This dataset needs to have h5py installed: please pip install h5py")

    monkeypatch.setattr("torchvision.datasets.PCAM", needs_h5py)
    with pytest.raises(UsageError, match="^PatchCamelyon: h5py is not found.*pip install h5py$"):
        load_dataset("pcam", tmp_path)


def test_download_failure_and_option_checks(tmp_path, monkeypatch, tiny_ckpt):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("torchvision.datasets.Flowers102", offline)
    with pytest.raises(ZeroshotError, match="could not download Flowers-102 .no network.; put the files in"):
        load_dataset("flowers", tmp_path, download=True)
    result = CliRunner().invoke(app, ["eval", "imagenet", str(tmp_path), "--download", *tiny_cli_args(tiny_ckpt)])
    assert result.exit_code == 2 and "--download is only for" in result.output
    monkeypatch.setattr("torchvision.datasets.MNIST", FakeMemory)
    result = CliRunner().invoke(app, ["eval", "mnist", str(tmp_path), "--store", str(tmp_path / "s"), *tiny_cli_args(tiny_ckpt)])
    assert result.exit_code == 2 and "--store is for datasets of image files" in result.output


def test_cli_eval_torchvision_set_uses_its_templates(tmp_path, monkeypatch, tiny_ckpt):
    monkeypatch.setattr("torchvision.datasets.MNIST", FakeMemory)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", "mnist", "--root", str(tmp_path), *tiny_cli_args(tiny_ckpt), "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert body["dataset"] == "mnist" and body["templates"] == "mnist" and body["classes"] == 10 and body["images"] == 6
