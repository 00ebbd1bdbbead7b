"""Options shared by several commands, and the choice enums, made from the library's own lists."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data.catalog import DATASETS
from ..output.writers import FORMAT_NAMES
from ..precision import PRECISIONS
from ..runtimes import RUNTIMES

MODEL_PANEL = "Model and device"
PROMPT_PANEL = "Labels and prompts"
INPUT_PANEL = "Inputs"
OUTPUT_PANEL = "Output"
DATASET_PANEL = "Dataset"

Precision = Enum("Precision", {name: name for name in PRECISIONS}, type=str)  # type: ignore[misc]
Runtime = Enum("Runtime", {name: name for name in RUNTIMES}, type=str)  # type: ignore[misc]
OutputFormat = Enum("OutputFormat", {name: name for name in ("auto", *FORMAT_NAMES)}, type=str)  # type: ignore[misc]
DatasetName = Enum("DatasetName", {name: name for name in DATASETS}, type=str)  # type: ignore[misc]

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", envvar="ZEROSHOT_MODEL", rich_help_panel=MODEL_PANEL,
    show_default=False,
    help="open_clip architecture (ViT-B-32, ViT-L-14, ...), hf-hub:org/name (open_clip on the hub), or "
         "hf:org/name or hf:FOLDER (a transformers CLIP/SigLIP model; needs zeroshot[hf]). Default: ViT-B-32, or "
         "the architecture a --pretrained file from 'zeroshot finetune' names.")]
PretrainedOpt = Annotated[str, typer.Option("--pretrained", "-p", envvar="ZEROSHOT_PRETRAINED", rich_help_panel=MODEL_PANEL,
    help="Pretrained tag (openai, laion2b_s34b_b79k, ...) or a local checkpoint (.pt/.bin/.safetensors).")]
ModelsOpt = Annotated[Optional[list[str]], typer.Option("--model", "-m", envvar="ZEROSHOT_MODEL",
    rich_help_panel=MODEL_PANEL, show_default=False,
    help="Model to evaluate (repeatable: every model x template set in one table): open_clip architecture, "
         "hf-hub:org/name, or hf:org/name / hf:FOLDER (transformers CLIP/SigLIP; needs zeroshot[hf]). "
         "Default: ViT-B-32.")]
PretrainedsOpt = Annotated[Optional[list[str]], typer.Option("--pretrained", "-p", envvar="ZEROSHOT_PRETRAINED",
    rich_help_panel=MODEL_PANEL, show_default=False,
    help="Pretrained tag or checkpoint of the --model before it (-m A -p TAG -m B -p TAG, in pairs); a -m without "
         "-p uses openai.")]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", envvar="ZEROSHOT_DEVICE", rich_help_panel=MODEL_PANEL,
    help="auto | cpu | cuda | cuda:N | mps. auto picks CUDA, then MPS, then CPU.")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", envvar="ZEROSHOT_PRECISION", rich_help_panel=MODEL_PANEL,
    help="auto: on a CPU with native bf16 (AVX-512 BF16/AMX) bf16, checked against fp32 on the first batch "
         "(fp32 for the rest if it disagrees), else fp32; bf16 (or fp16) autocast on GPU. fp32 is exact.")]
RuntimeOpt = Annotated[Runtime, typer.Option("--runtime", envvar="ZEROSHOT_RUNTIME", rich_help_panel=MODEL_PANEL,
    help="Where the image tower runs: torch, openvino (CPU; needs zeroshot[openvino]), or compile (torch.compile, "
         "any device; the first batch pays the compilation). auto: OpenVINO for a bf16 image tower on a CPU when "
         "it is installed (checked against fp32 like any auto bf16), else torch.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, rich_help_panel=MODEL_PANEL,
    help="Images per forward pass (default: 32 on CPU, 256 on GPU).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", "-j", min=0, rich_help_panel=MODEL_PANEL,
    help="Image decoding processes (default: sized to the machine; 0 decodes in the main process).")]
TemplatesOpt = Annotated[str, typer.Option("--templates", "-t", rich_help_panel=PROMPT_PANEL,
    help="Built-in set (80/openai-80, 7/openai-7, 1/photo, none, cifar), a file of templates, or one template with {}.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", rich_help_panel=PROMPT_PANEL,
    help="Do not read or write the on-disk caches: the class-weight cache and the embedding store "
         "(every image is encoded, at full precision).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, warnings or summary on stderr (errors still print).")]
HiddenOpt = Annotated[bool, typer.Option("--hidden", rich_help_panel=INPUT_PANEL,
    help="Include dot-files and dot-folders (skipped by default, e.g. macOS ._x.jpg).")]
RawCsvOpt = Annotated[bool, typer.Option("--raw-csv", rich_help_panel=OUTPUT_PANEL,
    help="Do not neutralise spreadsheet formulas (cells starting with = + - @ tab or CR) in CSV/TSV.")]
ReportOpt = Annotated[Optional[Path], typer.Option("--report", metavar="FILE.html", rich_help_panel=OUTPUT_PANEL,
    dir_okay=False, help="Also write a self-contained HTML page to look at: thumbnails with their scores, grouped "
                         "(sortable, filterable), the skipped files and why; eval adds per-class accuracy and the "
                         "most confused classes.")]


def fast_decode_option(default: bool) -> object:
    """``--fast-decode/--exact-decode``: the one decode-size setting (default differs per command)."""
    return typer.Option("--fast-decode/--exact-decode", rich_help_panel=INPUT_PANEL,
        help="fast: decode large JPEGs at reduced scale (DCT scaling, down to 2x the model input; faster, not "
             "bit-exact). exact: full-size decode, bit-exact with the model's own preprocessing.")
RecursiveOpt = Annotated[bool, typer.Option("--recursive/--no-recursive", rich_help_panel=INPUT_PANEL,
    help="Descend into sub-folders of folder inputs.")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", min=1, rich_help_panel=INPUT_PANEL,
    help="Skip images with more pixels than this (decompression-bomb guard), checked before decoding.")]

RAY_PANEL = "Cluster (Ray)"
RayOpt = Annotated[Optional[str], typer.Option("--ray", metavar="auto|local|ADDRESS", rich_help_panel=RAY_PANEL,
    show_default=False,
    help="Run decoding and encoding on a Ray cluster (needs zeroshot[ray]): auto = RAY_ADDRESS (as under "
         "'ray job submit'), else a cluster 'ray start' started on this machine, else a local Ray; local = a "
         "fresh local Ray; or the head's host:port. Same rows, order and files as a local run.")]
RayActorsOpt = Annotated[Optional[int], typer.Option("--ray-actors", min=1, rich_help_panel=RAY_PANEL,
    help="Encoding actors, each holding the model (default: one per GPU, else one per node).")]
RayDecodeCpusOpt = Annotated[float, typer.Option("--ray-decode-cpus", min=0.1, rich_help_panel=RAY_PANEL,
    help="CPUs reserved by each decode task (one batch of images).")]
RayActorCpusOpt = Annotated[Optional[float], typer.Option("--ray-actor-cpus", min=0.1, rich_help_panel=RAY_PANEL,
    help="CPUs reserved by each encoding actor (default 1; a CPU actor computes with all of its node's cores, "
         "decode tasks beside it at low priority).")]
