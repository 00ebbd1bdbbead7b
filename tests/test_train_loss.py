"""The training losses equal their formulas written out directly here, values and gradients;
the optimiser groups and the learning-rate schedule follow open_clip_train's rules."""

from __future__ import annotations

import math

import pytest
import torch

from zeroshot.train.loss import caption_groups, clip_loss, siglip_loss


def batch(n: int = 6, d: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    t = torch.tensor(math.log(1 / 0.07), dtype=torch.float64)
    b = torch.tensor(-3.0, dtype=torch.float64)
    return [x.clone().requires_grad_(True) for x in (img, txt, t, b)]


def direct_clip(img, txt, t, positives=None):
    """-(1/2N) sum_i [log softmax_j(s x_i.y_j)[i] + log softmax_i(s x_i.y_j)[j]] with soft targets."""
    n = img.shape[0]
    logits = torch.exp(t) * img @ txt.T
    target = torch.eye(n, dtype=logits.dtype) if positives is None else positives / positives.sum(1, keepdim=True)
    rows = -(target * torch.log(torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True))).sum() / n
    cols = -(target * torch.log(torch.exp(logits.T) / torch.exp(logits.T).sum(1, keepdim=True))).sum() / n
    return (rows + cols) / 2


def direct_siglip(img, txt, t, b, positives=None):
    n = img.shape[0]
    z = 2 * (torch.eye(n, dtype=img.dtype) if positives is None else positives) - 1
    logits = torch.exp(t) * img @ txt.T + b
    return -torch.log(1 / (1 + torch.exp(-z * logits))).sum() / n


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def test_clip_loss_and_gradients_equal_the_formula():
    img, txt, t, _ = batch()
    # Float64 in, so the comparison is tight: the implementation computes in float32.
    ours = clip_loss(img, txt, t)
    ref = direct_clip(img, txt, t)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for g1, g2 in zip(grads(ours, (img, txt, t)), grads(ref, (img, txt, t))):
        torch.testing.assert_close(g1.double(), g2, rtol=1e-4, atol=1e-6)


def test_clip_loss_matches_open_clip():
    from open_clip.loss import ClipLoss

    img, txt, t, _ = batch()
    ref = ClipLoss()(img.float(), txt.float(), t.exp().float())
    assert clip_loss(img, txt, t).item() == pytest.approx(ref.item(), rel=1e-6)


def test_siglip_loss_and_gradients_equal_the_formula_and_open_clip():
    from open_clip.loss import SigLipLoss

    img, txt, t, b = batch()
    ours = siglip_loss(img, txt, t, b)
    ref = direct_siglip(img, txt, t, b)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for g1, g2 in zip(grads(ours, (img, txt, t, b)), grads(ref, (img, txt, t, b))):
        torch.testing.assert_close(g1.double(), g2, rtol=1e-4, atol=1e-6)
    oc = SigLipLoss()(img.float(), txt.float(), t.exp().float(), b.float())
    assert ours.item() == pytest.approx(oc.item(), rel=1e-6)


def test_repeated_captions_are_positives_not_negatives():
    captions = ["a dog", "a cat", "a dog", "a bird", "a cat", "a fish"]
    ids = caption_groups(captions)
    positives = (ids[:, None] == ids[None, :]).double()
    img, txt, t, b = batch()
    ours = clip_loss(img, txt, t, ids)
    ref = direct_clip(img, txt, t, positives)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for g1, g2 in zip(grads(ours, (img, txt, t)), grads(ref, (img, txt, t))):
        torch.testing.assert_close(g1.double(), g2, rtol=1e-4, atol=1e-6)
    ours = siglip_loss(img, txt, t, b, ids)
    ref = direct_siglip(img, txt, t, b, positives)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # It differs from the plain loss, which would count the copies as negatives.
    assert abs(clip_loss(img, txt, t, ids).item() - clip_loss(img, txt, t).item()) > 1e-3


def test_distinct_captions_give_exactly_the_plain_loss():
    img, txt, t, b = batch()
    ids = torch.arange(6)
    assert caption_groups([f"c{i}" for i in range(6)]) is None
    assert torch.equal(clip_loss(img, txt, t, ids), clip_loss(img, txt, t))
    assert torch.equal(siglip_loss(img, txt, t, b, ids), siglip_loss(img, txt, t, b))


def test_schedule_warms_up_then_follows_a_half_cosine():
    from zeroshot.train.schedule import cosine_lr

    assert [cosine_lr(s, 1.0, 4, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for step in range(4, 15):
        assert cosine_lr(step, 2.0, 4, 14) == pytest.approx(0.5 * (1 + math.cos(math.pi * (step - 4) / 10)) * 2.0)
    assert cosine_lr(14, 2.0, 4, 14) == pytest.approx(0.0)


def test_no_weight_decay_on_gains_biases_and_temperature(tiny_loaded):
    from zeroshot.train.schedule import param_groups

    net = tiny_loaded.model
    for p in net.parameters():
        p.requires_grad_(True)
    try:
        decay, plain = param_groups(net, 0.1)
        names = {id(p): n for n, p in net.named_parameters()}
        decayed = {names[id(p)] for p in decay["params"]}
        free = {names[id(p)] for p in plain["params"]}
        assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
        assert {"logit_scale", "ln_final.weight", "ln_final.bias", "visual.class_embedding"} <= free
        assert {"visual.conv1.weight", "text_projection", "token_embedding.weight"} <= decayed
        assert all(p.ndim >= 2 for p in decay["params"]) and not decayed & free
    finally:
        for p in net.parameters():
            p.requires_grad_(False)
