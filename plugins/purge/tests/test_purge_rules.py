"""Rule matching and settings validation, without a database."""

from __future__ import annotations

import logging

import pytest
from marshmallow import ValidationError
from pacscore_purge.rules import Rule, normalize, winning_rule
from pacscore_purge.settings import PurgeSettingsSchema, rule_warnings

RULES = [
    Rule.from_settings(PurgeSettingsSchema().load({"rules": [text]})["rules"][0])
    for text in ("MG * 1825", "* CHEST 1460", "* * 1095", "DX Chest 0", "* CHEST* 700")
]


@pytest.mark.parametrize(
    ("modality", "description", "expected"),
    [
        ("MG", "anything", "MG * 1825"),
        ("MG", "CHEST", "MG * 1825"),  # modality beats description
        ("CT", "Chest", "* CHEST 1460"),
        ("CT", " chést ", "* CHEST 1460"),  # case, accent and spaces ignored
        ("DX", "CHÉST", "DX CHEST 0"),  # both beats either
        ("dx", "chest", "DX CHEST 0"),
        ("CT", "CHEST PA", "* CHEST* 700"),  # a wildcard description
        ("US", "", "* * 1095"),
    ],
)
def test_the_most_specific_rule_wins(modality, description, expected):
    assert winning_rule(RULES, modality, description).text == expected


def test_no_rule_means_no_age_purge():
    assert winning_rule(RULES[:2], "CT", "KNEE") is None


def test_normalize_folds_case_accents_and_spaces():
    assert normalize("  Épaule   gauche ") == "EPAULE GAUCHE"


def test_rules_as_text_or_objects_and_empty_means_any():
    loaded = PurgeSettingsSchema().load(
        {"rules": ["US Épaule droite 400", {"modality": "", "description": "", "days": 30}]}
    )["rules"]
    assert loaded[0] == {"modality": "US", "description": "Épaule droite", "days": 400}
    assert Rule.from_settings(loaded[1]).text == "* * 30"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (["MG * -1"], "days must be 0"),
        ([{"modality": "CT", "days": -5}], "days must be 0"),
        (["MG 1825"], "expected 'MODALITY DESCRIPTION DAYS'"),
        (["MG * forever"], "whole number"),
        ([42], "a rule is an object"),
    ],
)
def test_bad_rules_are_refused(rules, message):
    with pytest.raises(ValidationError) as caught:
        PurgeSettingsSchema().load({"rules": rules})
    assert message in str(caught.value.messages)


def test_unknown_modality_warns_but_is_kept(caplog):
    caplog.set_level(logging.WARNING)
    loaded = PurgeSettingsSchema().load({"rules": ["XQ knee 10", "ct * 5", "CT * 9"]})
    assert len(loaded["rules"]) == 3
    warnings = rule_warnings(loaded["rules"])
    assert warnings == [
        "unknown modality code 'XQ'",
        "rule CT * is listed twice: the first one applies",
    ]
    assert "unknown modality code 'XQ'" in caplog.text


@pytest.mark.parametrize(
    "changes",
    [
        {"date_source": "birth_date"},
        {"schedule_time": "25:00"},
        {"thresholds": [{"storage": "default", "min_free_mb": -1}]},
        {"thresholds": [{"min_free_mb": 100}]},
        {"batch_series": 0},
    ],
)
def test_other_settings_are_validated(changes):
    with pytest.raises(ValidationError):
        PurgeSettingsSchema().load(changes)


def test_defaults_work_before_anything_is_saved():
    settings = PurgeSettingsSchema().load({})
    assert settings["rules"] == [] and settings["schedule_time"] == "02:00"
    assert settings["date_source"] == "study_date" and not settings["purge_undelivered"]
