"""``zeroshot eval wds`` / ``eval retrieval``: CLIP_benchmark's WebDataset layout and image-caption
retrieval, checked against CLIP_benchmark's own evaluation on the same shards and weights (fp32)."""

from __future__ import annotations

import builtins
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.data.captions import RetrievalDataset, caption_dataset
from zeroshot.data.catalog import load_dataset
from zeroshot.data.wds import wds_dataset
from zeroshot.encode.embed import EmbedSettings
from zeroshot.errors import UsageError
from zeroshot.metrics import retrieval_metrics
from zeroshot.tasks.evaluate import evaluate
from zeroshot.tasks.retrieval import evaluate_retrieval

from conftest import make_image, tiny_cli_args

CLASSES = ["red", "green", "blue", "yellow", "purple", "black"]
TEMPLATES = ["a photo of a {c}.", "a {c} thing.", "art of the {c}."]
CAPTIONS = ["a red square", "a green field", "the blue sea", "yellow sun", "a purple flower", "night sky",
            "a small red dot", "green grass", "deep blue", "bright yellow"]


def _png(colour, size) -> bytes:
    """A PNG with some structure (as conftest's make_image draws it), as bytes."""
    buf = io.BytesIO()
    img = Image.new("RGB", size, colour)
    for x in range(0, size[0], 7):
        for y in range(0, size[1], 5):
            img.putpixel((x, y), tuple(255 - c for c in colour))
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_classification_wds(root: Path, per_shard: int = 8, n: int = 22, seed: int = 0) -> Path:
    """A CLIP_benchmark WebDataset folder written with webdataset's own ShardWriter (as
    ``clip_benchmark_export_wds`` does): 3 shards, 6 classes, ~20 images of varied sizes."""
    import webdataset

    rng = random.Random(seed)
    (root / "test").mkdir(parents=True)
    sink = webdataset.ShardWriter(str(root / "test" / "%d.tar"), maxcount=per_shard, verbose=0)
    for i in range(n):
        colour = tuple(rng.randrange(256) for _ in range(3))
        ext = ["png", "webp", "jpg"][i % 3]
        fmt = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}[ext]
        buf = io.BytesIO()
        Image.open(io.BytesIO(_png(colour, (40 + 3 * i, 36 + 2 * (i % 5))))).save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
        sink.write({"__key__": f"s{i:07d}", ext: buf.getvalue(), "cls": i % len(CLASSES)})
    shards = sink.shard
    sink.close()
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root


def write_retrieval_wds(root: Path, n: int = 12, seed: int = 1) -> Path:
    import webdataset

    rng = random.Random(seed)
    (root / "test").mkdir(parents=True)
    sink = webdataset.ShardWriter(str(root / "test" / "%d.tar"), maxcount=5, verbose=0)
    for i in range(n):
        colour = tuple(rng.randrange(256) for _ in range(3))
        captions = [CAPTIONS[(i + j) % len(CAPTIONS)] + f" {i}" for j in range(1 + i % 3)]  # 1-3 captions
        sink.write({"__key__": f"s{i:07d}", "png": _png(colour, (48 + i, 40)), "txt": "\n".join(captions)})
    shards = sink.shard
    sink.close()
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    (root / "dataset_type.txt").write_text("retrieval\n")
    return root


@pytest.fixture(scope="module")
def cls_wds(tmp_path_factory) -> Path:
    return write_classification_wds(tmp_path_factory.mktemp("wds") / "colours")


@pytest.fixture(scope="module")
def ret_wds(tmp_path_factory) -> Path:
    return write_retrieval_wds(tmp_path_factory.mktemp("wds") / "captions")


def _cb_loader(root: Path, preprocess, batch_size: int = 5):
    from clip_benchmark.datasets.builder import build_wds_dataset

    ds = build_wds_dataset("wds/x", transform=preprocess, split="test", data_dir=str(root))
    return ds, ds


@pytest.fixture()
def cb_float(monkeypatch):
    """clip_benchmark 1.6.2's accuracy() calls float() on a 1-element array, which NumPy 2 rejects;
    shim only that conversion in its module namespace (as test_eval does)."""
    import clip_benchmark.metrics.zeroshot_classification as cb_module

    monkeypatch.setattr(cb_module, "float", lambda x: builtins.float(np.asarray(x).reshape(-1)[0] if np.ndim(x) else x),
                        raising=False)


# ------------------------------------------------------------------------------- classification


def test_wds_layout_read_like_clip_benchmark(cls_wds, tiny_loaded):
    """Same samples, order, labels, class names and templates as build_wds_dataset."""
    from clip_benchmark.datasets.builder import build_wds_dataset

    data = wds_dataset(cls_wds)
    reference = build_wds_dataset("wds/x", transform=lambda im: im, split="test", data_dir=str(cls_wds))
    pairs = list(reference)
    assert len(data) == len(pairs) == 22
    assert data.targets == [int(t) for _, t in pairs]
    assert list(data.classnames) == reference.classes == CLASSES
    assert list(data.templates.templates) == [t.replace("{c}", "{}") for t in reference.templates]
    for item, (image, _) in zip(data.inputs(), pairs):
        ours = item.load()
        assert np.array_equal(np.asarray(ours.convert("RGB")), np.asarray(image.convert("RGB")))
    assert data.names[0].endswith("test/0.tar/s0000000.png") and data.names[1].endswith("s0000001.webp")


def test_wds_metrics_equal_clip_benchmark(cls_wds, tiny_loaded, cb_float):
    """acc1 / acc5 / mean per-class recall equal CLIP_benchmark's zeroshot_classification.evaluate
    on the same shards, weights and templates (fp32)."""
    from clip_benchmark.datasets.builder import build_wds_dataset
    from clip_benchmark.metrics.zeroshot_classification import evaluate as cb_evaluate

    data = wds_dataset(cls_wds)
    ours = evaluate(tiny_loaded, data, [data.templates], EmbedSettings(workers=0, batch_size=4), cache=False)
    reference = build_wds_dataset("wds/x", transform=tiny_loaded.preprocess, split="test", data_dir=str(cls_wds))
    loader = torch.utils.data.DataLoader(reference.batched(5), batch_size=None, num_workers=0)
    cb = cb_evaluate(tiny_loaded.model, loader, tiny_loaded.tokenizer, reference.classes, reference.templates, "cpu",
                     amp=False)
    result = ours.results[0]
    assert 0 < result.acc1 < 1  # not a degenerate case
    assert result.acc1 == pytest.approx(cb["acc1"], abs=1e-6)
    assert result.acc5 == pytest.approx(cb["acc5"], abs=1e-6)
    assert result.mean_per_class_recall == pytest.approx(cb["mean_per_class_recall"], abs=1e-6)


def test_wds_decodes_in_worker_processes(cls_wds, tiny_loaded):
    """Archive members are read by byte range in the decode workers: same embeddings as in-process."""
    from zeroshot.tasks.evaluate import encode_dataset

    data = wds_dataset(cls_wds)
    a, ok_a, _ = encode_dataset(tiny_loaded, data, EmbedSettings(workers=0, batch_size=4))
    b, ok_b, _ = encode_dataset(tiny_loaded, data, EmbedSettings(workers=2, batch_size=4))
    assert ok_a.all() and ok_b.all()
    assert torch.allclose(a, b, atol=1e-6)


def test_wds_broken_member_counts_as_wrong(tmp_path, tiny_loaded):
    import tarfile

    root = write_classification_wds(tmp_path / "ds", per_shard=50, n=6)
    shard = root / "test" / "0.tar"
    with tarfile.open(shard, "a") as archive:  # one more sample whose image is garbage
        for name, payload in (("s9999999.png", b"not an image"), ("s9999999.cls", b"2")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    data = wds_dataset(root)
    result = evaluate(tiny_loaded, data, ["photo"], EmbedSettings(workers=0), cache=False)
    assert len(data) == 7 and result.skipped[0][0].endswith("s9999999.png")
    assert result.skipped[0][1].startswith("not_an_image")
    assert int(result.results[0].predictions[-1]) == -1


@pytest.mark.parametrize("breakage, message", [
    ("no_nshards", "no test/nshards.txt"),
    ("missing_shard", "is missing"),
    ("no_classnames", "no classnames.txt"),
    ("bad_label", "out of range"),
    ("multilabel", "only classification and retrieval"),
])
def test_wds_layout_errors_are_one_line(tmp_path, breakage, message):
    root = write_classification_wds(tmp_path / "ds", per_shard=4, n=8)
    if breakage == "no_nshards":
        (root / "test" / "nshards.txt").unlink()
    elif breakage == "missing_shard":
        (root / "test" / "1.tar").unlink()
    elif breakage == "no_classnames":
        (root / "classnames.txt").unlink()
    elif breakage == "bad_label":
        (root / "classnames.txt").write_text("red\ngreen\n")
    else:
        (root / "dataset_type.txt").write_text("multilabel\n")
    with pytest.raises(UsageError) as info:
        wds_dataset(root)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_wds_split_option_and_hint(tmp_path):
    root = write_classification_wds(tmp_path / "ds", n=4)
    (root / "test").rename(root / "validation")
    with pytest.raises(UsageError, match="splits here: validation; choose one with --split"):
        wds_dataset(root)
    assert len(load_dataset("wds", root, split="validation")) == 4
    with pytest.raises(UsageError, match="reads a local folder; download the dataset first"):
        wds_dataset("https://huggingface.co/datasets/djghosh/wds_cars_test/tree/main")


# ------------------------------------------------------------------------------------ retrieval


def test_retrieval_metrics_known_case():
    # 3 images, 4 texts (image 0 has two captions). scores[text, image].
    scores = torch.tensor([
        [0.9, 0.1, 0.0],  # text 0 -> image 0: rank 1
        [0.2, 0.8, 0.1],  # text 1 -> image 0: rank 2
        [0.1, 0.2, 0.3],  # text 2 -> image 1: rank 2
        [0.0, 0.1, 0.9],  # text 3 -> image 2: rank 1
    ])
    owners = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(scores, owners, ks=(1, 2, 10))
    assert m["image_retrieval_recall@1"] == 0.5 and m["image_retrieval_recall@2"] == 1.0
    # image 0's best text is text 0 (its own); image 1's best is text 1 (not its own), second text 2.
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3) and m["text_retrieval_recall@2"] == 1.0
    assert m["image_retrieval_recall@10"] == 1.0  # k beyond the candidates: all of them
    invalid = retrieval_metrics(scores, owners, torch.tensor([True, True, False]), ks=(10,))
    assert invalid["image_retrieval_recall@10"] == 0.75 and invalid["text_retrieval_recall@10"] == pytest.approx(2 / 3)


def test_retrieval_equals_clip_benchmark_on_wds(ret_wds, tiny_loaded):
    """recall@1/5/10 both ways equal CLIP_benchmark's zeroshot_retrieval.evaluate (fp32)."""
    from clip_benchmark.datasets.builder import build_wds_dataset, image_captions_collate_fn
    from clip_benchmark.metrics.zeroshot_retrieval import evaluate as cb_evaluate

    data = wds_dataset(ret_wds)
    assert isinstance(data, RetrievalDataset) and len(data) == 12 and len(data.texts) == 24
    ours = evaluate_retrieval(tiny_loaded, data, EmbedSettings(workers=0, batch_size=4))
    reference = build_wds_dataset("wds/x", transform=tiny_loaded.preprocess, split="test", data_dir=str(ret_wds))
    loader = torch.utils.data.DataLoader(reference, batch_size=5, num_workers=0, collate_fn=image_captions_collate_fn)
    cb = cb_evaluate(tiny_loaded.model, loader, tiny_loaded.tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    assert set(ours.metrics) == set(cb)
    assert 0 < ours.metrics["image_retrieval_recall@1"] < 1  # not degenerate
    for key, value in cb.items():
        assert ours.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_retrieval_manifest_groups_captions(tmp_path, tiny_loaded):
    """A CSV manifest (several rows per image) and the JSON Lines form give the same pairs and
    the same metrics as a direct computation from open_clip's encoders."""
    import open_clip

    images = []
    for i in range(5):
        images.append(make_image(tmp_path / "img" / f"p{i}.png", (50 * i, 255 - 40 * i, 90), size=(40 + i, 48)))
    rows = [(f"img/p{i}.png", CAPTIONS[(i + j) % 10]) for i in range(5) for j in range(1 + i % 2)]
    (tmp_path / "m.csv").write_text("path,caption\n" + "\n".join(f"{p},{c}" for p, c in rows) + "\n")
    grouped: dict[str, list[str]] = {}
    for p, c in rows:
        grouped.setdefault(p, []).append(c)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({"image": p, "caption": c}) for p, c in grouped.items()))
    a, b = caption_dataset(tmp_path / "m.csv"), caption_dataset(tmp_path / "m.jsonl")
    assert a.captions == b.captions and a.names == b.names == list(grouped)
    assert a.text_images == [i for i, p in enumerate(grouped) for _ in grouped[p]]
    ours = evaluate_retrieval(tiny_loaded, a, EmbedSettings(workers=0))

    model, pre = tiny_loaded.model, tiny_loaded.preprocess
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.stack([pre(Image.open(p)) for p in images])), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("zs-tiny")(a.texts)), dim=-1)
    owners = torch.tensor(a.text_images)
    scores = txt @ img.t()
    for k in (1, 5, 10):
        kk = min(k, 5)
        t2i = (scores.topk(kk, dim=1).indices == owners[:, None]).any(dim=1).float().mean().item()
        i2t = (owners[scores.t().topk(min(k, len(owners)), dim=1).indices] == torch.arange(5)[:, None]).any(dim=1).float().mean().item()
        assert ours.metrics[f"image_retrieval_recall@{k}"] == pytest.approx(t2i, abs=1e-6)
        assert ours.metrics[f"text_retrieval_recall@{k}"] == pytest.approx(i2t, abs=1e-6)


def test_retrieval_manifest_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("file_name,label\na.jpg,x\n")
    with pytest.raises(UsageError, match="'path' and 'caption' columns"):
        caption_dataset(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("path,caption\na.jpg,\n")
    with pytest.raises(UsageError, match="line 2: empty caption"):
        caption_dataset(tmp_path / "empty.csv")
    with pytest.raises(UsageError, match="manifest not found"):
        caption_dataset(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------ CLI


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_eval_wds_uses_dataset_templates(cls_wds, tiny_ckpt, tmp_path, tiny_loaded):
    out = tmp_path / "r.json"
    result = run("eval", "wds", cls_wds, *tiny_cli_args(tiny_ckpt), "-q", "-o", out)
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert body["dataset"] == "wds/colours" and body["images"] == 22 and body["num_templates"] == 3
    direct = evaluate(tiny_loaded, wds_dataset(cls_wds), [wds_dataset(cls_wds).templates], EmbedSettings(workers=0),
                      cache=False)
    assert body["metrics"]["acc1"] == pytest.approx(direct.acc1 if hasattr(direct, "acc1") else direct.metrics.acc1)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("template set\t") and lines[1].split("\t")[1] == "3"


def test_cli_eval_retrieval(tmp_path, ret_wds, tiny_ckpt):
    out = tmp_path / "r.json"
    result = run("eval", "wds", ret_wds, *tiny_cli_args(tiny_ckpt), "-q", "-o", out)
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert body["task"] == "zeroshot_retrieval" and body["images"] == 12 and body["texts"] == 24
    assert set(body["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    rows = dict(line.split("\t") for line in result.stdout.strip().splitlines()[1:])
    assert float(rows["image_retrieval_recall@5"]) == body["metrics"]["image_retrieval_recall@5"]

    make_image(tmp_path / "a.png", (200, 10, 10))
    make_image(tmp_path / "b.png", (10, 200, 10))
    (tmp_path / "m.csv").write_text("path,caption\na.png,red\na.png,a red thing\nb.png,green\nmissing.png,blue\n")
    result = run("eval", "retrieval", tmp_path / "m.csv", *tiny_cli_args(tiny_ckpt), "-q", "--recall-k", "1",
                 "--recall-k", "2")
    assert result.exit_code == 3, result.output  # one unreadable image: counted as a miss, exit 3
    rows = dict(line.split("\t") for line in result.stdout.strip().splitlines()[1:])
    assert set(rows) == {"image_retrieval_recall@1", "text_retrieval_recall@1", "image_retrieval_recall@2",
                         "text_retrieval_recall@2"}
    assert float(rows["text_retrieval_recall@2"]) <= 2 / 3


def test_cli_retrieval_refuses_classification_options(tmp_path, tiny_ckpt):
    (tmp_path / "m.csv").write_text("path,caption\na.png,red\n")
    result = run("eval", "retrieval", tmp_path / "m.csv", *tiny_cli_args(tiny_ckpt), "-t", "photo")
    assert result.exit_code == 2 and "--templates" in result.output


def test_retrieval_reuses_the_embedding_store_and_limits(tmp_path, tiny_loaded):
    for i in range(4):
        make_image(tmp_path / f"p{i}.png", (60 * i, 90, 200 - 40 * i), size=(44 + i, 40))
    (tmp_path / "m.csv").write_text("path,caption\n" + "".join(f"p{i}.png,{CAPTIONS[i]}\np{i}.png,{CAPTIONS[i + 4]}\n"
                                                               for i in range(4)))
    data = caption_dataset(tmp_path / "m.csv")
    first = evaluate_retrieval(tiny_loaded, data, EmbedSettings(workers=0), store=tmp_path / "store")
    again = evaluate_retrieval(tiny_loaded, data, EmbedSettings(workers=0), store=tmp_path / "store")
    assert (first.images_encoded, first.images_from_store) == (4, 0)
    assert (again.images_encoded, again.images_from_store) == (0, 4)
    assert set(again.metrics) == set(first.metrics)
    small = data.limit(2)
    assert len(small) == 2 and small.texts == [CAPTIONS[0], CAPTIONS[4], CAPTIONS[1], CAPTIONS[5]]
    assert small.text_images == [0, 0, 1, 1]


@pytest.mark.parametrize("fmt", ["PAX_FORMAT", "GNU_FORMAT", "USTAR_FORMAT"])
def test_header_scanner_equals_tarfile(tmp_path, fmt):
    """The fast shard scanner lists the same files (names, data offsets, sizes) as tarfile, for
    long names (pax records, GNU long-name headers, ustar prefixes), Unicode names and folders."""
    import tarfile

    from zeroshot.data.wds import _scan

    shard = tmp_path / "0.tar"
    names = ["s0.png", "s0.cls", "dir/" + "d" * 120 + "/s1.webp", "dir/" + "d" * 120 + "/s1.cls",
             "ünï/s2.jpg", "ünï/s2.cls", "x" * 99 + ".png"]
    if fmt == "USTAR_FORMAT":  # ustar: names only through the 155-byte prefix, ASCII
        names = [n.replace("ünï", "uni") for n in names if len(n.rpartition("/")[2]) < 100]
    with tarfile.open(shard, "w", format=getattr(tarfile, fmt)) as archive:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        for k, name in enumerate(names):
            payload = bytes([k]) * (100 + 700 * k)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    with tarfile.open(shard) as archive:
        expected = [(i.name, i.offset_data, i.size) for i in archive if i.isfile()]
    assert [tuple(e) for e in _scan(shard)] == expected
    assert len(expected) == len(names)
