"""Model resolution and loading on tiny random-weight models; fast, one-line failures."""

from __future__ import annotations

import time

import pytest
import torch

from zeroshot.errors import ModelLoadError, UsageError
from zeroshot.models import canonical_arch, list_pretrained_models, load_model
from zeroshot.precision import resolve_device, resolve_precision


def test_local_checkpoint_loads_in_eval_mode(tiny_ckpt):
    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu")
    assert not loaded.model.training
    assert loaded.precision == "fp32" and loaded.device.type == "cpu"
    state = torch.load(tiny_ckpt, weights_only=True)
    assert torch.equal(loaded.model.logit_scale.cpu(), state["logit_scale"])  # real weights, not random init
    assert str(tiny_ckpt.resolve()) in loaded.weights_id
    assert not loaded.uses_sigmoid


def test_safetensors_and_logit_bias_model(tiny_sigmoid_ckpt):
    loaded = load_model("zs-tiny-sigmoid", str(tiny_sigmoid_ckpt), device="cpu")
    assert loaded.uses_sigmoid and float(loaded.logit_bias) == pytest.approx(-10.0)


def test_checkpoint_of_another_architecture_is_an_error(tiny_ckpt):
    with pytest.raises(ModelLoadError, match="does not fit this architecture") as info:
        load_model("zs-tiny-wide", str(tiny_ckpt), device="cpu")
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_is_an_error(tiny_ckpt, tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(tiny_ckpt.read_bytes()[: 20_000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model("zs-tiny", str(cut), device="cpu")


def test_missing_checkpoint_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="file not found"):
        load_model("zs-tiny", str(tmp_path / "nope.safetensors"), device="cpu")


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean ViT-B-32"):
        canonical_arch("ViT-B-23")
    assert canonical_arch("ViT-B/32") == "ViT-B-32"
    assert canonical_arch("vit-b-32") == "ViT-B-32"


def test_unknown_tag_suggests_close_tags():
    with pytest.raises(UsageError, match="did you mean openai"):
        load_model("ViT-B-32", "opneai", device="cpu")


def test_offline_cold_cache_fails_fast_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as info:
        load_model("ViT-B-32", "openai", device="cpu")
    assert time.monotonic() - start < 30
    assert "--pretrained FILE" in str(info.value)


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="cannot be reached"):
        load_model("ViT-B-32", "laion2b_s34b_b79k", device="cpu")
    assert time.monotonic() - start < 30


def test_hf_hub_id_offline_is_an_error(monkeypatch):
    with pytest.raises(ModelLoadError, match="not in the local cache"):
        load_model("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", device="cpu")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError, match="not one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UsageError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(UsageError, match="not one of"):
        resolve_precision("int8", cpu)


def test_listing_marks_nothing_cached_in_a_cold_cache():
    entries = list_pretrained_models()
    assert ("ViT-B-32", "openai") in {(e.arch, e.tag) for e in entries}
    assert not any(e.cached for e in entries)
    assert list_pretrained_models(cached_only=True) == []


def test_listing_marks_cached_hub_weights(tmp_path, monkeypatch):
    # Lay out a Hugging Face cache entry the way huggingface_hub does.
    repo = tmp_path / "hf-home" / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    import importlib

    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    importlib.import_module("huggingface_hub")
    cached = {(e.arch, e.tag) for e in list_pretrained_models(cached_only=True)}
    assert ("ViT-B-32", "laion2b_s34b_b79k") in cached
