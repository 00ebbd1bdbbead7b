"""Batches and decode workers (design.md section 5, #14-#16): a batch where every image fails,
a worker process that dies or hangs (a named error for that image only, its batch-mates decoded
again), and decode workers niced and single-threaded for CPU runs."""

from __future__ import annotations

import os
import time

import pytest
import torch

from zeroshot.data.discover import discover
from zeroshot.data.loader import ImageDataset, iterate_batches

from conftest import make_image

# ---------------------------------------------------------------- #14-#16 batches and workers


@pytest.mark.parametrize("workers", [0, 1])
def test_14_batch_where_every_image_fails(clf, tmp_path, workers):
    bad = []
    for i in range(4):
        path = tmp_path / f"bad{i}.jpg"
        path.write_bytes(b"not an image %d" % i)
        bad.append(path)
    good = [make_image(tmp_path / f"good{i}.png") for i in range(2)]
    rows = list(clf.classify_paths([str(p) for p in bad + good], batch_size=2, workers=workers))
    assert [r.path for r in rows] == [str(p) for p in bad + good]
    assert all(r.error.startswith("not_an_image") for r in rows[:4]) and all(r.ok for r in rows[4:])


class _Sabotaged(ImageDataset):
    """Index 5 kills its worker process (like a segfaulting decoder); index 9 hangs."""

    def __getitem__(self, index):
        if index == 5:
            os._exit(1)
        if index == 9:
            time.sleep(60)
        return super().__getitem__(index)


def _sabotaged_dataset(clf, tmp_path, n=12):
    sources = discover([make_image(tmp_path / f"{i:02d}.png", size=(40, 40)) for i in range(n)]).sources
    return _Sabotaged(sources, clf.preprocessor, None, fast_decode=False)


def test_15_16_dead_or_hung_worker_is_a_named_error(clf, tmp_path):
    dataset = _sabotaged_dataset(clf, tmp_path)
    started = time.perf_counter()
    batches = list(iterate_batches(dataset, batch_size=4, workers=2, timeout=3))
    assert time.perf_counter() - started < 45
    errors = dict(e for b in batches for e in b.errors)
    good = [i for b in batches for i in b.indices]
    assert set(errors) == {5, 9}  # only the culprits; their batch-mates are decoded again
    assert errors[5].startswith("worker_failed: the decoding process died")
    assert errors[9].startswith("worker_failed: decoding did not finish within 3s")
    assert sorted(good) == [i for i in range(12) if i not in (5, 9)]


class _ReportsPriority(ImageDataset):
    """Reports, as each item's error, the niceness and torch threads of the process decoding it."""

    def __getitem__(self, index):
        return index, None, f"nice={os.nice(0)} threads={torch.get_num_threads()}"


@pytest.mark.parametrize("low_priority", [False, True])
def test_decode_workers_single_threaded_and_niced_for_cpu_runs(clf, tmp_path, low_priority):
    sources = discover([make_image(tmp_path / f"{i}.png", size=(8, 8)) for i in range(4)]).sources
    dataset = _ReportsPriority(sources, clf.preprocessor, None, fast_decode=True)
    base = os.nice(0)
    reports = {e for b in iterate_batches(dataset, batch_size=2, workers=2, low_priority=low_priority) for _, e in b.errors}
    expected = min(19, base + 19) if low_priority else base
    assert reports == {f"nice={expected} threads=1"}
    assert os.nice(0) == base  # the main process keeps its priority


def test_15_dead_worker_through_the_classifier(clf, tmp_path, monkeypatch):
    import zeroshot.encode.embed as embed_module

    class Dataset(ImageDataset):
        def __getitem__(self, index):
            if index == 2:
                os._exit(3)
            return super().__getitem__(index)

    monkeypatch.setattr(embed_module, "ImageDataset", Dataset)
    paths = [make_image(tmp_path / f"{i}.png", size=(40, 40)) for i in range(6)]
    rows = list(clf.classify_paths([str(p) for p in paths], batch_size=2, workers=1))
    assert [r.path for r in rows] == [str(p) for p in paths]
    assert [r.ok for r in rows] == [True, True, False, True, True, True]
    assert rows[2].error.startswith("worker_failed")
