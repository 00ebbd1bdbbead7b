"""Contrastive fine-tuning of an open_clip model on image/caption pairs (FLYP: fine-tune like you
pretrain), with a held-out zero-shot score per epoch, early stopping, resumable checkpoints and
WiSE-FT weight mixing.

    from zeroshot.models import load_model
    from zeroshot.train import FinetuneSettings, finetune, load_training_data
    loaded = load_model("ViT-B-32", "openai")
    pairs = load_training_data("photos_by_class/", templates="openai-7")
    result = finetune(loaded, pairs, "tuned.safetensors", FinetuneSettings(epochs=5, val_fraction=0.1))

The loss is CLIP's symmetric cross-entropy (or SigLIP's sigmoid loss for models with a logit
bias) with repeated captions counted as positives (:mod:`zeroshot.train.loss`). AdamW with
no weight decay on gains, biases and the temperature; linear warm-up then cosine decay; the
temperature ``exp(t)`` clamped to at most 100 after every step, as CLIP does. Gradient
accumulation sums the gradients of ``accum`` micro-batches (negatives come from the same
micro-batch, so it is not the same as a larger contrastive batch).

Determinism: with the same seed on the CPU the weights come out identical (seeded data order,
caption templates and augmentation per image, deterministic algorithms); an interrupted run
resumed from its checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.decode import DEFAULT_MAX_PIXELS
from ..encode.embed import EmbedSettings, embed_images
from ..encode.text import build_class_weights
from ..errors import UsageError
from ..models import LoadedModel
from .checkpoint import (
    check_output,
    load_training_state,
    restore_rng,
    rng_states,
    save_finetuned,
    save_training_state,
    wise_ft,
)
from .data import PairImages, TrainPairs, collate_pairs
from .loss import caption_groups, contrastive_loss
from .schedule import make_scheduler, param_groups

MAX_LOG_SCALE = math.log(100)


@dataclass(frozen=True)
class FinetuneSettings:
    """How to fine-tune. ``warmup`` and ``checkpoint_every`` count optimiser steps (a step is
    ``accum`` batches); ``checkpoint_every=0`` checkpoints at epoch ends only. ``max_steps``
    stops after that many optimiser steps in total, checkpointed, for a later ``resume``.
    ``patience``: stop after this many epochs without a better held-out accuracy."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup: int = 0
    accum: int = 1
    lock_image: bool = False
    lock_text: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    val_fraction: float = 0.0
    patience: int | None = None
    augment: bool = True
    multi_positive: bool = True
    wise_ft: float | None = None
    workers: int = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    checkpoint_every: int = 0
    max_steps: int | None = None

    def check(self) -> None:
        for name in ("epochs", "batch_size", "accum"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup < 0:
            raise UsageError("--lr must be > 0, --weight-decay and --warmup >= 0")
        if self.wise_ft is not None and not 0.0 <= self.wise_ft <= 1.0:
            raise UsageError(f"--wise-ft {self.wise_ft}: must be between 0 and 1 (0 = starting weights, 1 = fine-tuned)")
        if self.patience is not None and self.patience < 1:
            raise UsageError(f"--patience {self.patience}: must be at least 1")


@dataclass
class EpochStats:
    """One epoch: mean training loss, held-out top-1 (None without a held-out set), held-out
    ``[correct, images]`` per class (classes with held-out images), and ``score``, the value the
    kept epoch is chosen by (see :func:`finetune`'s ``select``; None = not eligible)."""

    epoch: int
    loss: float
    accuracy: float | None
    seconds: float
    per_class: dict[str, list[int]] = field(default_factory=dict)
    score: float | None = None

    def group_accuracy(self, classes: Iterable[str]) -> float:
        """Held-out top-1 over the images of ``classes`` (NaN when none of them has images)."""
        counts = [self.per_class[c] for c in classes if c in self.per_class]
        images = sum(n for _, n in counts)
        return sum(c for c, _ in counts) / images if images else float("nan")


Select = Callable[[EpochStats], float | None]
"""Chooses the kept epoch: the epoch with the highest value is kept; None = not eligible."""


def held_out_top1(stats: EpochStats) -> float | None:
    """The default ``select``: held-out top-1 over all held-out images."""
    return stats.accuracy


def best_of_among(score_classes: Iterable[str], floor_classes: Iterable[str], floor: float) -> Select:
    """A ``select`` rule: top-1 on ``score_classes`` among the epochs whose top-1 on
    ``floor_classes`` is at least ``floor`` (e.g. the best top-1 on held-out classes among the
    epochs that reach 90% on the trained ones)."""
    score_set, floor_set = tuple(score_classes), tuple(floor_classes)

    def select(stats: EpochStats) -> float | None:
        reached = stats.group_accuracy(floor_set)
        return stats.group_accuracy(score_set) if reached >= floor else None

    return select


@dataclass
class StepInfo:
    """Progress of a run, for a progress bar: optimiser step within the epoch and overall."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    images: int


@dataclass
class FinetuneResult:
    output: Path | None
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_accuracy: float | None = None
    start_accuracy: float | None = None
    steps: int = 0
    stopped: str = "finished"  # finished | early-stopped | max-steps
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class Hooks:
    """Callbacks of a run (all optional): each optimiser step, each epoch, each unusable image."""

    on_step: Callable[[StepInfo], None] | None = None
    on_epoch: Callable[[EpochStats], None] | None = None
    on_skip: Callable[[str, str], None] | None = None


# ------------------------------------------------------------------------------------ helpers


def default_checkpoint(out: Path) -> Path:
    """Where a run's resumable checkpoint lives: ``OUT.ckpt`` beside the output."""
    return out.with_name(out.name + ".ckpt")


def train_transform(net: torch.nn.Module, augment: bool, eval_transform: Callable) -> Callable:
    """open_clip's training transform for the model's preprocessing (random resized crop), or
    the inference transform when ``augment`` is off."""
    if not augment:
        return eval_transform
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from .checkpoint import preprocess_of

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in preprocess_of(net).items()
           if k in PreprocessCfg.__dataclass_fields__}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=True)


def prepare_model(net: torch.nn.Module, settings: FinetuneSettings) -> None:
    """Trainable parameters, locked towers (LiT) and gradient checkpointing."""
    for param in net.parameters():
        param.requires_grad_(True)
    if settings.lock_image:
        if not hasattr(net, "lock_image_tower"):
            raise UsageError("--lock-image: this model has no image tower to lock")
        net.lock_image_tower()
    if settings.lock_text:
        if not hasattr(net, "lock_text_tower"):
            raise UsageError("--lock-text: this model has no text tower to lock")
        net.lock_text_tower()
    if settings.grad_checkpointing:
        net.set_grad_checkpointing(True)
    if not any(p.requires_grad for p in net.parameters()):
        raise UsageError("nothing to train: every parameter is locked")


def held_out_counts(loaded: LoadedModel, pairs: TrainPairs, settings: FinetuneSettings,
                    on_skip: Callable[[str, str], None] | None = None) -> dict[str, list[int]]:
    """``[correct, images]`` per text of ``pairs``, each image classified among
    ``pairs.classes`` (every class of a labelled set, or the distinct captions; class names go
    through the templates) with the model as it is now."""
    classes = pairs.classes
    index = {c: i for i, c in enumerate(classes)}
    loaded.model.eval()
    weights = build_class_weights(loaded, classes, pairs.templates or ("{}",), cache=None)
    counts: dict[str, list[int]] = {}
    embed = EmbedSettings(batch_size=settings.batch_size, workers=settings.workers, max_pixels=settings.max_pixels)
    for batch in embed_images(loaded, pairs.sources(), embed):
        for i, reason in batch.errors:
            if on_skip:
                on_skip(pairs.names[i], reason)
        if batch.embeddings is None:
            continue
        predicted = (batch.embeddings.float() @ weights.float().T).argmax(dim=1).tolist()
        for i, p in zip(batch.indices, predicted):
            count = counts.setdefault(pairs.texts[i], [0, 0])
            count[0] += index[pairs.texts[i]] == p
            count[1] += 1
    return counts


def _top1(counts: dict[str, list[int]]) -> float:
    images = sum(n for _, n in counts.values())
    return sum(c for c, _ in counts.values()) / images if images else float("nan")


def zero_shot_accuracy(loaded: LoadedModel, pairs: TrainPairs, settings: FinetuneSettings,
                       on_skip: Callable[[str, str], None] | None = None) -> float:
    """Top-1 of ``pairs`` classified among ``pairs.classes`` with the model as it is now."""
    return _top1(held_out_counts(loaded, pairs, settings, on_skip))


def _epoch_batches(n: int, settings: FinetuneSettings, epoch: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(settings.seed * 1_000_003 + epoch).shuffle(order)
    return [order[s:s + settings.batch_size] for s in range(0, n, settings.batch_size)]


def _captions(pairs: TrainPairs, indices: list[int], settings: FinetuneSettings, epoch: int, batch: int) -> list[str]:
    rng = random.Random(f"{settings.seed}:{epoch}:{batch}")
    return [pairs.caption(i, rng) for i in indices]


def _clone_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


# ---------------------------------------------------------------------------------- the loop


class _Run:
    """One fine-tuning run's state (what a checkpoint holds)."""

    def __init__(self, loaded: LoadedModel, train: TrainPairs, val: TrainPairs | None, settings: FinetuneSettings,
                 hooks: Hooks, checkpoint: Path | None, select: Select = held_out_top1) -> None:
        self.loaded, self.net, self.train, self.val = loaded, loaded.model, train, val
        self.settings, self.hooks, self.checkpoint, self.select = settings, hooks, checkpoint, select
        self.batches_per_epoch = math.ceil(len(train) / settings.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / settings.accum)
        self.total_steps = self.steps_per_epoch * settings.epochs
        self.optimizer = torch.optim.AdamW(param_groups(self.net, settings.weight_decay), lr=settings.lr,
                                           betas=(0.9, 0.98), eps=1e-6)
        self.scheduler = make_scheduler(self.optimizer, settings.lr, settings.warmup, self.total_steps)
        self.epoch = 0
        self.step_in_epoch = 0
        self.step = 0
        self.history: list[EpochStats] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.best_accuracy: float | None = None
        self.start_accuracy: float | None = None
        self.bad_epochs = 0
        self.loss_sum = 0.0
        self.loss_count = 0
        self.skipped: dict[str, str] = {}

    # -- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": rng_states(), "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch, "step": self.step,
            "history": [asdict(h) for h in self.history], "best_state": self.best_state,
            "best_epoch": self.best_epoch, "best_accuracy": self.best_accuracy, "start_accuracy": self.start_accuracy,
            "bad_epochs": self.bad_epochs, "loss_sum": self.loss_sum, "loss_count": self.loss_count,
            "skipped": self.skipped, "settings": asdict(self.settings), "train_size": len(self.train),
        }

    def save(self) -> None:
        if self.checkpoint is not None:
            save_training_state(self.checkpoint, self.state())

    def restore(self, state: dict[str, Any]) -> None:
        mine = asdict(self.settings)
        theirs = state.get("settings", {})
        changed = [k for k in ("batch_size", "accum", "epochs", "lr", "seed", "lock_image", "lock_text", "val_fraction",
                               "weight_decay", "warmup", "augment", "multi_positive") if theirs.get(k) != mine[k]]
        if changed or state.get("train_size") != len(self.train):
            what = ", ".join(changed) or "the training data"
            raise UsageError(f"--resume: the checkpoint was written with different settings ({what}); "
                             "rerun with the same options, or without --resume to start over")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        for name in ("epoch", "step_in_epoch", "step", "best_state", "best_epoch", "best_accuracy", "start_accuracy",
                     "bad_epochs", "loss_sum", "loss_count", "skipped"):
            setattr(self, name, state[name])
        self.history = [EpochStats(**h) for h in state["history"]]
        self.train.errors.update(self.skipped)

    # -- steps
    def _skip(self, name: str, reason: str) -> None:
        if name not in self.skipped:
            self.skipped[name] = reason
            self.train.errors[name] = reason
            if self.hooks.on_skip:
                self.hooks.on_skip(name, reason)

    def _micro_step(self, indices: list[int], pixels: torch.Tensor, captions: list[str]) -> float:
        loaded = self.loaded
        tokens = loaded.tokenizer(captions).to(loaded.device)
        ids = caption_groups(captions) if self.settings.multi_positive else None
        with loaded.autocast():
            image = self.net.encode_image(pixels.to(loaded.device, non_blocking=True), normalize=True)
            text = self.net.encode_text(tokens, normalize=True)
            loss = contrastive_loss(self.net, image, text, ids)
        (loss / self.settings.accum).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        with torch.no_grad():
            self.net.logit_scale.clamp_(0, MAX_LOG_SCALE)
        self.step += 1
        self.step_in_epoch += 1

    def run_epoch(self, dataset: PairImages) -> bool:
        """Train one epoch from the current position; False when stopped by ``max_steps``."""
        settings = self.settings
        batches = _epoch_batches(len(self.train), settings, self.epoch)
        first = self.step_in_epoch * settings.accum
        dataset.epoch = self.epoch
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches[first:], num_workers=settings.workers,
                                             collate_fn=collate_pairs,
                                             persistent_workers=False)
        self.net.train()
        pending = 0
        images = 0
        for offset, (indices, pixels, errors) in enumerate(loader):
            number = first + offset
            for i, reason in errors:
                self._skip(self.train.names[i], reason)
            if pixels is not None:
                captions = _captions(self.train, indices, settings, self.epoch, number)
                loss = self._micro_step(indices, pixels, captions)
                self.loss_sum += loss * len(indices)
                self.loss_count += len(indices)
                images += len(indices)
            pending += 1
            if pending == settings.accum or number == len(batches) - 1:
                pending = 0
                self._optimizer_step()
                if self.hooks.on_step:
                    self.hooks.on_step(StepInfo(self.epoch + 1, settings.epochs, self.step_in_epoch, self.steps_per_epoch,
                                                self.loss_sum / max(1, self.loss_count), images))
                if settings.max_steps is not None and self.step >= settings.max_steps:
                    self.save()
                    return False
                if settings.checkpoint_every and self.step % settings.checkpoint_every == 0:
                    self.save()
        return True

    def end_epoch(self, seconds: float) -> bool:
        """Score the epoch, keep the best weights; False when early stopping says stop."""
        stats = EpochStats(self.epoch + 1, self.loss_sum / max(1, self.loss_count), None, seconds)
        if self.val is not None:
            stats.per_class = held_out_counts(self.loaded, self.val, self.settings, self._skip_val)
            stats.accuracy = _top1(stats.per_class)
            stats.score = self.select(stats)
        self.history.append(stats)
        if self.hooks.on_epoch:
            self.hooks.on_epoch(stats)
        score = stats.score
        if score is not None and (self.best_accuracy is None or score > self.best_accuracy):
            self.best_state, self.best_epoch, self.best_accuracy, self.bad_epochs = \
                _clone_state(self.net), stats.epoch, score, 0
        elif score is not None:
            self.bad_epochs += 1
        self.epoch += 1
        self.step_in_epoch = 0
        self.loss_sum, self.loss_count = 0.0, 0
        patience = self.settings.patience
        return not (patience is not None and self.bad_epochs >= patience)

    def _skip_val(self, name: str, reason: str) -> None:
        if self.hooks.on_skip and name not in self.skipped:
            self.skipped[name] = reason
            self.hooks.on_skip(name, reason)


def finetune(
    loaded: LoadedModel,
    train: TrainPairs,
    out: str | os.PathLike | None,
    settings: FinetuneSettings = FinetuneSettings(),
    val: TrainPairs | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    hooks: Hooks | None = None,
    select: Select = held_out_top1,
) -> FinetuneResult:
    """Fine-tune ``loaded.model`` in place on ``train`` and save it to ``out`` (safetensors +
    ``out.json`` sidecar; None saves nothing). ``val`` (or ``settings.val_fraction`` of
    ``train``) is scored as zero-shot top-1 after every epoch and the best epoch is kept.
    ``checkpoint`` (default ``out.ckpt``) receives the resumable state at epoch ends, every
    ``checkpoint_every`` steps and when ``max_steps`` stops the run; ``resume`` continues from it.
    The finished run deletes the checkpoint. After the call ``loaded.model`` holds the saved
    weights, in eval mode.

    ``select`` picks the kept epoch from each epoch's :class:`EpochStats` (held-out top-1 overall
    and ``[correct, images]`` per class): the highest value wins, None makes an epoch
    ineligible (such epochs neither count toward ``patience`` nor get kept); default: held-out
    top-1. :func:`best_of_among` builds the rule "best top-1 on these classes among the epochs
    reaching X on those". With no eligible epoch the last one is saved.
    ``result.best_accuracy`` is the kept epoch's ``select`` value."""
    settings.check()
    hooks = hooks or Hooks()
    target = check_output(out) if out is not None else None
    arch = _arch_of(loaded) if target is not None else loaded.name  # refused before any training
    ckpt = Path(checkpoint) if checkpoint is not None else (default_checkpoint(target) if target else None)
    if resume and ckpt is None:
        raise UsageError("--resume needs --out (the checkpoint is OUT.ckpt) or a checkpoint path")
    if loaded.precision == "fp16":
        raise UsageError("fine-tuning runs in fp32 or bf16 autocast; use --precision bf16 (or fp32)")
    if getattr(loaded, "reduced", None) is not None:  # a bf16 copy of the weights would go stale as they train
        raise UsageError("fine-tuning on a CPU trains fp32 weights: load the model with precision='fp32'")
    if val is None and settings.val_fraction:
        train, val = train.split(settings.val_fraction, settings.seed)
    if len(train) < 2:
        raise UsageError(f"{train.source or 'DATA'}: {len(train)} training image(s); contrastive training needs at least 2")

    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    net = loaded.model
    start = _clone_state(net) if settings.wise_ft is not None else None
    try:
        prepare_model(net, settings)
        run = _Run(loaded, train, val, settings, hooks, ckpt, select)
        if resume:
            run.restore(load_training_state(ckpt))
        elif val is not None:
            run.start_accuracy = zero_shot_accuracy(loaded, val, settings, run._skip_val)
        dataset = PairImages(train, train_transform(net, settings.augment, loaded.preprocess), settings.seed,
                             settings.max_pixels)
        stopped = _loop(run, dataset)
        result = FinetuneResult(None, run.history, run.best_epoch, run.best_accuracy, run.start_accuracy, run.step,
                                stopped, dict(run.skipped))
        if stopped == "max-steps":
            return result
        if run.best_state is not None:
            net.load_state_dict(run.best_state)
        else:
            result.best_epoch = run.history[-1].epoch if run.history else None
        final = _clone_state(net)
        if start is not None:
            final = wise_ft(start, final, settings.wise_ft)
            net.load_state_dict(final)
        if target is not None:
            provenance = {
                "base": {"model": loaded.name, "pretrained": loaded.pretrained, "weights_id": loaded.weights_id},
                "data": train.source, "train_images": len(train), "val_images": len(val) if val is not None else 0,
                "settings": asdict(settings), "epochs_run": len(run.history), "best_epoch": result.best_epoch,
                "start_accuracy": run.start_accuracy, "best_accuracy": run.best_accuracy,
                "history": [{k: v for k, v in asdict(h).items() if k != "per_class"} for h in run.history],
                "stopped": stopped, "steps": run.step,
            }
            result.output = save_finetuned(net, target, arch, provenance, state=final)
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()
        return result
    finally:
        net.eval()
        for param in net.parameters():
            param.requires_grad_(False)
        if settings.grad_checkpointing and hasattr(net, "set_grad_checkpointing"):
            net.set_grad_checkpointing(False)
        torch.use_deterministic_algorithms(deterministic)


def _loop(run: _Run, dataset: PairImages) -> str:
    """Epochs until done, early-stopped or ``max_steps``; Ctrl-C checkpoints the last step first."""
    epochs = run.settings.epochs
    try:
        while run.epoch < epochs:
            started = time.perf_counter()
            if not run.run_epoch(dataset):
                return "max-steps"
            if not run.end_epoch(time.perf_counter() - started) and run.epoch < epochs:
                return "early-stopped"
            if run.epoch < epochs:
                run.save()
    except KeyboardInterrupt:
        run.optimizer.zero_grad(set_to_none=True)
        run.save()
        raise
    return "finished"


def _arch_of(loaded: LoadedModel) -> str:
    """The open_clip architecture name of a loaded model (hf-hub models are not supported)."""
    from ..models import HF_HUB_PREFIX, resolve_weights

    if loaded.name.startswith(HF_HUB_PREFIX):
        raise UsageError(f"{loaded.name}: fine-tuning hf-hub models is not supported; use an open_clip architecture name")
    try:
        return resolve_weights(loaded.name, None).arch
    except UsageError:
        return loaded.name
