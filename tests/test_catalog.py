"""Catalog loading: the shipped files, and malformed TOML reported with file, entry, field."""
from __future__ import annotations

import textwrap

import pytest

from autoloss import catalog
from autoloss.errors import CatalogError

SECTION = textwrap.dedent("""
    [section]
    id = "9"
    title = "Test section"
    subsections = [{ id = "9.1", title = "Sub" }]
""")

GOOD = textwrap.dedent("""
    [losses.my_giou]
    title = "My GIoU"
    paper = "me"
    section = "9.1"
    signature = "box"
    expression = "1 - iou + (enclose - union) / (enclose + eps)"
""")


def load_text(tmp_path, body, name="9_test.toml"):
    (tmp_path / name).write_text(SECTION + body)
    return catalog.load(tmp_path)


def test_shipped_catalog_has_the_first_wave_and_every_survey_section():
    cat = catalog.default()
    first_wave = {
        "l1", "smooth_l1", "mse", "balanced_l1", "iou", "log_iou", "iou_square", "bounded_iou",
        "giou", "diou", "ciou", "eiou", "eiou_ext", "focal_eiou", "siou", "alpha_iou", "wiou",
        "mpdiou", "inner_iou", "cse_autoloss_a_reg", "cse_autoloss_b_reg", "bce", "focal", "qfl",
        "vfl", "cse_autoloss_b_cls", "softmax_ce", "poly1", "cse_autoloss_a_cls", "dfl"}
    assert first_wave <= set(cat.losses)
    assert [s.id for s in cat.sections] == ["1", "2", "3", "4", "5", "6"]
    subsections = {sub.id for sec in cat.sections for sub in sec.subsections}
    assert {"1.1", "1.2", "2.1", "2.2", "2.3", "2.4", "2.5", "3.1", "3.2", "3.3", "4.1", "4.2",
            "5.1", "5.2", "5.3", "5.4"} <= subsections
    for spec in cat.losses.values():
        assert spec.title and spec.paper and spec.signature and spec.section in subsections
        assert spec.file.endswith(".toml")


def test_defaults_follow_the_catalog():
    defaults = {i: catalog.get(i).defaults for i in ("focal", "alpha_iou", "qfl", "vfl",
                                                     "smooth_l1", "balanced_l1", "siou",
                                                     "inner_iou", "bounded_iou", "eiou_ext")}
    assert defaults["focal"] == {"alpha": 0.25, "gamma": 2.0}
    assert defaults["alpha_iou"]["alpha"] == 3.0
    assert defaults["qfl"] == {"beta": 2.0}
    assert defaults["vfl"] == {"alpha": 0.75, "gamma": 2.0}
    assert defaults["smooth_l1"] == {"beta": 1.0}
    assert defaults["balanced_l1"] == {"alpha": 0.5, "gamma": 1.5, "beta": 1.0}
    assert defaults["siou"]["theta"] == 4.0
    assert defaults["bounded_iou"]["beta"] == 0.2
    assert defaults["eiou_ext"]["smooth_point"] == 0.1
    # issue 16: the expressible entries, defaults as their official code
    more = {i: catalog.get(i).defaults for i in (
        "poly1_focal", "gaussian_focal", "class_balanced", "eql", "alpha_giou", "alpha_diou",
        "alpha_ciou", "wing", "awing")}
    assert more["poly1_focal"] == {"alpha": 0.25, "gamma": 2.0, "epsilon": 1.0}
    assert more["gaussian_focal"] == {"alpha": 2.0, "gamma": 4.0}
    assert more["class_balanced"] == {"beta": 0.999, "gamma": 2.0}
    assert more["eql"] == {"lambda_": 0.00177}
    assert all(more[f"alpha_{m}"]["alpha"] == 3.0 for m in ("giou", "diou", "ciou"))
    assert more["wing"] == {"omega": 10.0, "epsilon": 2.0}
    assert more["awing"] == {"alpha": 2.1, "omega": 14.0, "epsilon": 1.0, "theta": 0.5}


def test_good_file_loads(tmp_path):
    cat = load_text(tmp_path, GOOD)
    assert list(cat.losses) == ["my_giou"]


@pytest.mark.parametrize("body, message", [
    ("[losses.x\n", "9_test.toml: not valid TOML"),
    (GOOD.replace('title = "My GIoU"\n', ""), "[losses.my_giou] field 'title': is required"),
    (GOOD.replace('signature = "box"', 'signature = "boxes"'), "field 'signature': unknown signature 'boxes'; did you mean 'box'"),
    (GOOD.replace('section = "9.1"', 'section = "9.7"'), "field 'section': '9.7' is not a subsection"),
    (GOOD.replace("(enclose + eps)", "(enclos + eps)"), "field 'expression': unknown name 'enclos' at column"),
    (GOOD.replace("(enclose + eps)", "(enclose + eps"), "field 'expression': invalid syntax"),
    (GOOD.replace("1 - iou", "__import__('os')"), "unknown primitive '__import__'"),
    (GOOD + 'colour = "red"\n', "field 'colour': unknown field"),
    (GOOD + "params.gamma = { default = 2.0 }\n", "field 'params': parameter 'gamma' is declared but the expression does not use it"),
    (GOOD.replace("eps)", "eps) * gamma") + "params.gamma = { default = 9.0, range = [0.0, 5.0] }\n", "default 9.0 lies outside range"),
    (GOOD.replace("eps)", "eps) * gamma") + "params.gamma = { default = 1.0, rnage = [0, 5] }\n", "unknown key(s) ['rnage']"),
    (GOOD.replace("eps)", "eps) * iou_") + "params.iou = 1.0\n", "'iou' is a terminal"),
    (GOOD + 'properties = ["nonnegative", "convex"]\n', "unknown property 'convex'"),
    (GOOD + 'let.iou = "inter / union"\n', "field 'let': 'iou' is already a terminal"),
    ('[losses.My-Loss]\ntitle = "x"\n', "loss id 'My-Loss' must be snake_case"),
    ('[other]\nx = 1\n', "unknown top-level table(s) ['other']"),
    (GOOD + 'normaliser = "positive"\n', "field 'normaliser': 'positive' is not one of "
                                        "positives, elements, samples; did you mean 'positives'"),
])
def test_malformed_entries_name_file_entry_and_field(tmp_path, body, message):
    with pytest.raises(CatalogError) as err:
        load_text(tmp_path, body)
    assert message in str(err.value)
    assert "9_test.toml" in str(err.value)


def test_missing_section_and_duplicates(tmp_path):
    (tmp_path / "a.toml").write_text(GOOD)
    with pytest.raises(CatalogError, match="a.toml: missing \\[section\\] table"):
        catalog.load(tmp_path)
    (tmp_path / "a.toml").write_text(SECTION + GOOD)
    (tmp_path / "b.toml").write_text(SECTION.replace('"9"', '"8"').replace("9.1", "8.1")
                                     + GOOD.replace("9.1", "8.1"))
    with pytest.raises(CatalogError, match="b.toml: \\[losses.my_giou\\] is also defined in a.toml"):
        catalog.load(tmp_path)


def test_let_helpers_and_macros(tmp_path):
    body = GOOD.replace('expression = "1 - iou + (enclose - union) / (enclose + eps)"',
                        'let."sq(z)" = "z * z"\nlet.pen = "(enclose - union) / (enclose + eps)"\n'
                        'expression = "sq(1 - iou) + pen"')
    spec = load_text(tmp_path, body).losses["my_giou"]
    assert "sq" not in str(spec.expression) and "pen" not in str(spec.expression)
    assert spec.formula().splitlines()[-1] == "loss = sq(1 - iou) + pen"
    assert [name for name, _ in spec.display] == ["pen", "loss"]


def test_normalisers_follow_the_papers(tmp_path):
    """What a detector divides each loss's sum by: GHM its total, EQL/EQLv2/Seesaw the
    samples, the rest the positives; an entry's own value reaches its compiled loss."""
    assert load_text(tmp_path, GOOD).losses["my_giou"].normaliser == "positives"
    assert load_text(tmp_path, GOOD + 'normaliser = "elements"\n').losses[
        "my_giou"].normaliser == "elements"
    own = {i: catalog.get(i).normaliser for i in ("ghm_c", "ghm_r", "eql", "eqlv2", "seesaw")}
    assert own == {"ghm_c": "elements", "ghm_r": "elements", "eql": "samples",
                   "eqlv2": "samples", "seesaw": "samples"}
    assert {s.normaliser for s in catalog.default().losses.values()
            if s.id not in own} == {"positives"}
    from autoloss import zoo
    assert [zoo.loss(i).normaliser for i in ("ghm_c", "eqlv2", "focal")] == [
        "elements", "samples", "positives"]
