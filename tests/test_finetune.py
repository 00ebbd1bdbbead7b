"""Fine-tuning on tiny random models: reproducible, resumable, locks hold, WiSE-FT endpoints are
exact, and the saved file (safetensors + sidecar) loads alone in ``classify``."""

from __future__ import annotations

import json

import pytest
import torch

from zeroshot.errors import OutputError, UsageError
from zeroshot.models import load_model
from zeroshot.train import FinetuneSettings, finetune, load_training_data, mix_files, wise_ft
from zeroshot.train.data import read_caption_manifest

from conftest import COLOURS, cli_strict, make_image

CLASSES = ["red", "green", "blue"]
FAST = FinetuneSettings(epochs=1, batch_size=4, lr=1e-3, seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Three classes of three small images each."""
    root = tmp_path_factory.mktemp("train") / "data"
    for name, colour in zip(CLASSES, COLOURS):
        for i in range(3):
            make_image(root / name / f"{i}.png", tuple((c + 25 * i) % 256 for c in colour), size=(40, 40))
    return root


def fresh(ckpt):
    return load_model("zs-tiny", str(ckpt), device="cpu", precision="fp32")


def state(loaded):
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def equal(a, b, keys=None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys or a))


def test_same_seed_twice_gives_identical_weights(tiny_ckpt, data_dir):
    pairs = load_training_data(data_dir, templates="openai-7")
    first, second = fresh(tiny_ckpt), fresh(tiny_ckpt)
    before = state(first)
    finetune(first, pairs, None, FAST)
    finetune(second, load_training_data(data_dir, templates="openai-7"), None, FAST)
    assert equal(state(first), state(second))
    assert not equal(before, state(first))


@pytest.mark.parametrize("lock", ["image", "text"])
def test_locked_tower_does_not_change(tiny_ckpt, data_dir, lock):
    loaded = fresh(tiny_ckpt)
    before = state(loaded)
    settings = FinetuneSettings(epochs=1, batch_size=4, lr=1e-2, lock_image=lock == "image", lock_text=lock == "text")
    finetune(loaded, load_training_data(data_dir, templates="photo"), None, settings)
    after = state(loaded)
    visual = [k for k in before if k.startswith("visual.")]
    text = [k for k in before if not k.startswith("visual.") and k not in ("logit_scale", "attn_mask")]
    locked, free = (visual, text) if lock == "image" else (text, visual)
    assert equal(before, after, locked)
    assert not equal(before, after, free)
    assert not torch.equal(before["logit_scale"], after["logit_scale"])  # the temperature trains


def test_resumed_run_ends_with_the_same_weights(tiny_ckpt, data_dir, tmp_path):
    settings = FinetuneSettings(epochs=2, batch_size=4, lr=1e-3, seed=1, lock_text=True)
    whole = fresh(tiny_ckpt)
    finetune(whole, load_training_data(data_dir, templates="openai-7"), tmp_path / "a.safetensors", settings)

    out = tmp_path / "b.safetensors"
    part = fresh(tiny_ckpt)
    stopped = finetune(part, load_training_data(data_dir, templates="openai-7"), out,
                       FinetuneSettings(**{**settings.__dict__, "max_steps": 4}))
    assert stopped.stopped == "max-steps" and stopped.steps == 4 and not out.exists()
    resumed = fresh(tiny_ckpt)  # a new process would start from the pretrained weights again
    result = finetune(resumed, load_training_data(data_dir, templates="openai-7"), out, settings, resume=True)
    assert result.steps == 6 and out.exists() and not (tmp_path / "b.safetensors.ckpt").exists()
    assert equal(state(whole), state(resumed))


def test_resume_refuses_changed_settings(tiny_ckpt, data_dir, tmp_path):
    out = tmp_path / "c.safetensors"
    finetune(fresh(tiny_ckpt), load_training_data(data_dir, templates="photo"), out,
             FinetuneSettings(epochs=2, batch_size=4, max_steps=1, lock_text=True))
    with pytest.raises(UsageError, match="different settings .*batch_size"):
        finetune(fresh(tiny_ckpt), load_training_data(data_dir, templates="photo"), out,
                 FinetuneSettings(epochs=2, batch_size=3, lock_text=True), resume=True)


def test_wise_ft_endpoints_are_the_inputs_bit_for_bit(tiny_ckpt, tmp_path):
    a = state(fresh(tiny_ckpt))
    b = {k: v + 0.25 if v.is_floating_point() else v for k, v in a.items()}
    assert equal(wise_ft(a, b, 0.0), a) and equal(wise_ft(a, b, 1.0), b)
    half = wise_ft(a, b, 0.5)
    torch.testing.assert_close(half["logit_scale"], (a["logit_scale"] + b["logit_scale"]) / 2)
    with pytest.raises(UsageError, match="--alpha"):
        wise_ft(a, b, 1.5)


def test_mix_files_endpoints_and_sidecar(tiny_ckpt, data_dir, tmp_path):
    from safetensors.torch import load_file

    tuned = fresh(tiny_ckpt)
    start = tmp_path / "start.safetensors"
    from zeroshot.train.checkpoint import save_finetuned

    save_finetuned(tuned.model, start, "zs-tiny")
    finetune(tuned, load_training_data(data_dir, templates="photo"), tmp_path / "tuned.safetensors",
             FinetuneSettings(epochs=1, batch_size=4, lr=1e-2, lock_text=True))
    for alpha, same_as in ((0.0, start), (1.0, tmp_path / "tuned.safetensors")):
        out = tmp_path / f"mix{alpha}.safetensors"
        result = cli_strict("finetune", "--mix", start, tmp_path / "tuned.safetensors", "--alpha", alpha, "--out", out)
        assert result.exit_code == 0, result.output
        assert equal(load_file(str(out)), load_file(str(same_as)))
        assert json.loads((tmp_path / f"mix{alpha}.safetensors.json").read_text())["architecture"] == "zs-tiny"
    with pytest.raises(UsageError, match="--alpha"):
        mix_files(start, start, -0.1, tmp_path / "x.safetensors")


def test_saved_file_classifies_alone_with_the_in_memory_probabilities(tiny_ckpt, data_dir, tmp_path):
    from zeroshot.tasks.classify import ZeroShotClassifier

    out = tmp_path / "tuned.safetensors"
    loaded = fresh(tiny_ckpt)
    finetune(loaded, load_training_data(data_dir, templates="photo"), out, FAST)
    side = json.loads((tmp_path / "tuned.safetensors.json").read_text())
    assert side["architecture"] == "zs-tiny" and side["model_config"]["embed_dim"] == 32
    assert side["training"]["settings"]["seed"] == FAST.seed and side["preprocess"]["size"] == [32, 32]

    clf = ZeroShotClassifier(CLASSES, "photo", model=loaded, cache=False)
    images = sorted(str(p) for p in data_dir.rglob("*.png"))
    expected = {p.path: p for p in clf.classify(images, top_k=3, workers=0, fast_decode=False)}
    result = cli_strict("classify", *images, "-p", out, "-l", "red", "-l", "green", "-l", "blue", "-t", "photo",
                        "-d", "cpu", "-j", "0", "-k", "3", "--format", "jsonl", "--exact-decode", "--no-cache", "-q")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(images)
    for row in rows:
        want = expected[row["path"]]
        assert row["label"] == want.label  # JSON scores are printed to 6 significant digits
        got = {p["label"]: p["score"] for p in row["predictions"]}
        assert got == pytest.approx(dict(zip(want.labels, want.scores)), abs=1e-6)


def test_model_that_disagrees_with_the_sidecar_is_one_line_error(tiny_ckpt, data_dir, tmp_path):
    from zeroshot.train.checkpoint import save_finetuned

    out = tmp_path / "w.safetensors"
    save_finetuned(fresh(tiny_ckpt).model, out, "zs-tiny")
    result = cli_strict("classify", data_dir, "-m", "zs-tiny-wide", "-p", out, "-l", "a", "-l", "b", "-d", "cpu", "-q")
    assert result.exit_code == 2
    assert "disagrees with w.safetensors.json" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_sidecar_carries_an_unregistered_architecture(tiny_ckpt, tmp_path):
    from zeroshot.train.checkpoint import save_finetuned

    loaded = fresh(tiny_ckpt)
    out = tmp_path / "custom.safetensors"
    save_finetuned(loaded.model, out, "zs-tiny")
    side = json.loads((tmp_path / "custom.safetensors.json").read_text())
    side["architecture"] = "my-private-arch"
    (tmp_path / "custom.safetensors.json").write_text(json.dumps(side))
    import open_clip

    try:
        again = load_model(None, str(out), device="cpu", precision="fp32")
        assert again.name == "my-private-arch" and "my-private-arch" in open_clip.list_models()
        assert equal(state(loaded), state(again))
    finally:  # registered for this process: leave other tests' architecture lists as they were
        paths = open_clip.factory._MODEL_CONFIG_PATHS
        paths[:] = [p for p in paths if "zeroshot-arch-" not in str(p)]
        open_clip.factory._MODEL_CONFIGS.pop("my-private-arch", None)
    assert "my-private-arch" not in open_clip.list_models()


def test_caption_manifests(tmp_path, data_dir):
    red = next(data_dir.glob("red/*.png"))
    (tmp_path / "oc.csv").write_text(f"filepath\ttitle\n{red}\ta red square\n{red}\tanother caption\n")
    pairs = read_caption_manifest(tmp_path / "oc.csv")
    assert pairs.texts == ["a red square", "another caption"] and pairs.templates is None
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "x.png", "caption": "c"}) + "\n")
    pairs = load_training_data(tmp_path / "m.jsonl")
    assert pairs.fs_paths == [str(tmp_path / "x.png")] and pairs.caption(0) == "c"
    (tmp_path / "bad.csv").write_text("path,label\nx.png,y\nz.png,w\n")
    labelled = load_training_data(tmp_path / "bad.csv", templates="photo")  # an eval-csv manifest: labels
    assert labelled.labelled and labelled.texts == ["y", "w"]
    (tmp_path / "bad2.csv").write_text("file_name,words\nx.png,y\n")
    with pytest.raises(UsageError, match=r"needs a path column .*\(found \['file_name', 'words'\]\)"):
        load_training_data(tmp_path / "bad2.csv")


def test_cli_finetune_reports_bad_images_and_scores_held_out(tiny_ckpt, data_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "red" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "ft.safetensors"
    result = cli_strict("finetune", data, "-m", "zs-tiny", "-p", tiny_ckpt, "--out", out, "-b", "4", "--epochs", "1",
                        "--lock-text", "--val-fraction", "0.3", "--templates", "photo", "--wise-ft", "0.5", "-d", "cpu")
    assert result.exit_code == 0, result.output
    assert "skipping" in result.stderr and "broken.png" in result.stderr
    assert "held-out top-1" in result.stderr and out.exists()
    side = json.loads((tmp_path / "ft.safetensors.json").read_text())
    assert side["training"]["settings"]["wise_ft"] == 0.5 and side["training"]["val_images"] == 3


@pytest.mark.parametrize("args, message", [
    (["--mix", "a.safetensors", "b.safetensors", "--alpha", "2", "--out", "{tmp}/m.safetensors"], "--alpha 2.0: must be between 0 and 1"),
    (["{data}", "--out", "{tmp}/no/such/dir/x.safetensors"], "folder {tmp}/no/such/dir does not exist"),
    (["{data}", "--out", "{tmp}/x.pt"], "name the file *.safetensors"),
    (["{data}", "--out", "{tmp}/x.safetensors", "--wise-ft", "1.5"], "--wise-ft 1.5: must be between 0 and 1"),
    (["{tmp}/missing.csv", "--out", "{tmp}/x.safetensors"], "no such file or folder"),
    (["{data}", "--out", "{tmp}/x.safetensors", "--patience", "2"], "--patience needs a held-out set"),
])
def test_bad_inputs_are_one_line_errors(tiny_ckpt, data_dir, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, data=data_dir) for a in args]
    (tmp_path / "a.safetensors").write_bytes(b"")
    result = cli_strict("finetune", *args, "-m", "zs-tiny", "-p", tiny_ckpt, "-d", "cpu")
    assert result.exit_code in (1, 2), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(tmp=tmp_path) in lines[0], lines


def test_unwritable_output_is_one_line_error(tiny_ckpt, tmp_path):
    from zeroshot.train.checkpoint import save_finetuned

    start = save_finetuned(fresh(tiny_ckpt).model, tmp_path / "s.safetensors", "zs-tiny")
    (tmp_path / "adir.safetensors").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        mix_files(start, start, 0.5, tmp_path / "adir.safetensors")
    # /proc refuses new files even to root: the write fails and nothing is left behind.
    with pytest.raises(OutputError, match="^--out /proc/x.safetensors: cannot write"):
        mix_files(start, start, 0.5, "/proc/x.safetensors")


def test_best_held_out_epoch_is_what_gets_saved(tiny_ckpt, data_dir, tmp_path):
    from safetensors.torch import load_file

    from zeroshot.train import Hooks

    loaded = fresh(tiny_ckpt)
    seen = {}

    def remember(stats):  # the weights at the end of every epoch, before the best is chosen
        seen[stats.epoch] = state(loaded)

    out = tmp_path / "best.safetensors"
    settings = FinetuneSettings(epochs=3, batch_size=4, lr=3e-2, lock_text=True, val_fraction=0.3, patience=1, seed=2)
    result = finetune(loaded, load_training_data(data_dir, templates="photo"), out, settings, hooks=Hooks(on_epoch=remember))
    accuracies = [h.accuracy for h in result.history]
    assert result.best_accuracy == max(accuracies) and result.best_epoch == 1 + accuracies.index(max(accuracies))
    assert equal(load_file(str(out)), seen[result.best_epoch])
    assert result.stopped == ("early-stopped" if len(result.history) < 3 else "finished")


def test_sigmoid_model_trains_its_bias(tiny_sigmoid_ckpt, data_dir):
    loaded = load_model("zs-tiny-sigmoid", str(tiny_sigmoid_ckpt), device="cpu", precision="fp32")
    before = state(loaded)
    finetune(loaded, load_training_data(data_dir, templates="photo"), None,
             FinetuneSettings(epochs=1, batch_size=4, lr=1e-2, lock_text=True, lock_image=True))
    after = state(loaded)
    assert not torch.equal(before["logit_bias"], after["logit_bias"])
    assert equal(before, after, [k for k in before if k not in ("logit_bias", "logit_scale")])


def test_caption_manifest_with_accumulation_and_checkpointing(tiny_ckpt, data_dir, tmp_path):
    """A TSV in open_clip_train's format (repeated captions are positives of each other);
    gradient checkpointing changes memory, not the result."""
    images = sorted(data_dir.rglob("*.png"))[:5]
    lines = [f"{p}\ta {p.parent.name} square" for p in images]
    (tmp_path / "train.tsv").write_text("filepath\ttitle\n" + "\n".join(lines) + "\n")
    pairs = load_training_data(tmp_path / "train.tsv")
    assert not pairs.labelled and pairs.caption(0) == "a blue square"
    settings = FinetuneSettings(epochs=1, batch_size=2, accum=2, lr=1e-3, lock_text=True)
    plain, checkpointed = fresh(tiny_ckpt), fresh(tiny_ckpt)
    result = finetune(plain, pairs, None, settings)
    assert result.steps == 2  # 3 batches of 2 (the last of 1), 2 per optimiser step
    finetune(checkpointed, load_training_data(tmp_path / "train.tsv"), None,
             FinetuneSettings(**{**settings.__dict__, "grad_checkpointing": True}))
    for key, value in state(plain).items():
        torch.testing.assert_close(state(checkpointed)[key], value, rtol=0, atol=1e-6)


def test_ctrl_c_checkpoints_the_last_step_and_resume_finishes_the_same(tiny_ckpt, data_dir, tmp_path):
    from zeroshot.train import Hooks

    settings = FinetuneSettings(epochs=1, batch_size=4, lr=1e-3, lock_text=True, checkpoint_every=0)
    whole = fresh(tiny_ckpt)
    finetune(whole, load_training_data(data_dir, templates="photo"), None, settings)

    def interrupt(info):
        if info.step == 2:
            raise KeyboardInterrupt

    out = tmp_path / "i.safetensors"
    with pytest.raises(KeyboardInterrupt):
        finetune(fresh(tiny_ckpt), load_training_data(data_dir, templates="photo"), out, settings,
                 hooks=Hooks(on_step=interrupt))
    assert (tmp_path / "i.safetensors.ckpt").exists() and not out.exists()
    resumed = fresh(tiny_ckpt)
    result = finetune(resumed, load_training_data(data_dir, templates="photo"), out, settings, resume=True)
    assert result.steps == 3 and equal(state(whole), state(resumed))


def test_cli_random_init_is_seeded(data_dir, tmp_path):
    """``--pretrained none --seed N``: the random starting weights come from the seed too."""
    from safetensors.torch import load_file

    outs = [tmp_path / f"{name}.safetensors" for name in ("a", "b")]
    for out in outs:
        result = cli_strict("finetune", data_dir, "-m", "zs-tiny", "-p", "none", "--seed", "5", "--out", out, "-b", "4",
                            "--epochs", "1", "--lr", "1e-3", "--templates", "photo", "-d", "cpu")
        assert result.exit_code == 0, result.output
    assert equal(load_file(str(outs[0])), load_file(str(outs[1])))
