"""Parity with open_clip's own zero-shot pipeline on ViT-B-32 (random weights in a local file).

Reference: ``create_model_and_transforms`` + ``build_zero_shot_classifier`` with the 80 OpenAI
templates + ``encode_image`` + softmax of ``logit_scale.exp() * cosine``. Ours must give the same
probabilities within 1e-4 and the same top-1 for every image.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from PIL import Image

from zeroshot import ZeroShotClassifier

from conftest import COLOURS, make_image

LABELS = ["a red thing", "a green thing", "a blue thing", "a striped pattern"]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    sizes = [(320, 240), (240, 320), (500, 375), (224, 224), (800, 200), (97, 131)]
    for i, (colour, size) in enumerate(zip(COLOURS, sizes)):
        make_image(root / f"photo{i}.{'png' if i % 2 else 'jpg'}", colour, size)
    return root


def _reference_probs(ckpt, paths):
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(ckpt))
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        weights = open_clip.build_zero_shot_classifier(
            model, tokenizer, LABELS, open_clip.OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=2
        )
        pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
        features = model.encode_image(pixels, normalize=True)
        return (model.logit_scale.exp() * features @ weights).softmax(dim=-1)


def test_probabilities_match_open_clip_pipeline(vitb32_ckpt, photo_dir):
    clf = ZeroShotClassifier(LABELS, "80", model="ViT-B-32", pretrained=str(vitb32_ckpt), device="cpu", cache=False)
    preds = clf.classify([photo_dir], top_k=len(LABELS), workers=0)
    assert [p.error for p in preds] == [None] * 6
    paths = [p.path for p in preds]
    ours = torch.tensor([[dict(zip(p.labels, p.scores))[label] for label in LABELS] for p in preds])
    reference = _reference_probs(vitb32_ckpt, paths)
    assert (ours - reference).abs().max().item() < 1e-4
    assert ours.argmax(dim=-1).tolist() == reference.argmax(dim=-1).tolist()
    assert [p.label for p in preds] == [LABELS[i] for i in reference.argmax(dim=-1).tolist()]
    # Not a degenerate check: the reference does not put all images in one class with p=1.
    assert reference.max().item() < 0.999
