"""Labels and prompt templates (design.md section 5, #28-#29): labels longer than the text
context warn; empty, duplicate and comment-only label files, and templates without a placeholder
or duplicated, are one-line usage errors."""

from __future__ import annotations

import warnings

import pytest

from zeroshot.errors import UsageError, ZeroshotWarning

# -------------------------------------------------------------------- #28-#29 labels, prompts


def test_28_label_longer_than_context_warns(tiny_loaded):
    from zeroshot.encode.text import warn_truncated

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = warn_truncated(tiny_loaded, ["cat", "word " * 100], ["a photo of a {}."])
    assert cut == ["word " * 100]
    assert any(issubclass(w.category, ZeroshotWarning) and "77-token" in str(w.message) for w in caught)


@pytest.mark.parametrize("text,message", [
    ("cat\ncat\n", "duplicate label 'cat'"),
    ("# only comments\n\n   \n", "no labels"),
    ("", "no labels"),
])
def test_29_bad_label_files(tmp_path, text, message):
    from zeroshot.prompts import resolve_labels

    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        resolve_labels(str(path))


def test_29_empty_inline_label_and_single_label():
    from zeroshot.prompts import SingleLabelWarning, resolve_labels

    with pytest.raises(UsageError, match="empty label"):
        resolve_labels(None, ["cat", "   "])
    with pytest.warns(SingleLabelWarning):
        resolve_labels(None, ["cat"])


def test_29_templates_without_placeholder_or_duplicated(tmp_path):
    from zeroshot.prompts import resolve_templates

    path = tmp_path / "t.txt"
    path.write_text("a photo of a {}.\nno placeholder here\n")
    with pytest.raises(UsageError, match="has no placeholder"):
        resolve_templates(str(path))
    path.write_text("a {}\na {c}\n")
    with pytest.raises(UsageError, match="duplicate template"):
        resolve_templates(str(path))
