"""The public functions accept each other's outputs: a TemplateSet from ``resolve_templates``, a
set name and a plain list of templates are interchangeable wherever templates are taken."""

from __future__ import annotations

import pytest
import torch

from zeroshot import ZeroShotClassifier, build_class_weights, evaluate, resolve_templates
from zeroshot.data.datasets import folder_dataset
from zeroshot.encode.embed import EmbedSettings
from zeroshot.prompts import TemplateSet, load_builtin

from conftest import LABELS, make_image


@pytest.mark.parametrize("name, alias", [("openai-80", "80"), ("openai-7", "7"), ("photo", "1")])
def test_build_class_weights_takes_a_template_set_a_name_or_a_list(tiny_loaded, name, alias):
    template_set = resolve_templates(alias)
    assert isinstance(template_set, TemplateSet) and template_set.name == name
    reference = build_class_weights(tiny_loaded, LABELS, template_set)
    assert reference.shape[0] == len(LABELS)
    for same in (alias, name, list(load_builtin("templates", name)), tuple(template_set.templates)):
        assert torch.equal(build_class_weights(tiny_loaded, LABELS, same), reference), same
    other = build_class_weights(tiny_loaded, LABELS, ["a drawing of a {}."])
    assert not torch.equal(other, reference)  # the templates matter, so the equalities above mean something


def test_classifier_takes_a_template_set(tiny_loaded, image_dir):
    template_set = resolve_templates("7")
    from_set = ZeroShotClassifier(LABELS, templates=template_set, model=tiny_loaded, cache=False)
    from_name = ZeroShotClassifier(LABELS, templates="openai-7", model=tiny_loaded, cache=False)
    from_list = ZeroShotClassifier(LABELS, templates=list(template_set.templates), model=tiny_loaded, cache=False)
    assert from_set.template_set == template_set and from_set.templates == template_set.templates
    assert torch.equal(from_set.class_weights, from_name.class_weights)
    assert torch.equal(from_set.class_weights, from_list.class_weights)
    a = [(p.path, p.labels, p.scores) for p in from_set.classify([image_dir], workers=0)]
    b = [(p.path, p.labels, p.scores) for p in from_name.classify([image_dir], workers=0)]
    assert a == b and len(a) == 6


def test_evaluate_takes_template_sets_names_and_lists(tiny_loaded, tmp_path):
    root = tmp_path / "ds"
    for name, colour in (("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (40, 60, 220))):
        for j in range(2):
            make_image(root / name / f"img{j}.png", tuple(min(255, c + 40 * j) for c in colour))
    data = folder_dataset(root)
    settings = EmbedSettings(workers=0)
    seven = resolve_templates("7")
    result = evaluate(tiny_loaded, data, [seven, resolve_templates("1"), ["a drawing of a {}."]], settings, cache=False)
    assert [r.templates for r in result.results] == ["openai-7", "photo", "custom"]
    assert [r.num_templates for r in result.results] == [7, 1, 1]

    by_name = evaluate(tiny_loaded, data, ["openai-7"], settings, cache=False)
    assert by_name.results[0].metrics == result.results[0].metrics
    assert torch.equal(by_name.results[0].predictions, result.results[0].predictions)
    # The same set given twice (as a TemplateSet and by name) is scored once.
    assert len(evaluate(tiny_loaded, data, [seven, "7"], settings, cache=False).results) == 1
