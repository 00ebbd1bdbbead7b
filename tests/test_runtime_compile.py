"""``--runtime compile``: the image tower through ``torch.compile`` (inductor) gives open_clip's own
``encode_image`` (float rounding only) at any batch size, on the CPU's bf16 weights as well; the
CLI's rows equal eager torch's; a CPU without a C++ compiler is a one-line usage error; the
runtime is named in the summary, the results JSON and the embedding-store key. One compiled
model per precision for the module (compiling costs seconds even for the tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli_strict, make_image, tiny_cli_args


def load(ckpt, precision="fp32", runtime="compile"):
    from zeroshot.models import load_model

    return load_model("zs-tiny", str(ckpt), device="cpu", precision=precision, runtime=runtime)


@pytest.fixture(scope="module")
def compiled(tiny_ckpt):
    return load(tiny_ckpt)


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_compiled_tower_equals_open_clip_at_any_batch_size(compiled):
    from zeroshot.encode.vision import encode_images

    assert compiled.runtime == "compile" and compiled.describe_precision() == "fp32 (image on compile)"
    for n, seed in ((5, 0), (2, 1), (7, 2)):  # dynamic batch: no wrong results after the first shape
        x = pixels(n, seed)
        got = encode_images(compiled, x)
        with torch.inference_mode():
            want = torch.nn.functional.normalize(compiled.model.encode_image(x).float(), dim=-1)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_compiled_bf16_weights_on_the_cpu(tiny_ckpt):
    """Explicit bf16 on a CPU compiles the bf16 copy of the weights (bf16 input); it agrees with
    eager bf16 to bf16 rounding."""
    from zeroshot.encode.vision import encode_images

    loaded = load(tiny_ckpt, precision="bf16")
    eager = load(tiny_ckpt, precision="bf16", runtime="torch")
    x = pixels(4)
    got, want = encode_images(loaded, x), encode_images(eager, x)
    assert loaded.image_runtime.dtype == torch.bfloat16 and loaded.image_runtime.module is loaded.reduced
    assert float(torch.nn.functional.cosine_similarity(got, want).min()) > 0.999


def test_without_a_cxx_compiler_it_is_one_line(monkeypatch):
    import shutil

    from zeroshot.errors import UsageError
    from zeroshot.runtimes import resolve_runtime

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UsageError, match=r"--runtime compile on the CPU needs a C\+\+ compiler") as info:
        resolve_runtime("compile", "cpu", "fp32")
    assert "\n" not in str(info.value)
    assert resolve_runtime("compile", "cuda", "fp16") == "compile"  # a GPU needs none (triton)


def test_store_key_names_the_runtime(compiled, tiny_ckpt):
    from zeroshot.store.keys import embedding_key

    assert embedding_key(compiled, False).precision == "fp32+compile"
    assert embedding_key(compiled, False).digest != embedding_key(load(tiny_ckpt, runtime="torch"), False).digest


def test_cli_classify_rows_equal_eager_and_name_the_runtime(tiny_ckpt, tmp_path):
    root = tmp_path / "data"
    for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        for i in range(3):
            make_image(root / name / f"{i}.png", rgb)
    common = ["-l", "red", "-l", "blue", *tiny_cli_args(tiny_ckpt), "--precision", "fp32", "-f", "jsonl", "--no-cache"]
    fast = cli_strict("classify", root, *common, "--runtime", "compile")
    eager = cli_strict("classify", root, *common, "--runtime", "torch")
    assert fast.exit_code == 0 and eager.exit_code == 0, fast.output + eager.output
    assert "image on compile" in fast.stderr
    got = [json.loads(line) for line in fast.stdout.splitlines() if line.strip()]
    want = [json.loads(line) for line in eager.stdout.splitlines() if line.strip()]
    assert [(r["path"], r["label"]) for r in got] == [(r["path"], r["label"]) for r in want] and len(got) == 6
    for a, b in zip(got, want):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"]):
            assert p["score"] == pytest.approx(q["score"], abs=1e-4)
    result_json = tmp_path / "r.json"
    out = cli_strict("eval", "folder", root, *tiny_cli_args(tiny_ckpt), "--runtime", "compile", "--precision", "fp32",
                     "-o", result_json, "--no-cache")
    assert out.exit_code == 0, out.output
    assert json.loads(result_json.read_text())["runtime"] == "compile"
