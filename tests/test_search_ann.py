"""The approximate index of big stores (zeroshot.store.ann, usearch): the same hits as the exact
ranking where the graph finds them, exact scores always, rebuilt when the store changes, files
that are gone left out, the size threshold and its switches, and prune removing stale indexes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import zeroshot.store.ann as ann
from zeroshot.encode.embed import EmbedSettings
from zeroshot.errors import UsageError
from zeroshot.prompts import as_template_set
from zeroshot.store import FileRecord, Store, embedding_key
from zeroshot.store.ann import ApproximateIndex, use_approximate
from zeroshot.tasks.search import Query, _approximate_hits, _query_vector, search

from conftest import cli_strict as cli
from conftest import tiny_cli_args as tiny

pytest.importorskip("usearch")  # a test extra: installed wherever the suite runs

SETTINGS = EmbedSettings(batch_size=8, workers=0, fast_decode=True)
N = 3000


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 30 centres: shaped like image embeddings, not uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


QUERY = "a red square"
PLANTED = 8  # entries made close to QUERY's vector, at decreasing similarity: the clear best hits


@pytest.fixture()
def big_store(tiny_loaded, tmp_path):
    """A store of N entries of the tiny model's key, each an (empty) file that exists; the last
    PLANTED ones are near QUERY, best first."""
    key = embedding_key(tiny_loaded, SETTINGS.fast_decode)
    query = _query_vector(tiny_loaded, [Query(QUERY)], as_template_set("none"), SETTINGS, None, False).numpy()
    vectors = clustered(N, query.shape[0])
    rng = np.random.default_rng(7)
    for j in range(PLANTED):
        noise = rng.standard_normal(query.shape[0]).astype(np.float32)
        noise -= noise @ query * query  # orthogonal to the query: cos = 1 - 0.05 * (j + 1) exactly
        near = (1 - 0.05 * (j + 1)) * query + np.sqrt(1 - (1 - 0.05 * (j + 1)) ** 2) * noise / np.linalg.norm(noise)
        vectors[N - PLANTED + j] = near / np.linalg.norm(near)
    files = tmp_path / "photos"
    files.mkdir()
    records = []
    for i, vector in enumerate(vectors):
        path = files / f"img{i:05d}.jpg"
        path.write_bytes(b"")
        records.append(FileRecord(str(path), 0, i, i.to_bytes(32, "little"), vector))
    store = Store.open(tmp_path / "store")
    store.add(key, records)
    yield store, key, files
    store.close()


def queries(store, key, count=20):
    _, matrix = store.matrix(key)
    rng = np.random.default_rng(1)
    picked = matrix[torch.from_numpy(rng.choice(len(matrix), count, replace=False))]
    return torch.nn.functional.normalize(picked + 0.3 * torch.randn(picked.shape, generator=torch.Generator().manual_seed(2)), dim=1)


def exact_top(store, key, query, top):
    names, matrix = store.matrix(key)
    scores = matrix @ query
    order = torch.sort(scores, descending=True, stable=True).indices[:top]
    return [names[i] for i in order.tolist()], scores[order]


def test_candidates_recall_and_exact_scores(big_store):
    store, key, _ = big_store
    index = ApproximateIndex(store, key)
    assert not index.is_fresh()
    assert index.build() == N and index.is_fresh() and len(index) == N
    found = total = 0
    for query in queries(store, key):
        hits, gone, searched = _approximate_hits(store, key, query, 10, None, None)
        want, want_scores = exact_top(store, key, query, 10)
        assert searched == N and gone == 0 and len(hits) == 10
        found += len({h.path for h in hits} & set(want))
        total += 10
        # scores are the exact cosine of the stored vectors, whichever images made the list
        names, matrix = store.matrix(key)
        position = {n: i for i, n in enumerate(names)}
        for hit in hits:
            assert hit.score == pytest.approx(float(matrix[position[hit.path]] @ query), abs=1e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert found / total >= 0.95  # HNSW with a wide beam: 3,000 vectors are found all but exactly


def test_search_uses_the_index_rebuilds_it_and_leaves_out_gone_files(big_store, tiny_loaded, monkeypatch):
    store, key, files = big_store
    built = []
    original = ApproximateIndex.build
    monkeypatch.setattr(ApproximateIndex, "build", lambda self, hook=None: built.append(1) or original(self, hook))
    first = search(tiny_loaded, QUERY, store=store, top=5, settings=SETTINGS, approximate=True, cache=False)
    assert first.approximate and len(first) == 5 and first.searched == N and built == [1]
    assert [h.path for h in first] == [str(files / f"img{i:05d}.jpg") for i in range(N - PLANTED, N - PLANTED + 5)]
    again = search(tiny_loaded, QUERY, store=store, top=5, settings=SETTINGS, approximate=True, cache=False)
    assert [h.path for h in again] == [h.path for h in first] and built == [1]  # fresh: not rebuilt
    exact = search(tiny_loaded, QUERY, store=store, top=5, settings=SETTINGS, approximate=False, cache=False)
    assert not exact.approximate and [h.path for h in exact] == [h.path for h in first]
    assert [h.score for h in exact] == pytest.approx([h.score for h in first], abs=1e-6)

    # the best file is deleted, a new best one is added: the index is rebuilt and sees both
    os.remove(first[0].path)
    query_vector = exact_vector = None

    query_vector = _query_vector(tiny_loaded, [Query(QUERY)], as_template_set("none"), SETTINGS, store, False)
    exact_vector = torch.nn.functional.normalize(query_vector, dim=0).numpy()  # cos 1: the new best
    newcomer = files / "new.jpg"
    newcomer.write_bytes(b"")
    store.add(key, [FileRecord(str(newcomer), 0, 1, b"n" * 32, exact_vector)])
    third = search(tiny_loaded, QUERY, store=store, top=5, settings=SETTINGS, approximate=True, cache=False)
    assert built == [1, 1]
    assert third[0].path == str(newcomer) and first[0].path not in [h.path for h in third]
    assert third.gone == 1 and len(third) == 5

    limited = search(tiny_loaded, QUERY, store=store, top=50, settings=SETTINGS, approximate=True,
                     cache=False, min_score=third[2].score)
    assert [h.path for h in limited] == [h.path for h in third][:3]


def test_when_the_index_is_used(monkeypatch):
    monkeypatch.delenv(ann.MIN_ENTRIES_ENV, raising=False)
    assert use_approximate(None, 999_999) is False
    assert use_approximate(None, 1_000_000) is True
    assert use_approximate(False, 5_000_000) is False
    monkeypatch.setenv(ann.MIN_ENTRIES_ENV, "100")
    assert use_approximate(None, 100) is True and use_approximate(None, 99) is False
    monkeypatch.setenv(ann.MIN_ENTRIES_ENV, "lots")
    with pytest.raises(UsageError, match="ZEROSHOT_ANN_MIN_ENTRIES"):
        use_approximate(None, 100)
    monkeypatch.setattr(ann, "usearch_available", lambda: False)
    monkeypatch.setenv(ann.MIN_ENTRIES_ENV, "1")
    assert use_approximate(None, 10) is False  # not installed: exact, silently
    with pytest.raises(UsageError, match=r'pip install "zeroshot\[ann\]"'):
        use_approximate(True, 10)


def test_prune_removes_indexes_of_removed_keys(big_store):
    store, key, _ = big_store
    ApproximateIndex(store, key).build()
    assert sorted(p.suffix for p in store.location.glob("ann-*")) == [".json", ".usearch"]
    store.prune(keep=[])
    assert list(store.location.glob("ann-*")) == []


def test_cli_approximate_switch(big_store, tiny_ckpt):
    store, _, _ = big_store
    result = cli("search", QUERY, "--store", str(store.location), "--approximate", "--format", "paths",
                 "-n", "3", *tiny(tiny_ckpt))
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert "(approximate index)" in result.stderr
    exact = cli("search", QUERY, "--store", str(store.location), "--exact", "--format", "paths", "-n", "3",
                *tiny(tiny_ckpt))
    assert exact.stdout == result.stdout and "(approximate index)" not in exact.stderr
