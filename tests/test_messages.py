"""Messages the user sees: once, one line, naming the file or option and what to do."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.errors import ModelLoadError, UsageError


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def tiny(ckpt):
    return ["-m", "zs-tiny", "-p", ckpt, "-d", "cpu", "-t", "photo", "-j", "0"]


# -------------------------------------------------------------------------------- single label


def test_single_label_warns_exactly_once(tiny_ckpt, image_dir):
    result = run("classify", image_dir / "img2.jpg", "-l", "cat", *tiny(tiny_ckpt))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("only one label") == 1
    assert result.stderr.count("warning:") == 1


# ------------------------------------------------------------------------------ --pretrained


def classify_with(image_dir, pretrained, model="zs-tiny"):
    return run("classify", image_dir, "-l", "cat", "-l", "dog", "-m", model, "-p", pretrained, "-d", "cpu",
               "-t", "photo", "-j", "0")


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("name, content, looks", [
    ("labels.txt", b"cat\ndog\n", "it is a text file"),
    ("model.pt", b"<!DOCTYPE html><html>502 Bad Gateway</html>", "HTML page"),
    ("model.bin", b"\x00\x01\x02garbage" * 8, "unrecognised binary content"),
    ("model.pth", b"", "empty (0 bytes)"),
])
def test_a_file_that_is_no_checkpoint_says_so(image_dir, tmp_path, name, content, looks):
    path = tmp_path / name
    path.write_bytes(content)
    result = classify_with(image_dir, path)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"--pretrained {path}" in line and looks in line and "not a model checkpoint" in line
    assert "pickle" not in line
    if content:
        assert ".safetensors" in line and ".pt" in line  # what it accepts


def test_checkpoint_format_and_extension_disagree(tiny_ckpt, tiny_sigmoid_ckpt, tmp_path):
    from zeroshot.models import load_model

    torch_named_safetensors = tmp_path / "model.safetensors"
    torch_named_safetensors.write_bytes(tiny_ckpt.read_bytes())
    with pytest.raises(ModelLoadError, match=r"PyTorch \(torch.save\) file named .safetensors; rename it"):
        load_model("zs-tiny", str(torch_named_safetensors), device="cpu")
    safetensors_named_pt = tmp_path / "model.pt"
    safetensors_named_pt.write_bytes(tiny_sigmoid_ckpt.read_bytes())
    with pytest.raises(ModelLoadError, match="safetensors file named .pt; rename it to end in .safetensors"):
        load_model("zs-tiny-sigmoid", str(safetensors_named_pt), device="cpu")


@pytest.mark.parametrize("arch, fixture, difference, fits", [
    ("zs-tiny", "tiny_sigmoid_ckpt", "1 unexpected key (logit_bias)", "zs-tiny-sigmoid"),
    # open_clip would fill the missing bias with 0 and load: for inference that is made up.
    ("zs-tiny-sigmoid", "tiny_ckpt", "1 key missing (logit_bias)", "zs-tiny"),
    ("zs-tiny-wide", "tiny_ckpt", "61 size mismatches (positional_embedding [77, 64] vs [77, 96]", "zs-tiny"),
])
def test_architecture_mismatch_names_the_difference_and_the_fitting_model(request, arch, fixture, difference,
                                                                          fits):
    from zeroshot.models import load_model

    ckpt = request.getfixturevalue(fixture)
    with pytest.raises(ModelLoadError) as info:
        load_model(arch, str(ckpt), device="cpu")
    message = str(info.value)
    assert message.startswith(f"--pretrained {ckpt}: the checkpoint does not fit this architecture (--model {arch})")
    assert difference in message and message.endswith(f"its keys and shapes fit --model {fits}")
    assert "\n" not in message and "Error(s) in loading" not in message


def test_architecture_mismatch_in_the_cli(tiny_sigmoid_ckpt, image_dir):
    result = classify_with(image_dir, tiny_sigmoid_ckpt)
    assert result.exit_code == 1
    assert "fit --model zs-tiny-sigmoid" in one_error_line(result)


def test_a_checkpoint_nobody_fits_says_so(tmp_path):
    import torch

    from zeroshot.checkpoints import checkpoint_shapes, fitting_architectures
    from zeroshot.models import load_model

    from conftest import save_random_model

    path = save_random_model("zs-tiny", tmp_path / "odd.pt")
    state = torch.load(path, weights_only=True)
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    assert fitting_architectures(checkpoint_shapes(path)) == []
    with pytest.raises(ModelLoadError, match=r"1 unexpected key \(extra.weight\); no known architecture has "
                                             "exactly these keys and shapes"):
        load_model("zs-tiny", str(path), device="cpu")


def test_a_directory_is_not_a_missing_file(image_dir, tmp_path):
    folder = tmp_path / "x.pt"
    folder.mkdir()
    result = classify_with(image_dir, folder)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"--pretrained {folder}: is a directory" in line and "not found" not in line
    (folder / "open_clip_model.safetensors").write_bytes(b"")
    assert "it holds open_clip_model.safetensors" in one_error_line(classify_with(image_dir, folder))


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_pretrained_is_a_usage_error(image_dir, value):
    result = classify_with(image_dir, value)
    assert result.exit_code == 2
    assert "--pretrained is empty" in one_error_line(result)


def test_random_weights_only_from_python():
    from zeroshot.models import load_model, resolve_weights

    assert resolve_weights("zs-tiny", None).weights_id == "random-init"
    assert load_model("zs-tiny", None, device="cpu").pretrained == ""
    with pytest.raises(UsageError, match="--pretrained is empty"):
        resolve_weights("zs-tiny", " ")


# ---------------------------------------------------------------------------------- the rest


def test_templates_show_names_its_own_argument():
    result = run("templates", "show", "foo")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "templates show 'foo' is not a built-in set" in line and "--templates" not in line


def test_refused_resume_fails_before_the_model_loads(tiny_ckpt, labels_file, image_dir, tmp_path, monkeypatch):
    import zeroshot.models
    from zeroshot.output.journal import Journal, fingerprint, journal_path

    out = tmp_path / "out.csv"
    Journal.create(journal_path(out), fingerprint("zs-tiny", "w", ["x", "y"], ["{}"], 1, None, "unknown")).close()
    loads = []
    monkeypatch.setattr(zeroshot.models, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("loaded"))
    result = run("classify", image_dir, "-L", labels_file, "-m", "zs-tiny", "-p", tiny_ckpt, "-d", "cpu",
                 "-t", "photo", "-o", out, "--resume")
    assert result.exit_code == 2
    assert "--resume" in one_error_line(result) and "different" in result.stderr
    assert loads == []
