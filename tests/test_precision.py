"""Reduced precision (design.md section 5, #30): bf16 autocast on CPU, and fp16/bf16 on a CUDA GPU,
agree with fp32 on the top-1 label (unless it is a near tie) and never give NaN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zeroshot.tasks.classify import ZeroShotClassifier

from conftest import LABELS, make_image

# ---------------------------------------------------------------------- #30 reduced precision


def _fixed_set(tmp_path) -> list[Path]:
    from conftest import COLOURS

    return [make_image(tmp_path / f"{i}.png", colour, size=(48 + 8 * i, 40)) for i, colour in enumerate(COLOURS * 2)]


def test_30_bf16_autocast_on_cpu_matches_fp32_top1(tiny_ckpt, tmp_path):
    from zeroshot.models import load_model

    paths = _fixed_set(tmp_path)
    results = {}
    for precision in ("fp32", "bf16"):
        loaded = load_model("zs-tiny", str(tiny_ckpt), device="cpu", precision=precision)
        model = ZeroShotClassifier(LABELS, templates="photo", model=loaded, cache=False)
        results[precision] = list(model.classify_paths([str(p) for p in paths], workers=0, top_k=3))
    for a, b in zip(results["fp32"], results["bf16"]):
        assert not any(s != s for s in b.scores)  # no NaN
        # random tiny weights give near-uniform scores; require the same top-1 unless it is a near tie
        if a.scores[0] - a.scores[1] > 0.02:
            assert a.label == b.label
        assert b.scores == pytest.approx(a.scores, abs=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (fp16 is GPU-only)")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_30_gpu_reduced_precision_matches_fp32_top1(tiny_ckpt, tmp_path, precision):
    from zeroshot.models import load_model

    paths = _fixed_set(tmp_path)
    out = {}
    for p in ("fp32", precision):
        loaded = load_model("zs-tiny", str(tiny_ckpt), device="cuda", precision=p)
        out[p] = list(ZeroShotClassifier(LABELS, templates="photo", model=loaded, cache=False)
                      .classify_paths([str(x) for x in paths], workers=0, top_k=3))
    for a, b in zip(out["fp32"], out[precision]):
        assert not any(s != s for s in b.scores)
        if a.scores[0] - a.scores[1] > 0.02:
            assert a.label == b.label
