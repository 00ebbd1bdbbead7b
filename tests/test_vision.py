"""Image side: the class-token shortcut of the last ViT block is exact, and falls back safely."""

from __future__ import annotations

import pytest
import torch
from open_clip.model import CLIP

import zeroshot.encode.vision as vision
from zeroshot.encode.vision import encode_images, supports_class_token_shortcut
from zeroshot.models import LoadedModel

TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
VISION = {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8}


def loaded_with(**vision_cfg) -> LoadedModel:
    torch.manual_seed(0)
    model = CLIP(embed_dim=32, vision_cfg={**VISION, **vision_cfg}, text_cfg=TEXT).eval()
    return LoadedModel(model, None, None, "test", "", "", torch.device("cpu"), "fp32")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """Seeded here, so no test depends on the global RNG (or on which tests ran before it)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def reference(loaded: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.nn.functional.normalize(loaded.model.encode_image(pixels).float(), dim=-1)


@pytest.mark.parametrize("cfg", [
    {},
    {"final_ln_after_pool": True},
    {"ls_init_value": 0.1},
    {"no_ln_pre": True},
])
def test_class_token_shortcut_matches_the_full_forward(cfg):
    loaded = loaded_with(**cfg)
    pixels = randn(5, 3, 32, 32)
    assert supports_class_token_shortcut(loaded.model)
    fast = encode_images(loaded, pixels)
    assert loaded.class_token_shortcut is True  # checked on the first batch and kept on
    assert torch.allclose(fast, reference(loaded, pixels), atol=1e-6)


def test_shortcut_is_exact_on_the_tiny_registered_model(tiny_loaded):
    pixels = randn(4, 3, 32, 32)
    assert torch.allclose(encode_images(tiny_loaded, pixels), encode_images(tiny_loaded, pixels, shortcut=False), atol=1e-6)


@pytest.mark.parametrize("cfg", [{"pool_type": "avg"}, {"attentional_pool": True, "attn_pooler_queries": 4}, {"qk_norm": True}])
def test_towers_not_pooled_at_the_class_token_use_the_ordinary_forward(cfg, monkeypatch):
    loaded = loaded_with(**cfg)
    assert not supports_class_token_shortcut(loaded.model)
    monkeypatch.setattr(vision, "_encode_image_class_token", lambda *a: pytest.fail("shortcut used"))
    pixels = randn(3, 3, 32, 32)
    assert torch.allclose(encode_images(loaded, pixels), reference(loaded, pixels), atol=1e-6)


def test_a_disagreeing_shortcut_is_switched_off_for_good(monkeypatch):
    loaded = loaded_with()
    calls = []

    def wrong(model, pixels):
        calls.append(len(pixels))
        return randn(len(pixels), 32, seed=1)

    monkeypatch.setattr(vision, "_encode_image_class_token", wrong)
    pixels = randn(4, 3, 32, 32)
    first = encode_images(loaded, pixels)
    second = encode_images(loaded, pixels)
    assert loaded.class_token_shortcut is False
    assert calls == [4]  # tried once, never again
    assert torch.allclose(first, reference(loaded, pixels), atol=1e-6)
    assert torch.allclose(second, first)


def test_shortcut_stays_on_under_bf16_autocast():
    """Half precision rounds the two paths differently; the check must not mistake that for a
    wrong tower (and the shortcut must stay as close to the ordinary bf16 forward as fp32 is)."""
    loaded = loaded_with()
    loaded.precision = "bf16"
    pixels = randn(6, 3, 32, 32)
    fast = encode_images(loaded, pixels)
    assert loaded.class_token_shortcut is True
    slow = encode_images(loaded, pixels, shortcut=False)
    assert torch.nn.functional.cosine_similarity(fast, slow, dim=-1).min() > 0.9999
