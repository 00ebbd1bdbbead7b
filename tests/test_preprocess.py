"""Large JPEGs: reduced-scale (DCT) decode stays >= twice the model input and close to exact;
``exact_preprocess`` is bit-exact with open_clip's own transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image, ImageDraw, ImageFilter

from zeroshot.data.decode import open_image
from zeroshot.data.discover import discover
from zeroshot.data.loader import ImageDataset
from zeroshot.data.preprocess import Preprocessor

INPUT = 224


def photo_like(path, size=(2400, 1800)):
    """Smooth shading, hard edges and sensor-like noise, saved as a quality-90 JPEG."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([120 + 80 * np.sin(xx / 300), 110 + 60 * np.cos(yy / 200), 90 + 50 * np.sin((xx + yy) / 500)], -1)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(40, 300))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(2))
    noisy = np.asarray(img, np.float32) + rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    return photo_like(tmp_path_factory.mktemp("big") / "photo.jpg")


@pytest.fixture(scope="module")
def pre():
    return Preprocessor(image_transform(INPUT, is_train=False))


def _uint8_input(pre, path, draft):
    dataset = ImageDataset(discover([str(path)]).sources, pre, None, fast_decode=draft)
    _, pixels, err = dataset[0]
    assert err is None
    return pixels


def test_draft_decodes_at_reduced_scale_no_smaller_than_twice_the_input(big_jpeg):
    assert open_image(str(big_jpeg)).size == (2400, 1800)
    reduced = open_image(str(big_jpeg), draft_size=2 * INPUT)
    assert reduced.size == (600, 450)  # DCT scale 1/4: 1/8 would go below 448
    assert min(reduced.size) >= 2 * INPUT


def test_exact_preprocess_is_bit_exact_with_open_clip(big_jpeg, pre):
    ours = pre.finish(_uint8_input(pre, big_jpeg, draft=False)[None], torch.device("cpu"))[0]
    with Image.open(big_jpeg) as img:
        reference = pre.transform(img.convert("RGB"))
    assert torch.equal(ours, reference)


def test_draft_input_stays_close_to_exact(big_jpeg, pre):
    exact = _uint8_input(pre, big_jpeg, draft=False).float()
    draft = _uint8_input(pre, big_jpeg, draft=True).float()
    assert draft.shape == exact.shape == (3, INPUT, INPUT)
    diff = (draft - exact).abs()
    assert diff.mean().item() < 1.0  # 0..255 units (measured 0.27 here; README: 0.3-0.8 on photos)
    assert torch.quantile(diff.flatten(), 0.99).item() <= 4


def test_small_jpegs_are_never_reduced(tmp_path, pre):
    path = photo_like(tmp_path / "small.jpg", size=(500, 375))
    assert torch.equal(_uint8_input(pre, path, draft=True), _uint8_input(pre, path, draft=False))
