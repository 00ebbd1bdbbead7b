"""``zeroshot finetune``: contrastive fine-tuning (and WiSE-FT mixing) from the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import UsageError
from ..models import DEFAULT_PRETRAINED
from .console import Progress, cli_errors, printable, say, status
from .options import (
    MODEL_PANEL,
    DeviceOpt,
    HiddenOpt,
    MaxPixelsOpt,
    ModelOpt,
    Precision,
    PrecisionOpt,
    QuietOpt,
)

TRAIN_PANEL = "Training"
DATA_PANEL = "Data"
SAVE_PANEL = "Output"


def finetune(
    data: Annotated[Optional[str], typer.Argument(metavar="DATA", show_default=False,
        help="A caption manifest (CSV/TSV/JSONL with path + caption columns; open_clip's filepath/title accepted), "
             "a folder of class sub-folders, or an eval-csv manifest (path,label): class names become captions "
             "through --templates.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", rich_help_panel=SAVE_PANEL, dir_okay=False,
        help="The fine-tuned weights (.safetensors) ; OUT.json beside it names the architecture, so "
             "classify/eval/index/search take --pretrained OUT alone.")] = None,
    model: ModelOpt = None,
    pretrained: Annotated[str, typer.Option("--pretrained", "-p", envvar="ZEROSHOT_PRETRAINED", rich_help_panel=MODEL_PANEL,
        help="Starting weights: a pretrained tag, a checkpoint file, or none (random init).")] = DEFAULT_PRETRAINED,
    templates: Annotated[str, typer.Option("--templates", "-t", rich_help_panel=DATA_PANEL,
        help="Labelled data: templates that turn class names into captions (one chosen at random per image "
             "and epoch, seeded). Also used to score the held-out split.")] = "openai-7",
    classnames: Annotated[Optional[Path], typer.Option("--classnames", rich_help_panel=DATA_PANEL, dir_okay=False,
        help="Labelled data: file mapping folder (or label) -> class name. The held-out set (--val) is scored "
             "among every class listed, also those without images.")] = None,
    val: Annotated[Optional[str], typer.Option("--val", rich_help_panel=DATA_PANEL,
        help="Held-out data (same kinds as DATA) scored as zero-shot top-1 after every epoch.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, rich_help_panel=DATA_PANEL,
        help="Hold out this fraction of DATA (seeded) instead of --val; 0 = no held-out score.")] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", "-e", min=1, rich_help_panel=TRAIN_PANEL)] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, rich_help_panel=TRAIN_PANEL,
        help="Image/caption pairs per batch (the negatives of each pair).")] = 32,
    lr: Annotated[float, typer.Option("--lr", min=0.0, rich_help_panel=TRAIN_PANEL, help="Peak learning rate (AdamW).")] = 1e-5,
    weight_decay: Annotated[float, typer.Option("--weight-decay", "--wd", min=0.0, rich_help_panel=TRAIN_PANEL,
        help="AdamW weight decay (none on norms, biases, 1-D parameters and the temperature).")] = 0.1,
    warmup: Annotated[int, typer.Option("--warmup", min=0, rich_help_panel=TRAIN_PANEL,
        help="Linear warm-up steps before the cosine decay.")] = 0,
    accum: Annotated[int, typer.Option("--accum", min=1, rich_help_panel=TRAIN_PANEL,
        help="Gradient accumulation: batches per optimiser step.")] = 1,
    lock_image: Annotated[bool, typer.Option("--lock-image", rich_help_panel=TRAIN_PANEL,
        help="Freeze the image tower (LiT).")] = False,
    lock_text: Annotated[bool, typer.Option("--lock-text", rich_help_panel=TRAIN_PANEL,
        help="Freeze the text tower.")] = False,
    grad_checkpointing: Annotated[bool, typer.Option("--grad-checkpointing", rich_help_panel=TRAIN_PANEL,
        help="Recompute activations in the backward pass (less memory, slower).")] = False,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", rich_help_panel=TRAIN_PANEL,
        help="open_clip's training augmentation (random resized crop); --no-augment uses the inference transform.")] = True,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=TRAIN_PANEL,
        help="Seeds data order, captions, augmentation and initialisation (same seed on CPU = same weights).")] = 0,
    patience: Annotated[Optional[int], typer.Option("--patience", min=1, rich_help_panel=TRAIN_PANEL,
        help="Stop after this many epochs without a better held-out accuracy (needs --val or --val-fraction).")] = None,
    wise_ft: Annotated[Optional[float], typer.Option("--wise-ft", rich_help_panel=SAVE_PANEL,
        help="Save (1-ALPHA) * starting + ALPHA * fine-tuned weights (WiSE-FT; 0.5 is a good start).")] = None,
    mix: Annotated[Optional[tuple[str, str]], typer.Option("--mix", rich_help_panel=SAVE_PANEL, show_default=False,
        help="Mix two existing weight files A B instead of training: (1-ALPHA) * A + ALPHA * B into --out.")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", rich_help_panel=SAVE_PANEL,
        help="The mixing weight of --mix (0 = A, 1 = B).")] = None,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=SAVE_PANEL,
        help="Continue an interrupted run from OUT.ckpt (same options).")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=0, rich_help_panel=SAVE_PANEL,
        help="Also checkpoint every N optimiser steps (0: at epoch ends and on Ctrl-C only).")] = 100,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", min=1, rich_help_panel=SAVE_PANEL,
        help="Stop after N optimiser steps in total, checkpointed (continue with --resume).")] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, rich_help_panel=MODEL_PANEL,
        help="Image decoding processes (0: in the main process).")] = 0,
    hidden: HiddenOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a CLIP model contrastively on image/caption pairs (FLYP), or mix two weight files (WiSE-FT)."""
    started = time.perf_counter()
    hint = "; rerun with --resume to continue from the last checkpoint" if out else ""
    with cli_errors(quiet, interrupted="interrupted" + hint):
        if out is None:
            raise UsageError("--out FILE.safetensors is missing: where the weights are saved")
        if mix is not None:
            _mix(mix, alpha, out, data, quiet)
            return
        if alpha is not None:
            raise UsageError("--alpha goes with --mix A B; to mix the run's own weights use --wise-ft ALPHA")
        if data is None:
            raise UsageError("give the training DATA (a caption manifest, a class folder or an eval-csv manifest), "
                             "or --mix A B --alpha X")
        if val is not None and val_fraction:
            raise UsageError("--val and --val-fraction both give a held-out set; choose one")
        if patience is not None and val is None and not val_fraction:
            raise UsageError("--patience needs a held-out set: add --val DATA or --val-fraction 0.1")
        _train(locals(), started)


def _mix(files: tuple[str, str], alpha: float | None, out: Path, data: str | None, quiet: bool) -> None:
    from ..train.checkpoint import mix_files

    if data is not None:
        raise UsageError("--mix takes no DATA: it mixes the two files given to it")
    if alpha is None:
        raise UsageError("--mix A B needs --alpha (0 = A, 1 = B)")
    mix_files(files[0], files[1], alpha, out)
    say(f"wrote {printable(str(out))} = {1 - alpha:g} x {printable(files[0])} + {alpha:g} x {printable(files[1])}", quiet)


def _train(opts: dict, started: float) -> None:
    from ..models import load_model, resolve_weights
    from ..precision import resolve_device
    from ..prompts import resolve_templates
    from ..train.checkpoint import check_output
    from ..train.data import load_training_data
    from ..train.finetune import FinetuneSettings, Hooks, default_checkpoint, finetune

    quiet = opts["quiet"]
    out = check_output(opts["out"])
    settings = FinetuneSettings(
        epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"], weight_decay=opts["weight_decay"],
        warmup=opts["warmup"], accum=opts["accum"], lock_image=opts["lock_image"], lock_text=opts["lock_text"],
        grad_checkpointing=opts["grad_checkpointing"], seed=opts["seed"], val_fraction=opts["val_fraction"],
        patience=opts["patience"], augment=opts["augment"], wise_ft=opts["wise_ft"], workers=opts["workers"],
        max_pixels=opts["max_pixels"], checkpoint_every=opts["checkpoint_every"], max_steps=opts["max_steps"],
    )
    settings.check()
    if opts["resume"] and not default_checkpoint(out).is_file():
        raise UsageError(f"--resume: no checkpoint {default_checkpoint(out)} to continue; start without --resume")
    template_set = resolve_templates(opts["templates"])
    train = load_training_data(opts["data"], template_set, opts["classnames"], opts["hidden"])
    val = load_training_data(opts["val"], template_set, opts["classnames"], opts["hidden"], "--val") if opts["val"] else None
    pretrained = None if opts["pretrained"].strip().lower() == "none" else opts["pretrained"]
    weights = resolve_weights(opts["model"], pretrained)
    with status(f"loading {weights.name} ({pretrained or 'random init'})", quiet):
        # Training updates the fp32 weights: on a CPU, "auto" must not pick a bf16 copy of them.
        precision = opts["precision"].value
        if precision == "auto" and resolve_device(opts["device"]).type == "cpu":
            precision = "fp32"
        if pretrained is None:
            import torch

            torch.manual_seed(opts["seed"])  # --seed also fixes the random initial weights
        loaded = load_model(weights, device=opts["device"], precision=precision)
    kind = "class-name captions" if train.labelled else "captions"
    say(f"fine-tuning {weights.name} on {len(train)} images ({kind}) for {settings.epochs} epoch(s) on "
        f"{loaded.device} ({loaded.precision})", quiet)

    with Progress(quiet) as progress:
        tasks: dict[int, int] = {}

        def on_step(info) -> None:
            if info.epoch not in tasks:
                tasks[info.epoch] = progress.add_task(f"epoch {info.epoch}/{info.epochs}", total=info.steps)
            progress.update(tasks[info.epoch], info.step, info.steps, f"loss {info.loss:.4f}")

        def on_epoch(stats) -> None:
            acc = f", held-out top-1 {100 * stats.accuracy:.2f}%" if stats.accuracy is not None else ""
            progress.print(f"epoch {stats.epoch}: loss {stats.loss:.4f}{acc} ({stats.seconds:.1f}s)")

        hooks = Hooks(on_step=on_step, on_epoch=on_epoch, on_skip=progress.skipping)
        result = finetune(loaded, train, out, settings, val=val, resume=opts["resume"], hooks=hooks)

    seconds = time.perf_counter() - started
    if result.stopped == "max-steps":
        say(f"stopped after {result.steps} steps (--max-steps); checkpoint {printable(str(default_checkpoint(out)))}: "
            "rerun with --resume to continue", quiet)
        return
    parts = [f"fine-tuned in {seconds:.1f}s ({result.steps} steps)"]
    if result.best_accuracy is not None:
        start = f"{100 * result.start_accuracy:.2f}% before, " if result.start_accuracy is not None else ""
        parts.append(f"held-out top-1 {start}{100 * result.best_accuracy:.2f}% at epoch {result.best_epoch} (kept)")
    if result.stopped == "early-stopped":
        parts.append("stopped early (--patience)")
    if settings.wise_ft is not None:
        parts.append(f"WiSE-FT alpha {settings.wise_ft:g}")
    if result.skipped:
        parts.append(f"skipped {len(result.skipped)} unreadable image(s)")
    parts.append(f"wrote {printable(str(out))} and {printable(out.name)}.json")
    say("; ".join(parts), quiet)
