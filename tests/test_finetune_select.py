"""Fine-tuning's held-out scoring and epoch selection: a labelled held-out set is scored among every
class of its ``--classnames`` file (classes without images compete too), per class, and a
``select`` rule chooses the kept epoch (``best_of_among``: best top-1 on some classes among the
epochs reaching a floor on others)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zeroshot.models import load_model
from zeroshot.train import EpochStats, FinetuneSettings, Hooks, best_of_among, finetune, load_training_data
from zeroshot.train.finetune import held_out_counts

from conftest import COLOURS, cli_strict, make_image

CLASSES = ["red", "green", "blue"]
ALL = [*CLASSES, "yellow", "purple"]  # the classnames file: two classes without images


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    for name, colour in zip(CLASSES, COLOURS):
        for i in range(3):
            make_image(root / "data" / name / f"{i}.png", tuple((c + 25 * i) % 256 for c in colour), size=(40, 40))
    classnames = root / "classes.txt"
    classnames.write_text("".join(f"{c},{c}\n" for c in ALL))
    return root / "data", classnames


def fresh(ckpt):
    return load_model("zs-tiny", str(ckpt), device="cpu", precision="fp32")


def direct_predictions(loaded, paths: list[str], classes: list[str]) -> list[str]:
    """The reference: open_clip's own encoders, "a photo of a {}." prompts, argmax of the cosines."""
    from PIL import Image

    net = loaded.model
    with torch.no_grad():
        text = net.encode_text(loaded.tokenizer([f"a photo of a {c}." for c in classes]), normalize=True)
        pixels = torch.stack([loaded.preprocess(Image.open(p).convert("RGB")) for p in paths])
        image = net.encode_image(pixels, normalize=True)
    return [classes[i] for i in (image @ text.T).argmax(dim=1).tolist()]


def test_held_out_set_is_scored_among_every_listed_class(tiny_ckpt, data):
    folder, classnames = data
    pairs = load_training_data(folder, "photo", classnames)
    assert pairs.classes == ALL
    loaded = fresh(tiny_ckpt)
    counts = held_out_counts(loaded, pairs, FinetuneSettings(batch_size=4))
    expected: dict[str, list[int]] = {}
    for truth, guess in zip(pairs.texts, direct_predictions(loaded, pairs.fs_paths, ALL)):
        expected.setdefault(truth, [0, 0])
        expected[truth][0] += truth == guess
        expected[truth][1] += 1
    assert counts == expected
    assert set(counts) == set(CLASSES)


def test_group_accuracy_and_best_of_among():
    stats = EpochStats(1, 0.5, 0.5, 1.0, per_class={"a": [9, 10], "b": [1, 10], "c": [2, 4]})
    assert stats.group_accuracy(["a"]) == 0.9
    assert stats.group_accuracy(["b", "c"]) == pytest.approx(3 / 14)
    assert math.isnan(stats.group_accuracy(["zzz"]))
    rule = best_of_among(["b", "c"], ["a"], 0.9)
    assert rule(stats) == pytest.approx(3 / 14)
    assert best_of_among(["b"], ["a"], 0.95)(stats) is None


def test_select_keeps_the_best_eligible_epoch(tiny_ckpt, data, tmp_path):
    """A rule that makes odd epochs ineligible: the kept (saved) weights are those of the even
    epoch with the highest score, and the sidecar's history carries the scores."""
    from safetensors.torch import load_file

    folder, classnames = data
    loaded = fresh(tiny_ckpt)
    seen = {}

    def remember(stats):
        seen[stats.epoch] = {k: v.clone() for k, v in loaded.model.state_dict().items()}

    scores = {1: None, 2: 0.25, 3: None, 4: 0.75, 5: 0.5}
    out = tmp_path / "kept.safetensors"
    settings = FinetuneSettings(epochs=5, batch_size=4, lr=1e-2, lock_text=True, seed=1)
    result = finetune(loaded, load_training_data(folder, "photo"), out, settings,
                      val=load_training_data(folder, "photo", classnames), hooks=Hooks(on_epoch=remember),
                      select=lambda s: scores[s.epoch])
    assert (result.best_epoch, result.best_accuracy) == (4, 0.75)
    assert [h.score for h in result.history] == [scores[e] for e in range(1, 6)]
    assert all(sum(n for _, n in h.per_class.values()) == 9 for h in result.history)
    saved = load_file(str(out))
    assert all(torch.equal(saved[k], seen[4][k]) for k in saved)
    history = json.loads((tmp_path / "kept.safetensors.json").read_text())["training"]["history"]
    assert [h["score"] for h in history] == [scores[e] for e in range(1, 6)] and "per_class" not in history[0]


def test_no_eligible_epoch_saves_the_last(tiny_ckpt, data):
    folder, classnames = data
    loaded = fresh(tiny_ckpt)
    settings = FinetuneSettings(epochs=2, batch_size=4, lr=1e-2, lock_text=True, patience=1)
    result = finetune(loaded, load_training_data(folder, "photo"), None, settings,
                      val=load_training_data(folder, "photo", classnames), select=lambda s: None)
    # Ineligible epochs never count toward patience: both epochs ran.
    assert (result.best_epoch, result.best_accuracy, result.stopped, len(result.history)) == (2, None, "finished", 2)


def test_cli_val_is_scored_among_the_classnames_file(tiny_ckpt, data, tmp_path):
    folder, classnames = data
    out = tmp_path / "ft.safetensors"
    result = cli_strict("finetune", folder, "-m", "zs-tiny", "-p", tiny_ckpt, "--out", out, "-b", "4", "--epochs", "1",
                        "--lock-text", "--val", folder, "--classnames", classnames, "--templates", "photo", "-d", "cpu")
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "ft.safetensors.json").read_text())["training"]
    # The CLI's figure is the library's among all five classes.
    loaded = load_model(None, str(out), device="cpu", precision="fp32")
    counts = held_out_counts(loaded, load_training_data(folder, "photo", classnames), FinetuneSettings(batch_size=4))
    top1 = sum(c for c, _ in counts.values()) / 9
    assert side["history"][0]["accuracy"] == pytest.approx(top1)
