"""``zeroshot eval``: zero-shot accuracy on labelled datasets.

Options in, :mod:`zeroshot.tasks.evaluate` calls, rendering out; the metrics table is the command's
data (stdout), progress, skipped images and the summary go to stderr.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import UsageError
from ..models import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .cluster import ray_encoder
from .console import EXIT_PARTIAL, Progress, cli_errors, printable, rate_text, say, status
from .options import (
    DATASET_PANEL,
    INPUT_PANEL,
    OUTPUT_PANEL,
    PROMPT_PANEL,
    BatchOpt,
    DatasetName,
    DeviceOpt,
    HiddenOpt,
    ModelsOpt,
    NoCacheOpt,
    Precision,
    PrecisionOpt,
    PretrainedsOpt,
    QuietOpt,
    RawCsvOpt,
    RayActorCpusOpt,
    RayActorsOpt,
    RayDecodeCpusOpt,
    RayOpt,
    ReportOpt,
    Runtime,
    RuntimeOpt,
    WorkersOpt,
    fast_decode_option,
)
from .store import StoreOpt, command_store

SHOTS_PANEL = "Few-shot"

EvalTemplatesOpt = Annotated[Optional[list[str]], typer.Option("--templates", "-t", rich_help_panel=PROMPT_PANEL,
    help="Template set to score (repeatable: every set is scored against the same image embeddings). Built-in set "
         "(80/openai-80, 7/openai-7, 1/photo, none, cifar), a file, or one template with {}. "
         "Default: openai-80 (cifar for CIFAR).")]


class OrderedOptionsCommand(TyperCommand):
    """Keeps the raw arguments (``ctx.meta["zeroshot.argv"]``): -m/-p pair up by their order,
    which click's per-option lists do not keep."""

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201 - click's signature
        ctx.meta["zeroshot.argv"] = list(args)
        return super().parse_args(ctx, args)


def _flag_order(argv: list[str]) -> list[str]:
    """``"m"``/``"p"`` for every --model/--pretrained in ``argv``, in order."""
    order = []
    for token in argv:
        if token == "--":
            break
        for flag, names in (("m", ("-m", "--model")), ("p", ("-p", "--pretrained"))):
            if token in names or token.startswith(names[1] + "=") or (token.startswith(names[0]) and len(token) > 2
                                                                       and not token.startswith("--")):
                order.append(flag)
    return order


def pair_models(models: list[str], pretrained: list[str], argv: list[str] | None) -> list[tuple[str | None, str]]:
    """(model, pretrained) pairs from repeated -m/-p: each -p belongs to the -m before it, a -m
    without -p gets the default tag; without -m, every -p is a tag of the default model."""
    if not models:
        # no -m: the default model, or the architecture a fine-tuned file's sidecar names
        return [(None, p) for p in pretrained] or [(None, DEFAULT_PRETRAINED)]
    order = _flag_order(argv or [])
    if order.count("m") != len(models) or order.count("p") != len(pretrained):  # values from the environment
        order = ["m", "p"] * len(models) if len(pretrained) == len(models) else ["m"] * len(models) + ["p"] * len(pretrained)
    pairs: list[list] = []
    m = p = 0
    for flag in order:
        if flag == "m":
            pairs.append([models[m], None])
            m += 1
            continue
        if not pairs or pairs[-1][1] is not None:
            raise UsageError(f"--pretrained {pretrained[p]}: give it right after the --model it belongs to "
                             "(-m ARCH -p TAG -m ARCH -p TAG)")
        pairs[-1][1] = pretrained[p]
        p += 1
    out = [(model, tag if tag is not None else DEFAULT_PRETRAINED) for model, tag in pairs]
    for i, pair in enumerate(out):
        if pair in out[:i]:
            raise UsageError(f"--model {pair[0] or DEFAULT_MODEL} --pretrained {pair[1]} is given twice")
    return out


def _check_output(option: str, path: Optional[Path]) -> None:
    if path is not None and not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise UsageError(f"{option} {path}: folder {path.parent} does not exist")


def _location(dataset: DatasetName, path: Optional[str], root: Optional[str]) -> str:
    from ..data.catalog import FILE_KINDS

    if path and root and Path(path).expanduser() != Path(root).expanduser():
        raise UsageError(f"give the dataset location once: PATH {path!r} or --root {root!r}, not both")
    where = path or root
    if not where:
        example = "PATH" if dataset.value in FILE_KINDS else "--root DIR"
        raise UsageError(f"eval {dataset.value}: say where the dataset is: zeroshot eval {dataset.value} {example}")
    return where


def _cell(value: Optional[float], percent: bool) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" if percent else repr(float(value))  # piped: exactly the JSON's number


def _print_table(results) -> None:
    """A table on a terminal (percent); tab-separated fractions, as in the JSON, when piped. With
    several models, one row per model and template set, led by the model columns."""
    percent = sys.stdout.isatty()
    unit = "%" if percent else "fraction"
    several = len(results) > 1
    header = (("model", "pretrained") if several else ()) + (
        "template set", "templates", f"top-1 ({unit})", f"top-5 ({unit})", f"mean per-class recall ({unit})")
    rows = [((result.model, result.pretrained or "random init") if several else ()) + (
             r.templates, str(r.num_templates), _cell(r.acc1, percent), _cell(r.acc5, percent),
             _cell(r.mean_per_class_recall, percent)) for result in results for r in result.results]
    first = results[0]
    if percent:
        from rich.console import Console
        from rich.table import Table

        about = (f"{len(results)} models" if several
                 else f"{first.model} ({first.pretrained or 'random init'})")
        table = Table(*header, show_edge=False, header_style="bold",
                      caption=f"{first.dataset}: {first.num_images} images, {len(first.classnames)} classes, {about}")
        for column in table.columns[(3 if several else 1):]:
            column.justify = "right"
        for row in rows:
            table.add_row(*row)
        Console(highlight=False).print(table)
    else:
        typer.echo("\t".join(header))
        for row in rows:
            typer.echo("\t".join(printable(c) for c in row))


def _check_task_options(retrieval: bool, templates, labels, predictions, per_class, recall_k) -> None:
    """Classification options on a retrieval set, or the reverse, are mistakes: say so."""
    if retrieval:
        given = [name for name, value in (("--templates", templates), ("--labels", labels),
                                          ("--predictions", predictions), ("--per-class", per_class)) if value]
        if given:
            raise UsageError(f"{given[0]} is for classification; a retrieval set scores its captions as written "
                             "(its outputs: the table and --output)")
    elif recall_k:
        raise UsageError("--recall-k is for retrieval sets (eval retrieval, or a wds folder whose dataset_type.txt "
                         "says retrieval)")


def eval_command(
    ctx: typer.Context,
    dataset: Annotated[DatasetName, typer.Argument(show_default=False,
        help="imagenet (ImageNet-1k val, wnid folders), imagenetv2, imagenet_sketch, imagenet-r, imagenet-a, cifar10, "
             "cifar100, the CLIP paper's transfer sets through torchvision (food101 flowers pets dtd eurosat sun397 "
             "caltech101 fgvc_aircraft cars country211 gtsrb stl10 mnist fer2013 renderedsst2 pcam), folder "
             "(class = sub-folder), csv (path,label manifest), wds (CLIP_benchmark WebDataset folder), retrieval "
             "(path,caption manifest).")],
    path: Annotated[Optional[str], typer.Argument(metavar="PATH", show_default=False,
        help="Dataset location: the folder (imagenet, cifar, torchvision sets, folder, wds) or the manifest file "
             "(csv, retrieval). Same as --root.")] = None,
    root: Annotated[Optional[str], typer.Option("--root", "-r", rich_help_panel=DATASET_PANEL,
        help="Dataset location (alternative to PATH).")] = None,
    classnames: Annotated[Optional[Path], typer.Option("--classnames", rich_help_panel=DATASET_PANEL, dir_okay=False,
        help="folder/csv: file mapping folder (or label) -> class name, 'key,name' per line or a JSON object; "
             "every class listed competes.")] = None,
    download: Annotated[bool, typer.Option("--download", rich_help_panel=DATASET_PANEL,
        help="cifar10/cifar100 and the torchvision transfer sets (not fer2013): download the dataset into --root "
             "if it is not there.")] = False,
    split: Annotated[str, typer.Option("--split", rich_help_panel=DATASET_PANEL,
        help="wds: the split folder to read (DIR/<split>/nshards.txt).")] = "test",
    recall_k: Annotated[Optional[list[int]], typer.Option("--recall-k", min=1, metavar="K", rich_help_panel=DATASET_PANEL,
        help="retrieval (and retrieval wds sets): k of recall@k (repeatable). Default: 1, 5 and 10.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", "-n", min=1, rich_help_panel=DATASET_PANEL,
        help="Evaluate only the first N images of every class (retrieval: the first N images; quick runs).")] = None,
    hidden: HiddenOpt = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, rich_help_panel=INPUT_PANEL,
        help="Skip (and count as wrong) images with more pixels than this.")] = DEFAULT_MAX_PIXELS,
    fast_decode: Annotated[bool, fast_decode_option(False)] = False,
    labels: Annotated[Optional[str], typer.Option("--labels", "-L", rich_help_panel=PROMPT_PANEL,
        help="Override the class names: a file with one label per class, in class-index order, or a built-in class set.")] = None,
    templates: EvalTemplatesOpt = None,
    model: ModelsOpt = None,
    pretrained: PretrainedsOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
    runtime: RuntimeOpt = Runtime.auto,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Write the results JSON here (.json; CLIP_benchmark keys plus every template set, counts, skipped images).")] = None,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Per image and template set: path, true label, predicted label, score, correct, error; the format "
             "from the extension (.csv .tsv .jsonl .json .parquet).")] = None,
    per_class: Annotated[Optional[Path], typer.Option("--per-class", rich_help_panel=OUTPUT_PANEL, dir_okay=False,
        help="Per-class accuracy (fraction), worst first; the format from the extension.")] = None,
    raw_csv: RawCsvOpt = False,
    html_report: ReportOpt = None,
    no_cache: NoCacheOpt = False,
    store: StoreOpt = None,
    shots: Annotated[Optional[str], typer.Option("--shots", rich_help_panel=SHOTS_PANEL,
        help="Also fit few-shot linear heads with K images per class (comma list, e.g. 1,2,4,8,16) and report "
             "zero-shot and few-shot top-1 side by side on the same held-out images.")] = None,
    shots_from: Annotated[Optional[str], typer.Option("--shots-from", rich_help_panel=SHOTS_PANEL,
        help="Take the K-shot images from this labelled set (class folder or path,label CSV with the same class "
             "names) and score all of the dataset; default: a seeded pool of the dataset itself, never scored.")] = None,
    shots_seed: Annotated[int, typer.Option("--shots-seed", rich_help_panel=SHOTS_PANEL,
        help="Seed of the K-shot samples.")] = 0,
    reg: Annotated[str, typer.Option("--reg", rich_help_panel=SHOTS_PANEL,
        help="Few-shot heads: pull toward the zero-shot weights (see 'zeroshot fewshot'); auto = chosen for each "
             "K by cross-validation on its K-shot images, never on the scored ones.")] = "auto",
    ray: RayOpt = None,
    ray_actors: RayActorsOpt = None,
    ray_decode_cpus: RayDecodeCpusOpt = 1.0,
    ray_actor_cpus: RayActorCpusOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Zero-shot accuracy (top-1, top-5, mean per-class recall) of one or several models on a
    labelled dataset, for one or several template sets in one pass over the images (decoded once
    per distinct preprocessing). Images of folder, csv and imagenet datasets already in the
    embedding store are not encoded again. On image-caption sets (retrieval, or a wds folder of
    captions): image->text and text->image recall@k."""
    from ..data.captions import RetrievalDataset
    from ..data.catalog import DEFAULT_TEMPLATES, DOWNLOADABLE, IN_MEMORY, load_dataset
    from ..encode.embed import EmbedSettings
    from ..models import load_model, resolve_weights
    from ..output.report import check_report_path
    from ..output.writers import format_for_path
    from ..prompts import resolve_labels, resolve_templates
    from ..tasks.evaluate import evaluate_models, write_per_class_file, write_predictions_file, write_results_json
    from ..tasks.report import write_eval_report

    started = time.perf_counter()
    results = None
    embeddings = None
    with cli_errors(quiet):
        where = _location(dataset, path, root)
        if classnames is not None and dataset not in (DatasetName.folder, DatasetName.csv):
            raise UsageError(f"--classnames is for folder and csv datasets; {dataset.value} has its own class names (use --labels to override)")
        if download and dataset.value not in DOWNLOADABLE:
            raise UsageError("--download is only for cifar10 and cifar100 and the torchvision transfer sets (not "
                             f"fer2013); put the {dataset.value} data in place yourself")
        if split != "test" and dataset != DatasetName.wds:
            raise UsageError(f"--split is for wds datasets; {dataset.value} is read from its test split")
        for option, target in (("--output", output), ("--predictions", predictions), ("--per-class", per_class)):
            _check_output(option, target)
            if target is not None:
                fmt = format_for_path(target, option)
                if option == "--output" and fmt.name != "json":
                    raise UsageError(f"--output {target}: the results file is JSON; name it .json "
                                     "(per-image rows go to --predictions)")
        check_report_path(html_report)
        if store is not None and no_cache:
            raise UsageError("--store and --no-cache contradict each other: --no-cache uses no store")
        if store is not None and dataset.value in (*IN_MEMORY, "wds"):
            held = "images are read from their shards" if dataset == DatasetName.wds else "is held in memory"
            raise UsageError(f"--store is for datasets of image files; {dataset.value} {held} and always encoded")
        data = load_dataset(dataset.value, where, classnames=classnames, download=download, include_hidden=hidden,
                            split=split)
        retrieval = isinstance(data, RetrievalDataset)
        _check_task_options(retrieval, templates, labels, predictions, per_class, recall_k)
        if templates:
            template_sets = [resolve_templates(t) for t in templates]
        else:
            template_sets = [data.templates or resolve_templates(DEFAULT_TEMPLATES[dataset.value])]
        if labels:
            data = data.with_classnames(resolve_labels(labels), f"--labels {labels}")
        data = data.limit(limit)

        shot_counts = _parse_shots(shots) if shots is not None else None
        if shot_counts is not None:
            from ..train.fewshot import parse_reg

            reg = parse_reg(reg)
        if shots_from is not None and shot_counts is None:
            raise UsageError("--shots-from goes with --shots K,...: the shot counts to fit")
        pairs = pair_models(model or [], pretrained or [], ctx.meta.get("zeroshot.argv"))
        refs = [resolve_weights(m, p) for m, p in pairs]  # every name checked before any model loads
        if retrieval and len(refs) > 1:
            raise UsageError("eval retrieval takes one model at a time; give one -m/-p pair")
        if shot_counts is not None and len(refs) > 1:
            raise UsageError("--shots takes one model at a time; give one -m/-p pair")
        if ray is not None and (retrieval or shot_counts is not None):
            raise UsageError(f"--ray runs classification sets without --shots; drop --ray for "
                             f"{'a retrieval set' if retrieval else '--shots'}")
        encoder = ray_encoder(ray, ray_actors, ray_decode_cpus, ray_actor_cpus, quiet)
        if data.images is None:  # image files: the embedding store applies
            embeddings = command_store(store, no_cache, quiet)
        models = []
        for (_, tag), ref in zip(pairs, refs):
            with status(f"loading {ref.name} ({tag or 'random init'})", quiet):
                models.append(load_model(ref, device=device, precision=precision.value, runtime=runtime.value))
        loaded = models[0]
        settings = EmbedSettings(batch_size, workers, max_pixels, fast_decode)
        if retrieval:
            from .retrieval import run_retrieval

            retrieved = run_retrieval(loaded, data, settings, recall_k, embeddings, output, quiet, started)
            if retrieved.skipped:
                raise typer.Exit(EXIT_PARTIAL)
            return
        several = f"{len(models)} models, " if len(models) > 1 else ""
        say(f"evaluating {len(data)} images, {len(data.classnames)} classes, {several}"
            f"{len(template_sets)} template set(s) on {loaded.device} ({loaded.describe_precision()})", quiet)

        with Progress(quiet) as progress:
            text_tasks: dict[str, int] = {}

            def text_progress(name: str, done: int, total: int) -> None:
                if name not in text_tasks:
                    text_tasks[name] = progress.add_task(f"prompts {name}", total=total)
                progress.update(text_tasks[name], done, total)

            image_progress = progress.tracker("images", rate_unit="img")
            skip = progress.skipping

            try:
                results = evaluate_models(models, data, template_sets, settings, cache=not no_cache,
                                          on_text_progress=text_progress, on_image_progress=image_progress,
                                          on_skip=skip, store=embeddings, encoder=encoder)
            finally:
                if embeddings is not None and shot_counts is None:
                    embeddings.close()

        _print_table(results)
        extra = None
        if shot_counts is not None:
            curve = _shots(loaded, results[0], shot_counts, shots_from, shots_seed, reg, classnames, hidden,
                           settings, embeddings, quiet)
            extra = {"fewshot": {"protocol": "pool of the dataset, never scored" if shots_from is None else
                                 f"shots from {shots_from}", "seed": shots_seed, "reg": reg,
                                 "results": [r.as_dict() for r in curve]}}
        written = []
        if output is not None:
            write_results_json(results, output, extra)
            written.append(str(output))
        if predictions is not None:
            write_predictions_file(results, predictions, safe_csv=not raw_csv)
            written.append(str(predictions))
        if per_class is not None:
            write_per_class_file(results, per_class, safe_csv=not raw_csv)
            written.append(str(per_class))
        result = results[0]
        if html_report is not None:  # the first model's (several models: compare them in the table)
            with Progress(quiet) as progress:
                write_eval_report(html_report, result, data, on_progress=progress.tracker("report"))
            written.append(str(html_report))

        if embeddings is not None and shot_counts is not None:
            embeddings.close()
        encoded = int(result.encoded.sum())
        image_seconds = sum(r.image_seconds for r in results)
        summary = (f"evaluated {result.num_images} images ({len(result.classnames)} classes)"
                   f"{f' with {len(results)} models' if len(results) > 1 else ''} in "
                   f"{time.perf_counter() - started:.1f}s (images {image_seconds:.1f}s, "
                   f"{rate_text(encoded, image_seconds) or '-'}; precision {loaded.describe_precision()})")
        for each in models:
            for note in each.notes:
                say(f"note: {note}", quiet)
        if embeddings is not None:
            summary += (f"; encoded {sum(r.images_encoded for r in results)}, "
                        f"{sum(r.images_from_store for r in results)} from the store")
        if result.skipped:
            summary += f"; skipped {len(result.skipped)} unreadable image(s), counted as wrong"
        if written:
            summary += f"; wrote {', '.join(printable(w) for w in written)}"
        say(summary, quiet)
    if results and results[0].skipped:
        raise typer.Exit(EXIT_PARTIAL)


def _parse_shots(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise UsageError(f"--shots {text!r}: give whole numbers separated by commas, e.g. 1,2,4,8,16") from None
    if not counts or min(counts) < 1:
        raise UsageError(f"--shots {text!r}: give positive shot counts, e.g. 1,2,4,8,16")
    return sorted(set(counts))


def _shots(loaded, result, counts, shots_from, seed, reg, classnames, hidden, settings, store, quiet):
    """Few-shot heads for every K, printed beside zero-shot (``eval --shots``)."""
    import torch

    from ..data.catalog import load_dataset
    from ..train.fewshot import embed_dataset, shots_curve

    pool = None
    if shots_from is not None:
        kind = "folder" if Path(shots_from).expanduser().is_dir() else "csv"
        train = load_dataset(kind, shots_from, classnames=classnames, include_hidden=hidden)
        index = {name: i for i, name in enumerate(result.classnames)}
        unknown = [c for c in train.classnames if c not in index]
        if unknown:
            raise UsageError(f"--shots-from {shots_from}: class {unknown[0]!r} is not a class of the evaluated dataset")
        with Progress(quiet) as progress:
            embedded = embed_dataset(loaded, train, settings, store, progress.skipping,
                                     progress.tracker("few-shot images", rate_unit="img"))
        mapped = torch.tensor([index[train.classnames[t]] for t in embedded.targets.tolist()], dtype=torch.long)
        pool = (embedded.features, mapped)
    curve = shots_curve(result.features, result.targets, result.encoded, result.class_weights,
                        float(loaded.logit_scale), counts, seed, reg, pool)
    percent = sys.stdout.isatty()
    header = ("shots", "train images", "test images", "zero-shot top-1", "few-shot top-1", "reg")
    typer.echo("\t".join(header))
    for r in curve:
        typer.echo("\t".join([str(r.shots), str(r.train_images), str(r.test_images),
                              _cell(r.zero_shot, percent), _cell(r.few_shot, percent), f"{r.reg:g}"]))
    return curve
