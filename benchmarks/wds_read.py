"""Reading a CLIP_benchmark WebDataset folder vs the same images as files (``zeroshot eval wds``)::

    python benchmarks/wds_read.py                   # 1,000 ImageNet-size JPEGs, 3 repeats
    python benchmarks/wds_read.py --images 200 --repeats 2

What it does, all in one process:

1. Data: ``--images`` ImageNet-size JPEGs (the generator and cache of ``benchmarks/bench.py``, in
   ``--cache-dir``), copied into 10 class folders and written into a WebDataset folder
   (``test/0.tar`` ..., 500 samples per shard, with ``tarfile``; ``classnames.txt``, templates).
2. Times the listing: ``wds_dataset`` (shard headers + the ``.cls`` members) and ``folder_dataset``.
3. Repeats, interleaved: ``evaluate`` of both datasets with the tiny test model (``zs-tiny``: the
   model costs little, so decode and reading dominate, which is where the two paths differ), one
   decode worker, no caches. Prints the medians and checks both give the same accuracy.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("ZEROSHOT_MODEL_CONFIGS", str(HERE.parent / "tests" / "model_configs"))

from bench import ensure_images, log  # noqa: E402


def write_wds(root: Path, paths: list[str], per_shard: int = 500) -> None:
    (root / "test").mkdir(parents=True)
    shards = 0
    for start in range(0, len(paths), per_shard):
        with tarfile.open(root / "test" / f"{shards}.tar", "w") as archive:
            for i in range(start, min(start + per_shard, len(paths))):
                for name, payload in ((f"s{i:07d}.jpg", Path(paths[i]).read_bytes()), (f"s{i:07d}.cls", str(i % 10).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
        shards += 1
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    (root / "classnames.txt").write_text("\n".join(f"class {k}" for k in range(10)) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=HERE.parent / ".bench")
    args = parser.parse_args()

    import torch

    from zeroshot.data.datasets import folder_dataset
    from zeroshot.data.wds import wds_dataset
    from zeroshot.encode.embed import EmbedSettings
    from zeroshot.models import load_model
    from zeroshot.tasks.evaluate import evaluate

    paths = ensure_images(args.cache_dir / "small", args.images, big=False)
    work = Path(tempfile.mkdtemp(prefix="wds-bench-"))
    try:
        for i, path in enumerate(paths):
            target = work / "folder" / f"class {i % 10}" / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        write_wds(work / "wds", paths)
        started = time.perf_counter()
        wds = wds_dataset(work / "wds")
        wds_list = time.perf_counter() - started
        started = time.perf_counter()
        folder = folder_dataset(work / "folder")
        folder_list = time.perf_counter() - started
        log(f"listing: wds {wds_list:.3f}s, folder {folder_list:.3f}s ({len(wds)} images)")

        torch.manual_seed(0)
        import open_clip

        open_clip.add_model_config(os.environ["ZEROSHOT_MODEL_CONFIGS"])
        ckpt = work / "zs-tiny.pt"
        torch.save(open_clip.create_model("zs-tiny", pretrained=None).state_dict(), ckpt)
        loaded = load_model("zs-tiny", str(ckpt), device="cpu", precision="fp32")
        settings = EmbedSettings(batch_size=64, workers=1)
        times: dict[str, list[float]] = {"wds": [], "folder": []}
        accuracy = {}
        for repeat in range(args.repeats):
            order = [("wds", wds), ("folder", folder)]
            for name, data in order if repeat % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                result = evaluate(loaded, data, ["a photo of a {}."], settings, cache=False)
                times[name].append(time.perf_counter() - started)
                accuracy[name] = result.acc1 if hasattr(result, "acc1") else result.metrics.acc1
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{name}\t{median:.2f}s\t{len(wds) / median:.0f} img/s\truns {', '.join(f'{v:.2f}' for v in values)}")
        print(f"same acc1 both ways: {accuracy['wds'] == accuracy['folder']} ({accuracy['wds']:.4f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
