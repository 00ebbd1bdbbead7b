"""Label and template text: control characters and wrong encodings are refused with the line."""

from __future__ import annotations

import re

import pytest

from zeroshot.errors import UsageError
from zeroshot.prompts import resolve_labels, resolve_templates, validate_labels


@pytest.mark.parametrize("raw,line,code", [
    (b"cat\nca\x00t\n", 2, "U+0000"),
    (b"dog\n\x1b[31mred\n", 2, "U+001B"),
    (b"a\x7fb\n", 1, "U+007F"),
    ("c\u0085d\n".encode(), 1, "U+0085"),
])
def test_control_characters_in_a_label_file_name_the_line(tmp_path, raw, line, code):
    path = tmp_path / "labels.txt"
    path.write_bytes(raw)
    with pytest.raises(UsageError, match=re.escape(f"line {line}: control character {code}")):
        resolve_labels(str(path))


def test_utf16_without_bom_is_recognised(tmp_path):
    """Decodes as UTF-8 into labels full of NULs: refused, with the likely cause."""
    path = tmp_path / "labels.txt"
    path.write_bytes("cat\ndog\n".encode("utf-16-le"))
    with pytest.raises(UsageError, match="UTF-16 without a byte-order mark"):
        resolve_labels(str(path))


def test_utf16_with_bom_says_so(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("cat\ndog\n".encode("utf-16"))
    with pytest.raises(UsageError, match="looks like UTF-16"):
        resolve_labels(str(path))


def test_inline_labels_with_control_characters_are_refused():
    with pytest.raises(UsageError, match=r"label 2 \('ca\\x00t'\) in --label contains control character U\+0000"):
        resolve_labels(None, ["cat", "ca\x00t"])
    with pytest.raises(UsageError, match="U\\+0009"):
        validate_labels(["a\tb", "c"], "labels")


def test_nul_label_no_longer_passes_the_duplicate_check(tmp_path):
    """'ca\\0t' used to score like 'cat' and slip past the duplicate check."""
    with pytest.raises(UsageError):
        resolve_labels(None, ["cat", "ca\x00t"])


def test_template_files_are_checked_too(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_bytes(b"a photo of a {}.\na \x00{}\n")
    with pytest.raises(UsageError, match="line 2: control character U\\+0000"):
        resolve_templates(str(path))


def test_tabs_stay_allowed_in_data_files_with_columns(tmp_path):
    """--classnames files are 'folder<TAB>name': tabs are not control characters there."""
    from zeroshot.data.datasets import read_classnames

    path = tmp_path / "names.tsv"
    path.write_text("a\tan apple\nb\ta bee\n", encoding="utf-8")
    assert read_classnames(path) == {"a": "an apple", "b": "a bee"}


def test_ordinary_unicode_labels_pass():
    assert validate_labels(["chat noir 🐈‍⬛", "Hund", "狗"], "labels") == ("chat noir 🐈‍⬛", "Hund", "狗")
