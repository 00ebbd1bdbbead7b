"""Hugging Face transformers CLIP and SigLIP models (``--model hf:...``), checked against
transformers itself: the image processor's pixel tensors and the
``zero-shot-image-classification`` pipeline's probabilities, for tiny random models saved with
``save_pretrained`` (with a tiny byte-level BPE tokenizer built here: no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_image

transformers = pytest.importorskip("transformers")

TEMPLATE = "a photo of {}."
HF_LABELS = ["red square", "green circle", "blue triangle"]
# Sizes that exercise the resize/crop arithmetic: landscape, portrait, square, smaller than
# the crop (padded), odd sizes.
SIZES = [(96, 64), (41, 77), (32, 32), (20, 13), (257, 33)]


def tiny_tokenizer():
    """A CLIP byte-level BPE tokenizer with the 256 byte symbols (no merges): tiny and offline."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in ByteLevel.alphabet():
            vocab.setdefault(char + suffix, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[]), len(vocab)


def _tower(vocab_size: int, positions: int) -> tuple[dict, dict]:
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=positions, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    return text, vision


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, vocab_size = tiny_tokenizer()
    text, vision = _tower(vocab_size, 77)
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_siglip(folder: Path, seed: int = 0) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer, vocab_size = tiny_tokenizer()
    text, vision = _tower(vocab_size, 64)
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():  # SigLIP initialises both to 0; real models have scale ~log(100), bias ~-10
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-1.5)
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(folder)
    SiglipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("hf") / "tiny-clip")


@pytest.fixture(scope="module")
def hf_siglip(tmp_path_factory) -> Path:
    return save_tiny_siglip(tmp_path_factory.mktemp("hf") / "tiny-siglip")


@pytest.fixture(params=["clip", "siglip"])
def hf_folder(request, hf_clip, hf_siglip) -> Path:
    return hf_clip if request.param == "clip" else hf_siglip


@pytest.fixture()
def hf_images(tmp_path) -> list[Path]:
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (240, 240, 20), (120, 30, 160)]
    return [make_image(tmp_path / "imgs" / f"img{i}.png", c, size)
            for i, (c, size) in enumerate(zip(colours, SIZES))]


def labels_args() -> list[str]:
    return [arg for label in HF_LABELS for arg in ("-l", label)]


def pipeline_scores(folder: Path, image: Path) -> dict[str, float]:
    """transformers' own zero-shot pipeline on one image: {label: probability}."""
    from transformers import pipeline

    classifier = pipeline("zero-shot-image-classification", model=str(folder), device="cpu")
    with Image.open(image) as img:
        out = classifier(img.convert("RGB"), candidate_labels=HF_LABELS, hypothesis_template=TEMPLATE)
    return {row["label"]: row["score"] for row in out}


# --------------------------------------------------------------------------- preprocessing


def test_pixels_equal_the_processors(hf_folder, hf_images):
    """Our split pipeline (uint8 in the workers, normalise on the device) gives the image
    processor's own pixel tensors."""
    from transformers import AutoImageProcessor

    from zeroshot.data.preprocess import Preprocessor
    from zeroshot.hf import image_transform

    processor = AutoImageProcessor.from_pretrained(str(hf_folder))
    pre = Preprocessor(image_transform(processor))
    assert pre.presplit
    for path in hf_images:
        with Image.open(path) as img:
            img = img.convert("RGB")
            ours = pre.finish(pre.pixels(img)[None], torch.device("cpu"))
            theirs = processor(images=[img], return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape == (1, 3, 32, 32)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_pil_backend_processor_pixels_equal(kind, hf_images):
    """Processors on transformers' PIL backend (``...ImageProcessorPil``) resize with PIL."""
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    from zeroshot.data.preprocess import Preprocessor
    from zeroshot.hf import image_transform

    processor = (CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
                 if kind == "clip" else SiglipImageProcessorPil(size={"height": 32, "width": 32}))
    transform = image_transform(processor)
    assert transform.backend == "pil"
    pre = Preprocessor(transform)
    for path in hf_images:
        with Image.open(path) as img:
            img = img.convert("RGB")
            ours = pre.finish(pre.pixels(img)[None], torch.device("cpu"))
            theirs = processor(images=[img], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_clip_transform_is_resize_shortest_then_crop(hf_clip):
    from transformers import AutoImageProcessor

    from zeroshot.hf import image_transform

    transform = image_transform(AutoImageProcessor.from_pretrained(str(hf_clip)))
    assert (transform.shortest_edge, transform.crop, transform.resample) == (32, (32, 32), 3)
    assert transform.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert transform.output_size(64, 96) == (32, 48)
    assert transform.output_size(77, 41) == (60, 32)


# ----------------------------------------------------------------------- against the pipeline


def test_library_probabilities_equal_the_pipeline(hf_folder, hf_images):
    from zeroshot.tasks.classify import ZeroShotClassifier

    clf = ZeroShotClassifier(HF_LABELS, templates=[TEMPLATE], model=f"hf:{hf_folder}", device="cpu",
                             precision="fp32", cache=False)
    assert clf.loaded.uses_sigmoid == (hf_folder.name == "tiny-siglip")
    preds = clf.classify([str(p) for p in hf_images], top_k=len(HF_LABELS), workers=0)
    for path, pred in zip(hf_images, preds):
        expected = pipeline_scores(hf_folder, path)
        got = dict(zip(pred.labels, pred.scores))
        assert set(got) == set(expected)
        for label in HF_LABELS:
            assert got[label] == pytest.approx(expected[label], abs=1e-4)


def test_cli_classify_equals_the_pipeline(hf_folder, hf_images, tmp_path):
    from conftest import cli_strict

    out = tmp_path / "out.json"
    result = cli_strict("classify", hf_images[0].parent, "--model", f"hf:{hf_folder}", *labels_args(),
                        "-t", TEMPLATE, "-k", "3", "-d", "cpu", "-j", "1", "-f", "json", "-o", out, "-q",
                        "--no-cache")  # the default store keeps float16 vectors: exact here
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text("utf-8"))
    assert len(rows) == len(hf_images)
    for row in rows:
        expected = pipeline_scores(hf_folder, Path(row["path"]))
        got = {p["label"]: p["score"] for p in row["predictions"]}
        for label in HF_LABELS:
            assert got[label] == pytest.approx(expected[label], abs=1e-4)


def test_a_bare_local_folder_is_an_hf_model(hf_clip, hf_images):
    """A folder with a transformers config.json works without the ``hf:`` prefix."""
    from zeroshot.models import resolve_weights
    from zeroshot.tasks.classify import ZeroShotClassifier

    assert resolve_weights(str(hf_clip)).backend == "transformers"
    clf = ZeroShotClassifier(HF_LABELS, templates=[TEMPLATE], model=str(hf_clip), device="cpu", cache=False)
    pred = clf.classify([str(hf_images[0])], top_k=3, workers=0)[0]
    expected = pipeline_scores(hf_clip, hf_images[0])
    assert dict(zip(pred.labels, pred.scores))[HF_LABELS[0]] == pytest.approx(expected[HF_LABELS[0]], abs=1e-4)


# ------------------------------------------------------------------------- identity and errors


def test_weights_identity_is_stable_and_follows_the_files(tmp_path):
    from zeroshot.models import resolve_weights

    folder = save_tiny_clip(tmp_path / "m")
    first = resolve_weights(f"hf:{folder}").weights_id
    assert resolve_weights(f"hf:{folder}").weights_id == first
    assert resolve_weights(str(folder)).weights_id == first
    config = json.loads((folder / "config.json").read_text())
    config["logit_scale_init_value"] = 1.0
    (folder / "config.json").write_text(json.dumps(config))
    assert resolve_weights(f"hf:{folder}").weights_id != first


def test_hf_hub_prefix_stays_open_clip():
    from zeroshot.hf import is_hf_model

    assert not is_hf_model("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert is_hf_model("hf:openai/clip-vit-base-patch32")


def test_missing_hub_model_offline_is_one_line_error():
    from zeroshot.errors import ModelLoadError
    from zeroshot.models import resolve_weights

    with pytest.raises(ModelLoadError) as info:
        resolve_weights("hf:openai/clip-vit-base-patch32")
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and "hf:/path/to/folder" in message


def test_cli_missing_hub_model_offline(tmp_path):
    from conftest import classify_cli

    make_image(tmp_path / "a.png")
    result = classify_cli([str(tmp_path / "a.png"), "-m", "hf:openai/clip-vit-base-patch32", "-l", "a", "-l", "b"])
    assert result.exit_code != 0
    assert "HF_HUB_OFFLINE" in result.output and "Traceback" not in result.output


def test_without_transformers_the_error_names_the_extra(monkeypatch, hf_clip):
    from zeroshot.errors import UsageError
    from zeroshot.models import resolve_weights

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(UsageError, match=r'pip install "zeroshot\[hf\]"'):
        resolve_weights(f"hf:{hf_clip}")


@pytest.mark.parametrize("name, expected", [
    ("hf:/no/such/folder", "not a folder"),
    ("hf:", "give a hub id"),
    ("hf:a/b/c", "not a folder"),
])
def test_bad_hf_names(name, expected):
    from zeroshot.errors import UsageError
    from zeroshot.models import resolve_weights

    with pytest.raises(UsageError, match=expected):
        resolve_weights(name)


def test_unsupported_model_type(tmp_path):
    from zeroshot.errors import UsageError
    from zeroshot.models import resolve_weights

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UsageError, match="model_type 'bert' is not supported"):
        resolve_weights(f"hf:{tmp_path}")


def test_store_and_search_work_with_hf_models(hf_siglip, hf_images, tmp_path):
    """``index`` fills the store; ``classify`` then reads its vectors (float16: within 2e-3 of a
    fresh float32 encode) and ``search`` ranks the indexed images."""
    from conftest import cli_strict

    model = ["--model", f"hf:{hf_siglip}", "-d", "cpu", "-j", "0"]
    assert cli_strict("index", hf_images[0].parent, *model, "-q").exit_code == 0
    outs = []
    for extra in (["--no-cache"], []):
        out = tmp_path / f"out{len(extra)}.json"
        result = cli_strict("classify", hf_images[0].parent, *model, *labels_args(), "-t", TEMPLATE,
                            "-k", "3", "-f", "json", "-o", out, *extra)
        assert result.exit_code == 0, result.output
        outs.append(json.loads(out.read_text("utf-8")))
    assert "encoded 0, 5 from the store" in result.output
    assert [r["path"] for r in outs[0]] == [r["path"] for r in outs[1]]
    for a, b in zip(*outs):
        for p, q in zip(a["predictions"], b["predictions"]):
            assert p["label"] == q["label"] and p["score"] == pytest.approx(q["score"], abs=2e-3)
    found = cli_strict("search", "a red square", *model, "-n", "5", "-q")
    assert found.exit_code == 0, found.output
    assert sum(str(p.name) in found.output for p in hf_images) == 5


def test_damaged_weights_are_a_one_line_error(tmp_path):
    from zeroshot.errors import ModelLoadError
    from zeroshot.models import load_model

    folder = save_tiny_clip(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(ModelLoadError) as info:
        load_model(f"hf:{folder}", device="cpu")
    assert "\n" not in str(info.value) and "cannot load the transformers model" in str(info.value)


def test_eval_compares_hf_and_open_clip_models(hf_siglip, tiny_loaded, tmp_path, monkeypatch):
    """An hf: model next to an open_clip one in one eval: each equals its single-model run, and
    the two preprocessings mean two decodes of every image."""
    from test_eval import make_folder_dataset

    import zeroshot.data.loader as loader
    from zeroshot.data.datasets import folder_dataset
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.models import load_model
    from zeroshot.tasks.evaluate import evaluate, evaluate_models

    data = folder_dataset(make_folder_dataset(tmp_path / "ds", per_class=2))
    hf_loaded = load_model(f"hf:{hf_siglip}", device="cpu")
    settings = EmbedSettings(workers=0, batch_size=4)
    seen = []
    real = loader.open_image
    monkeypatch.setattr(loader, "open_image", lambda path, *a, **k: seen.append(path) or real(path, *a, **k))
    both = evaluate_models([tiny_loaded, hf_loaded], data, [[TEMPLATE]], settings, cache=False)
    assert len(seen) == 2 * len(data)
    for loaded, ours in zip([tiny_loaded, hf_loaded], both):
        single = evaluate(loaded, data, [[TEMPLATE]], settings, cache=False)
        assert ours.results[0].metrics.as_dict() == single.results[0].metrics.as_dict()
        assert torch.equal(ours.results[0].predictions, single.results[0].predictions)


def fake_hub_cache(folder: Path, hf_home: Path, repo: str) -> Path:
    """``folder`` laid out as the Hugging Face cache holds a downloaded repository: blobs named
    by their sha256, a snapshot of symlinks, refs/main naming the commit."""
    import hashlib
    import shutil

    base = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = base / "snapshots" / commit
    (base / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for path in folder.iterdir():
        blob = base / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(blob)
    return snapshot


def test_hub_id_from_the_cache_offline(hf_clip, hf_images, tmp_path, monkeypatch):
    """``hf:org/name`` with HF_HUB_OFFLINE set: found in the cache (HF_HOME), same results as
    the folder it came from; the weights identity is the blob hash, so it is the same key in
    every copy of that cache."""
    from zeroshot.models import resolve_weights
    from zeroshot.tasks.classify import ZeroShotClassifier

    hf_home = tmp_path / "hf-home"  # the isolated_cache fixture's HF_HOME
    snapshot = fake_hub_cache(hf_clip, hf_home, "tiny-org/tiny-clip")
    ref = resolve_weights("hf:tiny-org/tiny-clip")
    assert Path(ref.create_args[0]) == snapshot
    clf = ZeroShotClassifier(HF_LABELS, templates=[TEMPLATE], model="hf:tiny-org/tiny-clip", device="cpu",
                             cache=False)
    pred = clf.classify([str(hf_images[0])], top_k=3, workers=0)[0]
    expected = pipeline_scores(hf_clip, hf_images[0])
    for label, score in zip(pred.labels, pred.scores):
        assert score == pytest.approx(expected[label], abs=1e-4)
    moved = tmp_path / "copy" / "hf-home"
    fake_hub_cache(hf_clip, moved, "tiny-org/tiny-clip")
    monkeypatch.setenv("HF_HOME", str(moved))
    assert resolve_weights("hf:tiny-org/tiny-clip").weights_id == ref.weights_id
