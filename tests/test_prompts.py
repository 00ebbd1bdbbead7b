"""Pure functions: label/template parsing and the built-in sets."""

from __future__ import annotations

import open_clip
import pytest

from zeroshot.errors import UsageError
from zeroshot.prompts import (
    SingleLabelWarning,
    builtin_class_sets,
    builtin_template_sets,
    fill,
    load_builtin,
    parse_lines,
    resolve_labels,
    resolve_templates,
)


def test_parse_lines_ignores_comments_blanks_bom_and_crlf():
    text = "\ufeff# header\r\ncat\r\n\r\n  dog  \r\n#comment\r\nC# language\n"
    assert parse_lines(text) == ["cat", "dog", "C# language"]


def test_builtin_templates_equal_open_clip():
    assert resolve_templates("80").templates == tuple(t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert resolve_templates("openai-7").templates == tuple(t("{}") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES)
    assert len(resolve_templates("openai-80")) == 80


def test_builtin_imagenet_classnames_equal_open_clip():
    assert load_builtin("classes", "imagenet") == list(open_clip.IMAGENET_CLASSNAMES)
    wnids = load_builtin("classes", "imagenet-wnids")
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[0] == "n01440764"


def test_builtin_sets_are_listed():
    assert {"openai-80", "openai-7", "photo", "none"} <= set(builtin_template_sets())
    assert {"imagenet", "cifar10", "cifar100"} <= set(builtin_class_sets())
    assert len(load_builtin("classes", "cifar100")) == 100


@pytest.mark.parametrize(
    "spec, expected",
    [("1", ("a photo of a {}.",)), ("photo", ("a photo of a {}.",)), ("none", ("{}",)),
     ("a drawing of a {c}.", ("a drawing of a {}.",)), ("a {} photo", ("a {} photo",))],
)
def test_template_specs(spec, expected):
    assert resolve_templates(spec).templates == expected


def test_template_file_accepts_both_placeholders(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# mine\na photo of a {c}.\na sketch of a {}.\n", encoding="utf-8")
    assert resolve_templates(str(path)).templates == ("a photo of a {}.", "a sketch of a {}.")


@pytest.mark.parametrize(
    "content, message",
    [("a photo\n", "no placeholder"), ("# only comments\n", "no templates"), ("a {}\na {}\n", "duplicate template")],
)
def test_bad_template_files(tmp_path, content, message):
    path = tmp_path / "t.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        resolve_templates(str(path))


def test_unknown_template_spec_lists_the_sets():
    with pytest.raises(UsageError, match="openai-80"):
        resolve_templates("eighty")


def test_fill_is_plain_replacement():
    assert fill("a photo of a {}.", "{weird} label") == "a photo of a {weird} label."


def test_labels_from_file_and_inline(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffcat\r\ndog\r\n\r\n# no\r\n".encode("utf-8"))
    assert resolve_labels(str(path), ["bird"]) == ("cat", "dog", "bird")


def test_builtin_class_set_by_name():
    assert len(resolve_labels("cifar10")) == 10
    assert resolve_labels("imagenet")[0] == "tench"


@pytest.mark.parametrize(
    "labels, message",
    [(["cat", "cat"], "duplicate label 'cat'"), (["cat", "  "], "empty label")],
)
def test_bad_labels(labels, message):
    with pytest.raises(UsageError, match=message):
        resolve_labels(None, labels)


def test_missing_and_non_utf8_label_files(tmp_path):
    with pytest.raises(UsageError, match="labels file not found"):
        resolve_labels(str(tmp_path / "nope.txt"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        resolve_labels(str(bad))


def test_no_labels_is_an_error():
    with pytest.raises(UsageError, match="no labels given"):
        resolve_labels(None, None)


def test_single_label_warns():
    with pytest.warns(SingleLabelWarning, match="probability 1.0"):
        assert resolve_labels(None, ["cat"]) == ("cat",)
