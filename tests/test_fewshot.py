"""Few-shot heads: the fit beats zero-shot on separable data, a huge regulariser gives back the
zero-shot weights, heads load in ``classify --head`` with their labels, and only on their model."""

from __future__ import annotations

import json

import pytest
import torch

from zeroshot.train.fewshot import fit_linear, sample_shots

from conftest import COLOURS, cli_strict, make_image, save_random_model

CLASSES = ["red", "green", "blue"]


def separable(n_per_class: int = 20, dim: int = 16, seed: int = 0):
    """Three tight clusters, and 'zero-shot' weights that point elsewhere (a poor classifier)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(3, dim, generator=g), dim=-1)
    x = torch.cat([means[c] + 0.05 * torch.randn(n_per_class, dim, generator=g) for c in range(3)])
    y = torch.arange(3).repeat_interleave(n_per_class)
    zero_shot = torch.nn.functional.normalize(torch.randn(3, dim, generator=g), dim=-1)
    return torch.nn.functional.normalize(x, dim=-1), y, zero_shot


def accuracy(x, y, w, b, scale) -> float:
    return float(((scale * x @ w.T + b).argmax(1) == y).float().mean())


def test_head_on_separable_embeddings_beats_zero_shot():
    x, y, w_zs = separable()
    train = sample_shots(y.tolist(), 4, seed=0)
    test = sorted(set(range(len(y))) - set(train))
    w, b = fit_linear(x[train], y[train], w_zs, logit_scale=float(torch.tensor(100.0).log()), reg=1e-4)
    zero = accuracy(x[test], y[test], w_zs, torch.zeros(3), 100.0)
    head = accuracy(x[test], y[test], w, b, 100.0)
    assert head == 1.0 and zero < 0.9


def test_huge_regularisation_gives_the_zero_shot_weights():
    x, y, w_zs = separable()
    w, b = fit_linear(x, y, w_zs, logit_scale=float(torch.tensor(100.0).log()), reg=1e12)
    torch.testing.assert_close(w, w_zs, atol=1e-6, rtol=0)
    torch.testing.assert_close(b, torch.zeros(3), atol=1e-6, rtol=0)


def test_fit_is_deterministic_and_shots_are_seeded():
    x, y, w_zs = separable()
    first = fit_linear(x, y, w_zs, 4.0, 1e-3)
    second = fit_linear(x, y, w_zs, 4.0, 1e-3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    picked = sample_shots(y.tolist(), 2, seed=5)
    assert picked == sample_shots(y.tolist(), 2, seed=5) and len(picked) == 6
    assert sorted(int(y[i]) for i in picked) == [0, 0, 1, 1, 2, 2]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("few") / "data"
    for name, colour in zip(CLASSES, COLOURS):
        for i in range(2):
            make_image(root / name / f"{i}.png", tuple((c + 30 * i) % 256 for c in colour), size=(40, 40))
    return root


def test_fewshot_cli_head_is_used_by_classify(tiny_ckpt, tiny_loaded, labelled, tmp_path):
    from zeroshot.encode.embed import EmbedSettings, embed_images
    from zeroshot.heads import read_head

    out = tmp_path / "head.safetensors"
    result = cli_strict("fewshot", labelled, "--out", out, "-m", "zs-tiny", "-p", tiny_ckpt, "-t", "photo",
                        "-d", "cpu", "-j", "0", "--no-cache", "--reg", "0.01")
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "head.safetensors.json").read_text())
    assert side["labels"] == sorted(CLASSES) and side["model"]["name"] == "zs-tiny"  # folder order
    assert side["regularisation"]["reg"] == 0.01 and side["images_per_class"] == {"blue": 2, "green": 2, "red": 2}

    head = read_head(out)
    images = sorted(str(p) for p in labelled.rglob("*.png"))
    result = cli_strict("classify", *images, "--head", out, "-m", "zs-tiny", "-p", tiny_ckpt, "-d", "cpu", "-j", "0",
                        "-k", "3", "--format", "jsonl", "--exact-decode", "--no-cache", "-q")
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    from zeroshot.encode.embed import Source

    feats = torch.cat([b.embeddings for b in embed_images(tiny_loaded, [Source(p, p) for p in images],
                                                          EmbedSettings(workers=0))])
    probs = head.logits(feats).softmax(-1)
    for path, p in zip(images, probs):
        got = {q["label"]: q["score"] for q in rows[path]["predictions"]}
        assert set(got) == set(CLASSES)
        assert got == pytest.approx(dict(zip(head.labels, p.tolist())), abs=1e-6)


def test_head_refuses_another_model_and_labels(tiny_ckpt, labelled, tmp_path):
    from zeroshot.heads import LinearHead
    from zeroshot.train.fewshot import save_head

    out = tmp_path / "h.safetensors"
    save_head(LinearHead(tuple(CLASSES), torch.eye(3, 32), torch.zeros(3), 4.0,
                         {"name": "zs-tiny", "pretrained": "elsewhere.pt", "weights_id": "x"}), out)
    other = save_random_model("zs-tiny", tmp_path / "other.pt", seed=7)
    result = cli_strict("classify", labelled, "--head", out, "-m", "zs-tiny", "-p", other, "-d", "cpu", "-q")
    assert result.exit_code == 2 and "was fitted on zs-tiny (elsewhere.pt)" in result.stderr
    result = cli_strict("classify", labelled, "--head", out, "-l", "cat", "-m", "zs-tiny", "-p", tiny_ckpt, "-q")
    assert result.exit_code == 2 and "--head brings its own labels" in result.stderr
    (tmp_path / "plain.safetensors").write_bytes(out.read_bytes())
    result = cli_strict("classify", labelled, "--head", tmp_path / "plain.safetensors", "-q")
    assert result.exit_code == 2 and "no plain.safetensors.json beside it" in result.stderr


def test_eval_shots_reports_zero_and_few_shot_on_the_same_held_out_images(tiny_ckpt, tmp_path):
    root = tmp_path / "evalset"
    for name, colour in zip(CLASSES, COLOURS):
        for i in range(4):
            make_image(root / name / f"{i}.png", tuple((c + 20 * i) % 256 for c in colour), size=(40, 40))
    out = tmp_path / "r.json"
    result = cli_strict("eval", "folder", root, "--shots", "1,2", "-t", "photo", "-m", "zs-tiny", "-p", tiny_ckpt,
                        "-d", "cpu", "-j", "0", "--no-cache", "-o", out, "-q", "--reg", "0.001")
    assert result.exit_code == 0, result.output
    assert "shots\ttrain images\ttest images\tzero-shot top-1\tfew-shot top-1" in result.stdout
    curve = json.loads(out.read_text())["fewshot"]["results"]
    # The pool is 2 images per class (the largest K), never scored: 12 - 6 = 6 test images for every K.
    assert [(r["shots"], r["train_images"], r["test_images"]) for r in curve] == [(1, 3, 6), (2, 6, 6)]
    assert curve[0]["zero_shot_top1"] == curve[1]["zero_shot_top1"]

    # --shots-from: K per class from another labelled set, all 12 images scored.
    result = cli_strict("eval", "folder", root, "--shots", "1", "--shots-from", root, "-t", "photo", "-m", "zs-tiny",
                        "-p", tiny_ckpt, "-d", "cpu", "-j", "0", "--no-cache", "-o", out, "-q", "--reg", "0.001")
    assert result.exit_code == 0, result.output
    assert [(r["train_images"], r["test_images"]) for r in json.loads(out.read_text())["fewshot"]["results"]] == [(3, 12)]
    result = cli_strict("eval", "folder", root, "--shots", "0,x", "-m", "zs-tiny", "-p", tiny_ckpt, "-q")
    assert result.exit_code == 2 and "--shots" in result.stderr
