"""zeroshot similarity: the matrix against open_clip's own encoders, the two softmaxes, the CLI's
rows, matrix and picture."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import COLOURS, cli_strict, make_image, tiny_cli_args

TEXTS = ["a red square", "a green circle", "a photo of a blue triangle"]


@pytest.fixture()
def three_images(tmp_path):
    return [make_image(tmp_path / f"im{i}.png", COLOURS[i], size=(60 + 10 * i, 48)) for i in range(3)]


def direct_cosines(loaded, paths, texts):
    with torch.no_grad():
        pixels = torch.stack([loaded.preprocess(Image.open(p).convert("RGB")) for p in paths])
        images = F.normalize(loaded.model.encode_image(pixels).float(), dim=-1)
        text = F.normalize(loaded.model.encode_text(loaded.tokenizer(texts)).float(), dim=-1)
    return images @ text.T


def test_matrix_equals_open_clip_cosines(tiny_loaded, three_images):
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.tasks.similarity import similarity

    result = similarity(tiny_loaded, [str(p) for p in three_images], TEXTS, settings=EmbedSettings(workers=0))
    assert result.paths == [str(p) for p in three_images] and result.texts == TEXTS
    want = direct_cosines(tiny_loaded, three_images, TEXTS)
    torch.testing.assert_close(result.cosine, want, atol=1e-5, rtol=0)
    logits = tiny_loaded.model.logit_scale.exp() * want
    torch.testing.assert_close(result.texts_given_image, torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(result.images_given_text, torch.exp(logits) / torch.exp(logits).sum(0, keepdim=True),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(result.texts_given_image.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(result.images_given_text.sum(dim=0), torch.ones(3))


def test_templates_expand_texts_like_class_weights(tiny_loaded, three_images):
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.encode.text import build_class_weights
    from zeroshot.tasks.similarity import similarity

    result = similarity(tiny_loaded, three_images, TEXTS[:2], templates="openai-7", settings=EmbedSettings(workers=0))
    weights = build_class_weights(tiny_loaded, TEXTS[:2], "openai-7")
    with torch.no_grad():
        pixels = torch.stack([tiny_loaded.preprocess(Image.open(p).convert("RGB")) for p in three_images])
        images = F.normalize(tiny_loaded.model.encode_image(pixels).float(), dim=-1)
    torch.testing.assert_close(result.cosine, images @ weights.T, atol=1e-5, rtol=0)


def test_cli_long_rows_skip_bad_images(tiny_ckpt, three_images, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    result = cli_strict("similarity", *three_images, bad, "-t", TEXTS[0], "-t", TEXTS[1], "-f", "csv",
                        *tiny_cli_args(tiny_ckpt))
    assert result.exit_code == 3, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["path", "text", "cosine", "softmax_texts", "softmax_images"]
    assert len(rows) == 3 * 2 and {r["path"] for r in rows} == {str(p) for p in three_images}
    for path in three_images:
        mine = [r for r in rows if r["path"] == str(path)]
        assert sum(float(r["softmax_texts"]) for r in mine) == pytest.approx(1, abs=1e-5)
    for text in TEXTS[:2]:
        assert sum(float(r["softmax_images"]) for r in rows if r["text"] == text) == pytest.approx(1, abs=1e-5)
    assert f"skipping {bad}" in result.stderr


def test_cli_wide_matrix_from_a_texts_file_and_plot(tiny_ckpt, tiny_loaded, three_images, tmp_path):
    from zeroshot.output.plots import similarity_png_size

    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("# what to compare\n" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    out, plot = tmp_path / "m.json", tmp_path / "m.png"
    result = cli_strict("similarity", *three_images, "--texts", texts_file, "--layout", "wide", "-o", out,
                        "--plot", plot, *tiny_cli_args(tiny_ckpt))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [list(r) for r in rows] == [["path", *TEXTS]] * 3
    got = np.array([[r[t] for t in TEXTS] for r in rows])
    np.testing.assert_allclose(got, direct_cosines(tiny_loaded, three_images, TEXTS).numpy(), atol=1e-5)
    img = Image.open(plot)
    assert img.size == similarity_png_size(3, 3)
    assert np.asarray(img.convert("L"), dtype=np.float32).var() > 10


@pytest.mark.parametrize("args,message", [
    ([], "give the texts"),
    (["-t", "x", "--plot", "m.jpg"], "name it .png"),
    (["-t", "x", "--layout", "wide", "--value", "nope"], "nope"),
    (["-t", "x", "-t", "x"], "duplicate label 'x' in the texts"),
    (["-t", "path", "--layout", "wide"], "use the long layout"),
])
def test_cli_refuses(tiny_ckpt, three_images, args, message):
    result = cli_strict("similarity", three_images[0], *args, *tiny_cli_args(tiny_ckpt))
    assert result.exit_code == 2 and message in result.stderr
