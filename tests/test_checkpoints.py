"""Loading model weights (design.md section 5, #25-#27): a malicious pickle never runs, bad or
truncated checkpoints and cached weights are one-line errors, an offline cold cache fails fast."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from zeroshot.errors import ModelLoadError

# --------------------------------------------------------------------- #25-#27 model loading


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_25_malicious_pickle_checkpoint_does_not_run(tmp_path):
    from zeroshot.models import load_model

    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Payload(marker)}, ckpt)
    with pytest.raises(ModelLoadError) as info:
        load_model("zs-tiny", str(ckpt), device="cpu")
    assert not marker.exists()
    assert "\n" not in str(info.value) and "unsafe pickle" in str(info.value)
    # A bare pickle (not a torch zip) carrying the payload.
    raw = tmp_path / "evil.bin"
    import pickle

    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelLoadError):
        load_model("zs-tiny", str(raw), device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["not-a-state-dict", "other-architecture", "garbage", "truncated-safetensors"])
def test_25_27_bad_checkpoints_are_one_line_errors(tiny_ckpt, tmp_path, kind):
    from zeroshot.models import load_model

    if kind == "not-a-state-dict":
        path = tmp_path / "list.pt"
        torch.save([torch.zeros(2), torch.ones(3)], path)
    elif kind == "other-architecture":
        from conftest import save_random_model

        path = save_random_model("zs-tiny-wide", tmp_path / "wide.pt")
    elif kind == "garbage":
        path = tmp_path / "garbage.pt"
        path.write_bytes(b"<html>502 Bad Gateway</html>")
    else:
        from conftest import save_random_model

        full = save_random_model("zs-tiny", tmp_path / "full.safetensors")
        path = tmp_path / "cut.safetensors"
        path.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    with pytest.raises(ModelLoadError) as info:
        load_model("zs-tiny", str(path), device="cpu")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_26_offline_cold_cache_fails_fast(tmp_path, monkeypatch):
    from zeroshot.models import load_model

    monkeypatch.setenv("HF_HOME", str(tmp_path / "cold"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model("RN50", "openai", device="cpu")
    assert time.perf_counter() - started < 5
    assert "not in the local cache" in str(info.value) and "--pretrained FILE" in str(info.value)
    assert "\n" not in str(info.value)


def test_27_truncated_cached_weights(tiny_ckpt, tmp_path, monkeypatch):
    """A weights file cut short in the Hugging Face cache (interrupted download)."""
    import open_clip.pretrained as pretrained_module

    from zeroshot.models import load_model

    repo = "zeroshot-test/zs-tiny-weights"
    monkeypatch.setitem(pretrained_module._PRETRAINED, "zs-tiny",
                        {"cut": pretrained_module._pcfg(hf_hub=f"{repo}/", quick_gelu=False)})
    hub = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text(revision)
    snapshot = hub / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(tiny_ckpt.read_bytes()[:30_000])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelLoadError) as info:
        load_model("zs-tiny", "cut", device="cpu")
    assert "\n" not in str(info.value)
    assert "truncated or corrupt" in str(info.value) or "not in the local cache" not in str(info.value)
