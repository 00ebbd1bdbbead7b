"""Pure functions: logits with the model's temperature, softmax vs sigmoid, top-k."""

from __future__ import annotations

import math

import torch

from zeroshot.scoring import class_logits, normalize, probabilities, top_k


def test_logits_use_the_models_temperature_and_bias():
    image = torch.tensor([[3.0, 4.0]])  # normalised: (0.6, 0.8)
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    scale = torch.tensor(math.log(50.0))
    logits = class_logits(image, weights, scale)
    assert torch.allclose(logits, torch.tensor([[30.0, 40.0]]))
    biased = class_logits(image, weights, scale, torch.tensor(-35.0))
    assert torch.allclose(biased, torch.tensor([[-5.0, 5.0]]))


def test_softmax_sums_to_one_and_sigmoid_is_independent():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    soft = probabilities(logits)
    assert torch.allclose(soft.sum(-1), torch.tensor([1.0]))
    sig = probabilities(logits, sigmoid=True)
    assert torch.allclose(sig, torch.sigmoid(logits))


def test_normalize_unit_length():
    x = normalize(torch.randn(5, 7, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(x.norm(dim=-1), torch.ones(5))


def test_top_k_orders_and_min_score_decides_unknown():
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.34, 0.33, 0.33]])
    ranked = top_k(probs, ("a", "b", "c"), k=2, min_score=0.5, unknown_label="none")
    assert ranked[0].labels == ("b", "c") and ranked[0].scores[0] == torch.tensor(0.7).item()
    assert ranked[0].label == "b"
    # Below the threshold the decision is the unknown label; the ranking stays the true one.
    assert ranked[1].label == "none" and ranked[1].labels == ("a", "b")


def test_top_k_clamped_to_label_count():
    ranked = top_k(torch.tensor([[0.6, 0.4]]), ("a", "b"), k=5)
    assert ranked[0].labels == ("a", "b")
