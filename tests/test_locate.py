"""zeroshot locate: crops and dense (k-k attention, stripped last block) heatmaps against references
written here, background prompts competing, boxes on synthetic grids, label competition against the
direct formula, the CLI's files and rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import cli_strict, examples, make_image

LABELS2 = ["a red square", "a blue circle"]


def tiny_cli_args(ckpt) -> list[str]:
    """The tiny random model on the CPU (locate reads images in the main process: no -j)."""
    return ["-m", "zs-tiny", "-p", str(ckpt), "-d", "cpu", "-b", "4"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 96x64 image with structure: a blue block on a red background, a dot grid."""
    path = make_image(tmp_path_factory.mktemp("scene") / "scene.png", (200, 40, 30), size=(96, 64))
    img = Image.open(path).convert("RGB")
    img.paste((30, 60, 220), (50, 10, 80, 40))
    img.save(path)
    return path


def text_embedding(loaded, texts):
    with torch.no_grad():
        emb = loaded.model.encode_text(loaded.tokenizer(texts))
    return F.normalize(emb.float(), dim=-1)


# --------------------------------------------------------------------------------- crops


def direct_crops_map(loaded, image, texts, patch, stride, scales=(1.0,), background=()):
    """The pixel map computed the plain way: every crop cut with PIL, open_clip's own preprocess
    and encode_image, cosine (one text, no background) or per-crop softmax over texts and
    background prompts (the texts' part kept), averaged per pixel."""
    width, height = image.size
    text = text_embedding(loaded, list(texts) + list(background))
    total = np.zeros((len(texts), height, width))
    count = np.zeros((height, width))

    def starts(length, size, step):
        out = list(range(0, length - size + 1, step))
        return out + ([length - size] if out[-1] + size < length else [])

    for scale in scales:
        side, step = round(patch * scale), round(stride * scale)
        w = h = min(side, width, height)
        for y in starts(height, h, step):
            for x in starts(width, w, step):
                pixels = loaded.preprocess(image.crop((x, y, x + w, y + h)))[None]
                with torch.no_grad():
                    emb = F.normalize(loaded.model.encode_image(pixels).float(), dim=-1)
                cos = (emb @ text.T)[0]
                if len(texts) + len(background) > 1:
                    cos = torch.exp(loaded.model.logit_scale.exp() * cos)
                    cos = cos / cos.sum()
                total[:, y:y + h, x:x + w] += cos[:len(texts)].numpy()[:, None, None]
                count[y:y + h, x:x + w] += 1
    return total / count


BG1 = ("a photo of a background.",)


@pytest.mark.parametrize("texts,scales,background", [
    (["a red square"], (1.0,), ()), (LABELS2, (1.0,), ()), (["a red square"], (1.0, 0.5), ()),
    (["a red square"], (1.0,), BG1), (LABELS2, (1.0, 0.5), ("a wall", "the floor")),
])
def test_crops_grid_equals_direct_computation(tiny_loaded, scene, texts, scales, background):
    from zeroshot.tasks.locate import LocateSettings, locate

    image = Image.open(scene).convert("RGB")
    settings = LocateSettings(method="crops", patch=40, stride=20, scales=scales, batch_size=7, background=background)
    [found] = list(locate(tiny_loaded, [str(scene)], texts, settings=settings))
    expected = direct_crops_map(tiny_loaded, image, texts, 40, 20, scales, background)
    assert len(found.heatmaps) == len(texts)
    for heat, want in zip(found.heatmaps, expected):
        assert heat.method == "crops"
        assert heat.kind == ("cosine" if len(texts) + len(background) == 1 else "softmax")
        np.testing.assert_allclose(heat.grid.pixels(), want, atol=1e-5)


def test_crop_boxes_cover_the_image():
    from zeroshot.tasks.locate import crop_boxes

    boxes = crop_boxes(100, 50, patch=30, stride=20)
    covered = np.zeros((50, 100), bool)
    for x0, y0, x1, y1 in boxes:
        assert (x1 - x0, y1 - y0) == (30, 30) and 0 <= x0 and x1 <= 100 and y1 <= 50
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    assert crop_boxes(20, 10, patch=30, stride=15) == [(0, 0, 10, 10), (10, 0, 20, 10)]  # larger than the image


# --------------------------------------------------------------------------------- dense


def reference_dense(model, pixels, pos, sharpness=1.0):
    """A plain forward through open_clip's VisionTransformer with the changed last block:
    patch embedding, position embeddings ``pos``, the unchanged blocks, then per head
    softmax(sharpness * k k^T / sqrt(d)) v, out_proj, no residual, no MLP; ln_post, proj, normalise."""
    visual = model.visual
    with torch.no_grad():
        x = visual.conv1(pixels)
        b, c, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(b, 1, c), x], dim=1) + pos
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        y = last.ln_1(x)
        w, bias = last.attn.in_proj_weight, last.attn.in_proj_bias
        k = y @ w[c:2 * c].T + bias[c:2 * c]
        v = y @ w[2 * c:].T + bias[2 * c:]
        heads = last.attn.num_heads
        d = c // heads
        outs = []
        for h in range(heads):
            kh, vh = k[..., h * d:(h + 1) * d], v[..., h * d:(h + 1) * d]
            attn = torch.softmax(sharpness * (kh @ kh.transpose(1, 2)) / d ** 0.5, dim=-1)
            outs.append(attn @ vh)
        out = last.attn.out_proj(torch.cat(outs, dim=-1))
        out = visual.ln_post(out[:, 1:]) @ visual.proj
    return F.normalize(out, dim=-1).reshape(b, gh, gw, -1)


def test_dense_equals_reference_at_native_resolution(tiny_loaded):
    from zeroshot.encode.dense import dense_features

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    got = dense_features(tiny_loaded, pixels)
    want = reference_dense(tiny_loaded.model, pixels, tiny_loaded.model.visual.positional_embedding)
    assert got.shape == (2, 4, 4, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sharpness", [0.5, 2.0])
def test_dense_sharpness_scales_the_attention_logits(tiny_loaded, sharpness):
    from zeroshot.encode.dense import dense_features

    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 32, 32)
    got = dense_features(tiny_loaded, pixels, sharpness)
    want = reference_dense(tiny_loaded.model, pixels, tiny_loaded.model.visual.positional_embedding, sharpness)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = dense_features(tiny_loaded, pixels)
    assert (got - plain).abs().max() > 1e-3  # it changes the features


def test_dense_equals_reference_at_a_larger_resolution(tiny_loaded):
    from zeroshot.encode.dense import dense_features

    visual = tiny_loaded.model.visual
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 48, 72)  # grid 6 x 9 from a native 4 x 4
    native = visual.positional_embedding
    patches = native[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(6, 9), mode="bicubic", align_corners=False)
    pos = torch.cat([native[:1], patches.permute(0, 2, 3, 1).reshape(54, -1)])
    got = dense_features(tiny_loaded, pixels)
    assert got.shape == (1, 6, 9, 32)
    torch.testing.assert_close(got, reference_dense(tiny_loaded.model, pixels, pos), atol=1e-5, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(1, 6, 9), atol=1e-5)


def test_interpolated_positions(tiny_loaded):
    from zeroshot.encode.dense import embed_patches, interpolate_positions, resize_positions

    visual = tiny_loaded.model.visual
    native = visual.positional_embedding
    assert interpolate_positions(visual, (4, 4)) is native
    assert interpolate_positions(visual, (7, 5)).shape == (1 + 35, native.shape[1])
    bigger = interpolate_positions(visual, (8, 8))
    torch.testing.assert_close(bigger[0], native[0])  # the class position is kept
    # resampling to the native grid changes nothing (bicubic at the sample points)
    torch.testing.assert_close(resize_positions(native.detach(), (4, 4), (4, 4)), native.detach(), atol=1e-6, rtol=0)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens, grid = embed_patches(visual, pixels)
        torch.testing.assert_close(tokens, visual._embeds(pixels))
    assert grid == (4, 4)


def reference_dense_probs(loaded, image, resolution, texts):
    """Softmax over ``texts`` of the reference patch embeddings at ``resolution`` (the scene is
    96x64: the input is resolution x 1.5 resolution, a grid of 8-pixel patches), ``[texts, gh, gw]``."""
    from zeroshot.tasks.locate import dense_pixels

    pixels = dense_pixels(loaded, image, resolution)
    gh, gw = resolution // 8, resolution * 3 // 16
    assert pixels.shape == (1, 3, resolution, resolution * 3 // 2)  # shorter side, aspect kept
    visual = loaded.model.visual
    patches = visual.positional_embedding[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(gh, gw), mode="bicubic", align_corners=False)
    pos = torch.cat([visual.positional_embedding[:1], patches.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
    feats = reference_dense(loaded.model, pixels, pos)[0]
    logits = loaded.model.logit_scale.exp() * feats @ text_embedding(loaded, texts).T
    return torch.softmax(logits, dim=-1).permute(2, 0, 1)


@pytest.mark.parametrize("background", [(), BG1])
def test_dense_locate_grid_matches_reference_scores(tiny_loaded, scene, background):
    """locate's dense grids: the reference's patch embeddings, softmax over the labels and the
    background prompts, the backgrounds' maps dropped."""
    from zeroshot.tasks.locate import LocateSettings, locate

    image = Image.open(scene).convert("RGB")
    settings = LocateSettings(method="dense", resolution=64, background=background)
    [found] = list(locate(tiny_loaded, [image], LABELS2, settings=settings))
    want = reference_dense_probs(tiny_loaded, image, 64, LABELS2 + list(background)).numpy()
    assert len(found.heatmaps) == 2
    for heat, expected in zip(found.heatmaps, want):
        assert heat.method == "dense" and heat.kind == "softmax"
        np.testing.assert_allclose(heat.grid.values, expected, atol=1e-5)
        assert list(heat.grid.x_edges) == list(range(0, 97, 8)) and list(heat.grid.y_edges) == list(range(0, 65, 8))
    total = sum(h.grid.values for h in found.heatmaps)
    assert np.allclose(total, 1, atol=1e-5) == (not background)  # a background takes its share


def test_dense_scales_average_on_the_finest_grid(tiny_loaded, scene):
    """Two scales: the coarse pass's map resized bilinearly (torch's, cell centres aligned) onto
    the fine grid, then the mean of both."""
    from zeroshot.tasks.locate import LocateSettings, locate

    image = Image.open(scene).convert("RGB")
    settings = LocateSettings(method="dense", resolution=64, scales=(1.0, 0.5), background=BG1)
    [found] = list(locate(tiny_loaded, [image], ["a red square"], settings=settings))
    fine = reference_dense_probs(tiny_loaded, image, 64, ["a red square", *BG1])[:1]
    coarse = reference_dense_probs(tiny_loaded, image, 32, ["a red square", *BG1])[:1]
    coarse = F.interpolate(coarse[None], size=fine.shape[1:], mode="bilinear", align_corners=False)[0]
    [heat] = found.heatmaps
    assert heat.kind == "softmax" and heat.grid.values.shape == (8, 12)
    np.testing.assert_allclose(heat.grid.values, ((fine + coarse) / 2)[0].numpy(), atol=1e-5)


def tiny_resnet_loaded(tiny_loaded):
    """The tiny model's text tower with a small ModifiedResNet image tower."""
    import dataclasses

    import open_clip

    torch.manual_seed(0)
    net = open_clip.model.CLIP(embed_dim=32, vision_cfg={"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
                               text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                                         "layers": 2}).eval()
    return dataclasses.replace(tiny_loaded, model=net, name="zs-tiny-rn", class_token_shortcut=None,
                               preprocess=open_clip.image_transform(64, is_train=False))


def test_dense_refuses_resnet_towers_with_a_hint(tiny_loaded, scene):
    from zeroshot.encode.dense import DenseUnsupported
    from zeroshot.errors import UsageError
    from zeroshot.tasks.locate import LocateSettings, locate

    resnet = tiny_resnet_loaded(tiny_loaded)
    with pytest.raises(DenseUnsupported) as info:
        list(locate(resnet, [str(scene)], ["a cat"], settings=LocateSettings(method="dense")))
    message = str(info.value)
    assert "\n" not in message and "ModifiedResNet" in message and "--method crops" in message
    assert isinstance(info.value, UsageError)
    # auto falls back to crops on such towers
    [found] = list(locate(resnet, [str(scene)], ["a cat"], settings=LocateSettings(patch=48, stride=24)))
    assert found.heatmaps[0].method == "crops"


# --------------------------------------------------------------------------------- fused


@pytest.mark.parametrize("labels,background,scales", [(LABELS2, BG1, (1.0,)), (["a red square"], (), (1.0, 0.5)),
                                                      (LABELS2, (), (1.0,))])
def test_fused_is_the_dense_map_times_the_crops_map(tiny_loaded, scene, labels, background, scales):
    """fused = dense map (sharpness 2) x crops map resampled onto the dense cells, both at --scales; each
    of the two is checked against its own reference above. A lone cosine map is first mapped
    to [0, 1] so that two negatives do not make a hot cell."""
    from zeroshot.tasks.locate import LocateSettings, locate
    from zeroshot.tasks.regions import resample

    image = Image.open(scene).convert("RGB")
    common = dict(resolution=64, patch=40, stride=20, background=background)
    run = {m: list(locate(tiny_loaded, [image], labels, settings=LocateSettings(method=m, scales=s, **common,
                                                                                **extra)))[0]
           for m, s, extra in (("fused", scales, {}), ("dense", scales, {"sharpness": 2.0}), ("crops", scales, {}))}
    for fused, dense, crops in zip(run["fused"].heatmaps, run["dense"].heatmaps, run["crops"].heatmaps):
        on_dense = resample(crops.grid, dense.grid.x_edges, dense.grid.y_edges).values
        if dense.kind == "cosine":
            want = (dense.grid.values + 1) / 2 * (on_dense + 1) / 2
        else:
            want = dense.grid.values * on_dense
        assert fused.method == "fused"
        assert fused.kind == ("(cosine+1)/2 product" if dense.kind == "cosine" else f"{dense.kind} product")
        np.testing.assert_allclose(fused.grid.values, want, atol=1e-6)
        assert list(fused.grid.x_edges) == list(dense.grid.x_edges)
        assert (fused.grid.values >= 0).all() and (fused.grid.values <= 1).all()
    assert run["fused"].heatmaps[0].kind == ("(cosine+1)/2 product" if len(labels) + len(background) == 1
                                             else "softmax product")


def test_fused_sigmoid_models_multiply_probabilities(tiny_sigmoid_ckpt, scene):
    """SigLIP-style maps are probabilities already: fused multiplies them as they are."""
    from zeroshot.models import load_model
    from zeroshot.tasks.locate import LocateSettings, locate
    from zeroshot.tasks.regions import resample

    loaded = load_model("zs-tiny-sigmoid", str(tiny_sigmoid_ckpt), device="cpu", precision="fp32")
    common = dict(resolution=64, patch=40, stride=20)
    maps = {m: list(locate(loaded, [str(scene)], LABELS2, settings=LocateSettings(method=m, **common, **extra)))[0]
            for m, extra in (("fused", {}), ("dense", {"sharpness": 2.0}), ("crops", {}))}
    for fused, dense, crops in zip(*(maps[m].heatmaps for m in ("fused", "dense", "crops"))):
        assert dense.kind == "sigmoid" and fused.kind == "sigmoid product"
        want = dense.grid.values * resample(crops.grid, dense.grid.x_edges, dense.grid.y_edges).values
        np.testing.assert_allclose(fused.grid.values, want, atol=1e-6)


def test_cli_sharpness_reaches_the_dense_pass(tiny_ckpt, scene, tmp_path):
    rows = {}
    for sharpness in ("1", "2", None):
        out = tmp_path / f"rows-{sharpness}.json"
        extra = ["--sharpness", sharpness] if sharpness else []
        result = cli_strict("locate", scene, "-l", "a cat", "-l", "a dog", "--method", "fused", "--patch", "32",
                            "--no-plot", "--out", tmp_path / f"m-{sharpness}", "-o", out, *extra,
                            *tiny_cli_args(tiny_ckpt))
        assert result.exit_code == 0, result.output
        rows[sharpness] = [np.load(r["grid"]) for r in json.loads(out.read_text())]
    assert all(np.array_equal(a, b) for a, b in zip(rows["2"], rows[None]))  # fused's default is 2
    assert not all(np.allclose(a, b) for a, b in zip(rows["1"], rows[None]))


def test_fused_needs_a_dense_tower(tiny_loaded, scene):
    from zeroshot.encode.dense import DenseUnsupported
    from zeroshot.tasks.locate import LocateSettings, locate

    with pytest.raises(DenseUnsupported, match="--method fused does not apply .* use --method crops"):
        list(locate(tiny_resnet_loaded(tiny_loaded), [str(scene)], ["a cat"], settings=LocateSettings(method="fused")))


# --------------------------------------------------------------------------- competition


def test_softmax_competition_against_the_direct_formula(tiny_loaded):
    from zeroshot.tasks.locate import label_scores

    torch.manual_seed(0)
    cos = torch.rand(50, 3) * 2 - 1
    scores, kind = label_scores(cos, tiny_loaded)
    scale = float(tiny_loaded.model.logit_scale.exp())
    direct = np.exp(scale * cos.numpy().astype(np.float64))
    direct /= direct.sum(axis=1, keepdims=True)
    assert kind == "softmax"
    np.testing.assert_allclose(scores.numpy(), direct, atol=1e-6)
    np.testing.assert_allclose(scores.sum(dim=1).numpy(), 1.0, atol=1e-6)
    single, kind = label_scores(cos[:, :1], tiny_loaded)
    assert kind == "cosine" and torch.equal(single, cos[:, :1])
    # the last column a background: it competes, then is dropped
    with_bg, kind = label_scores(cos, tiny_loaded, labels=2)
    assert kind == "softmax" and with_bg.shape == (50, 2)
    np.testing.assert_allclose(with_bg.numpy(), direct[:, :2], atol=1e-6)
    alone, kind = label_scores(cos[:, [0, 2]], tiny_loaded, labels=1)
    np.testing.assert_allclose(alone.numpy()[:, 0], 1 / (1 + np.exp(scale * (cos[:, 2] - cos[:, 0]).numpy())), atol=1e-6)
    assert kind == "softmax"


def test_sigmoid_models_score_labels_independently(tiny_sigmoid_ckpt):
    from zeroshot.models import load_model
    from zeroshot.tasks.locate import label_scores

    loaded = load_model("zs-tiny-sigmoid", str(tiny_sigmoid_ckpt), device="cpu", precision="fp32")
    cos = torch.linspace(-1, 1, 12).reshape(6, 2)
    scores, kind = label_scores(cos, loaded)
    scale, bias = float(loaded.model.logit_scale.exp()), float(loaded.model.logit_bias)
    assert kind == "sigmoid"
    np.testing.assert_allclose(scores.numpy(), 1 / (1 + np.exp(-(scale * cos.numpy() + bias))), atol=1e-6)
    first, _ = label_scores(cos, loaded, labels=1)  # a background column changes nothing for sigmoids
    np.testing.assert_allclose(first.numpy(), scores.numpy()[:, :1], atol=1e-6)


# ---------------------------------------------------------------------------------- boxes


def grid_of(values, x_edges=None, y_edges=None):
    from zeroshot.tasks.regions import ScoreGrid

    values = np.asarray(values, dtype=np.float32)
    rows, cols = values.shape
    x_edges = np.arange(cols + 1) * 10 if x_edges is None else np.asarray(x_edges)
    y_edges = np.arange(rows + 1) * 10 if y_edges is None else np.asarray(y_edges)
    return ScoreGrid(values, x_edges, y_edges)


def test_box_around_the_hottest_connected_region():
    from zeroshot.tasks.regions import hottest_box

    values = np.zeros((6, 8))
    values[1:3, 1:4] = 0.8  # a warm blob
    values[2, 2] = 1.0  # the peak, inside it
    values[4:6, 6:8] = 0.9  # another hot blob, not connected to the peak
    box = hottest_box(grid_of(values), threshold=0.5, refine=1)
    assert (box.x0, box.y0, box.x1, box.y1) == (10, 10, 40, 30)
    assert box.score == 1.0
    assert box.region_score == pytest.approx((5 * 0.8 + 1.0) / 6)
    # a stricter threshold keeps only the peak
    tight = hottest_box(grid_of(values), threshold=0.95, refine=1)
    assert (tight.x0, tight.y0, tight.x1, tight.y1) == (20, 20, 30, 30)


def test_box_maps_uneven_cells_to_original_pixels():
    from zeroshot.tasks.regions import hottest_box

    values = [[0, 0, 0], [0, 5, 4], [0, 0, 0]]
    box = hottest_box(grid_of(values, x_edges=[0, 7, 30, 31], y_edges=[0, 3, 9, 64]), refine=1)
    assert (box.x0, box.y0, box.x1, box.y1) == (7, 3, 31, 9)


def test_the_base_is_the_median_background_level():
    from zeroshot.tasks.regions import hottest_box

    # background at 0.4, the object at 0.7-0.8, a cold second object at -0.1
    values = np.full((6, 6), 0.4)
    values[0:2, 3:5] = [[0.7, 0.8], [0.75, 0.7]]
    values[4:6, 0:2] = -0.1
    box = hottest_box(grid_of(values), threshold=0.5, refine=1)  # base 0.4: cells >= 0.6
    assert (box.x0, box.y0, box.x1, box.y1) == (30, 0, 50, 20)
    whole = hottest_box(grid_of(values), threshold=0.5, baseline="min", refine=1)  # base -0.1: cells >= 0.35
    assert (whole.x0, whole.y0, whole.x1, whole.y1) == (0, 0, 60, 60)


def test_flat_grid_gives_the_whole_image_and_diagonals_do_not_connect():
    from zeroshot.tasks.regions import hottest_box

    flat = hottest_box(grid_of(np.full((3, 4), 0.25)))
    assert (flat.x0, flat.y0, flat.x1, flat.y1) == (0, 0, 40, 30) and flat.score == 0.25
    diagonal = hottest_box(grid_of(np.eye(3)), refine=1)  # 4-connectivity: the first peak alone
    assert (diagonal.x0, diagonal.y0, diagonal.x1, diagonal.y1) == (0, 0, 10, 10)


@settings(max_examples=examples(60))
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=12, max_size=12), st.floats(0, 1))
def test_box_property_contains_the_peak_and_only_hot_cells(cells, threshold):
    from zeroshot.tasks.regions import connected_region, hottest_box

    values = np.array(cells, dtype=np.float32).reshape(3, 4)
    box = hottest_box(grid_of(values), threshold, refine=1)
    r, c = np.unravel_index(np.argmax(values), values.shape)
    assert box.x0 <= c * 10 < box.x1 and box.y0 <= r * 10 < box.y1
    assert box.score == pytest.approx(values.max())
    exact = values.astype(np.float64)
    base = np.median(exact)
    mask = exact >= base + threshold * (exact.max() - base)
    mask[r, c] = True
    region = connected_region(mask, (int(r), int(c)))
    assert mask[region].all() and box.region_score == pytest.approx(values[region].mean(), rel=1e-6)


def test_refined_grid_is_bilinear_between_cell_centres():
    """On even cells the refinement equals torch's bilinear resize (align_corners=False: centres
    aligned, edges clamped); on uneven cells it interpolates between the true cell centres."""
    from zeroshot.tasks.regions import refined, resample

    rng = np.random.default_rng(0)
    values = rng.random((3, 5)).astype(np.float32)
    fine = refined(grid_of(values), 5)  # 30 x 50 pixels -> 15 x 25 sub-cells of 2 pixels
    want = F.interpolate(torch.from_numpy(values)[None, None], size=(15, 25), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(fine.values, want[0, 0].numpy(), atol=1e-6)
    assert list(fine.x_edges) == list(range(0, 51, 2)) and list(fine.y_edges) == list(range(0, 31, 2))
    assert refined(grid_of(values), 100).values.shape == (30, 50)  # at most one sub-cell per pixel
    uneven = grid_of([[0.0, 1.0, 3.0]], x_edges=[0, 10, 30, 40], y_edges=[0, 10])  # centres 5, 20, 35
    at = resample(uneven, np.array([0, 10, 20, 30, 40]), np.array([0, 10]))  # sub-cell centres 5, 15, 25, 35
    np.testing.assert_allclose(at.values, [[0.0, 2 / 3, 1 + 2 * (5 / 15), 3.0]], atol=1e-6)


def test_refined_box_edges_fall_inside_coarse_cells():
    """A 1-cell hot spot next to a warm cell: on the cells the box is the hot cell; refined, it
    leans towards the warm neighbour by the interpolated amount."""
    from zeroshot.tasks.regions import hottest_box

    values = np.zeros((5, 5))
    values[2, 2], values[2, 3] = 1.0, 0.6
    coarse = hottest_box(grid_of(values), 0.3, baseline="min", refine=1)
    assert (coarse.x0, coarse.y0, coarse.x1, coarse.y1) == (20, 20, 40, 30)
    fine = hottest_box(grid_of(values), 0.3, baseline="min", refine=5)
    # sub-cells of 2 px (centres 1, 3, ...). Through the peak's row: x rises from 0 at the centre
    # 15 to 1 at 25 (>= 0.3 from x = 18) and falls to 0.6 at 35 and 0 at 45 (>= 0.3 up to x = 40);
    # through its column: >= 0.3 for 18 <= y <= 32.
    assert (fine.x0, fine.y0, fine.x1, fine.y1) == (18, 18, 40, 32)
    assert fine.score == 1.0 and 0.3 < fine.region_score < 1.0


@pytest.mark.parametrize("method", ["dense", "crops", "fused"])
def test_default_threshold_is_per_method(tiny_loaded, scene, method):
    from zeroshot.tasks.locate import DEFAULT_THRESHOLDS, LocateSettings, locate
    from zeroshot.tasks.regions import hottest_box

    [found] = list(locate(tiny_loaded, [str(scene)], LABELS2, settings=LocateSettings(method=method, patch=32)))
    for heat in found.heatmaps:
        assert heat.box == hottest_box(heat.grid, DEFAULT_THRESHOLDS[method])
    assert DEFAULT_THRESHOLDS == {"dense": 0.3, "crops": 0.7, "fused": 0.3}


def test_iou():
    from zeroshot.tasks.regions import Box

    box = Box(0, 0, 10, 10, 1.0, 1.0)
    assert box.iou((0, 0, 10, 10)) == 1.0
    assert box.iou((5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box.iou((20, 20, 30, 30)) == 0.0


# ------------------------------------------------------------------------------------ CLI


def png_ok(path, size):
    img = Image.open(path)
    assert img.size == size
    assert np.asarray(img.convert("L"), dtype=np.float32).var() > 10  # not blank


@pytest.mark.parametrize("method,background", [("dense", []), ("crops", []), ("fused", []), ("dense", ["--no-background"]),
                                               ("crops", ["--background", "a wall", "--background", "a floor"])])
def test_cli_writes_pictures_grids_and_rows(tiny_ckpt, scene, tmp_path, method, background):
    from zeroshot.output.plots import heatmap_png_size

    out = tmp_path / "maps"
    rows_file = tmp_path / "rows.json"
    result = cli_strict("locate", scene, "-l", "a cat", "-l", "a remote control", "--method", method,
                        "--patch", "32", *background, "--out", out, "-o", rows_file, *tiny_cli_args(tiny_ckpt))
    assert result.exit_code == 0, result.output
    rows = json.loads(rows_file.read_text())
    assert [r["label"] for r in rows] == ["a cat", "a remote control"]
    for row in rows:
        assert row["method"] == method and row["path"] == str(scene) and row["error"] is None
        assert 0 <= row["x0"] < row["x1"] <= 96 and 0 <= row["y0"] < row["y1"] <= 64
        assert 0 <= row["region_score"] <= row["score"] <= 1
        png_ok(row["heatmap"], heatmap_png_size((96, 64)))
        grid = np.load(row["grid"])
        assert grid.ndim == 2 and np.isfinite(grid).all()
    total = sum(np.load(r["grid"]) for r in rows)
    if background == ["--no-background"]:
        np.testing.assert_allclose(total, 1.0, atol=1e-5)  # two labels split every cell
    else:
        assert (total < 1 - 1e-6).all()  # the background prompts take a share of every cell


def test_cli_single_label_csv_to_stdout_and_skips_bad_images(tiny_ckpt, scene, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    result = cli_strict("locate", scene, bad, "-l", "a cat", "--no-plot", "--out", tmp_path / "m", "-f", "csv",
                        *tiny_cli_args(tiny_ckpt))
    assert result.exit_code == 3
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "path,label,method,score,region_score,x0,y0,x1,y1,heatmap,grid,error"
    assert lines[1].startswith(f"{scene},a cat,dense,") and ",," in lines[1]  # no picture
    assert lines[2] == f"{bad}" + "," * 11 + "not_an_image: not a recognised image format"
    assert f"skipping {bad}: not_an_image" in result.stderr
    assert not list((tmp_path / "m").glob("*.png")) and len(list((tmp_path / "m").glob("*.npy"))) == 1


def test_cli_dense_on_a_resnet_is_one_line(monkeypatch, tiny_ckpt, tiny_loaded, scene, tmp_path):
    import zeroshot.models

    resnet = tiny_resnet_loaded(tiny_loaded)
    monkeypatch.setattr(zeroshot.models, "load_model", lambda *a, **k: resnet)
    result = cli_strict("locate", scene, "-l", "a cat", "--method", "dense", "--out", tmp_path / "m",
                        *tiny_cli_args(tiny_ckpt))
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "--method crops" in result.stderr


def test_cli_says_how_to_install_matplotlib(monkeypatch, tiny_ckpt, scene, tmp_path):
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = cli_strict("locate", scene, "-l", "a cat", "--out", tmp_path / "m", *tiny_cli_args(tiny_ckpt))
    assert result.exit_code == 2
    assert "pip install 'zeroshot[see]'" in result.stderr and "--no-plot" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--scales", "1,x"], "--scales"),
    (["--scales", "1,-0.5"], "positive factors"),
    (["--method", "dense", "--resolution", "8"], "--resolution"),
    (["--background", "a wall", "--no-background"], "contradict"),
    (["--background", " "], "--background"),
    (["--method", "fused", "--sharpness", "0"], "--sharpness"),
    (["--method", "fused", "--sharpness", "inf"], "--sharpness"),
    ([], "no labels given"),
])
def test_cli_refuses_bad_options(tiny_ckpt, scene, tmp_path, args, message):
    labels = [] if not args else ["-l", "a cat"]
    result = cli_strict("locate", scene, *labels, *args, "--out", tmp_path / "m", *tiny_cli_args(tiny_ckpt))
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "m").exists()  # refused before any work


def test_same_names_in_different_folders_get_distinct_files(tiny_ckpt, tmp_path):
    a = make_image(tmp_path / "a" / "x.png", (200, 30, 30))
    b = make_image(tmp_path / "b" / "x.png", (30, 30, 200))
    out = tmp_path / "m"
    result = cli_strict("locate", a, b, "-l", "a cat", "--no-plot", "--out", out, "-f", "jsonl",
                        *tiny_cli_args(tiny_ckpt))
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(a), str(b)]
    assert len({r["grid"] for r in rows}) == 2 and all(Path(r["grid"]).parent == out for r in rows)
