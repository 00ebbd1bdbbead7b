"""The store used by classify and eval: vectors read where the store has them, the rest encoded
once and added; input order, error rows and counts; --store, --no-cache; a store that cannot be
read or written never stops a run. (search: test_search.py.)"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch

import zeroshot.encode.embed as embed_module
from zeroshot.data.discover import Source, discover
from zeroshot.encode.embed import EmbedSettings, embed_images
from zeroshot.errors import NOT_FOUND, ImageError
from zeroshot.store import Store, StoreError, embedding_key
from zeroshot.store.keys import RANDOM_WEIGHTS
from zeroshot.store.reuse import ReuseStats, StoreWarning, embed_with_store
from zeroshot.tasks.classify import ZeroShotClassifier, classify_to_file

from conftest import LABELS, colour, make_image
from conftest import cli_strict as cli
from conftest import tiny_cli_args as tiny


@pytest.fixture()
def photos(tmp_path):
    root = tmp_path / "photos"
    for i in range(10):
        make_image(root / f"img{i:02d}.png", colour(i), size=(40, 30))
    return root


@pytest.fixture()
def encoder_calls(monkeypatch):
    """Images through the image tower (the encoder wrapped), whoever calls it."""
    seen = [0]
    encode = embed_module.encode_images

    def counting(loaded, pixels, *args, **kwargs):
        seen[0] += pixels.shape[0]
        return encode(loaded, pixels, *args, **kwargs)

    monkeypatch.setattr(embed_module, "encode_images", counting)
    return seen


def summary_line(result, start: str) -> str:
    return next(line for line in result.stderr.splitlines() if line.startswith(start))


# --------------------------------------------------------------------------- the reuse loop


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_every_input_once_in_order_with_hits_misses_and_errors(tiny_loaded, photos, tmp_path, batch_size,
                                                               encoder_calls):
    settings = EmbedSettings(batch_size=batch_size, workers=0, fast_decode=True)
    files = sorted(photos.iterdir())
    with Store.open(tmp_path / "st") as store:
        store.index(tiny_loaded, [str(f) for f in files[2:5] + files[8:]], settings)  # 5 held
        encoder_calls[0] = 0
        gone = Source(str(tmp_path / "gone.png"), str(tmp_path / "gone.png"), ImageError(NOT_FOUND, "no such file"))
        (tmp_path / "bad.png").write_bytes(b"not an image")
        bad = Source(str(tmp_path / "bad.png"), str(tmp_path / "bad.png"))
        items = discover([str(f) for f in files]).items
        items = items[:3] + [gone] + items[3:7] + [bad] + items[7:]  # 12 inputs
        stats = ReuseStats()
        batches = list(embed_with_store(tiny_loaded, items, settings, store, stats=stats))
        seen = []
        for batch in batches:
            inside = sorted(batch.indices + [i for i, _ in batch.errors])
            assert seen == [] or inside[0] > seen[-1]  # batches in input order
            assert batch.indices == sorted(batch.indices)
            seen += inside
        assert seen == list(range(12))
        errors = dict(e for b in batches for e in b.errors)
        assert set(errors) == {3, 8} and errors[3].startswith("not_found")
        assert (stats.encoded, stats.from_store, stats.added) == (5, 5, 5) and encoder_calls[0] == 5
        got = {i: v for b in batches for i, v in zip(b.indices, b.embeddings if b.embeddings is not None else [])}
        fresh = {i: v for b in embed_images(tiny_loaded, items, settings) for i, v in
                 zip(b.indices, b.embeddings if b.embeddings is not None else [])}
        assert got.keys() == fresh.keys()
        for i in got:  # the store's precision (float16), for read and for freshly encoded vectors
            assert torch.equal(got[i], got[i].half().float())
            assert torch.allclose(got[i], fresh[i], atol=2e-3)

        # A second pass reads everything and encodes nothing; same vectors.
        encoder_calls[0] = 0
        again = ReuseStats()
        second = {i: v for b in embed_with_store(tiny_loaded, items, settings, store, stats=again)
                  for i, v in zip(b.indices, b.embeddings if b.embeddings is not None else [])}
        assert (again.encoded, again.from_store, encoder_calls[0]) == (0, 10, 0)
        assert all(torch.equal(second[i], got[i]) for i in got)


def test_float32_store_keeps_fresh_vectors_exact(tiny_loaded, photos, tmp_path):
    settings = EmbedSettings(batch_size=4, workers=0)
    items = discover([photos]).items
    fresh = torch.cat([b.embeddings for b in embed_images(tiny_loaded, items, settings)])
    with Store.open(tmp_path / "st", dtype="float32") as store:
        for _ in range(2):  # encoded, then read
            got = torch.cat([b.embeddings for b in embed_with_store(tiny_loaded, items, settings, store)])
            assert torch.equal(got, fresh)


def test_random_weights_and_images_in_memory_use_no_store(tiny_loaded, tmp_path, photos):
    from PIL import Image

    loaded = dataclasses.replace(tiny_loaded, weights_id=RANDOM_WEIGHTS)
    with Store.open(tmp_path / "st") as store:
        stats = ReuseStats()
        list(embed_with_store(loaded, discover([photos]).items, EmbedSettings(workers=0), store, stats=stats))
        assert (stats.encoded, stats.store_used, store.count()) == (10, False, 0)
        images = [Image.new("RGB", (32, 32), (255, 0, 0))]
        list(embed_with_store(tiny_loaded, images, EmbedSettings(workers=0), store, stats=stats))
        assert stats.encoded == 11 and store.count() == 0


def test_a_store_that_cannot_be_written_costs_a_warning(tiny_loaded, photos, tmp_path, monkeypatch):
    settings = EmbedSettings(batch_size=4, workers=0)
    items = discover([photos]).items
    with Store.open(tmp_path / "st") as store:
        def broken(*args, **kwargs):
            raise StoreError(f"store {store.database}: cannot write: the disk is full; nothing of this batch was written")

        monkeypatch.setattr(store, "add", broken)
        stats = ReuseStats()
        with pytest.warns(StoreWarning, match="disk is full; .*the rest of this run is not stored") as caught:
            got = list(embed_with_store(tiny_loaded, items, settings, store, stats=stats))
        assert len(caught) == 1  # once, not per batch
        assert sum(len(b) for b in got) == 10 and (stats.encoded, stats.added) == (10, 0)


def test_a_store_that_cannot_be_read_costs_a_warning(tiny_loaded, photos, tmp_path, monkeypatch):
    with Store.open(tmp_path / "st") as store:
        def broken(*args, **kwargs):
            raise StoreError(f"store {store.database}: the database is damaged")

        monkeypatch.setattr(store, "vectors", broken)
        stats = ReuseStats()
        with pytest.warns(StoreWarning, match="damaged; encoding every image"):
            got = list(embed_with_store(tiny_loaded, discover([photos]).items, EmbedSettings(workers=0), store,
                                        stats=stats))
        assert sum(len(b) for b in got) == 10 and stats.encoded == 10 and not stats.store_used


def test_a_changed_file_is_encoded_again(tiny_loaded, photos, tmp_path, encoder_calls):
    settings = EmbedSettings(batch_size=4, workers=0)
    with Store.open(tmp_path / "st") as store:
        list(embed_with_store(tiny_loaded, discover([photos]).items, settings, store))
        make_image(photos / "img03.png", (1, 2, 3), size=(40, 30))
        os.utime(photos / "img03.png", ns=(1, 1))
        encoder_calls[0] = 0
        stats = ReuseStats()
        list(embed_with_store(tiny_loaded, discover([photos]).items, settings, store, stats=stats))
        assert (stats.encoded, stats.from_store, encoder_calls[0]) == (1, 9, 1)
        assert store.count() == 10


def test_a_renamed_file_is_read_by_content_and_gets_its_own_entry(tiny_loaded, photos, tmp_path, encoder_calls):
    settings = EmbedSettings(batch_size=4, workers=0)
    with Store.open(tmp_path / "st") as store:
        first = {i: v for b in embed_with_store(tiny_loaded, discover([photos]).items, settings, store)
                 for i, v in zip(b.indices, b.embeddings)}
        os.rename(photos / "img04.png", photos / "zz-renamed.png")
        encoder_calls[0] = 0
        stats = ReuseStats()
        items = discover([photos]).items
        again = {items[i].path: v for b in embed_with_store(tiny_loaded, items, settings, store, stats=stats)
                 for i, v in zip(b.indices, b.embeddings)}
        assert (stats.encoded, stats.from_store, encoder_calls[0]) == (0, 10, 0)
        assert torch.equal(again[str(photos / "zz-renamed.png")], first[4])
        found, _ = store.vectors(embedding_key(tiny_loaded, False), [photos / "zz-renamed.png"], by_content=False)
        assert found.tolist() == [True]  # found by path from now on


# ------------------------------------------------------------------------------ classify (library)


def test_classifier_with_a_store_gives_the_same_rows_encoded_or_read(tiny_loaded, photos, tmp_path, encoder_calls):
    store = Store.open(tmp_path / "st")
    clf = ZeroShotClassifier(LABELS, "photo", model=tiny_loaded, cache=False, store=store)
    first = clf.classify([photos], top_k=3, workers=0, batch_size=4)
    assert (clf.last_run.encoded, clf.last_run.from_store, encoder_calls[0]) == (10, 0, 10)
    other = ZeroShotClassifier(["a cat", "a dog"], "photo", model=tiny_loaded, cache=False, store=store)
    other.classify([photos], workers=0, batch_size=4)
    assert (other.last_run.encoded, other.last_run.from_store, encoder_calls[0]) == (0, 10, 10)
    second = clf.classify([photos], top_k=3, workers=0, batch_size=4)
    assert second == first
    # Without a store: the model's own float32 vectors, probabilities within ~1e-3.
    plain = ZeroShotClassifier(LABELS, "photo", model=tiny_loaded, cache=False).classify([photos], top_k=3, workers=0)
    for a, b in zip(plain, first):
        assert a.path == b.path
        assert max(abs(x - y) for x, y in zip(sorted(a.scores), sorted(b.scores))) < 2e-3
    store.close()


def test_classify_to_file_with_a_store_journals_batches_and_resumes(tiny_loaded, photos, tmp_path):
    store = Store.open(tmp_path / "st")
    clf = ZeroShotClassifier(LABELS, "photo", model=tiny_loaded, cache=False, store=store)
    settings = EmbedSettings(batch_size=3, workers=0)
    whole = tmp_path / "whole.csv"
    classify_to_file(clf, [photos], whole, settings=settings)
    out = tmp_path / "out.csv"

    class Stop(Exception):
        pass

    seen = []

    def stop_after_two_batches(done, total):
        seen.append(done)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        classify_to_file(clf, [photos], out, settings=settings, on_progress=stop_after_two_batches)
    stats = classify_to_file(clf, [photos], out, settings=settings, resume=True)
    assert stats.kept == 6 and stats.from_store == 4 and stats.encoded == 0
    assert out.read_bytes() == whole.read_bytes()
    store.close()


# ------------------------------------------------------------------------------ classify (CLI)


def test_classify_after_index_encodes_no_image_for_a_new_label_set(tiny_ckpt, photos, tmp_path, encoder_calls):
    result = cli("index", photos, *tiny(tiny_ckpt))
    assert result.exit_code == 0, result.output
    assert encoder_calls[0] == 10
    encoder_calls[0] = 0
    result = cli("classify", photos, "-l", "a never used label", "-l", "another one", "-t", "photo",
                 *tiny(tiny_ckpt), "-o", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    assert encoder_calls[0] == 0
    summary = summary_line(result, "classified ")
    assert summary.startswith("classified 10 of 10 images") and "; encoded 0, 10 from the store" in summary
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 11


def test_classify_uses_the_default_store_and_no_cache_turns_it_off(tiny_ckpt, photos, tmp_path, labels_file,
                                                                  encoder_calls):
    args = ["classify", photos, "-L", labels_file, "-t", "photo", *tiny(tiny_ckpt), "-f", "csv"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert "; encoded 10, 0 from the store" in summary_line(first, "classified ")
    assert (tmp_path / "zs-store" / "embeddings.sqlite3").is_file()  # $ZEROSHOT_STORE_DIR
    second = cli(*args)
    assert "; encoded 0, 10 from the store" in summary_line(second, "classified ")
    assert second.stdout == first.stdout  # stored or just encoded: the same rows
    encoder_calls[0] = 0
    plain = cli(*args, "--no-cache")
    assert plain.exit_code == 0 and encoder_calls[0] == 10
    assert "from the store" not in summary_line(plain, "classified ")
    with Store.open(tmp_path / "zs-store") as store:
        assert store.count() == 10


def test_classify_store_option_puts_the_store_there(tiny_ckpt, photos, tmp_path, labels_file):
    where = photos / ".zeroshot"
    result = cli("classify", photos, "-L", labels_file, "-t", "photo", *tiny(tiny_ckpt), "--store", where, "-f", "csv")
    assert result.exit_code == 0, result.output
    with Store.open(where) as store:
        assert store.count() == 10
    assert not (tmp_path / "zs-store").exists()
    result = cli("classify", photos, "-L", labels_file, *tiny(tiny_ckpt), "--store", where, "--no-cache")
    assert result.exit_code == 2 and "--store and --no-cache" in result.stderr


def test_classify_goes_on_without_an_unusable_default_store(tiny_ckpt, photos, tmp_path, labels_file, monkeypatch):
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "embeddings.sqlite3").write_text("not a database")
    monkeypatch.setenv("ZEROSHOT_STORE_DIR", str(bogus))
    result = cli("classify", photos, "-L", labels_file, "-t", "photo", *tiny(tiny_ckpt), "-f", "csv")
    assert result.exit_code == 0, result.output
    assert any(line.startswith("warning: store ") and "continuing without the embedding store" in line
               for line in result.stderr.splitlines())
    assert len(result.stdout.splitlines()) == 11
    # Named with --store, the same problem is an error.
    result = cli("classify", photos, "-L", labels_file, *tiny(tiny_ckpt), "--store", bogus)
    assert result.exit_code == 1 and result.stderr.startswith("error: store ")


# ------------------------------------------------------------------------------------- eval


def test_eval_reads_the_store_and_gives_the_same_numbers(tiny_ckpt, tmp_path, encoder_calls):
    root = tmp_path / "ds"
    for c, name in enumerate(["red", "green", "blue"]):
        for j in range(3):
            make_image(root / name / f"{j}.png", colour(7 * c + j), size=(40, 30))
    args = ["eval", "folder", root, "-t", "photo", *tiny(tiny_ckpt)]
    first = cli(*args, "-o", tmp_path / "a.json")
    assert first.exit_code == 0, first.output
    assert "; encoded 9, 0 from the store" in summary_line(first, "evaluated ")
    encoder_calls[0] = 0
    second = cli(*args, "-o", tmp_path / "b.json")
    assert encoder_calls[0] == 0
    assert "; encoded 0, 9 from the store" in summary_line(second, "evaluated ")
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["metrics"] == b["metrics"]
    assert (a["images_encoded"], a["images_from_store"], b["images_encoded"], b["images_from_store"]) == (9, 0, 0, 9)
    assert second.stdout == first.stdout
    # --exact-decode is eval's default; classify's and index's fast decode is another key.
    encoder_calls[0] = 0
    third = cli(*args, "--fast-decode")
    assert "; encoded 9, 0 from the store" in summary_line(third, "evaluated ") and encoder_calls[0] == 9


def test_eval_library_store_argument(tiny_loaded, tmp_path, encoder_calls):
    from zeroshot.data.datasets import folder_dataset
    from zeroshot.tasks.evaluate import evaluate

    root = tmp_path / "ds"
    for c, name in enumerate(["red", "green"]):
        for j in range(2):
            make_image(root / name / f"{j}.png", colour(5 * c + j), size=(40, 30))
    with Store.open(tmp_path / "st") as store:
        first = evaluate(tiny_loaded, folder_dataset(root), ["photo"], EmbedSettings(workers=0), cache=False, store=store)
        second = evaluate(tiny_loaded, folder_dataset(root), ["photo"], EmbedSettings(workers=0), cache=False,
                          store=store)
        assert (first.images_encoded, first.images_from_store) == (4, 0)
        assert (second.images_encoded, second.images_from_store) == (0, 4)
        assert encoder_calls[0] == 4
        assert second.metrics == first.metrics
        assert store.count(embedding_key(tiny_loaded, fast_decode=False)) == 4
    plain = evaluate(tiny_loaded, folder_dataset(root), ["photo"], EmbedSettings(workers=0), cache=False)
    assert (plain.images_encoded, plain.images_from_store) == (4, 0)


@pytest.mark.parametrize("args, message", [
    (["cifar10", "--root", "nowhere", "--store", "st"], "--store is for datasets of image files; cifar10 is held in memory"),
    (["folder", "nowhere", "--store", "st", "--no-cache"], "--store and --no-cache"),
])
def test_eval_store_usage_errors(tiny_ckpt, args, message):
    result = cli("eval", *args, *tiny(tiny_ckpt))
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and message in result.stderr
