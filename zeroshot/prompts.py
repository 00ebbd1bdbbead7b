"""Labels and prompt templates: built-in sets shipped in ``prompts/`` and user files.

Data files hold one entry per line; blank lines and lines starting with ``#`` are ignored, a UTF-8
BOM and CRLF line ends are tolerated. Templates use ``{}`` (open_clip) or ``{c}`` (CLIP_benchmark)
as the class-name placeholder.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import UsageError, ZeroshotWarning

TEMPLATE_ALIASES = {
    "80": "openai-80",
    "7": "openai-7",
    "1": "photo",
    "bare": "none",
}
PLACEHOLDER = "{}"
_PLACEHOLDER_RE = re.compile(r"\{c\}")


class SingleLabelWarning(ZeroshotWarning):
    """Only one label: softmax probabilities are always 1.0."""


def prompts_dir() -> Path:
    """Folder holding the built-in sets: inside the installed wheel, or the checkout's ``prompts/``."""
    packaged = resources.files("zeroshot") / "prompts"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "prompts"


def parse_lines(text: str) -> list[str]:
    """Entries of a data file: stripped lines, without blanks and ``#`` comments."""
    text = text.removeprefix("\ufeff")
    entries = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return entries


def read_entries(path: Path, what: str) -> list[str]:
    """Read a user data file, turning I/O and encoding failures into one-line errors."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} file is a directory: {path}") from None
    except OSError as err:
        raise UsageError(f"cannot read {what} file {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        hint = " (it looks like UTF-16)" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
        raise UsageError(f"{what} file {path} is not UTF-8 text{hint} (byte {err.start}); save it as UTF-8") from None
    for number, line in enumerate(re.split(r"\r\n|\n|\r", text.removeprefix("\ufeff")), 1):
        bad = control_character(line, allow_tab=True)
        if bad is not None:
            utf16 = " (NUL bytes: the file looks like UTF-16 without a byte-order mark)" if bad == "\x00" else ""
            raise UsageError(f"{what} file {path}, line {number}: control character U+{ord(bad):04X}{utf16}; "
                             "remove it, or save the file as UTF-8 text")
    return parse_lines(text)


def control_character(text: str, allow_tab: bool = False) -> str | None:
    """The first control character (NUL, escape, DEL, C1 controls...) in ``text``, if any."""
    for char in text:
        if unicodedata.category(char) == "Cc" and not (allow_tab and char == "\t"):
            return char
    return None


def _builtin_names(kind: str) -> list[str]:
    return sorted(p.stem for p in (prompts_dir() / kind).glob("*.txt"))


def builtin_template_sets() -> list[str]:
    return _builtin_names("templates")


def builtin_class_sets() -> list[str]:
    return [n for n in _builtin_names("classes") if not n.endswith("-wnids")]


def describe_builtin(kind: str, name: str) -> str:
    """The first comment line of a built-in set file (its one-line description)."""
    for line in (prompts_dir() / kind / f"{name}.txt").read_text("utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def load_builtin(kind: str, name: str) -> list[str]:
    return parse_lines((prompts_dir() / kind / f"{name}.txt").read_text("utf-8"))


# ----------------------------------------------------------------------------------- templates


def normalize_template(template: str) -> str:
    """Accept CLIP_benchmark's ``{c}`` as well as ``{}``."""
    return _PLACEHOLDER_RE.sub(PLACEHOLDER, template)


def fill(template: str, label: str) -> str:
    """The prompt for one label. Plain replacement: braces in labels are safe."""
    return template.replace(PLACEHOLDER, label)


@dataclass(frozen=True)
class TemplateSet:
    """A named list of templates, each containing ``{}`` exactly where the label goes."""

    name: str
    templates: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.templates)


def validate_templates(templates: list[str], source: str) -> tuple[str, ...]:
    if not templates:
        raise UsageError(f"no templates in {source}")
    normalized = [normalize_template(t) for t in templates]
    for template in normalized:
        if PLACEHOLDER not in template:
            raise UsageError(
                f"template {template!r} in {source} has no placeholder; write {{}} (or {{c}}) "
                "where the label goes"
            )
    seen: set[str] = set()
    dupes = [t for t in normalized if t in seen or seen.add(t)]
    if dupes:
        raise UsageError(f"duplicate template {dupes[0]!r} in {source}")
    return tuple(normalized)


def resolve_templates(spec: str, option: str = "--templates") -> TemplateSet:
    """A built-in set name or alias, a file of templates, or one literal template. ``option``
    names where ``spec`` came from in error messages."""
    name = TEMPLATE_ALIASES.get(spec.strip().lower(), spec.strip().lower())
    if name in builtin_template_sets():
        return TemplateSet(name, validate_templates(load_builtin("templates", name), name))
    path = Path(spec).expanduser()
    if path.is_file():
        return TemplateSet(str(path), validate_templates(read_entries(path, "templates"), str(path)))
    if PLACEHOLDER in normalize_template(spec):
        return TemplateSet(spec, validate_templates([spec], option))
    known = ", ".join(builtin_template_sets() + sorted(TEMPLATE_ALIASES))
    raise UsageError(
        f"{option} {spec!r} is not a built-in set ({known}), an existing file, or a template "
        "with {} where the label goes"
    )


def as_template_set(templates: TemplateSet | str | Sequence[str]) -> TemplateSet:
    """Whatever a public function takes as templates: a :class:`TemplateSet`, a set name, file
    or literal template (as ``--templates`` takes), or a list of template strings."""
    if isinstance(templates, TemplateSet):
        return templates
    if isinstance(templates, str):
        return resolve_templates(templates)
    return TemplateSet("custom", validate_templates(list(templates), "templates"))


# -------------------------------------------------------------------------------------- labels


def validate_labels(labels: list[str], source: str, allow_duplicates: bool = False) -> tuple[str, ...]:
    """Strip labels; empty or (unless ``allow_duplicates``) repeated labels are errors."""
    cleaned = [label.strip() for label in labels]
    if any(not label for label in cleaned):
        raise UsageError(f"empty label in {source}; remove it")
    for number, label in enumerate(cleaned, 1):
        bad = control_character(label)
        if bad is not None:
            raise UsageError(f"label {number} ({label!r}) in {source} contains control character U+{ord(bad):04X}; "
                             "labels must be printable text")
    if not cleaned:
        raise UsageError(f"no labels in {source}; give at least two")
    seen: set[str] = set()
    dupes = [label for label in cleaned if label in seen or seen.add(label)]
    if dupes and not allow_duplicates:
        raise UsageError(f"duplicate label {dupes[0]!r} in {source}; each label must be unique")
    if len(cleaned) == 1:
        warnings.warn(
            f"only one label ({cleaned[0]!r}): every image gets probability 1.0 for it; "
            "add labels (e.g. 'something else') to get meaningful scores",
            SingleLabelWarning,
            stacklevel=2,
        )
    return tuple(cleaned)


def resolve_labels(
    labels_file: str | None = None, inline: list[str] | None = None
) -> tuple[str, ...]:
    """Labels from ``--labels`` (a file or a built-in class set) plus ``--label`` values."""
    collected: list[str] = []
    sources = []
    builtin_only = False
    if labels_file:
        builtin = labels_file.strip().lower()
        path = Path(labels_file).expanduser()
        if path.is_file() or builtin not in builtin_class_sets():
            collected += read_entries(path, "labels")
            sources.append(str(path))
        else:
            collected += load_builtin("classes", builtin)
            sources.append(f"built-in class set {builtin!r}")
            builtin_only = not inline  # curated sets may name two classes alike (ImageNet's 'missile')
    if inline:
        collected += list(inline)
        sources.append("--label")
    if not sources:
        raise UsageError(
            "no labels given: use --labels FILE, --labels imagenet|cifar10|cifar100, or -l LABEL"
        )
    return validate_labels(collected, " + ".join(sources), allow_duplicates=builtin_only)
