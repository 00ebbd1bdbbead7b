"""Embedding store at library scale: a synthetic store of N random unit vectors (512 values,
stored as float16 blobs in SQLite WAL), measured the way search will use it::

    python benchmarks/store.py                       # 100,000 and 1,000,000 vectors
    python benchmarks/store.py --sizes 100000 --dim 768
    python benchmarks/store.py --sizes 0 --cold-search 0 --approximate 1000000   # the usearch index

Per size: insert time (Store.add, one transaction per 256 vectors, the batch size of a GPU
index run), database size, cold load (a fresh process: Store.open + Store.matrix, the file in
the page cache), the resident memory the loaded matrix adds to that process, and a warm
brute-force query (one fp32 matrix-vector product + top-10, median of repeats, in that process).
Sizes whose float32 matrix would not fit in the memory available are extrapolated linearly from
the largest measured one, and marked so.

``--approximate N``: a store of N clustered unit vectors (N/100 centres plus noise of 0.7 times
their scale: shaped like image embeddings, where uniform noise is the worst case for any graph index), its approximate
index built (zeroshot.store.ann, usearch HNSW), then per query: the exact ranking (fp32 matrix @
query + top 10) against the approximate one (index candidates, re-scored from the store), their
latencies (medians, interleaved) and the recall@10 of the approximate list; plus build time,
index file size and the resident memory each way adds to a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
INSERT_BATCH = 256

# Runs in a fresh process: open + matrix (cold), then warm queries; prints JSON.
_COLD = """
import json, os, sys, time, statistics
import torch
from zeroshot.store import Store, EmbeddingKey

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

key = EmbeddingKey(**json.loads(sys.argv[2]))
torch.zeros(1) @ torch.zeros(1)  # torch itself initialised outside the timing
before = rss()
t0 = time.perf_counter()
store = Store.open(sys.argv[1], create=False)
paths, matrix = store.matrix(key)
load = time.perf_counter() - t0
after = rss()
query = torch.nn.functional.normalize(torch.randn(matrix.shape[1], generator=torch.Generator().manual_seed(1)), dim=0)
t0 = time.perf_counter()
scores = matrix @ query
top = torch.topk(scores, 10)
first = time.perf_counter() - t0
times = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    scores = matrix @ query
    top = torch.topk(scores, 10)
    times.append(time.perf_counter() - t0)
print(json.dumps({"load_s": load, "rss_bytes": after - before, "first_query_s": first,
                  "query_s": statistics.median(times), "rows": len(paths), "threads": torch.get_num_threads()}))
"""


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 0


def build(folder: Path, n: int, dim: int, seed: int = 0):
    from zeroshot.store import EmbeddingKey, FileRecord, Store

    key = EmbeddingKey(model="synthetic", weights=f"random-{dim}", preprocess="none", decode="exact",
                       precision="fp32", pretrained="synthetic")
    rng = np.random.default_rng(seed)
    store = Store.open(folder)
    seconds = 0.0
    for start in range(0, n, INSERT_BATCH):
        count = min(INSERT_BATCH, n - start)
        vectors = rng.standard_normal((count, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        hashes = rng.bytes(32 * count)
        records = [FileRecord(f"/photos/{(start + i) // 1000:04d}/IMG_{start + i:07d}.jpg", 3_000_000 + i,
                              1_700_000_000_000_000_000 + start + i, hashes[32 * i:32 * i + 32], vectors[i])
                   for i in range(count)]
        t0 = time.perf_counter()  # only the store's work: records are made outside the timing
        store.add(key, records)
        seconds += time.perf_counter() - t0
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = sum(os.path.getsize(p) for p in folder.iterdir())
    store.close()
    return key, seconds, size


def cold(folder: Path, key, repeats: int) -> dict:
    from dataclasses import asdict

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _COLD, str(folder), json.dumps(asdict(key)), str(repeats)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


# Runs in a fresh process: the phases of a search, timed one by one; prints JSON.
_SEARCH_PHASES = """
import json, sys, time
t0 = time.perf_counter()
import torch
from zeroshot.models import load_model
from zeroshot.store.db import Store
from zeroshot.tasks.search import search
t_import = time.perf_counter() - t0
t0 = time.perf_counter()
loaded = load_model("ViT-B-32", sys.argv[2], device="cpu", precision="fp32")
t_model = time.perf_counter() - t0
store = Store.open(sys.argv[1], create=False)
t0 = time.perf_counter()
first = search(loaded, "a dog on a beach", store=store, top=20)
t_first = time.perf_counter() - t0
warm = []
for text in ("a cat", "a red car", "mountains at sunset", "a birthday cake", "people on a beach"):
    t0 = time.perf_counter()
    search(loaded, text, store=store, top=20)
    warm.append(time.perf_counter() - t0)
print(json.dumps({"import_s": t_import, "model_s": t_model, "first_search_s": t_first,
                  "warm_search_s": sorted(warm)[len(warm) // 2], "hits": len(first.hits)}))
"""


def cold_search(work: Path, n: int, dim: int, repeats: int) -> dict:
    """``zeroshot search`` in a fresh process on a store of ``n`` random vectors under the key of
    a (random-weight, local checkpoint) ViT-B-32, its files present as empty files: wall time
    of the command (median of ``repeats``), and the phases of the same work in a script."""
    import statistics

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench import ensure_checkpoint

    from zeroshot.models import load_model
    from zeroshot.store import FileRecord, Store, embedding_key

    ckpt = ensure_checkpoint(REPO / ".bench" / "vit-b-32.pt")
    key = embedding_key(load_model("ViT-B-32", str(ckpt), device="cpu", precision="fp32"), fast_decode=True)
    folder, files = work / "search-store", work / "files"
    rng = np.random.default_rng(1)
    with Store.open(folder) as store:
        for start in range(0, n, 4096):
            count = min(4096, n - start)
            vectors = rng.standard_normal((count, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            records = []
            for i in range(start, start + count):
                path = files / f"{i // 1000:04d}" / f"IMG_{i:07d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
                records.append(FileRecord(str(path), 0, 0, i.to_bytes(32, "big"), vectors[i - start]))
            store.add(key, records)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "zeroshot", "search", "a dog on a beach", "--store", str(folder),
               "-m", "ViT-B-32", "-p", str(ckpt), "-d", "cpu", "-f", "csv", "--top", "20", "-q"]
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        walls.append(time.perf_counter() - t0)
        assert len(out.stdout.splitlines()) == 21, out.stdout[:500]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, open_clip"], env=env, check=True)
    import_torch = time.perf_counter() - t0
    phases = json.loads(subprocess.run([sys.executable, "-c", _SEARCH_PHASES, str(folder), str(ckpt)],
                                       capture_output=True, text=True, env=env, check=True).stdout)
    return {"n": n, "cli_wall_s": statistics.median(walls), "cli_walls": walls,
            "python_import_torch_open_clip_s": import_torch, **phases}


# Runs in a fresh process: open the index (memory-mapped) and query it; prints JSON.
_ANN_COLD = """
import json, sys, time, numpy as np, torch
from zeroshot.store import Store, EmbeddingKey
from zeroshot.store.ann import ApproximateIndex

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

key = EmbeddingKey(**json.loads(sys.argv[2]))
torch.zeros(1) @ torch.zeros(1)
before = rss()
t0 = time.perf_counter()
store = Store.open(sys.argv[1], create=False)
index = ApproximateIndex(store, key)
assert index.is_fresh()
query = np.random.default_rng(5).standard_normal(int(sys.argv[3])).astype(np.float32)
query /= np.linalg.norm(query)
ids = index.candidates(query, 64)
paths, matrix = store.rows(key, ids.tolist())
top = torch.topk(matrix @ torch.from_numpy(query), 10)
print(json.dumps({"cold_s": time.perf_counter() - t0, "rss_bytes": rss() - before}))
"""


def clustered_store(folder: Path, n: int, dim: int):
    from zeroshot.store import EmbeddingKey, FileRecord, Store

    key = EmbeddingKey(model="synthetic", weights=f"clustered-{dim}", preprocess="none", decode="exact",
                       precision="fp32", pretrained="synthetic")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(n // 100, 10), dim)).astype(np.float32)
    with Store.open(folder) as store:
        for start in range(0, n, 4096):
            count = min(4096, n - start)
            vectors = centres[rng.integers(0, len(centres), count)] + 0.7 * rng.standard_normal((count, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.add(key, [FileRecord(f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg", 0, i, i.to_bytes(32, "big"),
                                       vectors[i - start]) for i in range(start, start + count)])
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return key, centres


def approximate(work: Path, n: int, dim: int, repeats: int) -> dict:
    """The approximate index against exact search on one store (see the module docstring)."""
    import statistics
    from dataclasses import asdict

    import torch

    from zeroshot.store import Store
    from zeroshot.store.ann import ApproximateIndex

    folder = work / f"ann{n}"
    shutil.rmtree(folder, ignore_errors=True)
    key, centres = clustered_store(folder, n, dim)
    store = Store.open(folder, create=False)
    index = ApproximateIndex(store, key)
    t0 = time.perf_counter()
    index.build()
    build_s = time.perf_counter() - t0
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cold_run = json.loads(subprocess.run([sys.executable, "-c", _ANN_COLD, str(folder), json.dumps(asdict(key)),
                                          str(dim)], capture_output=True, text=True, env=env, check=True).stdout)
    names, matrix = store.matrix(key)
    rng = np.random.default_rng(3)
    queries = torch.nn.functional.normalize(torch.from_numpy(
        centres[rng.integers(0, len(centres), repeats)] + 0.7 * rng.standard_normal((repeats, dim), dtype=np.float32)), dim=1)
    exact_t, approx_t, recall = [], [], []
    for query in queries:  # interleaved: the same query each way, one after the other
        t0 = time.perf_counter()
        want = set(torch.topk(matrix @ query, 10).indices.tolist())
        exact_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ids = index.candidates(query.numpy(), 64)
        paths, rows = store.rows(key, ids.tolist())
        best = torch.topk(rows @ query, 10).indices.tolist()
        approx_t.append(time.perf_counter() - t0)
        recall.append(len({int(ids[i]) - 1 for i in best} & want) / 10)  # row ids are 1-based, in matrix order
    size = index.path.stat().st_size
    store.close()
    shutil.rmtree(folder, ignore_errors=True)
    return {"n": n, "build_s": build_s, "index_bytes": size, "exact_ms": statistics.median(exact_t) * 1e3,
            "approx_ms": statistics.median(approx_t) * 1e3, "recall10": statistics.mean(recall),
            "min_recall10": min(recall), "queries": repeats, **cold_run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated numbers of vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20, help="warm queries per size (the median is reported)")
    parser.add_argument("--dir", default=None, help="where to build the stores (default: a temporary folder)")
    parser.add_argument("--cold-search", type=int, default=100_000, metavar="N",
                        help="also time 'zeroshot search' in a fresh process on a store of N vectors with a "
                             "ViT-B-32 key (0: skip)")
    parser.add_argument("--approximate", type=int, default=0, metavar="N",
                        help="also measure the approximate index (pip install 'zeroshot[ann]') on N clustered vectors")
    args = parser.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if int(s.replace("_", ""))]
    work = Path(args.dir or tempfile.mkdtemp(prefix="zeroshot-store-bench-"))
    results = []
    measured: dict | None = None
    try:
        for n in sizes:
            # Cold load peaks at the float32 matrix plus one chunk; the builder holds little.
            need = n * args.dim * 4 * 1.3
            if available_memory() and need > available_memory() * 0.6 and measured is not None:
                scale = n / measured["n"]
                results.append({"n": n, "how": f"extrapolated x{scale:g} from {measured['n']:,}",
                                **{k: measured[k] * scale for k in ("insert_s", "db_bytes", "load_s", "rss_bytes",
                                                                     "query_s", "first_query_s")}})
                continue
            folder = work / f"n{n}"
            shutil.rmtree(folder, ignore_errors=True)
            key, insert_s, db_bytes = build(folder, n, args.dim)
            run = cold(folder, key, args.repeats)
            assert run["rows"] == n
            measured = {"n": n, "how": "measured", "insert_s": insert_s, "db_bytes": db_bytes, **run}
            results.append(measured)
            shutil.rmtree(folder, ignore_errors=True)
        searched = cold_search(work, args.cold_search, 512, 3) if args.cold_search else None
        approx = approximate(work, args.approximate, args.dim, 100) if args.approximate else None
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    threads = measured.get("threads", "?") if measured else "?"
    print(f"embedding store, {args.dim}-value unit vectors as float16 blobs (SQLite WAL); {cpu}, "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores, "
          f"torch threads {threads}")
    header = f"{'vectors':>10}  {'insert':>9}  {'db size':>9}  {'cold open+matrix':>16}  {'matrix RSS':>10}  " \
             f"{'warm query':>10}  {'1st query':>9}  how"
    print(header)
    for r in results:
        print(f"{r['n']:>10,}  {r['insert_s']:>8.2f}s  {r['db_bytes'] / 1e6:>7.0f}MB  {r['load_s']:>15.2f}s  "
              f"{r['rss_bytes'] / 1e6:>8.0f}MB  {r['query_s'] * 1e3:>8.1f}ms  {r['first_query_s'] * 1e3:>7.1f}ms  "
              f"{r['how']}")
    print("warm query: fp32 matrix @ query + topk(10), median of", args.repeats, "; insert: Store.add, 256 per "
          "transaction; cold: fresh process, file in the page cache")
    if searched:
        print(f"cold 'zeroshot search \"a dog on a beach\" --store DIR' on {searched['n']:,} vectors (ViT-B-32 from a "
              f"local file, 512-d): {searched['cli_wall_s']:.2f}s wall, median of 3 fresh processes "
              f"({', '.join(f'{w:.2f}' for w in searched['cli_walls'])}); 'python -c \"import torch, open_clip\"' "
              f"alone {searched['python_import_torch_open_clip_s']:.2f}s")
        print(f"  phases in a fresh process: imports {searched['import_s']:.2f}s, model load "
              f"{searched['model_s']:.2f}s, first search (store load + text + query) {searched['first_search_s']:.2f}s; "
              f"then a warm search (text encode + query + top 20) {searched['warm_search_s'] * 1e3:.0f}ms")
    if approx:
        print(f"approximate index on {approx['n']:,} clustered {args.dim}-d vectors: built in {approx['build_s']:.0f}s, "
              f"{approx['index_bytes'] / 1e6:.0f}MB file; query (top 10, {approx['queries']} queries, interleaved "
              f"medians): exact {approx['exact_ms']:.1f}ms, approximate {approx['approx_ms']:.2f}ms "
              f"({approx['exact_ms'] / approx['approx_ms']:.0f}x); recall@10 {approx['recall10']:.3f} "
              f"(worst query {approx['min_recall10']:.1f}); fresh process open+query {approx['cold_s']:.2f}s, "
              f"+{approx['rss_bytes'] / 1e6:.0f}MB RSS")
    print("command: python benchmarks/store.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
