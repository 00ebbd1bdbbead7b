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
# Subprocesses see a CPU without native bf16, like the tests in this process (cpu_without_native_bf16):
# "--precision auto" is fp32 everywhere unless a test asks for the bf16 path.
os.environ["ZEROSHOT_CPU_FLAGS"] = "avx2 avx512f"
# The image tower runs on torch unless a test asks for OpenVINO (tests/test_runtime_openvino.py
# passes --runtime / runtime= explicitly): the bf16 tests are about torch's bf16 path.
os.environ["ZEROSHOT_RUNTIME"] = "torch"

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
    """Every test has its own class-weight cache, embedding store and Hugging Face home."""
    monkeypatch.setenv("ZEROSHOT_CACHE_DIR", str(tmp_path / "zs-cache"))
    monkeypatch.setenv("ZEROSHOT_STORE_DIR", str(tmp_path / "zs-store"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture(autouse=True)
def cpu_without_native_bf16(monkeypatch):
    """Tests see a CPU without native bf16 (so ``--precision auto`` is fp32 on every machine);
    tests of the bf16 path ask for :func:`cpu_with_native_bf16`."""
    import zeroshot.precision

    monkeypatch.setattr(zeroshot.precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))


@pytest.fixture
def cpu_with_native_bf16(monkeypatch):
    import zeroshot.precision

    monkeypatch.setattr(zeroshot.precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))


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


# ------------------------------------------------------- bad inputs (design.md section 5)

RED = (220, 30, 30)


@pytest.fixture(scope="module")
def clf(tiny_loaded):
    from zeroshot.tasks.classify import ZeroShotClassifier

    return ZeroShotClassifier(LABELS, templates="photo", model=tiny_loaded, cache=False)


@pytest.fixture(scope="session")
def bomb(tmp_path_factory) -> Path:
    """A decompression bomb: 400 Mpx in ~50 kB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)
    return path


def code_of(path, **kwargs) -> str:
    """The reason code ``open_image`` refuses ``path`` with."""
    from zeroshot.data.decode import open_image
    from zeroshot.errors import ImageError

    with pytest.raises(ImageError) as info:
        open_image(str(path), **kwargs)
    return info.value.code


def classify(clf, paths, **kwargs) -> dict:
    """Predictions by path (decoded in this process unless ``workers`` is given)."""
    kwargs.setdefault("workers", 0)
    return {p.path: p for p in clf.classify_paths([str(p) for p in paths], **kwargs)}


def encoded(fmt: str, colour=RED, size=(64, 48), mode="RGB", **save) -> bytes:
    """An image file's bytes in ``fmt``."""
    import io

    buf = io.BytesIO()
    img = Image.new("RGB", size, colour)
    img.convert(mode).save(buf, format=fmt, **save)
    return buf.getvalue()


def classify_cli(args, **kwargs):
    """``zeroshot classify ARGS`` through typer's CliRunner."""
    from typer.testing import CliRunner

    from zeroshot.cli import app

    return CliRunner().invoke(app, ["classify", *args], **kwargs)


def cli_strict(*args):
    """Run the CLI in-process (arguments as strings); exceptions propagate instead of being caught."""
    from typer.testing import CliRunner

    from zeroshot.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def tiny_cli_args(ckpt) -> list[str]:
    """The options that point a command at the tiny random model on the CPU."""
    return ["-m", "zs-tiny", "-p", str(ckpt), "-d", "cpu", "-j", "0", "-b", "4"]


def colour(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic colour per index."""
    return ((i * 37) % 256, (i * 91 + 40) % 256, (i * 53 + 80) % 256)
