"""``zeroshot search`` and ``zeroshot.tasks.search.search``: parity with a brute-force ranking by
open_clip's own encode_image / encode_text, combined queries, top / min-score / ties, the whole
store or given paths, formats (paths, paths0, atomic --output), exit codes and usage errors."""

from __future__ import annotations

import csv
import io
import json
import os

import open_clip
import pytest
import torch
from PIL import Image

import zeroshot.encode.embed as embed_module
from zeroshot.data.discover import discover
from zeroshot.encode.embed import EmbedSettings
from zeroshot.errors import UsageError
from zeroshot.models import load_model
from zeroshot.prompts import load_builtin
from zeroshot.store import Store
from zeroshot.tasks.search import Query, search

from conftest import COLOURS, colour, make_image
from conftest import cli_strict as cli
from conftest import tiny_cli_args as tiny

EXACT = EmbedSettings(batch_size=3, workers=0, fast_decode=False)


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    for i in range(8):
        make_image(root / f"img{i}.png", colour(i), size=(40 + 3 * i, 30))
    return root


@pytest.fixture()
def encoder_calls(monkeypatch):
    seen = [0]
    encode = embed_module.encode_images

    def counting(loaded, pixels, *args, **kwargs):
        seen[0] += pixels.shape[0]
        return encode(loaded, pixels, *args, **kwargs)

    monkeypatch.setattr(embed_module, "encode_images", counting)
    return seen


def summary_line(result) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith("search: "))


# ------------------------------------------------------------------------------ parity


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("search-photos")
    sizes = [(320, 240), (240, 320), (500, 375), (224, 224), (800, 200), (97, 131), (300, 300), (256, 180)]
    extra = [(200, 120, 60), (60, 120, 200)]
    for i, (c, size) in enumerate(zip(COLOURS + extra, sizes)):
        make_image(root / f"photo{i}.{'png' if i % 2 else 'jpg'}", c, size)
    return root


def _reference(ckpt, paths, texts, templates=None):
    """Brute force with open_clip alone: normalised encode_image of every image and
    encode_text of every text (or open_clip's template ensemble), cosine similarities."""
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(ckpt))
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(Image.open(p)) for p in paths]), normalize=True)
        if templates is None:
            text = model.encode_text(tokenizer(texts), normalize=True)
        else:
            text = open_clip.build_zero_shot_classifier(model, tokenizer, texts, templates).T
    return images, text


def _ranking(scores: torch.Tensor, paths: list[str]) -> list[tuple[str, float]]:
    order = sorted(range(len(paths)), key=lambda i: (-scores[i].item(), i))
    return [(paths[i], scores[i].item()) for i in order]


def _same(hits, expected, key=lambda p: p):
    assert [key(h.path) for h in hits] == [key(p) for p, _ in expected]
    assert max(abs(h.score - s) for h, (_, s) in zip(hits, expected)) < 1e-5
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))


def test_search_equals_a_brute_force_ranking_by_open_clip(vitb32_ckpt, photo_dir, tmp_path):
    """Text -> image, image -> image, a weighted combination with a negative, and templates;
    from given paths (encoded into a float32 store) and from the store alone (read back)."""
    paths = [s.path for s in discover([photo_dir]).sources]
    texts = ["a red thing", "a blue thing"]
    images, text = _reference(vitb32_ckpt, paths, texts)
    red, blue = images @ text[0], images @ text[1]
    like3 = images @ images[3]
    loaded = load_model("ViT-B-32", str(vitb32_ckpt), device="cpu", precision="fp32")
    combined = [Query("a red thing", weight=2), Query(image=paths[3]), Query("a blue thing", weight=-1)]
    with Store.open(tmp_path / "st", dtype="float32") as store:
        hits = search(loaded, "a red thing", [photo_dir], store=store, top=0, settings=EXACT)
        assert (hits.searched, hits.encoded, hits.from_store) == (8, 8, 0)
        _same(hits, _ranking(red, paths))
        ordered = [s for _, s in _ranking(red, paths)]
        assert min(a - b for a, b in zip(ordered, ordered[1:])) > 2e-5  # a real ranking: no near-ties
        for where in ([photo_dir], None):  # given paths (now read from the store), the whole store
            real = os.path.realpath
            _same(search(loaded, "a red thing", where, store=store, top=0, settings=EXACT),
                  _ranking(red, paths), key=real)
            _same(search(loaded, Query(image=paths[3]), where, store=store, top=0, settings=EXACT),
                  _ranking(like3, paths), key=real)
            _same(search(loaded, combined, where, store=store, top=0, settings=EXACT),
                  _ranking(2 * red + like3 - blue, paths), key=real)
            _same(search(loaded, "a red thing", where, store=store, top=3, settings=EXACT),
                  _ranking(red, paths)[:3], key=real)
        photo = load_builtin("templates", "photo")
        _, ensemble = _reference(vitb32_ckpt, paths, ["a red thing"], templates=photo)
        _same(search(loaded, "a red thing", None, store=store, top=0, settings=EXACT, templates="photo"),
              _ranking(images @ ensemble[0], paths), key=os.path.realpath)
    # No store: every image encoded, same ranking.
    _same(search(loaded, "a red thing", [photo_dir], top=0, settings=EXACT), _ranking(red, paths))


# ------------------------------------------------------------------------------ the library


def test_scores_are_the_weighted_sum_of_cosines(tiny_loaded, photos):
    def scores(queries):
        return {h.path: h.score for h in search(tiny_loaded, queries, [photos], top=0, settings=EXACT)}

    a, b, c = scores("a red square"), scores("a green circle"), scores(Query(image=str(photos / "img2.png")))
    both = scores([Query("a red square", weight=0.5), Query("a green circle", weight=3),
                   Query(image=str(photos / "img2.png"), weight=-1)])
    for path in a:
        assert both[path] == pytest.approx(0.5 * a[path] + 3 * b[path] - c[path], abs=1e-5)
    assert all(-1.0001 <= s <= 1.0001 for s in a.values())
    assert c[str(photos / "img2.png")] == pytest.approx(1.0, abs=1e-5)  # the query image itself


def test_top_min_score_and_ties_by_input_order(tiny_loaded, photos, tmp_path):
    ranked = search(tiny_loaded, "a blue triangle", [photos], top=0, settings=EXACT)
    assert len(ranked) == 8
    scores = [h.score for h in ranked]
    assert scores == sorted(scores, reverse=True)
    assert [h.path for h in search(tiny_loaded, "a blue triangle", [photos], top=3, settings=EXACT)] == \
           [h.path for h in ranked[:3]]
    cut = scores[4]
    above = search(tiny_loaded, "a blue triangle", [photos], top=0, min_score=cut, settings=EXACT)
    assert [h.path for h in above] == [h.path for h in ranked[:5]]
    # Copies of one image score the same (with a store, a copy reuses the vector of the file
    # it copies: exactly equal): they keep the order they were given in.
    copies = tmp_path / "copies"
    copies.mkdir()
    for name in ("z.png", "a.png", "m.png"):
        (copies / name).write_bytes((photos / "img1.png").read_bytes())
    given = [copies / "z.png", copies / "a.png", photos / "img0.png", copies / "m.png"]
    store = Store.open(tmp_path / "st")
    search(tiny_loaded, "x", [photos / "img1.png"], store=store, settings=EXACT)
    hits = search(tiny_loaded, "x", given, top=0, settings=EXACT, store=store)
    assert (hits.encoded, hits.from_store) == (1, 3)
    tied = [h.path for h in hits if h.path.startswith(str(copies))]
    assert tied == [str(copies / "z.png"), str(copies / "a.png"), str(copies / "m.png")]
    # The same file twice is searched once.
    twice = search(tiny_loaded, "x", [photos / "img0.png", photos / "img0.png"], top=0, settings=EXACT)
    assert twice.searched == 1 and len(twice) == 1
    store.close()


@pytest.mark.parametrize("top", [1, 5, 37, 200, None])
def test_rank_equals_a_full_stable_sort(top):
    """The top-k shortcut (with every tie of the k-th score, then a stable sort) and the
    widening when ``keep`` refuses candidates give exactly the full sort's order."""
    from zeroshot.tasks.search import _rank

    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 40, (1000,), generator=generator).float() / 40  # many ties
    refused = set(range(0, 1000, 3))
    for keep, min_score in ((None, None), (lambda i: i not in refused, None), (lambda i: i not in refused, 0.5)):
        full = sorted(range(1000), key=lambda i: (-scores[i].item(), i))
        full = [i for i in full if (keep is None or keep(i)) and (min_score is None or scores[i] >= min_score)]
        ranked, _ = _rank(scores, top, min_score, keep)
        assert [i for i, _ in ranked] == full[:top]
        assert [s for _, s in ranked] == [scores[i].item() for i in full[:top]]


def test_given_paths_are_read_from_the_store_and_missing_ones_added(tiny_loaded, photos, tmp_path, encoder_calls):
    settings = EmbedSettings(batch_size=4, workers=0)
    with Store.open(tmp_path / "st") as store:
        store.index(tiny_loaded, [photos], settings)
        make_image(photos / "new.png", (9, 9, 9), size=(40, 30))
        encoder_calls[0] = 0
        results = search(tiny_loaded, "a red square", [photos], store=store, settings=settings)
        assert (results.searched, results.encoded, results.from_store, encoder_calls[0]) == (9, 1, 8, 1)
        assert store.count() == 9
        again = search(tiny_loaded, "a red square", [photos], store=store, settings=settings)
        assert (again.encoded, again.from_store) == (0, 9)
        assert [(h.path, h.score) for h in again] == [(h.path, h.score) for h in results]


def test_the_whole_store_leaves_out_files_that_are_gone(tiny_loaded, photos, tmp_path):
    settings = EmbedSettings(batch_size=4, workers=0)
    with Store.open(tmp_path / "st") as store:
        store.index(tiny_loaded, [photos], settings)
        everything = search(tiny_loaded, "a red square", store=store, top=0, settings=settings)
        assert len(everything) == 8 and all(os.path.isabs(h.path) for h in everything)
        best = everything[0].path
        os.unlink(best)
        results = search(tiny_loaded, "a red square", store=store, top=3, settings=settings)
        assert best not in [h.path for h in results]
        assert [h.path for h in results] == [h.path for h in everything[1:4]] and results.gone == 1
        assert [h.rank for h in results] == [1, 2, 3]


def test_library_refusals(tiny_loaded, photos, tmp_path):
    with Store.open(tmp_path / "st") as store, pytest.raises(UsageError, match="has no images for zs-tiny .*first"):
        search(tiny_loaded, "x", store=store)
    with pytest.raises(UsageError, match="without paths searches an embedding store"):
        search(tiny_loaded, "x")
    with pytest.raises(UsageError, match="weight of 0 or less"):
        search(tiny_loaded, [Query("x", weight=-1)], [photos])
    with pytest.raises(UsageError, match="empty"):
        search(tiny_loaded, "  ", [photos])
    with pytest.raises(UsageError, match="image query .*is a folder"):
        search(tiny_loaded, Query(image=str(photos)), [photos])
    (tmp_path / "bad.png").write_bytes(b"no")
    with pytest.raises(UsageError, match="image query .*bad.png: cannot be used: not_an_image"):
        search(tiny_loaded, Query(image=str(tmp_path / "bad.png")), [photos])


# ------------------------------------------------------------------------------ the command


def test_cli_text_query_then_paths_like_grep(tiny_ckpt, photos, tmp_path):
    result = cli("search", "a red square", photos, *tiny(tiny_ckpt), "-f", "csv", "--top", "5")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["rank", "path", "score"] and len(rows) == 5
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert summary_line(result).startswith("search: ranked 8 images, showing 5, in ")
    assert "; encoded 8, 0 from the store" in summary_line(result)
    # --query: every argument is a PATH; the same ranking.
    same = cli("search", "--query", "a red square", photos, *tiny(tiny_ckpt), "-f", "csv", "--top", "5")
    assert same.stdout == result.stdout
    assert "; encoded 0, 8 from the store" in summary_line(same)


def test_cli_after_index_searches_the_whole_store(tiny_ckpt, photos, tmp_path, encoder_calls):
    assert cli("index", photos, *tiny(tiny_ckpt)).exit_code == 0
    encoder_calls[0] = 0
    result = cli("search", "a red square", *tiny(tiny_ckpt), "-f", "paths", "--top", "0")
    assert result.exit_code == 0, result.output
    assert encoder_calls[0] == 0
    listed = result.stdout.splitlines()
    assert sorted(listed) == sorted(os.path.realpath(p) for p in photos.iterdir())
    assert summary_line(result).startswith("search: ranked 8 images of the store, showing 8, in ")
    nul = cli("search", "a red square", *tiny(tiny_ckpt), "-f", "paths0", "--top", "0")
    assert nul.stdout.split("\0") == listed + [""]


def test_cli_combined_queries_weights_and_negatives(tiny_ckpt, photos, tiny_loaded):
    query = str(photos / "img2.png")
    result = cli("search", photos, "-e", "a red square", "--query", "a green circle", "--image", query,
                 "-w", "0.5", "-w", "3", "-w", "2", "--not", "a blue triangle", *tiny(tiny_ckpt),
                 "-f", "jsonl", "--top", "0", "--no-cache")
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in result.stdout.splitlines()]
    expected = search(tiny_loaded, [Query("a red square", weight=0.5), Query("a green circle", weight=3),
                                    Query(image=query, weight=2), Query("a blue triangle", weight=-1)],
                      [photos], top=0, settings=EmbedSettings(workers=0, fast_decode=True))
    assert [g["path"] for g in got] == [h.path for h in expected]
    assert all(g["score"] == pytest.approx(h.score, abs=1e-5) for g, h in zip(got, expected))
    assert list(got[0]) == ["rank", "path", "score"]


def test_cli_output_file_formats_and_min_score(tiny_ckpt, photos, tmp_path):
    out = tmp_path / "hits.csv"
    out.write_text("old\n")
    result = cli("search", "a red square", photos, *tiny(tiny_ckpt), "-o", out, "--min-score", "-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 8 and "; wrote " in summary_line(result)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".hits")] == []
    cut = float(rows[2]["score"])
    above = cli("search", "a red square", photos, *tiny(tiny_ckpt), "-f", "json", "--min-score", cut)
    assert [r["path"] for r in json.loads(above.stdout)] == [r["path"] for r in rows[:3]]
    none = cli("search", "a red square", photos, *tiny(tiny_ckpt), "-f", "csv", "--min-score", "2")
    assert none.exit_code == 0 and none.stdout == "rank,path,score\n"


def test_cli_paths_format_refuses_a_name_with_a_line_break(tiny_ckpt, tmp_path):
    odd = tmp_path / "odd"
    make_image(odd / "two\nlines.png", (10, 200, 10), size=(40, 30))
    result = cli("search", "x", odd, *tiny(tiny_ckpt), "-f", "paths")
    assert result.exit_code == 1 and "--format paths0" in result.stderr and result.stdout == ""
    result = cli("search", "x", odd, *tiny(tiny_ckpt), "-f", "paths0")
    assert result.exit_code == 0 and result.stdout == str(odd / "two\nlines.png") + "\0"


def test_cli_skipped_images_exit_3(tiny_ckpt, photos):
    (photos / "bad.jpg").write_bytes(b"<html>")
    result = cli("search", "x", photos, *tiny(tiny_ckpt), "-f", "csv", "--top", "0")
    assert result.exit_code == 3
    assert f"skipping {photos / 'bad.jpg'}: not_an_image: not a recognised image format" in result.stderr
    assert len(result.stdout.splitlines()) == 9


@pytest.mark.parametrize("args, message", [
    ([], "give a query"),
    (["-e", "a", "-e", "b", "-w", "1"], "--weight given 1 time(s) for 2 queries"),
    (["x", "--no-cache"], "search without PATH searches the embedding store, which --no-cache turns off"),
    (["x", "PHOTOS", "--no-cache", "--store", "st"], "--store and --no-cache"),
    (["-e", "x", "--image", "PHOTOS", "PHOTOS"], "--image PHOTOS: is a folder"),
    (["x", "PHOTOS", "-f", "nope"], "nope"),
    (["x", "PHOTOS", "-t", "no placeholder"], "--templates"),
])
def test_cli_usage_errors(tiny_ckpt, photos, args, message):
    args = [str(photos) if a == "PHOTOS" else a for a in args]
    result = cli("search", *args, *tiny(tiny_ckpt))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message.replace("PHOTOS", str(photos)) in result.stderr


def test_cli_store_without_the_images_says_to_index(tiny_ckpt, tmp_path):
    result = cli("search", "x", *tiny(tiny_ckpt), "--store", tmp_path / "empty")
    assert result.exit_code == 2
    assert "has no images for zs-tiny" in result.stderr and "zeroshot index PATH" in result.stderr


def test_cli_a_query_that_names_a_folder_gets_a_note(tiny_ckpt, photos):
    assert cli("index", photos, *tiny(tiny_ckpt)).exit_code == 0
    result = cli("search", photos, *tiny(tiny_ckpt), "-f", "csv")
    assert result.exit_code == 0
    assert f"note: searching for the text '{photos}' in the store" in result.stderr
