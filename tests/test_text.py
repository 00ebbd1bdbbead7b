"""Text side: the length-trimmed text tower is exact, class weights match open_clip, cache works."""

from __future__ import annotations

import open_clip
import pytest
import torch

import zeroshot.encode.text as text_mod
from zeroshot.encode.cache import ClassWeightCache
from zeroshot.encode.text import (
    LabelTruncatedWarning,
    build_class_weights,
    encode_prompts,
    supports_trimming,
)
from zeroshot.prompts import resolve_templates

LABELS = ["tench", "goldfish", "great white shark", "a label with several more words in it"]


def test_trimmed_text_tower_matches_full_context(tiny_loaded):
    prompts = [t.replace("{}", label) for label in LABELS for t in resolve_templates("80").templates]
    assert supports_trimming(tiny_loaded.model)
    fast = encode_prompts(tiny_loaded, prompts, batch_size=64)
    slow = encode_prompts(tiny_loaded, prompts, batch_size=64, trim=False)
    assert torch.allclose(fast, slow, atol=1e-6)


def test_class_weights_equal_open_clip_build_zero_shot_classifier(tiny_loaded):
    templates = resolve_templates("80").templates
    ours = build_class_weights(tiny_loaded, LABELS, templates, batch_size=100)
    reference = open_clip.build_zero_shot_classifier(
        tiny_loaded.model, tiny_loaded.tokenizer, LABELS, list(templates), num_classes_per_batch=2
    )
    assert ours.shape == (len(LABELS), reference.shape[0])
    assert (ours - reference.T).abs().max().item() < 1e-5


def test_second_build_is_served_from_cache_without_the_text_tower(tiny_loaded, tmp_path, monkeypatch):
    cache = ClassWeightCache(tmp_path / "cw")
    templates = resolve_templates("7").templates
    first = build_class_weights(tiny_loaded, LABELS, templates, cache=cache)
    assert len(list((tmp_path / "cw").glob("*.pt"))) == 1

    def forbidden(*args, **kwargs):
        raise AssertionError("the text tower ran although the class weights were cached")

    monkeypatch.setattr(text_mod, "encode_prompts", forbidden)
    monkeypatch.setattr(tiny_loaded.model, "encode_text", forbidden)
    second = build_class_weights(tiny_loaded, LABELS, templates, cache=cache)
    assert torch.equal(first, second)


def test_cache_key_changes_with_everything_that_matters(tiny_loaded, tmp_path):
    cache = ClassWeightCache(tmp_path)
    t7, t1 = resolve_templates("7").templates, resolve_templates("1").templates
    base = cache.key(tiny_loaded, LABELS, t7)
    assert base == cache.key(tiny_loaded, list(LABELS), list(t7))
    assert base != cache.key(tiny_loaded, LABELS[::-1], t7)
    assert base != cache.key(tiny_loaded, LABELS, t1)
    other = type(tiny_loaded)(**{**tiny_loaded.__dict__, "weights_id": "other-file"})
    assert base != cache.key(other, LABELS, t7)
    bf16 = type(tiny_loaded)(**{**tiny_loaded.__dict__, "precision": "bf16", "text_precision": "bf16"})
    assert base != cache.key(bf16, LABELS, t7)


def test_corrupt_cache_entry_is_rebuilt(tiny_loaded, tmp_path):
    cache = ClassWeightCache(tmp_path)
    templates = resolve_templates("1").templates
    key = cache.key(tiny_loaded, LABELS, templates)
    tmp_path.joinpath(f"{key}.pt").write_bytes(b"garbage")
    weights = build_class_weights(tiny_loaded, LABELS, templates, cache=cache)
    assert weights.shape[0] == len(LABELS)
    assert cache.get(key, LABELS) is not None


def test_long_label_warns_about_truncation(tiny_loaded):
    long_label = " ".join(["word"] * 90)
    with pytest.warns(LabelTruncatedWarning, match="77-token context"):
        build_class_weights(tiny_loaded, ["cat", long_label], ("a photo of a {}.",))


def _tiny_text_model(**text_cfg):
    from open_clip.model import CLIP, CustomTextCLIP

    vision = {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8}
    text = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, **text_cfg}
    custom = text.pop("custom", False)
    torch.manual_seed(0)
    return (CustomTextCLIP if custom else CLIP)(32, vision, text).eval()


@pytest.mark.parametrize("cfg", [{"no_causal_mask": True}, {"pool_type": "first"}, {"custom": True}],
                         ids=["bidirectional", "first-token-pool", "custom-text-tower"])
def test_trimming_is_off_where_padding_can_change_the_output(tiny_loaded, cfg):
    """A bidirectional or differently pooled text tower (SigLIP-style) sees its padding, so
    cutting it would change the embedding: such towers run at full context, and still match
    open_clip's ``build_zero_shot_classifier``."""
    import dataclasses

    model = _tiny_text_model(**cfg)
    assert not supports_trimming(model)
    tokens = tiny_loaded.tokenizer(["a photo of a tench."])
    length = int((tokens != 0).sum())
    other_padding = tokens.clone()
    other_padding[:, length:] = 1  # what follows the end-of-text token
    with torch.inference_mode():
        causal = [tiny_loaded.model.encode_text(t) for t in (tokens, other_padding)]
        this = [model.encode_text(t) for t in (tokens, other_padding)]
    assert torch.allclose(*causal, atol=1e-6)  # CLIP: padding is invisible, trimming is exact
    if "no_causal_mask" in cfg:  # bidirectional: the padding changes the embedding
        assert not torch.allclose(*this, atol=1e-4)
    loaded = dataclasses.replace(tiny_loaded, model=model, class_token_shortcut=None)
    templates = resolve_templates("7").templates
    ours = build_class_weights(loaded, LABELS, templates, batch_size=8)
    reference = open_clip.build_zero_shot_classifier(model, tiny_loaded.tokenizer, LABELS, list(templates),
                                                     num_classes_per_batch=2)
    assert (ours - reference.T).abs().max().item() < 1e-5


@pytest.mark.parametrize("part", ["all", "text_projection", "visual.proj", "logit_scale"])
def test_non_finite_weights_are_a_one_line_error_naming_the_checkpoint(tiny_ckpt, tmp_path, labels_file, image_dir, part):
    """NaN or infinite weights would give every image a 'nan' score with exit 0: refuse instead."""
    from typer.testing import CliRunner

    from zeroshot.cli import app

    state = torch.load(tiny_ckpt, weights_only=True)
    for key, value in state.items():
        if part == "all" or key == part:
            state[key] = torch.full_like(value, float("nan")) if value.is_floating_point() else value
    if part == "logit_scale":
        state["logit_scale"] = torch.tensor(float("inf"))
    broken = tmp_path / f"broken-{part.replace('.', '-')}.pt"
    torch.save(state, broken)
    result = CliRunner().invoke(app, ["classify", str(image_dir), "--labels", str(labels_file), "-m", "zs-tiny",
                                      "-p", str(broken), "-t", "photo", "--no-cache", "-j", "0", "-f", "jsonl", "-q"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "NaN or infinite" in lines[0], lines
    assert str(broken) in lines[0]
    assert "nan" not in result.stdout.lower()


def test_cache_on_a_full_disk_warns_once_and_leaves_no_temporary(tiny_loaded, tmp_path, monkeypatch, labels_file, image_dir, tiny_ckpt):
    """ENOSPC while writing a cache entry: a visible warning, the run goes on, no .tmp left."""
    import errno

    from typer.testing import CliRunner

    from zeroshot.cli import app

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if hasattr(f, "write") and getattr(f, "name", None) is not None:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    cache_dir = tmp_path / "zs-cache"
    result = CliRunner().invoke(app, ["classify", str(image_dir), "--labels", str(labels_file), "-m", "zs-tiny",
                                      "-p", str(tiny_ckpt), "-t", "photo", "-j", "0", "-f", "csv"])
    assert result.exit_code == 0, result.output
    warnings_seen = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings_seen) == 1 and "No space left on device" in warnings_seen[0], result.stderr
    assert not [p for p in cache_dir.rglob("*") if p.is_file()], list(cache_dir.rglob("*"))
    assert len(result.stdout.strip().splitlines()) == 7  # header + six images: the run went on
