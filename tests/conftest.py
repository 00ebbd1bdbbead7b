"""Shared fixtures: tiny open_clip models with random weights saved to local checkpoints,
generated image folders, and an isolated cache. No test touches the network.

Hypothesis runs deterministically by default (the README's test command and CI): the same
examples every run, no example database, no deadline. ``HYPOTHESIS_PROFILE=explore`` searches
at random with ten times the examples (and keeps failures in ``.hypothesis/``) for developers
hunting bugs; a failure prints the ``@reproduce_failure`` blob to pin it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CONFIGS = Path(__file__).parent / "model_configs"

# Set before zeroshot/open_clip are imported anywhere, and inherited by subprocesses.
os.environ["ZEROSHOT_MODEL_CONFIGS"] = str(CONFIGS)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from PIL import Image  # noqa: E402

settings.register_profile(
    "deterministic", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],  # timing-based: a loaded machine must not fail a run
)
settings.register_profile("explore", deadline=None, print_blob=True, max_examples=1000)
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "deterministic")
settings.load_profile(HYPOTHESIS_PROFILE)


def examples(n: int) -> int:
    """``max_examples`` for a property: ``n`` by default, ten times as many when exploring."""
    return n * 10 if HYPOTHESIS_PROFILE == "explore" else n

LABELS = ["red square", "green circle", "blue triangle"]
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (240, 240, 20), (120, 30, 160), (20, 20, 20)]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROSHOT_CACHE_DIR", str(tmp_path / "zs-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def save_random_model(arch: str, path: Path, seed: int = 0) -> Path:
    import open_clip

    open_clip.add_model_config(str(CONFIGS))
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_random_model("zs-tiny", tmp_path_factory.mktemp("ckpt") / "zs-tiny.pt")


@pytest.fixture(scope="session")
def tiny_sigmoid_ckpt(tmp_path_factory) -> Path:
    return save_random_model("zs-tiny-sigmoid", tmp_path_factory.mktemp("ckpt") / "zs-tiny-sigmoid.safetensors")


@pytest.fixture(scope="session")
def vitb32_ckpt(tmp_path_factory) -> Path:
    return save_random_model("ViT-B-32", tmp_path_factory.mktemp("ckpt") / "vit-b-32-random.pt")


def make_image(path: Path, colour=(200, 30, 30), size=(96, 64), fmt=None, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    # Some structure so different images embed differently.
    for x in range(0, size[0], 7):
        for y in range(0, size[1], 5):
            img.putpixel((x, y), tuple(255 - c for c in colour))
    img.convert(mode).save(path, format=fmt)
    return path


@pytest.fixture()
def image_dir(tmp_path) -> Path:
    """Six good images: nested folders, natural-order names, a space and Unicode in names."""
    root = tmp_path / "imgs"
    names = ["img2.jpg", "img10.png", "sub/ünïcode name.jpg", "sub/deeper/img1.JPG", "b.jpeg", "a.webp"]
    for name, colour in zip(names, COLOURS):
        make_image(root / name, colour)
    return root


@pytest.fixture()
def labels_file(tmp_path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("# shapes\n" + "\n".join(LABELS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_loaded(tiny_ckpt):
    from zeroshot.models import load_model

    return load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="fp32")
