"""``--precision auto`` on a CPU (#15): native-bf16 detection from the CPU's feature flags, the
choice it makes, the first-batch check against fp32 with its fallback, and keys per precision.

Every test here is about which path runs and what it returns, never about speed (that is
benchmarks/precision.py). conftest masks native bf16 for every test; the ones about the bf16
path ask for ``cpu_with_native_bf16``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import zeroshot.encode.vision as vision
from zeroshot.encode.cache import ClassWeightCache
from zeroshot.encode.text import build_class_weights
from zeroshot.models import load_model
from zeroshot.precision import (
    MIN_COSINE,
    cpu_features_line,
    native_bf16,
    parse_cpu_flags,
    resolve_precision,
)
from zeroshot.prompts import resolve_templates
from zeroshot.store.keys import embedding_key
from zeroshot.tasks.classify import ZeroShotClassifier

from conftest import LABELS, classify_cli, make_image, tiny_cli_args

CPU = torch.device("cpu")
EPYC_BF16 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
             "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
EPYC_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
XEON_AMX = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8\n"


# ------------------------------------------------------------------------ CPU feature detection


def test_flags_are_read_from_the_first_processor():
    flags = parse_cpu_flags(EPYC_BF16)
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"} <= flags
    assert parse_cpu_flags("Features\t: fp asimd bf16 i8mm\n") == {"fp", "asimd", "bf16", "i8mm"}
    assert parse_cpu_flags("") == frozenset()


def test_native_bf16_needs_the_flag_never_emulation():
    assert native_bf16(parse_cpu_flags(EPYC_BF16))
    assert native_bf16(parse_cpu_flags(XEON_AMX))
    assert not native_bf16(parse_cpu_flags(EPYC_PLAIN))
    assert not native_bf16(frozenset())
    assert "native bf16: no" in cpu_features_line(parse_cpu_flags(EPYC_PLAIN))
    assert "avx512_bf16" in cpu_features_line(parse_cpu_flags(EPYC_BF16))


def test_auto_on_cpu_follows_the_flags(monkeypatch):
    assert resolve_precision("auto", CPU) == "fp32"  # conftest's CPU: no native bf16
    import zeroshot.precision as zp

    monkeypatch.setattr(zp, "cpu_flags", lambda: parse_cpu_flags(EPYC_BF16))
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"  # an explicit choice is kept
    monkeypatch.setattr(zp, "cpu_flags", lambda: parse_cpu_flags(EPYC_PLAIN))
    assert resolve_precision("auto", CPU) == "fp32"


# ---------------------------------------------------------------------------- auto selection


def test_auto_without_native_bf16_is_plain_fp32(tiny_ckpt):
    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    assert loaded.precision == "fp32" and loaded.reduced is None
    assert not loaded.needs_check("image") and not loaded.needs_check("text")
    assert loaded.tower("image") is loaded.model


def test_auto_with_native_bf16_keeps_fp32_beside_a_bf16_copy(tiny_ckpt, cpu_with_native_bf16):
    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    assert loaded.precision == "bf16" and loaded.describe_precision() == "bf16 (auto)"
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert next(loaded.tower("image").parameters()).dtype == torch.bfloat16
    assert loaded.needs_check("image") and loaded.needs_check("text")
    explicit = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="bf16")
    assert explicit.reduced is explicit.model and not explicit.needs_check("image")  # asked for: no check


# ------------------------------------------------------------------------------ the check


def test_check_against_fp32_counts_cosine_and_top1():
    exact = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    close = torch.nn.functional.normalize(exact + 1e-3, dim=-1)
    assert vision.check_against_fp32(close, exact)[0]
    far = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0]]), dim=-1)
    passed, detail = vision.check_against_fp32(far, exact)
    assert not passed and "min cosine" in detail
    # cosine fine, but a near tie flips the top-1 class: refused
    weights = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0004]]), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor([[1.0, -0.0004]]), dim=-1)
    assert torch.nn.functional.cosine_similarity(a, b).min() >= MIN_COSINE
    passed, detail = vision.check_against_fp32(a, b, weights)
    assert not passed and "same top-1 for 0/1" in detail


def _images(tmp_path, n=6):
    from conftest import COLOURS

    return [str(make_image(tmp_path / f"{i}.png", COLOURS[i % len(COLOURS)], size=(40 + 4 * i, 36))) for i in range(n)]


def _classify(loaded, paths, batch_size=4):
    clf = ZeroShotClassifier(LABELS, templates="photo", model=loaded, cache=False)
    preds = list(clf.classify_paths(paths, workers=0, top_k=3, batch_size=batch_size))
    return clf, preds


def test_first_batch_check_runs_once_and_keeps_bf16(tiny_ckpt, tmp_path, cpu_with_native_bf16, monkeypatch):
    calls = []

    def spy(reduced, exact, weights=None):
        calls.append((len(reduced), weights is not None))
        return True, "forced pass"

    monkeypatch.setattr(vision, "check_against_fp32", spy)
    import zeroshot.encode.text as text

    monkeypatch.setattr(text, "check_against_fp32", spy)
    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    _, preds = _classify(loaded, _images(tmp_path))
    assert calls == [(len(LABELS), False), (4, True)]  # text once, image once (with class weights)
    assert loaded.checked == {"text": True, "image": True} and loaded.notes == []
    assert loaded.describe_precision() == "bf16 (auto)"
    # the bf16 rows are the explicit bf16 path's rows
    _, explicit = _classify(load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="bf16"), _images(tmp_path))
    assert [p.labels for p in preds] == [p.labels for p in explicit]
    assert [s for p in preds for s in p.scores] == pytest.approx([s for p in explicit for s in p.scores], abs=1e-6)


def test_failed_check_falls_back_to_fp32_for_the_whole_run(tiny_ckpt, tmp_path, cpu_with_native_bf16, monkeypatch):
    import zeroshot.encode.text as text

    monkeypatch.setattr(vision, "check_against_fp32", lambda *a, **k: (False, "forced failure"))
    monkeypatch.setattr(text, "check_against_fp32", lambda *a, **k: (False, "forced failure"))
    paths = _images(tmp_path)
    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    _, preds = _classify(loaded, paths)
    assert loaded.precision == "fp32" and loaded.precision_of("text") == "fp32"
    assert loaded.describe_precision() == "fp32 (auto)"
    assert len(loaded.notes) == 2 and all("forced failure" in n and "fp32 for the rest" in n for n in loaded.notes)
    # every row (the first batch included) is the fp32 path's
    _, exact = _classify(load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="fp32"), paths)
    assert [p.labels for p in preds] == [p.labels for p in exact]
    assert [s for p in preds for s in p.scores] == pytest.approx([s for p in exact for s in p.scores], abs=1e-5)


def test_text_can_keep_bf16_when_the_image_side_falls_back(tiny_ckpt, tmp_path, cpu_with_native_bf16, monkeypatch):
    monkeypatch.setattr(vision, "check_against_fp32", lambda *a, **k: (False, "forced failure"))
    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    import zeroshot.encode.text as text

    monkeypatch.setattr(text, "check_against_fp32", lambda *a, **k: (True, "forced pass"))
    _classify(loaded, _images(tmp_path))
    assert loaded.precision_of("text") == "bf16" and loaded.precision == "fp32"
    assert loaded.describe_precision() == "image fp32, text bf16 (auto)"


def test_cli_summary_names_the_precision_and_the_fallback(tiny_ckpt, image_dir, labels_file, cpu_with_native_bf16,
                                                          monkeypatch):
    monkeypatch.setattr(vision, "check_against_fp32", lambda *a, **k: (False, "forced failure"))
    result = classify_cli([*tiny_cli_args(tiny_ckpt), str(image_dir), "-L", str(labels_file), "--no-cache"])
    assert result.exit_code == 0, result.output
    assert "precision image fp32, text bf16 (auto))" in result.stderr  # the text tower passed its own check
    assert "note: image tower: bf16 disagreed with fp32 on the first batch (forced failure)" in result.stderr
    fp32 = classify_cli([*tiny_cli_args(tiny_ckpt), str(image_dir), "-L", str(labels_file), "--no-cache",
                         "--precision", "fp32"])
    assert "precision fp32)" in fp32.stderr and "note:" not in fp32.stderr


def test_eval_json_records_the_precision(tiny_ckpt, tmp_path, cpu_with_native_bf16, monkeypatch):
    from zeroshot.data.datasets import folder_dataset
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.tasks.evaluate import evaluate

    monkeypatch.setattr(vision, "check_against_fp32", lambda *a, **k: (False, "forced failure"))
    for i, label in enumerate(LABELS):
        (tmp_path / "data" / label).mkdir(parents=True)
        make_image(tmp_path / "data" / label / "a.png", (60 * i, 200 - 60 * i, 90))
    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    result = evaluate(loaded, folder_dataset(tmp_path / "data"), ["photo"], EmbedSettings(workers=0), cache=False)
    doc = json.loads(json.dumps(result.as_dict()))
    assert doc["precision"] == "fp32" and doc["text_precision"] in ("bf16", "fp32")
    assert any("forced failure" in n for n in doc["precision_notes"])


# ------------------------------------------------------------------------ keys per precision


def test_class_weight_cache_key_follows_the_text_precision(tiny_ckpt, tmp_path, cpu_with_native_bf16, monkeypatch):
    import zeroshot.encode.text as text

    cache = ClassWeightCache(tmp_path / "cw")
    templates = resolve_templates("1").templates
    fp32 = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="fp32")
    auto = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    assert cache.key(fp32, LABELS, templates) != cache.key(auto, LABELS, templates)
    monkeypatch.setattr(text, "check_against_fp32", lambda *a, **k: (True, "forced pass"))
    build_class_weights(auto, LABELS, templates, cache=cache)
    assert cache.get(cache.key(auto, LABELS, templates), LABELS) is not None  # stored as bf16
    assert cache.get(cache.key(fp32, LABELS, templates), LABELS) is None  # never served to fp32
    # a fallback stores under the fp32 key
    monkeypatch.setattr(text, "check_against_fp32", lambda *a, **k: (False, "forced failure"))
    other = ClassWeightCache(tmp_path / "cw2")
    again = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    bf16_key = other.key(again, LABELS, templates)
    build_class_weights(again, LABELS, templates, cache=other)
    assert other.get(bf16_key, LABELS) is None
    assert other.get(other.key(fp32, LABELS, templates), LABELS) is not None


def test_store_key_differs_per_precision_and_a_fallback_stores_fp32(tiny_ckpt, tmp_path, cpu_with_native_bf16,
                                                                      monkeypatch):
    from zeroshot.data.discover import discover
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.store.db import Store
    from zeroshot.store.reuse import embed_with_store

    fp32 = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="fp32")
    auto = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
    assert embedding_key(fp32, True) != embedding_key(auto, True)
    assert embedding_key(auto, True).precision == "bf16"
    assert embedding_key(dataclasses.replace(auto, precision="fp32"), True) == embedding_key(fp32, True)

    monkeypatch.setattr(vision, "check_against_fp32", lambda *a, **k: (False, "forced failure"))
    paths = _images(tmp_path)
    store = Store.open(tmp_path / "store")
    try:
        list(embed_with_store(auto, discover(paths).items, EmbedSettings(batch_size=4, workers=0), store))
        assert store.count(embedding_key(fp32, False)) == len(paths)
        assert store.count(dataclasses.replace(embedding_key(fp32, False), precision="bf16")) == 0
    finally:
        store.close()


def test_auto_continues_a_library_stored_at_fp32_instead_of_splitting_it(tiny_ckpt, tmp_path,
                                                                         cpu_with_native_bf16):
    from zeroshot.data.discover import discover
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.store.db import Store
    from zeroshot.store.reuse import ReuseStats, embed_with_store

    settings = EmbedSettings(batch_size=4, workers=0)
    paths = _images(tmp_path)
    fp32 = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="fp32")
    store = Store.open(tmp_path / "store")
    try:
        first = [b.embeddings for b in embed_with_store(fp32, discover(paths[:-2]).items, settings, store)]
        auto = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
        assert auto.needs_check("image")
        stats = ReuseStats()
        again = list(embed_with_store(auto, discover(paths).items, settings, store, stats=stats))
        assert (stats.from_store, stats.encoded) == (len(paths) - 2, 2)  # the library is read, not re-encoded
        assert auto.precision == "fp32" and "embedding store" in auto.notes[0]
        assert store.count(embedding_key(fp32, False)) == len(paths)  # the new files joined the fp32 key
        assert [k.key.precision for k in store.list_keys()] == ["fp32"]
        assert torch.equal(torch.cat([b.embeddings for b in again])[:len(paths) - 2], torch.cat(first))
        # an empty store (or one holding bf16 vectors) leaves auto's choice alone
        fresh = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="auto")
        other = Store.open(tmp_path / "other")
        try:
            list(embed_with_store(fresh, discover(paths).items, settings, other))
            assert fresh.precision == "bf16"
        finally:
            other.close()
    finally:
        store.close()


# ------------------------------------------------------------------------------ fp32 exact


def test_fp32_output_is_unchanged_by_a_bf16_cpu(tiny_ckpt, image_dir, labels_file, cpu_with_native_bf16, monkeypatch):
    """``--precision fp32`` on a CPU with native bf16 writes what it writes without: same bytes."""
    args = [*tiny_cli_args(tiny_ckpt), str(image_dir), "-L", str(labels_file), "--no-cache", "--precision", "fp32",
            "--format", "csv",
            "--top-k", "3"]
    with_bf16 = classify_cli(args)
    import zeroshot.precision as zp

    monkeypatch.setattr(zp, "cpu_flags", lambda: frozenset({"avx2"}))
    without = classify_cli(args)
    assert with_bf16.exit_code == 0 and without.exit_code == 0
    assert with_bf16.stdout == without.stdout


def test_fp32_matches_open_clip_directly(tiny_ckpt, tmp_path, cpu_with_native_bf16):
    """The fp32 path is open_clip's own fp32 forward (no bf16 copy, no check)."""
    from zeroshot.scoring import normalize

    loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision="fp32")
    assert loaded.reduced is None
    pixels = torch.randn(3, 3, *loaded.model.visual.image_size)
    with torch.inference_mode():
        reference = normalize(loaded.model.encode_image(pixels))
    assert torch.allclose(vision.encode_images(loaded, pixels), reference, atol=1e-5)


def test_cpu_flags_env_replaces_the_machines_flags(monkeypatch):
    import zeroshot.precision as precision

    monkeypatch.undo()  # the real cpu_flags, not the autouse mask
    for flags, native in (("avx2 avx512f", False), ("avx512f avx512_bf16", True), ("", False)):
        monkeypatch.setenv(precision.CPU_FLAGS_ENV, flags)
        precision.cpu_flags.cache_clear()
        try:
            assert precision.cpu_flags() == frozenset(flags.split())
            assert precision.native_bf16() is native
        finally:
            precision.cpu_flags.cache_clear()
