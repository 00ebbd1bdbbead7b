"""The OpenVINO image-tower runtime (``--runtime``, extra ``[openvino]``): when ``auto`` picks it,
that its fp32 output equals open_clip's own ``encode_image``, that its bf16 output agrees with
fp32 on the trained shapes model's images, the conversion cache, the first-batch check's fallback
to torch fp32, and the store key / results JSON / summary naming it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_strict, tiny_cli_args

pytest.importorskip("openvino", reason="the [openvino] extra is part of the test extra")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import shapes  # noqa: E402

SHAPES_MODEL = Path(__file__).parent / "fixtures" / "shapes-tiny.safetensors"


def load(ckpt, precision="fp32", runtime="openvino", arch="zs-tiny"):
    from zeroshot.models import load_model

    return load_model(arch, str(ckpt), device="cpu", precision=precision, runtime=runtime)


def pixels(loaded, n: int = 6, seed: int = 0) -> torch.Tensor:
    size = loaded.model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ choosing it


@pytest.mark.parametrize(("spec", "device", "precision", "expected"), [
    ("auto", "cpu", "bf16", "openvino"),  # a CPU bf16 image tower: the faster runtime
    ("auto", "cpu", "fp32", "torch"),  # fp32 stays torch's exact path under auto
    ("auto", "cuda", "bf16", "torch"),
    ("torch", "cpu", "bf16", "torch"),
    ("openvino", "cpu", "fp32", "openvino"),
    (None, "cpu", "fp32", "torch"),
])
def test_resolve_runtime(spec, device, precision, expected):
    from zeroshot.runtimes import resolve_runtime

    assert resolve_runtime(spec, device, precision) == expected


def test_auto_keeps_torch_for_transformers_models():
    from zeroshot.runtimes import resolve_runtime

    assert resolve_runtime("auto", "cpu", "bf16", backend="transformers") == "torch"


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"spec": "openvino", "device_type": "cuda", "precision": "bf16"}, "runs on the CPU"),
    ({"spec": "openvino", "device_type": "cpu", "precision": "bf16", "backend": "transformers"}, "hf: models"),
    ({"spec": "tensorrt", "device_type": "cpu", "precision": "fp32"}, "not one of auto, torch, openvino"),
])
def test_impossible_runtime_is_a_usage_error(kwargs, words):
    from zeroshot.errors import UsageError
    from zeroshot.runtimes import resolve_runtime

    with pytest.raises(UsageError, match=words):
        resolve_runtime(**kwargs)


def test_without_openvino_installed(monkeypatch, tiny_ckpt, image_dir):
    import zeroshot.runtimes
    from zeroshot.errors import UsageError

    monkeypatch.setattr(zeroshot.runtimes, "openvino_installed", lambda: False)
    assert zeroshot.runtimes.resolve_runtime("auto", "cpu", "bf16") == "torch"
    with pytest.raises(UsageError, match=r'pip install "zeroshot\[openvino\]"'):
        zeroshot.runtimes.resolve_runtime("openvino", "cpu", "fp32")
    from typer.testing import CliRunner

    from zeroshot.cli import app

    result = CliRunner().invoke(app, ["classify", str(image_dir), "-l", "a", "-l", "b", *tiny_cli_args(tiny_ckpt),
                                      "--runtime", "openvino"])
    assert result.exit_code == 2
    assert 'pip install "zeroshot[openvino]"' in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- what it computes


def test_fp32_equals_open_clip_encode_image(tiny_ckpt):
    from zeroshot.encode.vision import encode_images

    loaded = load(tiny_ckpt)
    assert loaded.runtime == "openvino" and loaded.image_numerics == "fp32+openvino"
    x = pixels(loaded)
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(loaded.model.encode_image(x), dim=-1)
    assert torch.allclose(encode_images(loaded, x), reference, atol=1e-5)
    # Any batch size (the graph has a dynamic batch dimension).
    assert torch.allclose(encode_images(loaded, x[:1]), reference[:1], atol=1e-5)


def test_bf16_agrees_with_fp32_on_the_trained_model():
    """The trained shapes model on new images of its 36 pairs: bf16 through OpenVINO against torch
    fp32 — cosine >= 0.999 for every image and the same top-1 for nearly all (measured 99.4%
    for torch bf16 on 720 images; near-ties on pairs never trained can flip)."""
    from zeroshot.encode.text import build_class_weights
    from zeroshot.encode.vision import encode_images

    fp32 = load(SHAPES_MODEL, "fp32", "torch", "zs-shapes")
    fast = load(SHAPES_MODEL, "bf16", "openvino", "zs-shapes")
    scenes = shapes.labelled_scenes(11, shapes.all_pairs(), 2)
    batch = torch.stack([fp32.preprocess(scene.image) for scene, _ in scenes])
    exact, reduced = encode_images(fp32, batch), encode_images(fast, batch)
    assert float(torch.nn.functional.cosine_similarity(exact, reduced).min()) >= 0.999
    weights = build_class_weights(fp32, [shapes.label(p) for p in shapes.all_pairs()], ["a photo of a {}."], cache=None)
    same = ((exact @ weights.T).argmax(1) == (reduced @ weights.T).argmax(1)).float().mean()
    assert same >= 0.95


def test_conversion_is_cached_per_weights(tiny_ckpt, tmp_path, monkeypatch):
    import zeroshot.runtimes
    from zeroshot.paths import default_cache_dir

    from conftest import save_random_model

    load(tiny_ckpt)
    converted = sorted((default_cache_dir() / "openvino").glob("*.xml"))
    assert len(converted) == 1 and converted[0].with_suffix(".bin").is_file()
    assert not list((default_cache_dir() / "openvino").glob(".convert-*"))  # no staging left behind

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(zeroshot.runtimes, "_convert", no_conversion)
    load(tiny_ckpt, precision="bf16")  # the same weights at another precision: read from the cache
    with pytest.raises(AssertionError, match="converted again"):
        load(save_random_model("zs-tiny", tmp_path / "other.pt", seed=3))


def test_full_cache_converts_for_the_run(tiny_ckpt, monkeypatch):
    import errno

    import zeroshot.runtimes
    from zeroshot.encode.vision import encode_images
    from zeroshot.errors import ZeroshotWarning
    from zeroshot.paths import default_cache_dir

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zeroshot.runtimes, "_save_ir", disk_full)
    with pytest.warns(ZeroshotWarning, match="could not keep the OpenVINO conversion"):
        loaded = load(tiny_ckpt)
    assert not list((default_cache_dir() / "openvino").iterdir())  # nothing half-written left behind
    x = pixels(loaded)
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(loaded.model.encode_image(x), dim=-1)
    assert torch.allclose(encode_images(loaded, x), reference, atol=1e-5)


def test_conversion_failure(tiny_ckpt, monkeypatch, cpu_with_native_bf16):
    import zeroshot.runtimes
    from zeroshot.errors import ModelLoadError

    def fails(*args):
        raise ModelLoadError("OpenVINO could not convert the image tower: unsupported op; use --runtime torch")

    monkeypatch.setattr(zeroshot.runtimes, "_convert", fails)
    with pytest.raises(ModelLoadError, match="use --runtime torch"):
        load(tiny_ckpt, runtime="openvino")
    loaded = load(tiny_ckpt, precision="auto", runtime="auto")  # auto keeps torch
    assert loaded.runtime == "torch" and loaded.precision == "bf16"


# ------------------------------------------------------------ auto, its check, keys and outputs


def test_auto_runs_openvino_bf16_checked_on_the_first_batch(tiny_ckpt, image_dir, cpu_with_native_bf16):
    from zeroshot.tasks.classify import ZeroShotClassifier

    loaded = load(tiny_ckpt, precision="auto", runtime="auto")
    assert (loaded.runtime, loaded.precision) == ("openvino", "bf16")
    assert loaded.describe_precision() == "bf16 (auto, image on openvino)"
    paths = sorted(str(p) for p in image_dir.rglob("*.*"))
    fast = ZeroShotClassifier(["red", "green", "blue"], "photo", model=loaded, cache=False)
    exact = ZeroShotClassifier(["red", "green", "blue"], "photo", model=load(tiny_ckpt, runtime="torch"), cache=False)
    got = list(fast.classify_paths(paths, workers=0))
    want = list(exact.classify_paths(paths, workers=0))
    assert loaded.checked == {"image": True, "text": True} and loaded.runtime == "openvino"
    assert [(p.path, p.label) for p in got] == [(p.path, p.label) for p in want]
    for a, b in zip(got, want):  # bf16 rounding, amplified by the temperature (100) of random weights
        fast_scores, exact_scores = dict(zip(a.labels, a.scores)), dict(zip(b.labels, b.scores))
        assert max(abs(fast_scores[k] - exact_scores[k]) for k in exact_scores) < 0.05


def test_failed_check_returns_to_torch_fp32(tiny_ckpt, monkeypatch, cpu_with_native_bf16):
    import zeroshot.encode.vision as vision

    monkeypatch.setattr(vision, "check_against_fp32", lambda *a, **k: (False, "min cosine 0.5"))
    loaded = load(tiny_ckpt, precision="auto", runtime="auto")
    x = pixels(loaded)
    got = vision.encode_images(loaded, x)
    assert (loaded.runtime, loaded.precision, loaded.image_runtime) == ("torch", "fp32", None)
    assert "fp32 for the rest of the run" in loaded.notes[0]
    with torch.inference_mode():
        assert torch.equal(got, torch.nn.functional.normalize(loaded.model.encode_image(x).float(), dim=-1))


def test_store_key_names_the_runtime(tiny_ckpt):
    from zeroshot.store.keys import embedding_key

    assert embedding_key(load(tiny_ckpt), False).precision == "fp32+openvino"
    assert embedding_key(load(tiny_ckpt, runtime="torch"), False).precision == "fp32"
    assert embedding_key(load(tiny_ckpt), False).digest != embedding_key(load(tiny_ckpt, runtime="torch"), False).digest


def test_cli_classify_and_eval_say_where_the_tower_ran(tiny_ckpt, tmp_path):
    from conftest import make_image

    root = tmp_path / "data"
    for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        for i in range(2):
            make_image(root / name / f"{i}.png", rgb)
    args = [*tiny_cli_args(tiny_ckpt), "--runtime", "openvino", "--precision", "fp32"]
    out = cli_strict("classify", root, "-l", "red", "-l", "blue", *args, "--format", "jsonl")
    assert out.exit_code == 0 and "image on openvino" in out.stderr
    assert len([line for line in out.stdout.splitlines() if line.strip()]) == 4
    result_json = tmp_path / "r.json"
    out = cli_strict("eval", "folder", root, *args, "-o", result_json, "--no-cache")
    assert out.exit_code == 0, out.output
    result = json.loads(result_json.read_text())
    assert result["runtime"] == "openvino" and result["precision"] == "fp32"
