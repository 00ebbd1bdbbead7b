"""Few-shot regularisation chosen automatically (``--reg auto``, the default): cross-validated on the
head's own images only, weak when the shots carry information the zero-shot weights lack, strong
when the zero-shot weights are already right, and never looking at the scored images."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from zeroshot.errors import UsageError
from zeroshot.train import fewshot
from zeroshot.train.fewshot import (
    _folds,
    choose_reg,
    cross_validate,
    fit_linear,
    parse_reg,
    sample_shots,
    shots_curve,
)

from conftest import COLOURS, cli_strict, make_image

LOG_100 = float(torch.tensor(100.0).log())
SMALL_GRID = (1e-3, 0.1, 1000.0)  # three strengths keep the tests quick (the default grid: REG_GRID)


def clusters(n_per_class: int, noise: float, zero_shot_right: bool, classes: int = 4, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    x = torch.cat([means[c] + noise * torch.randn(n_per_class, dim, generator=g) for c in range(classes)])
    y = torch.arange(classes).repeat_interleave(n_per_class)
    zero_shot = means.clone() if zero_shot_right else F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    return F.normalize(x, dim=-1), y, zero_shot


def top1(x, y, w, b) -> float:
    return float(((100.0 * x @ w.T + b).argmax(1) == y).float().mean())


def test_folds_spread_every_class_and_single_shots():
    assert _folds([0, 0, 0, 0, 1, 1, 1, 1], 4) == [0, 1, 2, 3, 1, 2, 3, 0]
    assert _folds([0, 1, 2, 3, 4], 4) == [0, 1, 2, 3, 0]  # one image per class: classes spread over folds


def test_poor_zero_shot_and_clean_shots_choose_a_weak_pull():
    x, y, w_zs = clusters(24, 0.05, zero_shot_right=False)
    train = sample_shots(y.tolist(), 4, seed=0)
    test = sorted(set(range(len(y))) - set(train))
    reg, grid = choose_reg(x[train], y[train], w_zs, LOG_100, grid=SMALL_GRID)
    assert reg <= 0.1 and set(grid) == {f"{r:g}" for r in SMALL_GRID}
    w, b = fit_linear(x[train], y[train], w_zs, LOG_100, reg)
    assert top1(x[test], y[test], w, b) == 1.0 > top1(x[test], y[test], w_zs, torch.zeros(4))


def test_right_zero_shot_and_noisy_shots_choose_a_strong_pull():
    x, y, w_zs = clusters(40, 0.6, zero_shot_right=True, seed=1)
    train = sample_shots(y.tolist(), 2, seed=0)
    reg, _ = choose_reg(x[train], y[train], w_zs, LOG_100, grid=SMALL_GRID)
    w, _ = fit_linear(x[train], y[train], w_zs, LOG_100, reg)
    weak, _ = fit_linear(x[train], y[train], w_zs, LOG_100, 1e-4)
    assert reg >= 1.0
    assert (w - w_zs).norm() < 0.5 * (weak - w_zs).norm()  # the head stays by the right zero-shot weights


def test_choice_is_the_one_standard_error_rule():
    x, y, w_zs = clusters(4, 0.3, zero_shot_right=False, classes=3, seed=2)
    reg, grid = choose_reg(x, y, w_zs, LOG_100, grid=(1e-3, 0.03, 1.0, 1000.0))
    scores = {r: cross_validate(x, y, w_zs, LOG_100, r) for r in (1e-3, 0.03, 1.0, 1000.0)}
    assert grid == {f"{r:g}": list(s) for r, s in scores.items()}
    # The one-standard-error rule, written out: the strongest pull within one SE of the lowest loss.
    lowest = min(scores, key=lambda r: scores[r][1])
    assert reg == max(r for r in scores if scores[r][1] <= scores[lowest][1] + scores[lowest][2])
    # Each score is over every image held out once: top-1, mean and standard error of the cross-entropy.
    top1_, mean, se = scores[reg]
    assert 0 <= top1_ <= 1 and mean > 0 and se > 0


def test_auto_never_looks_at_the_scored_images(monkeypatch):
    """Changing the features of the images that are scored changes no chosen strength."""
    monkeypatch.setattr(fewshot, "REG_GRID", SMALL_GRID)
    x, y, w_zs = clusters(8, 0.3, zero_shot_right=False, classes=3, seed=3)
    first = shots_curve(x, y, torch.ones(len(y), dtype=torch.bool), w_zs, LOG_100, (1, 4), seed=0, reg="auto")
    # The pool is the first 4 of each class in the curve's seeded order; replace everything else.
    from zeroshot.train.fewshot import _seeded_order

    pool = {i for members in _seeded_order(y.tolist(), range(len(y)), 0).values() for i in members[:4]}
    moved = x.clone()
    scored = [i for i in range(len(y)) if i not in pool]
    moved[scored] = F.normalize(torch.randn(len(scored), x.shape[1], generator=torch.Generator().manual_seed(9)), dim=-1)
    second = shots_curve(moved, y, torch.ones(len(y), dtype=torch.bool), w_zs, LOG_100, (1, 4), seed=0, reg="auto")
    assert [r.reg for r in first] == [r.reg for r in second]
    assert all(r.reg in SMALL_GRID for r in first)


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("AUTO", "auto"), ("0.1", 0.1), (0, 0.0)])
def test_parse_reg(text, expected):
    assert parse_reg(text) == expected


@pytest.mark.parametrize("text", ["-1", "lots", "nan"])
def test_parse_reg_refuses(text):
    with pytest.raises(UsageError, match="--reg"):
        parse_reg(text)


def test_cli_auto_reg_is_recorded(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(fewshot, "REG_GRID", SMALL_GRID)
    root = tmp_path / "data"
    for name, colour in zip(["red", "green", "blue"], COLOURS):
        for i in range(4):
            make_image(root / name / f"{i}.png", tuple((c + 20 * i) % 256 for c in colour), size=(40, 40))
    out = tmp_path / "head.safetensors"
    result = cli_strict("fewshot", root, "--out", out, "-m", "zs-tiny", "-p", tiny_ckpt, "-t", "photo", "-d", "cpu",
                        "-j", "0", "--no-cache", "-q")
    assert result.exit_code == 0, result.output
    reg = json.loads((tmp_path / "head.safetensors.json").read_text())["regularisation"]
    assert reg["reg"] in SMALL_GRID and set(reg["chosen"]["grid [top-1, cross-entropy, standard error]"]) == {f"{r:g}" for r in SMALL_GRID}
    results = tmp_path / "r.json"
    result = cli_strict("eval", "folder", root, "--shots", "1,2", "-t", "photo", "-m", "zs-tiny", "-p", tiny_ckpt,
                        "-d", "cpu", "-j", "0", "--no-cache", "-o", results, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-3].endswith("\treg")
    body = json.loads(results.read_text())["fewshot"]
    assert body["reg"] == "auto" and all(r["reg"] in SMALL_GRID for r in body["results"])
    result = cli_strict("eval", "folder", root, "--shots", "1", "--reg", "much", "-m", "zs-tiny", "-p", tiny_ckpt, "-q")
    assert result.exit_code == 2 and "--reg 'much'" in result.stderr
